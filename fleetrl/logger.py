"""Metrics sinks: ``metrics.jsonl`` (always) and TensorBoard event files (optional).

Only the driver writes metrics. A record is a flat JSON object ``{"step", "time", <metric>...}``
where ``step`` counts env steps (per seed) and ``time`` is seconds since the process started;
with several seeds a metric's value is a list, one entry per seed.

A sink that fails (a full disk, a lost mount) is reported once on stderr and switched off:
metrics are a record of training, not a reason to stop it.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import shutil
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fleetrl.safeio import loads_json


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


MAX_RECORD_BYTES = 1 << 20
"""A metrics.jsonl line longer than this is no record of ours (16 seeds of 100 metrics make
~40 KB); on resume it is dropped as damaged without being read whole."""


def _lines(file, limit: int):
    """``(number, line)`` for each line of a binary file, newline stripped; ``line`` is None
    for one longer than ``limit`` bytes, skipped without holding it."""
    number = 0
    while line := file.readline(limit + 1):
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = file.readline(limit)
            yield number, None
        else:
            yield number, line.rstrip(b"\r\n")


def _step(line: bytes | None, source: str) -> float | None:
    """The step of the record on ``line``; None if it is not one of ours (not UTF-8, not a JSON
    object, too deep, no numeric step)."""
    if line is None:
        return None
    try:
        record = loads_json(line.decode(), source=source)
    except ValueError:  # UnicodeDecodeError, UnsafeInputError (not JSON, too deep)
        return None
    step = record.get("step") if isinstance(record, dict) else None
    ok = isinstance(step, int | float) and not isinstance(step, bool) and math.isfinite(step)
    return step if ok else None


def _cut_back(path: Path, step: int) -> None:
    """Rewrite ``path`` keeping the records at or before ``step``, streamed line by line. A
    line that is not a record is dropped with a warning: the last one is a record cut off when
    the process was killed or the disk filled; elsewhere the file is damaged, and a copy of it
    is kept beside it first."""
    tmp = path.with_suffix(".jsonl.tmp")
    bad, bad_count, count = [], 0, 0  # the first bad line numbers (a message), how many
    tmp.unlink(missing_ok=True)  # a link left there is not followed (to overwrite its target)
    try:
        with open(path, "rb") as source, open(tmp, "xb") as kept:
            for count, line in _lines(source, MAX_RECORD_BYTES):
                if line is not None and not line.strip():
                    continue
                record_step = _step(line, f"{path}:{count}")
                if record_step is None:
                    bad_count += 1
                    if len(bad) < 20:
                        bad.append(count)
                elif record_step <= step:
                    kept.write(line + b"\n")
        cut_off = bad_count == 1 and bad == [count]
        if bad_count and not cut_off:
            _keep_damaged_copy(path, bad, bad_count)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a partial copy only takes the space a resume needs
        raise
    if cut_off:
        print(f"fleetrl: warning: {path}:{count}: dropping a cut-off record", file=sys.stderr)


def _keep_damaged_copy(path: Path, bad: list[int], bad_count: int) -> None:
    copy = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        shutil.copyfile(path, copy)
    except OSError:
        copy.unlink(missing_ok=True)
        raise
    lines = f"{bad}" + (f" and {bad_count - len(bad):,} more" if bad_count > len(bad) else "")
    print(
        f"fleetrl: warning: {path}: lines {lines} are not JSON records; dropped (the file as "
        f"it was: {copy.name})",
        file=sys.stderr,
    )


def _open_metrics(path: Path, resume_step: int | None):
    """``metrics.jsonl`` opened to append, cut back to ``resume_step`` first if given."""
    if resume_step is not None and path.exists():
        _cut_back(path, resume_step)
    return open(path, "a", buffering=1)  # line-buffered: one flush per record


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} ({errno.errorcode.get(error.errno, error.errno)})"
    return f"{type(error).__name__}: {error}"


def _warn_off(backend: str, path: Path, error: BaseException) -> None:
    print(
        f"fleetrl: warning: {backend}: cannot write {path}: {_reason(error)}; {backend} "
        "logging is off for the rest of this run, training goes on without it",
        file=sys.stderr,
    )


def _close_quietly(file) -> None:
    """Close a sink already reported as failed (its buffered bytes fail again; that is known)."""
    try:
        file.close()
    except Exception:  # the failure was reported when it happened
        pass


class EventFile:
    """One TensorBoard event file in ``directory``, written in the calling thread.

    Why not tensorboardX's ``SummaryWriter``: in tensorboardX 2.6.x its writer thread dies on the
    first OSError (ENOSPC on a full disk) and its bounded queue then blocks the trainer in
    ``put`` forever. Here errors surface in `add_scalars`, and the events are tensorboardX's,
    wall times aside byte for byte: its ``Event`` and ``Summary`` protos, its file name
    ``events.out.tfevents.<time>.<host>``, a ``file_version`` event first, scalars as
    ``simple_value``, TFRecord framing (length, masked crc32c of the length, data, masked
    crc32c of the data) with its crc32c.

    ``purge_step``: as ``SummaryWriter(purge_step=...)``, a ``file_version`` and a
    ``SessionLog.START`` event at that step, after which TensorBoard drops the points at and
    past it that earlier files hold (the steps a resumed run replays).
    """

    def __init__(self, directory: Path, purge_step: int | None = None):
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        directory.mkdir(parents=True, exist_ok=True)
        self.path, self._file = _create_event_file(directory)
        try:
            events = [Event(wall_time=time.time(), file_version="brain.Event:2")]
            if purge_step is not None:
                start = SessionLog(status=SessionLog.START)
                events += [
                    Event(wall_time=time.time(), step=purge_step, file_version="brain.Event:2"),
                    Event(wall_time=time.time(), step=purge_step, session_log=start),
                ]
            self._write(events)
        except BaseException:
            _close_quietly(self._file)
            raise

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Append one event holding every scalar of ``step`` and flush.

        One event with many values, not one per value as tensorboardX writes them (TensorBoard
        reads both alike): the record framing's crc32c is tensorboardX's pure-Python one, and
        writing 12 scalars took ~580 us one event each, ~290 us so (our 2-core CPU)."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=_tag(t), simple_value=v) for t, v in scalars.items()]
        self._write([Event(wall_time=time.time(), step=step, summary=Summary(value=values))])

    def _write(self, events) -> None:
        from tensorboardX.record_writer import masked_crc32c

        data = bytearray()
        for event in events:
            body = event.SerializeToString()
            header = struct.pack("<Q", len(body))  # TFRecord is little-endian
            data += header + struct.pack("<I", masked_crc32c(header))
            data += body + struct.pack("<I", masked_crc32c(body))
        self._file.write(data)
        self._file.flush()

    def close(self) -> None:
        """Flush, fsync (as tensorboardX's close does) and close; idempotent."""
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()


@functools.cache
def _tag(name: str) -> str:
    """``name`` as tensorboardX cleans a tag (characters TensorBoard refuses become ``_``)."""
    from tensorboardX.summary import _clean_tag

    return _clean_tag(name)


def _create_event_file(directory: Path):
    """A new event file: tensorboardX's name, with ``.1``, ``.2``... when a file of that second
    exists (tensorboardX would truncate it: a resume within the second lost the old curve)."""
    stem = f"events.out.tfevents.{str(time.time())[:10]}.{socket.gethostname()}"
    for n in range(1000):
        path = directory / (f"{stem}.{n}" if n else stem)
        try:
            return path, open(path, "xb")
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "too many event files of this second", str(directory))


class RunLogger:
    """Appends records to ``metrics.jsonl`` and mirrors them to TensorBoard.

    With ``num_seeds > 1`` each seed gets its own event file (``tb/seed_<i>``) so the curves
    overlay under one tag. ``resume_step``: drop records written after that step (they belong
    to work the checkpoint does not hold) and continue the TensorBoard curves from it. Either
    sink that fails is reported once on stderr and switched off; `close` never raises.
    """

    def __init__(
        self, run_dir: Path, num_seeds: int, tensorboard: bool, resume_step: int | None = None
    ):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = None
        try:
            self._file = _open_metrics(self.path, resume_step)
        except OSError as error:
            _warn_off("metrics.jsonl", self.path, error)
        self._event_files: list[EventFile] = []
        if tensorboard:
            tb = Path(run_dir) / "tb"
            dirs = [tb] if num_seeds == 1 else [tb / f"seed_{i}" for i in range(num_seeds)]
            for directory in dirs:
                try:
                    # TensorBoard drops the points at and after a START's step: +1 keeps the
                    # one at the resumed step, which the checkpoint holds (tensorboardX's
                    # purge_step=resume_step lost it)
                    purge = None if resume_step is None else resume_step + 1
                    self._event_files.append(EventFile(directory, purge))
                except Exception as error:  # OSError, or whatever the protobuf path raises
                    self._tensorboard_failed(directory, error)
                    break

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Write one record; ``metrics`` values are scalars or ``[num_seeds]`` arrays."""
        record = {"step": int(step), "time": round(time.time() - PROCESS_START, 4)}
        per_file: list[dict[str, float]] = [{} for _ in self._event_files]
        for name, value in metrics.items():
            array = np.asarray(value, dtype=np.float64).reshape(-1)
            record[name] = _plain(array[0] if array.size == 1 else array)
            if per_file:
                per_seed = np.broadcast_to(array, (len(per_file),))
                for scalars, v in zip(per_file, per_seed, strict=True):
                    if math.isfinite(v):
                        scalars[name] = float(v)
        for event_file, scalars in zip(self._event_files, per_file, strict=True):
            try:
                event_file.add_scalars(int(step), scalars)
            except Exception as error:  # OSError, or whatever the protobuf path raises
                self._tensorboard_failed(event_file.path, error)
                break
        if self._file is not None:
            try:
                self._file.write(json.dumps(record) + "\n")
            except OSError as error:
                self._metrics_failed(error)

    def _tensorboard_failed(self, path: Path, error: BaseException) -> None:
        _warn_off("TensorBoard", path, error)
        for event_file in self._event_files:
            _close_quietly(event_file)
        self._event_files = []

    def _metrics_failed(self, error: BaseException) -> None:
        _warn_off("metrics.jsonl", self.path, error)
        _close_quietly(self._file)
        self._file = None

    def close(self) -> None:
        """Flush and close both sinks; a last failure is reported like any other. Never raises;
        idempotent."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except Exception as error:  # a close that raises would mask how the run ended
                _warn_off("metrics.jsonl", self.path, error)
        for event_file in self._event_files:
            try:
                event_file.close()
            except Exception as error:
                self._tensorboard_failed(event_file.path, error)  # closes the others
                break
        self._event_files = []
