"""Atomic, verified checkpoints of a training state.

Layout: ``<run_dir>/checkpoints/step_<N>/`` holding ``state.msgpack`` (flax msgpack of the state
pytree), ``meta.json`` (counters, config hash, ...) and ``manifest.json`` (format, sizes, sha256).
A checkpoint is written into a ``step_<N>.tmp-<hex>`` directory and renamed into place only once
every file is on disk, so a crash never leaves a half-written ``step_<N>``. Loading checks the
manifest, the checksums and the shape/dtype of every leaf against the target before restoring.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

FORMAT = "fleetrl-checkpoint"
FORMAT_VERSION = 1
STATE_FILE = "state.msgpack"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"

_STEP_RE = re.compile(r"step_(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, from a newer format, or does not match the target."""


class CheckpointDamagedError(CheckpointError):
    """The checkpoint's bytes are incomplete or altered (manifest, sizes, checksums, decoding):
    unlike a newer format or another run's shapes, an older checkpoint of the run may do."""


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory holding the entry is flushed. Windows cannot
    # open a directory for fsync, and its renames are journaled anyway.
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _version() -> str:
    try:
        from fleetrl import __version__
    except ImportError:
        return "unknown"
    return str(__version__)


def _committed(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Committed ``step_<N>`` dirs, sorted by N (numerically, so step_900 < step_1000)."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _STEP_RE.fullmatch(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _remove_dir(path: Path) -> None:
    # Rename first so that a crash during rmtree leaves a `.tmp-` dir (swept by clean_stale)
    # rather than a committed-looking step dir with files missing.
    doomed = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def save(run_dir: str | Path, step: int, state: Any, meta: dict, keep_last: int = 3) -> Path:
    """Write ``state`` and ``meta`` atomically to ``<run_dir>/checkpoints/step_<step>``.

    Files are fsynced, the manifest is written last and the directory renamed into place, so
    readers see either the complete checkpoint or none. An existing ``step_<step>`` is replaced.
    Afterwards only the newest ``keep_last`` checkpoints are kept (``keep_last <= 0`` keeps all).
    Returns the committed directory.
    """
    step = operator.index(step)
    if isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    # Serialize before touching the disk: an unserializable state or meta leaves nothing behind.
    files = {
        STATE_FILE: serialization.to_bytes(state),
        META_FILE: json.dumps(meta, indent=2, sort_keys=True).encode(),
    }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fleetrl_version": _version(),
        "step": step,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in files.items()
        },
    }
    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step}"
    tmp = ckpt_dir / f"step_{step}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    aside = None
    try:
        for name, data in files.items():
            _write_file(tmp / name, data)
        _write_file(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
        _fsync_dir(tmp)
        if final.exists():
            # Directories cannot be replaced atomically; park the old one under a name that
            # clean_stale restores if we die before the new one is in place.
            aside = ckpt_dir / f"step_{step}.old-{uuid.uuid4().hex}"
            os.replace(final, aside)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
    except BaseException:
        if aside is not None and not final.exists():
            os.replace(aside, final)  # put the previous copy back so the step is not lost
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    if keep_last > 0:
        for _, old in _committed(ckpt_dir)[:-keep_last]:
            if old != final:  # saving an older step than existing ones must not delete itself
                _remove_dir(old)
        _fsync_dir(ckpt_dir)
    return final


def latest(run_dir: str | Path) -> Path | None:
    """The committed checkpoint with the highest step in ``run_dir``, or None if there is none."""
    found = _committed(Path(run_dir) / "checkpoints")
    return found[-1][1] if found else None


def committed(run_dir: str | Path) -> list[Path]:
    """The committed checkpoints of ``run_dir``, newest first."""
    return [path for _, path in reversed(_committed(Path(run_dir) / "checkpoints"))]


def set_aside(path: str | Path) -> Path:
    """Rename a damaged checkpoint to ``step_<N>.damaged-<hex>``: no longer committed (so a
    later save of a lower step cannot be shadowed by it), kept for inspection."""
    path = Path(path)
    target = path.with_name(f"{path.name}.damaged-{uuid.uuid4().hex[:8]}")
    os.replace(path, target)
    _fsync_dir(path.parent)
    return target


def clean_stale(run_dir: str | Path) -> None:
    """Remove leftovers of a crash mid-save: ``*.tmp-*`` dirs, and restore a parked old copy.

    Call before ``latest`` when resuming.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.iterdir():
        if ".tmp-" in p.name:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        elif ".old-" in p.name and p.is_dir():
            # A step dir parked by save() while being replaced: if the new copy never landed,
            # the parked one is the only complete copy of that step, so put it back.
            final = ckpt_dir / p.name.split(".old-")[0]
            if _STEP_RE.fullmatch(final.name) and not final.exists():
                os.replace(p, final)
            else:
                shutil.rmtree(p, ignore_errors=True)
    _fsync_dir(ckpt_dir)


def _read_verified(path: Path) -> dict[str, bytes]:
    """Contents of the files listed in the manifest, after checking format, sizes and sha256."""
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        raise CheckpointDamagedError(
            f"{mpath}: manifest missing; not a complete fleetrl checkpoint"
        )
    try:
        manifest = json.loads(mpath.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointDamagedError(f"{mpath}: manifest is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath}: not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{mpath}: format_version missing or not an int: {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{mpath}: written by fleetrl {manifest.get('fleetrl_version', '?')} in format "
            f"v{version}; this build ({_version()}) reads <= v{FORMAT_VERSION}: upgrade fleetrl"
        )
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not {STATE_FILE, META_FILE} <= listed.keys():
        raise CheckpointError(f"{mpath}: 'files' must list {STATE_FILE} and {META_FILE}")
    out = {}
    for name, entry in listed.items():
        # Names come from the file: refuse anything that could point outside the checkpoint.
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{mpath}: invalid file name {name!r}")
        fpath = path / name
        if not isinstance(entry, dict) or not {"sha256", "bytes"} <= entry.keys():
            raise CheckpointError(f"{mpath}: entry for {name!r} lacks sha256/bytes")
        if not fpath.is_file():
            raise CheckpointDamagedError(f"{fpath}: listed in the manifest but missing")
        data = fpath.read_bytes()
        if len(data) != entry["bytes"]:
            raise CheckpointDamagedError(
                f"{fpath}: expected {entry['bytes']} bytes, found {len(data)} bytes (truncated "
                "or incomplete write)"
            )
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckpointDamagedError(
                f"{fpath}: checksum mismatch (sha256 differs from the manifest); the file was "
                "altered or corrupted"
            )
        out[name] = data
    return out


def _check_tree(saved: Any, expected: Any, where: str, fpath: Path) -> None:
    """Raise CheckpointError at the first leaf whose structure, shape or dtype differs."""
    name = where or "<root>"
    if isinstance(expected, dict):
        if not isinstance(saved, dict):
            raise CheckpointError(f"{fpath}: {name}: a leaf in checkpoint, a subtree expected")
        missing = sorted(map(str, expected.keys() - saved.keys()))
        extra = sorted(map(str, saved.keys() - expected.keys()))
        if missing or extra:
            raise CheckpointError(
                f"{fpath}: {name}: keys differ; missing from checkpoint: {missing}, "
                f"not in target: {extra}"
            )
        for k in expected:
            _check_tree(saved[k], expected[k], f"{where}/{k}" if where else str(k), fpath)
    elif isinstance(saved, dict):
        raise CheckpointError(f"{fpath}: {name}: a subtree in checkpoint, a leaf expected")
    elif hasattr(expected, "shape") and hasattr(expected, "dtype"):
        if not (hasattr(saved, "shape") and hasattr(saved, "dtype")):
            raise CheckpointError(
                f"{fpath}: {name}: {type(saved).__name__} in checkpoint, array expected"
            )
        if tuple(saved.shape) != tuple(expected.shape):
            raise CheckpointError(
                f"{fpath}: {name}: shape {tuple(saved.shape)} in checkpoint, "
                f"{tuple(expected.shape)} expected"
            )
        if np.dtype(saved.dtype) != np.dtype(expected.dtype):
            raise CheckpointError(
                f"{fpath}: {name}: dtype {saved.dtype} in checkpoint, {expected.dtype} expected"
            )


def load(path: str | Path, target: Any, upgrade=None) -> tuple[Any, dict]:
    """Verify and read the checkpoint dir ``path``; returns ``(state, meta)``.

    ``target`` gives the pytree structure, shapes and dtypes expected (a concrete state or one
    of ``jax.ShapeDtypeStruct`` leaves). ``upgrade(saved, expected)``, if given, may rewrite the
    decoded state dict of an older layout into the expected one (both as state dicts) before
    it is checked. Restored leaves are read-only numpy arrays. Raises CheckpointError (for
    damage: CheckpointDamagedError), naming the offending file, on any mismatch or damage.
    """
    path = Path(path)
    files = _read_verified(path)
    spath, mpath = path / STATE_FILE, path / META_FILE
    try:
        meta = json.loads(files[META_FILE])
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointDamagedError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{mpath}: expected a JSON object, got {type(meta).__name__}")
    try:
        # msgpack_restore only builds dicts, lists, scalars and numeric ndarrays (object dtypes
        # are refused by numpy), so a hostile file cannot execute code here.
        restored = serialization.msgpack_restore(files[STATE_FILE])
    except Exception as e:
        raise CheckpointDamagedError(f"{spath}: cannot decode msgpack state ({e})") from None
    expected = serialization.to_state_dict(target)
    if upgrade is not None:
        restored = upgrade(restored, expected)
    _check_tree(restored, expected, "", spath)
    try:
        state = serialization.from_state_dict(target, restored)
    except Exception as e:
        raise CheckpointError(f"{spath}: does not fit the target ({e})") from None
    return state, meta
