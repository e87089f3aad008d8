"""The parent's side of `EnvPool` workers: a process handle and an in-process stand-in.

Both offer the same small interface, so the pool treats ``num_workers=0`` like any other count:
``info`` (spaces reported at startup), ``attach``, ``send(code, payload)``, ``wait`` (``None``,
a `Fault` or `PENDING`), ``request_close``, ``kill`` and ``finish(deadline)``. Warnings their
envs raise for the parent (`fleetrl.envs.worker.EnvGroup.notes`) land in the ``notes`` list
they were given.

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

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from multiprocessing import connection
from typing import Any

from fleetrl.envs import worker as worker_module
from fleetrl.envs.errors import Fault
from fleetrl.envs.worker import (
    FAILED,
    OK,
    EnvFault,
    EnvGroup,
    StartTimeout,
    WorkerConfig,
    build_envs,
    describe_envs,
)

POLL_SECONDS = 0.1
"""How often a waiting parent checks that a worker is still alive: death shows within this."""

PAYLOAD_SECONDS = 5.0
"""How long the parent waits for the traceback of a worker that reported a failure."""


PENDING = object()
"""`ProcessWorker.wait`: no answer yet."""


def fault_of(error: EnvFault, slot: int) -> Fault:
    if isinstance(error.error, StartTimeout):  # a constructor interrupted in-process
        return Fault("timeout", slot, (error.env_index,))
    return Fault("env", slot, error.failure(error.error))


class InProcessWorker:
    """Envs stepped in the parent process: ``send`` does the work, ``wait`` reports it.

    Their constructors get ``start_timeout`` seconds (`interrupt_after`; on the main thread
    only), as a worker process does.
    """

    def __init__(self, slot, indices: range, make_env, call_style: str, timeout: float, notes):
        self.slot = slot
        self.indices = indices
        with interrupt_after(timeout, lambda: StartTimeout(timeout)):
            self.envs, masked = build_envs(make_env, indices, call_style)
        self.info = describe_envs(self.envs, masked)
        self.group: EnvGroup | None = None
        self.pending: Fault | None = None
        self.responsive = True
        self.notes = notes

    def attach(self, arrays: dict, shm_name: str | None, layout, action_offset: int) -> None:
        self.group = EnvGroup(self.envs, self.indices.start, arrays, self.slot, action_offset)

    def send(self, code: int, payload: Any = None) -> None:
        group = self.group
        try:
            if code == worker_module.STEP:
                group.step()
            else:
                group.reset(payload)
        except EnvFault as error:
            self.pending = fault_of(error, self.slot)
        except Exception as error:  # outside one env's calls: as `worker._serve` reports it
            phase = "reset" if code == worker_module.RESET else "step"
            self.pending = fault_of(EnvFault(phase, None, error), self.slot)
        if group.notes:
            self.notes.extend(group.notes)
            group.notes.clear()

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
    """A spawned worker process stepping ``indices``; see `fleetrl.envs.worker.worker_main`.

    ``responsive``: the process is alive and will see a command (it may be busy with one);
    False once it died or was killed (a hung step). A worker that reported an env's exception
    stays responsive: it waits idle for the next command, so that it can close its envs.
    """

    def __init__(self, ctx, config: WorkerConfig, notes: list):
        self.slot = config.slot
        self.indices = config.indices
        self.info: dict | None = None
        self.responsive = True
        self.notes = notes
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
            self.responsive = False
            return Fault("died", self.slot, exitcode=self.process.exitcode)
        if time.monotonic() > deadline:
            self.kill()
            return Fault("timeout", self.slot)
        return PENDING

    def _answer(self, status) -> Fault | None:
        code = status[self.slot, 0]
        if code == OK:
            return None
        if self.conn.poll(PAYLOAD_SECONDS):  # the traceback (FAILED) or notes (NOTED)
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                pass
            else:
                if code == FAILED:
                    return Fault("env", self.slot, message)
                self.notes.extend(message)
                return None
        self.responsive = False
        return Fault("died", self.slot, exitcode=self.process.exitcode)

    # ---- shutdown ----

    def request_close(self, arrays: dict | None) -> None:
        """Ask a responsive worker to close its envs and exit (it sees the request when idle);
        kill any other."""
        if self.responsive and arrays is not None and self.process.exitcode is None:
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
        self.responsive = False
        if self.process.exitcode is None:
            self.process.kill()


def gather(workers: list, timeout: float, should_stop: Callable[[], bool] | None = None):
    """The next pipe message of each worker, or a `Fault` for those that died, took too long
    or were still pending when ``should_stop()`` turned True (checked every `POLL_SECONDS`)
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
        if should_stop is not None and should_stop():
            for slot in pending:
                results[slot] = Fault("interrupted", slot)
            break
        handles = {}
        for w in pending.values():
            handles[w.conn] = w
            handles[w.process.sentinel] = w
        poll = remaining if should_stop is None else min(remaining, POLL_SECONDS)
        for ready in connection.wait(list(handles), poll):
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
            w.responsive = False
            results[w.slot] = Fault("died", w.slot, exitcode=w.process.exitcode)
    return results


def wait_all(
    workers: list, status, deadline: float, stop_at_fault: bool, spin=0.0, should_stop=None
):
    """Collect every worker's answer: ``{slot: Fault}`` for those that failed.

    Waits on one worker at a time (busy for ``spin`` seconds, then blocking for `POLL_SECONDS`)
    and between those waits checks the others without blocking, so a death or a passed deadline
    anywhere shows within `POLL_SECONDS`; so does ``should_stop()`` turning True, which ends
    the wait with an "interrupted" fault for each worker still busy. ``stop_at_fault``: return
    at the first fault, leaving the others mid-step.
    """
    faults: dict[int, Fault] = {}
    pending = list(workers)
    while pending:
        still = []
        polled = False  # a blocking wait ran out: time to ask should_stop
        for position, worker in enumerate(pending):
            first = position == 0
            result = worker.wait(deadline, status, POLL_SECONDS if first else 0.0, spin * first)
            if result is PENDING:
                still.append(worker)
                polled = polled or first
            elif result is not None:
                faults[worker.slot] = result
                if stop_at_fault:
                    return faults
        pending = still
        if polled and should_stop is not None and should_stop():
            faults.update((w.slot, Fault("interrupted", w.slot)) for w in pending)
            return faults
    return faults


@contextmanager
def interrupt_after(seconds: float, make_error: Callable[[], BaseException]):
    """Raise ``make_error()`` into this block if it runs longer than ``seconds``: a SIGALRM
    (``setitimer``), which also breaks a blocking call such as ``time.sleep``. Restores the
    previous SIGALRM handler and timer (pytest-timeout's, say) afterwards; if that timer was
    due first, it fires as it would have. Only Python's main thread gets signals: elsewhere
    (a pool restarting a worker from a JAX callback thread) the block runs unbounded.
    """
    previous = signal.getsignal(signal.SIGALRM)
    main = threading.current_thread() is threading.main_thread()
    # None: a handler not set from Python, not restorable; inf: no bound asked for
    if not main or previous is None or not math.isfinite(seconds):
        yield
        return
    start = time.monotonic()
    delay, interval = signal.setitimer(signal.ITIMER_REAL, 0)
    # a previous timer without a Python handler (SIG_IGN) is only restored afterwards
    previous_at = start + delay if delay and callable(previous) else math.inf
    handed_back = done = False

    def on_alarm(signum, frame):
        nonlocal handed_back
        if done:  # fired after the block ended, before the timer was disarmed: nothing to do
            return
        if time.monotonic() < previous_at - 1e-3:
            raise make_error()
        handed_back = True  # the previous timer came first: its handler, as if we were not here
        signal.signal(signal.SIGALRM, previous)
        if interval:
            signal.setitimer(signal.ITIMER_REAL, interval, interval)
        previous(signum, frame)

    try:  # installed inside: whatever fails below still restores the previous handler and timer
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(min(seconds, previous_at - start), 1e-6))
        yield
        done = True
    finally:
        if not handed_back:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if delay:
                left = max(start + delay - time.monotonic(), 1e-6)
                signal.setitimer(signal.ITIMER_REAL, left, interval)
