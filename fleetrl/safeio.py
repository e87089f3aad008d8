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
    loads_yaml(text, *, source, max_depth=64) -> Any      # yaml.safe_load without aliases

The standard library (and PyYAML, imported when used) only: a leaf that any module may import
without pulling in JAX.
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

# One JSON string, escapes included (`\"` does not end it): Friedl's "unrolled loop", with no
# nested repetition to backtrack on. An unterminated string runs to the end of the text: without
# that alternative, each `"` inside it started a scan to the end again (quadratic: a 64 KB
# manifest of `"\"\"...` took 17 s, 1 MiB would take over an hour).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
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


def loads_yaml(text: str, *, source: Any, max_depth: int = MAX_DEPTH) -> Any:
    """``yaml.safe_load(text)`` without aliases and with nesting bounded by ``max_depth``;
    `UnsafeInputError` naming ``source`` for invalid YAML too.

    Why: ``*name`` re-uses an anchored node, so a few hundred bytes of nested aliases expand
    into billions of values when the result is walked (a 455-byte preset ran past 120 s), and
    3,000 nested ``[`` gave a raw RecursionError; fleetrl's YAML files need neither.
    """
    import yaml

    class Loader(yaml.SafeLoader):  # safe tags only: no !!python/...
        depth = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.events.AliasEvent):
                raise yaml.composer.ComposerError(
                    None, None, f"found the alias *{event.anchor}: fleetrl configs do not take "
                    "YAML aliases (write the value out instead)", event.start_mark
                )  # fmt: skip
            self.depth += 1
            if self.depth > max_depth:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {max_depth} levels", event.start_mark
                )
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as error:
        raise UnsafeInputError(f"{source}: invalid YAML: {error}") from None
    except (RecursionError, ValueError) as error:  # integers past Python's digit limit
        raise UnsafeInputError(f"{source}: invalid YAML: {error}") from None
