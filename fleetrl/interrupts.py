"""Guards around the training loop: a watchdog for compiled calls that never return, and
SIGINT/SIGTERM handling that lets the loop checkpoint before it stops."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any


class CallWatchdog:
    """Turns a compiled call that never returns into a loud exit instead of a silent hang.

    Why: with jax 0.10.2, XLA:CPU occasionally wedges its thread pool while executing a
    vmapped (several seeds) program: every thread idles and the result never arrives. We saw it
    in about one run in six with 16 seeds on our 2-core machine; no XLA flag we tried avoids it.
    After ``timeout`` seconds the process prints what happened and exits with code 3; the last
    committed checkpoint is intact and ``fleetrl train --resume RUN_DIR`` continues from it.
    """

    def __init__(self, run_dir: Path, timeout: float):
        self.run_dir, self.timeout = run_dir, timeout
        self._done = threading.Event()

    def start(self, timeout: float | None = None, what: str = "a compiled training call") -> None:
        if self.timeout <= 0:
            return
        self._done = threading.Event()  # a fresh event: a late watcher of the last call ends
        limit = timeout or self.timeout
        threading.Thread(target=self._watch, args=(limit, what, self._done), daemon=True).start()

    def stop(self) -> None:
        self._done.set()

    def _watch(self, limit: float, what: str, done: threading.Event) -> None:
        if done.wait(limit):
            return
        exit_now(
            3,
            f"error: {what} has not returned after {limit:.0f} s (train.call_timeout); the "
            "process is stopped instead of hanging. Either it takes longer than that (slow envs "
            "or networks: lower train.log_every or raise train.call_timeout), an env hangs, or "
            "XLA:CPU wedged, as it occasionally does with several vmapped seeds",
            self.run_dir,
            resume_advice=True,
        )


def exit_now(code: int, message: str, run_dir: Path | None, resume_advice: bool = False) -> None:
    """Print ``message`` with the last committed checkpoint (and, with ``resume_advice``, how to
    continue from it), then end the process at once (from any thread; a hung main thread cannot
    stop it), see `release_and_exit`."""
    from fleetrl import checkpoint

    latest = checkpoint.latest(run_dir) if run_dir else None
    advice = ""
    if resume_advice and latest:
        advice = f" Continue with: fleetrl train --resume {run_dir}"
    elif resume_advice:  # `--resume` would fail: nothing to continue from
        advice = " No checkpoint to continue from: run the same command again to start over."
    sys.stderr.write(
        f"\nfleetrl: {message}. Last committed checkpoint: {latest or 'none'}.{advice}\n"
    )
    sys.stderr.flush()
    release_and_exit(code)


RELEASE_SECONDS = 5.0
"""How long an exit waits for host-env workers to close their envs (1 s, then SIGTERM, then
SIGKILL: `fleetrl.envs.workerset.release`)."""


def release_and_exit(code: int) -> None:
    """``os._exit(code)``, after stopping host-env worker processes the way ``close()`` does
    (each closes its envs: a simulator it started, a video it records) and unlinking their
    shared memory. The release runs on a thread, given `RELEASE_SECONDS`: the interrupted
    thread may hold a lock it needs. Workers still alive then die with this process
    (``PR_SET_PDEATHSIG``). In-process envs are left alone: another thread (XLA's callback)
    may be stepping them."""
    for name in ("fleetrl.envs.pool", "fleetrl.distributed.cluster"):  # Ray: its local cluster
        module = sys.modules.get(name)  # only if host envs (a Ray cluster) were built; no import
        release_all = getattr(module, "release_all", None)  # None while it is being imported
        if release_all is not None:
            release = threading.Thread(target=release_all, daemon=True)
            release.start()
            release.join(RELEASE_SECONDS)
    os._exit(code)


STOP_REQUESTED = threading.Event()
"""Set from the first SIGINT/SIGTERM seen by `StopSignals` until it exits: host envs stop
waiting for a hung worker when it is set (``EnvPool(should_stop=...)``), so that the run stops
within ``train.stop_grace`` with a checkpoint instead of after ``env.step_timeout`` with an
error (reliability case L1)."""


class StopSignals:
    """First SIGINT/SIGTERM: ask the loop to checkpoint and stop, and exit anyway (code 128 +
    signal) if it has not within ``grace`` seconds. Second: exit at once (committed checkpoints
    are never half-written, see checkpoint.save).

    Python runs a signal handler only in the main thread, between bytecodes; while that thread
    waits for a compiled call (a hung host env, a wedged XLA), the handler never runs. So the
    signal numbers also go through ``signal.set_wakeup_fd`` to a watcher thread, which starts
    the grace timer and, on the second signal, exits: a stuck run still stops.
    """

    def __init__(self, on_signal=None, grace: float = 0.0, run_dir: Path | None = None):
        self.received: int | None = None
        self._on_signal = on_signal
        self._previous: dict[int, Any] = {}
        self._grace, self._run_dir = grace, run_dir
        self._finished = threading.Event()
        self._count = 0
        self._lock = threading.Lock()
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._previous_fd = -1

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        try:
            self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main interpreter: the handler alone
            reader.close(), writer.close()
            return self
        self._sockets = (reader, writer)
        threading.Thread(target=self._watch, args=(reader,), daemon=True).start()
        return self

    def _handle(self, signum, frame):
        """Main thread, when it runs Python: stop the loop. The handler stays installed: a
        second signal exits through `_seen` (the watcher's, or here without one) after
        stopping host-env workers, with a message; the default action (SIGTERM's above all)
        killed the process silently and left the workers' semaphores to the resource
        tracker's warnings."""
        if self._sockets is None:  # no watcher: count here
            self._seen(signum)
        elif self.received is None:
            self.received = signum
        STOP_REQUESTED.set()
        if self._on_signal:
            self._on_signal(signum)

    def _watch(self, reader: socket.socket) -> None:
        """Watcher thread: each signal delivered while our handler is installed arrives here
        exactly once, main thread busy or not."""
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in (signal.SIGINT, signal.SIGTERM):
                    self._seen(signum)

    def _seen(self, signum: int) -> None:
        with self._lock:
            self._count += 1
            first = self._count == 1
            if self.received is None:
                self.received = signum
        STOP_REQUESTED.set()
        if first and self._grace > 0:
            threading.Thread(target=self._deadline, args=(signum,), daemon=True).start()
        if not first:  # the handler stays installed: every further signal comes here
            self._exit(signum, "a second signal arrived")

    def _deadline(self, signum: int) -> None:
        if not self._finished.wait(self._grace):
            self._exit(
                signum, f"the run did not stop within {self._grace:.0f} s (train.stop_grace)"
            )

    def _exit(self, signum: int, why: str) -> None:
        name = signal.Signals(signum).name
        exit_now(
            128 + signum, f"stopping without a new checkpoint after {name}: {why}", self._run_dir
        )

    def __exit__(self, *exc):
        self._finished.set()
        STOP_REQUESTED.clear()
        try:
            if self._sockets:  # first, so that a signal landing below cannot strand it
                signal.set_wakeup_fd(self._previous_fd)
        finally:
            try:
                for sig, handler in self._previous.items():
                    signal.signal(sig, handler)
            finally:
                for sock in self._sockets or ():
                    sock.close()
