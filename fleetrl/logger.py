"""Metrics sinks: ``metrics.jsonl`` (always) and TensorBoard (tensorboardX, optional).

Only the driver writes metrics. A record is a flat JSON object ``{"step", "time", <metric>...}``
where ``step`` counts env steps (per seed) and ``time`` is seconds since the process started;
with several seeds a metric's value is a list, one entry per seed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def process_start_time() -> float:
    """Wall-clock time at which this process started (Linux /proc; else first call)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - start_ticks / ticks)
    except (OSError, ValueError, IndexError):
        return _FALLBACK_START


_FALLBACK_START = time.time()
PROCESS_START = process_start_time()


def _plain(value: Any) -> Any:
    """JSON-safe value: arrays to lists, NaN/Inf to null."""
    if isinstance(value, np.ndarray | np.generic) or hasattr(value, "__array__"):
        value = np.asarray(value).tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records_until(path: Path, step: int) -> list[str]:
    """The lines of ``path`` whose record is at or before ``step``. A line that is not JSON
    is dropped with a warning: the last one is a record cut off when the process was killed;
    elsewhere the file is damaged, and a copy of it is kept beside it first."""
    lines = path.read_text().splitlines()
    kept, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            bad.append(number)
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    if bad == [len(lines)]:
        print(f"fleetrl: warning: {path}:{bad[0]}: dropping a cut-off record", file=sys.stderr)
    elif bad:
        copy = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copyfile(path, copy)
        print(
            f"fleetrl: warning: {path}: lines {bad} are not JSON records; dropped (the file "
            f"as it was: {copy.name})",
            file=sys.stderr,
        )
    return kept


class RunLogger:
    """Appends records to ``metrics.jsonl`` and mirrors them to TensorBoard.

    With ``num_seeds > 1`` each seed gets its own TensorBoard writer (``tb/seed_<i>``) so the
    curves overlay under one tag. ``resume_step``: drop records written after that step (they
    belong to work the checkpoint does not hold) and continue the TensorBoard curves from it.
    """

    def __init__(
        self, run_dir: Path, num_seeds: int, tensorboard: bool, resume_step: int | None = None
    ):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = _records_until(self.path, resume_step)
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", buffering=1)
        self._writers = []
        if tensorboard:
            from tensorboardX import SummaryWriter

            tb = Path(run_dir) / "tb"
            dirs = [tb] if num_seeds == 1 else [tb / f"seed_{i}" for i in range(num_seeds)]
            self._writers = [SummaryWriter(str(d), purge_step=resume_step) for d in dirs]

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Write one record; ``metrics`` values are scalars or ``[num_seeds]`` arrays."""
        record = {"step": int(step), "time": round(time.time() - PROCESS_START, 4)}
        for name, value in metrics.items():
            array = np.asarray(value, dtype=np.float64).reshape(-1)
            record[name] = _plain(array[0] if array.size == 1 else array)
            if self._writers:
                per_writer = np.broadcast_to(array, (len(self._writers),))
                for writer, v in zip(self._writers, per_writer, strict=True):
                    if math.isfinite(v):
                        writer.add_scalar(name, float(v), int(step))
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        for writer in self._writers:
            writer.close()
        self._writers = []
