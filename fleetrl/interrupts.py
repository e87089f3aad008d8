"""Guards around the training loop: a watchdog for compiled calls that never return, and
SIGINT/SIGTERM handling that lets the loop checkpoint before it stops."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from fleetrl import checkpoint


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
        self._thread: threading.Thread | None = None

    def start(self, timeout: float | None = None) -> None:
        if self.timeout <= 0:
            return
        self._done.clear()
        limit = timeout or self.timeout
        self._thread = threading.Thread(target=self._watch, args=(limit,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()

    def _watch(self, limit: float) -> None:
        if self._done.wait(limit):
            return
        latest = checkpoint.latest(self.run_dir)
        sys.stderr.write(
            f"\nfleetrl: error: a compiled training call has not returned after {limit:.0f} s "
            "(train.call_timeout); the process is stopped instead of hanging. Either one logging "
            "interval takes longer than that (slow envs or networks: lower train.log_every or "
            "raise train.call_timeout), or XLA:CPU wedged, as it occasionally does with several "
            f"vmapped seeds. Last committed checkpoint: {latest or 'none'}. Continue with: "
            f"fleetrl train --resume {self.run_dir}\n"
        )
        sys.stderr.flush()
        os._exit(3)


class StopSignals:
    """First SIGINT/SIGTERM: ask the loop to checkpoint and stop. Second: default action (exit
    at once; committed checkpoints are never half-written, see checkpoint.save)."""

    def __init__(self, on_signal=None):
        self.received: int | None = None
        self._on_signal = on_signal
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        for sig in self._previous:
            signal.signal(sig, signal.SIG_DFL)
        if self._on_signal:
            self._on_signal(signum)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
