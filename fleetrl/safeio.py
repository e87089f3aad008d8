"""Reading files a run directory holds without trusting them: bounded sizes, bounded JSON nesting.

A run directory may come from elsewhere (a colleague, a download), so its JSON files are input,
not our own output: a 2 GiB ``manifest.json`` must not be read whole before being refused, and
``[[[[...]]]]`` must not surface as a ``RecursionError`` from inside the json module (case S4 of
the reliability list: "size limits enforced before allocation"). Both refusals raise
`UnsafeInputError`, a ``ValueError``, naming the file.

The whole API::

    read_bounded(path, limit, what) -> bytes              # stat first, refuse > limit bytes
    loads_json(data, *, source, max_depth=64) -> Any      # json.loads with a nesting bound
    read_json(path, limit, what, *, max_depth=64) -> Any  # the two together

Standard library only: a leaf that any module may import without pulling in JAX.
"""

from __future__ import annotations

import json
import os
import re
import stat
from itertools import accumulate
from pathlib import Path
from typing import Any

MAX_DEPTH = 64
"""Default nesting bound for JSON: fleetrl's own files nest at most 4 deep (meta.json's
counters); CPython's C scanner recurses once per level and fails near 1000 levels."""

# One JSON string, escapes included (`\"` does not end it): Friedl's "unrolled loop", linear,
# with no nested repetition to backtrack on.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_CHUNK = 1 << 16


class UnsafeInputError(ValueError):
    """A file or text refused before or instead of parsing it: too large, too deeply nested,
    not a regular file, or not JSON. The message names the file (or source) and the limit."""


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``, refused with `UnsafeInputError` when larger than ``limit`` bytes.

    The size comes from ``fstat`` of the opened file, so nothing is read from a file that is too
    large, and at most ``limit + 1`` bytes are read if it grows meanwhile. A FIFO or device is
    refused (opening is non-blocking, so a FIFO without a writer cannot hang the reader).
    ``what`` says what the file is in the message ("manifest", "metrics line", ...). Missing or
    unreadable files raise the usual ``OSError`` (``FileNotFoundError``, ``PermissionError``).
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeInputError(f"{path}: {what} is not a regular file")
        if info.st_size > limit:
            raise UnsafeInputError(_too_large(path, what, info.st_size, limit))
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew between the stat and the read
        raise UnsafeInputError(_too_large(path, what, len(data), limit, "at least "))
    return data


def _too_large(path: Path, what: str, size: int, limit: int, qualifier: str = "") -> str:
    return (
        f"{path}: {what} of {qualifier}{size:,} bytes exceeds the limit of {limit:,} bytes; "
        "refused without reading it (not a file fleetrl writes at that size)"
    )


def _depth_exceeds(text: str, max_depth: int) -> bool:
    # Strings out, then everything but brackets out (both at regex speed), then a running sum
    # in chunks, so a bracket bomb stops at its first chunk. Exact for valid JSON; on invalid
    # JSON (an unterminated string) it may overcount, which refuses text json refuses anyway.
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if len(brackets) <= max_depth:
        return False
    depth = 0
    for start in range(0, len(brackets), _CHUNK):
        chunk = brackets[start : start + _CHUNK]
        levels = list(accumulate(map(_STEP.__getitem__, chunk), initial=depth))
        if max(levels) > max_depth:
            return True
        depth = levels[-1]
    return False


def loads_json(data: str | bytes | bytearray, *, source: Any, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(data)`` that refuses nesting deeper than ``max_depth`` and non-JSON.

    ``source`` (a path or a description such as ``"metrics.jsonl:12"``) names the input in the
    message. Bytes are decoded as ``json.loads`` would (UTF-8/16/32, detected); Python's dialect
    is kept, so ``NaN`` and ``Infinity`` parse. Raises `UnsafeInputError` for too deep, invalid
    text or encoding, and integers past Python's digit limit; never ``RecursionError``.
    """
    if isinstance(data, bytes | bytearray):
        try:
            data = bytes(data).decode(json.detect_encoding(data))
        except UnicodeDecodeError as e:
            raise UnsafeInputError(f"{source}: not JSON: not valid text ({e.reason})") from None
    if _depth_exceeds(data, max_depth):
        raise UnsafeInputError(
            f"{source}: JSON nested deeper than {max_depth} levels; refused without parsing it"
        )
    try:
        return json.loads(data)
    except RecursionError:  # only when max_depth was raised near the interpreter's limit
        raise UnsafeInputError(f"{source}: JSON nested too deeply to parse") from None
    except ValueError as e:  # JSONDecodeError, and int digits past sys.get_int_max_str_digits
        raise UnsafeInputError(f"{source}: not JSON ({e})") from None


def read_json(
    path: str | os.PathLike, limit: int, what: str = "file", *, max_depth: int = MAX_DEPTH
) -> Any:
    """`read_bounded` then `loads_json`: the parsed content of a JSON file of at most ``limit``
    bytes. Raises `UnsafeInputError` (too large, too deep, not JSON) or ``OSError``."""
    return loads_json(read_bounded(path, limit, what), source=path, max_depth=max_depth)
