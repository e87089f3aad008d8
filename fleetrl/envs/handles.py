"""The parent's side of `EnvPool` workers: a process handle and an in-process stand-in.

Both offer the same small interface, so the pool treats ``num_workers=0`` like any other count:
``info`` (spaces reported at startup), ``attach``, ``send(code, payload)``, ``wait`` (``None``,
a `Fault` or `PENDING`), ``request_close``, ``kill`` and ``finish(deadline)``.

Signalling, measured on our 2-core VM (20k round trips, median of 3): a parent waking one
worker and waiting for its answer took 26 us with a pipe (``send_bytes``/``recv_bytes`` of one
byte) and 6 us with a pair of POSIX semaphores; with 2 workers 55 vs 14 us; with 2 workers doing
50 us of work each 172-384 vs 133-179 us. So: semaphores (``sem_post`` without a waiter stays in
user space). Spinning on both sides for a fixed 20-200 us made every 2-worker case slower
(39-830 us): with two workers on two cores, a spinning process takes the core another needs.
What helped instead: a worker busy-waits after answering only while the parent's next command
keeps arriving within ``spin_us`` (pool throughput, 16 CartPole envs, 2 workers, 11 alternating
runs: 56k steps/s without, 61k / 88k / 74k with 100 / 300 / 600 us), and a parent that steps
envs itself busy-waits for the workers, since its core is free then. Both spins call
``sched_yield`` between polls, so that a process woken on a spinner's core (the parent, with
two workers on two cores) runs at once instead of waiting for the spinner's time slice: on the
100 us env, 2 workers went from 71-79% to 79-87% of the measured two-core limit (6 alternating
invocations each, docs/BENCHMARKS.md section 9); CartPole showed no difference beyond noise.
"""

from __future__ import annotations

import os
import time
from multiprocessing import connection
from typing import Any

from fleetrl.envs import worker as worker_module
from fleetrl.envs.errors import Fault
from fleetrl.envs.worker import OK, EnvFault, EnvGroup, WorkerConfig, build_envs, describe_envs

POLL_SECONDS = 0.1
"""How often a waiting parent checks that a worker is still alive: death shows within this."""

PAYLOAD_SECONDS = 5.0
"""How long the parent waits for the traceback of a worker that reported a failure."""


PENDING = object()
"""`ProcessWorker.wait`: no answer yet."""


def fault_of(error: EnvFault, slot: int) -> Fault:
    return Fault("env", slot, (error.phase, error.env_index, error.traceback_text, error.error))


class InProcessWorker:
    """Envs stepped in the parent process: ``send`` does the work, ``wait`` reports it."""

    def __init__(self, slot: int, indices: range, make_env: Any, call_style: str):
        self.slot = slot
        self.indices = indices
        self.envs = build_envs(make_env, indices, call_style)
        self.info = describe_envs(self.envs)
        self.group: EnvGroup | None = None
        self.pending: Fault | None = None
        self.healthy = True

    def attach(self, arrays: dict, shm_name: str | None, layout, action_offset: int) -> None:
        self.group = EnvGroup(self.envs, self.indices.start, arrays, self.slot, action_offset)

    def send(self, code: int, payload: Any = None) -> None:
        try:
            if code == worker_module.STEP:
                self.group.step()
            else:
                self.group.reset(payload)
        except EnvFault as error:
            self.pending = fault_of(error, self.slot)

    def wait(self, deadline: float, status, timeout: float, spin: float = 0.0) -> Fault | None:
        fault, self.pending = self.pending, None
        return fault

    def request_close(self, arrays: dict | None = None) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None
        else:
            for env in self.envs:
                worker_module._close_quietly(env)
        self.envs = []

    def finish(self, deadline: float) -> None:
        pass

    kill = request_close


class ProcessWorker:
    """A spawned worker process stepping ``indices``; see `fleetrl.envs.worker.worker_main`."""

    def __init__(self, ctx, config: WorkerConfig):
        self.slot = config.slot
        self.indices = config.indices
        self.info: dict | None = None
        self.healthy = True
        self.conn, child_conn = ctx.Pipe()
        self.command_sem = ctx.Semaphore(0)
        self.done_sem = ctx.Semaphore(0)
        self.names = [self.command_sem._semlock.name, self.done_sem._semlock.name]
        self.process = ctx.Process(
            target=worker_module.worker_main,
            args=(child_conn, self.command_sem, self.done_sem, config),
            name=f"fleetrl-envpool-worker-{config.slot}",
            daemon=True,
        )
        try:
            self.process.start()
        finally:
            child_conn.close()

    # ---- startup: messages over the pipe ----

    def attach(self, arrays: dict, shm_name: str | None, layout, action_offset: int) -> None:
        self.conn.send(("attach", shm_name, layout, action_offset))

    # ---- steady state: semaphores and shared memory ----

    def send(self, code: int, payload: Any = None) -> None:
        if code == worker_module.RESET:
            self.conn.send(payload)  # the seeds, or None: the worker always reads one message
        self.command_sem.release()

    def wait(self, deadline: float, status, timeout: float, spin: float = 0.0):
        """Wait up to ``spin`` + ``timeout`` for the worker's answer: ``None`` (done), a `Fault`
        (an env failed, the worker died, or ``deadline`` passed: then it is killed), or
        `PENDING`."""
        if spin:
            end = time.perf_counter() + spin
            while time.perf_counter() < end:
                if self.done_sem.acquire(False):
                    return self._answer(status)
                os.sched_yield()  # see worker._acquire
        if self.done_sem.acquire(True, timeout):
            return self._answer(status)
        if self.process.exitcode is not None:
            if self.done_sem.acquire(False):  # it answered, then died: the next step sees it
                return self._answer(status)
            self.healthy = False
            return Fault("died", self.slot, exitcode=self.process.exitcode)
        if time.monotonic() > deadline:
            self.kill()
            return Fault("timeout", self.slot)
        return PENDING

    def _answer(self, status) -> Fault | None:
        if status[self.slot, 0] == OK:
            return None
        self.healthy = False
        if self.conn.poll(PAYLOAD_SECONDS):
            try:
                return Fault("env", self.slot, self.conn.recv())
            except (EOFError, OSError):
                pass
        return Fault("died", self.slot, exitcode=self.process.exitcode)

    # ---- shutdown ----

    def request_close(self, arrays: dict | None) -> None:
        """Ask a healthy worker to close its envs and exit (it sees the request when idle)."""
        if self.healthy and arrays is not None and self.process.exitcode is None:
            arrays["command"][self.slot, 0] = worker_module.CLOSE
            self.command_sem.release()
        else:
            self.kill()

    def finish(self, deadline: float) -> None:
        """Join until ``deadline``, then SIGTERM, then SIGKILL; release every handle."""
        process = self.process
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            process.terminate()
            process.join(0.5)
        if process.exitcode is None:
            process.kill()
            process.join(2.0)
        self.conn.close()
        if process.exitcode is not None:
            process.close()
        # dropping the last references unlinks the named semaphores (multiprocessing's
        # Finalize on SemLock), so nothing is left in /dev/shm
        self.command_sem = self.done_sem = None

    def kill(self) -> None:
        self.healthy = False
        if self.process.exitcode is None:
            self.process.kill()


def gather(workers: list, timeout: float) -> dict[int, Any]:
    """The next pipe message of each worker, or a `Fault` for those that died or took too long
    (startup: spaces, then "ready"). Returns ``{slot: message or Fault}``."""
    results: dict[int, Any] = {}
    pending = {w.slot: w for w in workers if isinstance(w, ProcessWorker)}
    deadline = time.monotonic() + timeout
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            for slot in pending:
                results[slot] = Fault("timeout", slot)
            break
        handles = {}
        for w in pending.values():
            handles[w.conn] = w
            handles[w.process.sentinel] = w
        for ready in connection.wait(list(handles), remaining):
            w = handles[ready]
            if w.slot not in pending:
                continue
            del pending[w.slot]
            try:
                if w.conn.poll():
                    message = w.conn.recv()
                    results[w.slot] = (
                        Fault("env", w.slot, message[1]) if message[0] == "failed" else message
                    )
                    continue
            except (EOFError, OSError):
                pass
            w.process.join(1.0)
            w.healthy = False
            results[w.slot] = Fault("died", w.slot, exitcode=w.process.exitcode)
    return results


def wait_all(workers: list, status, deadline: float, stop_at_fault: bool, spin: float = 0.0):
    """Collect every worker's answer: ``{slot: Fault}`` for those that failed.

    Waits on one worker at a time (busy for ``spin`` seconds, then blocking for `POLL_SECONDS`)
    and between those waits checks the others without blocking, so a death or a passed deadline
    anywhere shows within `POLL_SECONDS`. ``stop_at_fault``: return at the first fault, leaving
    the others mid-step.
    """
    faults: dict[int, Fault] = {}
    pending = list(workers)
    while pending:
        still = []
        for position, worker in enumerate(pending):
            first = position == 0
            result = worker.wait(deadline, status, POLL_SECONDS if first else 0.0, spin * first)
            if result is PENDING:
                still.append(worker)
            elif result is not None:
                faults[worker.slot] = result
                if stop_at_fault:
                    return faults
        pending = still
    return faults
