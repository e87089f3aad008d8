"""`WorkerSet`: the workers of an `EnvPool` and the memory they share, as one unit to start,
attach, command, replace and stop.

It knows processes, not episodes: what goes wrong comes back as `Fault`s, which the pool raises
or recovers from.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from multiprocessing import shared_memory
from typing import Any

from fleetrl.envs.errors import Fault
from fleetrl.envs.handles import InProcessWorker, ProcessWorker, fault_of, gather, wait_all
from fleetrl.envs.worker import EnvFault, Layout, WorkerConfig, call_style

CLOSE_GRACE_SECONDS = 1.0
"""How long ``close()`` lets workers close their envs before SIGTERM (then SIGKILL)."""


class WorkerSet:
    """``num_envs`` envs in groups, one per worker: slot 0 is stepped by the parent itself when
    ``num_workers == 0`` or ``parent_steps``; the other slots are worker processes.

    Workers are started with the "spawn" method (the parent runs JAX, which is not fork-safe).
    With ``pin_workers`` each is pinned to one CPU, CPUs the parent is not pinned to first.
    Waits end early when ``should_stop()`` turns True (`fleetrl.envs.handles.wait_all`);
    ``notes`` collects the workers' warnings for the pool to show.
    """

    def __init__(self, make_env: Any, num_envs: int, num_workers: int, options: dict):
        parent_steps = bool(options["parent_steps"]) or num_workers == 0
        self.groups = split_envs(num_envs, num_workers + parent_steps)
        self.local_slots = {0} if parent_steps else set()
        self.resources = Resources(len(self.groups))
        self.make_env = make_env
        self.call_style = call_style(make_env)
        self.start_timeout = options["start_timeout"]
        self.should_stop = options.get("should_stop")
        self.notes: list[tuple[str, int, str]] = []
        self.spin_seconds = options["spin_us"] * 1e-6
        self.cpus = worker_cpus() if options["pin_workers"] else None
        self.context = multiprocessing.get_context("spawn")
        self.layout: Layout | None = None
        self.arrays: dict | None = None
        self.float_block = None
        self.action_offset = 0

    @property
    def workers(self) -> list:
        return self.resources.workers

    def launch(self, slots) -> list[Fault]:
        """Start the workers of ``slots``; each reports its envs' spaces in ``worker.info``."""
        started = []
        for slot in slots:
            if slot in self.local_slots:
                group, timeout = self.groups[slot], self.start_timeout
                try:
                    worker = InProcessWorker(
                        slot, group, self.make_env, self.call_style, timeout, self.notes
                    )
                except EnvFault as error:
                    return [fault_of(error, slot)]
            else:
                worker = ProcessWorker(self.context, self._config(slot), self.notes)
                self.resources.names.extend(worker.names)
            self.resources.workers[slot] = worker
            started.append(worker)
        results = gather(started, self.start_timeout, self.should_stop)
        for worker in started:
            if worker.slot in results and not isinstance(results[worker.slot], Fault):
                worker.info = results[worker.slot][1]
        return [r for r in results.values() if isinstance(r, Fault)]

    def allocate(self, layout: Layout, action_offset: int) -> None:
        """Create the arrays every worker reads and writes (plain memory when in-process)."""
        self.layout, self.action_offset = layout, action_offset
        if len(self.local_slots) == len(self.groups):
            buffer = bytearray(layout.size)
        else:
            shm = shared_memory.SharedMemory(create=True, size=layout.size)
            self.resources.shm = shm
            self.resources.names.append(shm.name)
            buffer = shm.buf
        self.arrays = self.resources.arrays = layout.arrays(buffer)
        self.float_block = layout.float_block(buffer)

    def attach(self, slots) -> list[Fault]:
        """Hand the arrays to the workers of ``slots`` and wait until they are ready."""
        workers = [self.workers[slot] for slot in slots]
        name = None if self.resources.shm is None else self.resources.shm.name
        for worker in workers:
            worker.attach(self.arrays, name, self.layout, self.action_offset)
        results = gather(workers, self.start_timeout, self.should_stop)
        return [r for r in results.values() if isinstance(r, Fault)]

    def replace(self, slot: int) -> list[Fault]:
        """Stop worker ``slot`` (a responsive one closes its envs first, within
        `CLOSE_GRACE_SECONDS`; a dead or hung one is killed) and start an attached fresh one
        (its envs not reset yet)."""
        old = self.workers[slot]
        old.request_close(self.arrays)
        old.finish(time.monotonic() + CLOSE_GRACE_SECONDS)
        return self.launch([slot]) or self.attach([slot])

    def send(self, code: int, payloads: dict | None = None, slots=None) -> None:
        """Wake the workers of ``slots`` (default all) with ``code``; ``payloads[slot]`` goes
        through the pipe (reset seeds)."""
        command = self.arrays["command"]
        workers = self.workers if slots is None else [self.workers[s] for s in slots]
        # processes first: the in-process group steps inside `send`, while they work
        for worker in sorted(workers, key=lambda w: w.slot in self.local_slots):
            command[worker.slot, 0] = code
            try:
                worker.send(code, None if payloads is None else payloads[worker.slot])
            except OSError:
                pass  # a dead worker: `wait` reports it

    def wait(self, deadline: float, stop_at_fault: bool, slots=None) -> dict[int, Fault]:
        """The faults of the workers of ``slots`` (default all) once all have answered.

        A parent that stepped envs itself busy-waits (``spin_us``) for the workers before
        blocking: they run on the other cores, so its own core has nothing else to do. A parent
        that only waits blocks at once, leaving its core to the workers."""
        workers = self.workers if slots is None else [self.workers[s] for s in slots]
        spin = self.spin_seconds if self.local_slots else 0.0
        status = self.arrays["status"]
        return wait_all(workers, status, deadline, stop_at_fault, spin, self.should_stop)

    def slot_of(self, env_index: int) -> int:
        return next(slot for slot, group in enumerate(self.groups) if env_index in group)

    def _config(self, slot: int) -> WorkerConfig:
        process_index = slot - len(self.local_slots)
        cpu = None if self.cpus is None else self.cpus[process_index % len(self.cpus)]
        return WorkerConfig(
            self.make_env,
            self.call_style,
            slot,
            self.groups[slot],
            os.getpid(),
            cpu,
            self.spin_seconds,
            threading.current_thread() is threading.main_thread(),
        )


def worker_cpus() -> list[int]:
    """CPUs to pin workers to, in order: those of this machine (or container cpuset) that the
    parent is not pinned to, then the parent's. The CLI pins the parent to one CPU for XLA's
    sake; workers must not inherit that, nor share its CPU while others are free."""
    machine = set(_machine_cpus())
    parent = set(os.sched_getaffinity(0)) & machine if hasattr(os, "sched_getaffinity") else set()
    return sorted(machine - parent) + sorted(parent) if parent != machine else sorted(machine)


def _machine_cpus() -> list[int]:
    """The CPUs this machine (or container cpuset) lets us use."""
    try:
        with open("/sys/fs/cgroup/cpuset.cpus.effective") as file:
            text = file.read().strip()
    except OSError:
        text = ""
    cpus = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus or list(range(os.cpu_count() or 1))


def split_envs(num_envs: int, num_groups: int) -> list[range]:
    """Consecutive env indices, as even as possible: 10 over 4 -> 3, 3, 2, 2."""
    base, extra = divmod(num_envs, num_groups)
    groups, start = [], 0
    for group in range(num_groups):
        size = base + (group < extra)
        groups.append(range(start, start + size))
        start += size
    return groups


class Resources:
    """Everything a pool's ``close`` releases; kept apart from the pool so that a finalizer can
    hold it without keeping the pool alive."""

    def __init__(self, num_slots: int):
        self.workers: list = [None] * num_slots
        self.shm = None
        self.arrays: dict | None = None
        self.names: list[str] = []


def release(
    resources: Resources, grace: float = CLOSE_GRACE_SECONDS, in_process: bool = True
) -> None:
    """Stop every worker (ask, then SIGTERM, then SIGKILL) and unlink the shared memory;
    ``in_process=False``: leave the envs stepped in this process alone."""
    arrays, resources.arrays = resources.arrays, None
    workers = [
        w
        for w in resources.workers
        if w is not None and (in_process or isinstance(w, ProcessWorker))
    ]
    resources.workers = [None if w in workers else w for w in resources.workers]
    for worker in workers:
        worker.request_close(arrays)
    del arrays
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.finish(deadline)
    shm, resources.shm = resources.shm, None
    if shm is not None:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass
        try:
            shm.close()
        except BufferError:
            pass  # a view of it is still alive somewhere; the unlinked memory goes with it
