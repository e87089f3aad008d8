"""Atomic, verified checkpoints of a training state.

Layout: ``<run_dir>/checkpoints/step_<N>/`` holding ``state.msgpack`` (flax msgpack of the state
pytree), ``meta.json`` (counters, config hash, ...) and ``manifest.json`` (format, sizes, sha256).
A checkpoint is written into a ``step_<N>.tmp-<hex>`` directory and renamed into place only once
every file is on disk, so a crash never leaves a half-written ``step_<N>``; a save that does not
fit on the disk is refused before anything is written, and one that fails midway (ENOSPC, quota,
permissions) leaves the last committed checkpoint as it was (`CheckpointWriteError`).

Loading reads nothing it has not bounded first (case S4 of the reliability list): the manifest
and meta.json have fixed limits, every listed file is compared by ``stat`` with the manifest
before it is read, and the state may not declare more bytes than the target pytree can hold.
Then it checks the format version (`MIN_FORMAT_VERSION` .. `FORMAT_VERSION`; older ones pass
through `MIGRATIONS`), the checksums, and the shape/dtype of every leaf against the target.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import operator
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

from fleetrl import safeio

FORMAT = "fleetrl-checkpoint"
FORMAT_VERSION = 1
"""The format this build writes, and the newest it reads."""
MIN_FORMAT_VERSION = 1
"""The oldest format this build reads (through `MIGRATIONS`)."""
STATE_FILE = "state.msgpack"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"

MANIFEST_LIMIT = 1 << 20
"""Bytes. The manifest fleetrl writes lists two files in ~0.4 KB; 1 MiB leaves room for formats
that list many shards, and still bounds what a hostile one costs to read and parse."""
META_LIMIT = 16 << 20
"""Bytes. meta.json holds counters, the run's config and per-seed records (~2.5 KB for one seed,
tens of KB for thousands of seeds); 16 MiB is far past those and still cheap to read and parse."""

Migration = Callable[[dict, dict[str, bytes]], tuple[dict, dict[str, bytes]]]
MIGRATIONS: dict[int, Migration] = {}
"""``MIGRATIONS[v](manifest, files) -> (manifest, files)`` turns a verified checkpoint of format
``v`` (its manifest and the bytes of the files it lists; meta.json alone when `read_meta` reads
it) into format ``v + 1``. A format bump adds one entry here and a golden checkpoint under
``tests/data/golden/v<new>/``, and keeps `MIN_FORMAT_VERSION`; the manifest's ``files`` table
(sha256 and bytes per file) is what every version keeps, so reading and verifying stay one path
(the pattern of RLlib's backward_compat tests)."""

_STEP_RE = re.compile(r"step_(\d+)")
_READ_CHUNK = 1 << 20  # hash while reading, one MiB at a time
# msgpack framing of one array leaf in flax's encoding: ext header (<= 6 bytes), a 3-tuple of
# shape (<= 5 + 9 per dimension), dtype name (<= 16) and bin header (<= 5); 64 is room to spare.
_LEAF_FRAMING = 64
# Room for state layouts that an `upgrade` or a migration maps onto the target (such as the
# optimizer state from before clip_or_skip), and small against any network.
_STATE_SLACK = 64 << 10
_DISK_MARGIN_BLOCKS = 4  # the temp dir, its entry, a new checkpoints/ dir, filesystem metadata


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, from another format, or does not match the target."""


class CheckpointDamagedError(CheckpointError):
    """The checkpoint's bytes are incomplete or altered (manifest, sizes, checksums, decoding):
    unlike a newer format or another run's shapes, an older checkpoint of the run may do."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, permissions). ``errno`` is the
    cause's (ENOSPC when refused before writing); the message names the checkpoints folder, the
    bytes needed and free, and the last committed checkpoint, which is left intact."""

    def __str__(self) -> str:
        return str(self.strerror)


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


# ------------------------------------------------------------------------------------- saving


def save(run_dir: str | Path, step: int, state: Any, meta: dict, keep_last: int = 3) -> Path:
    """Write ``state`` and ``meta`` atomically to ``<run_dir>/checkpoints/step_<step>``.

    Files are fsynced, the manifest is written last and the directory renamed into place, so
    readers see either the complete checkpoint or none. An existing ``step_<step>`` is replaced.
    Afterwards only the newest ``keep_last`` checkpoints are kept (``keep_last <= 0`` keeps all);
    older ones are pruned only once the new one is committed. Returns the committed directory.

    Raises `CheckpointWriteError` (an ``OSError``) without creating anything when the files do
    not fit in the free space, and after removing the temp dir when a write fails.
    """
    step = operator.index(step)
    if isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    files = _encode(step, state, meta)
    ckpt_dir = Path(run_dir) / "checkpoints"
    needed = _check_space(ckpt_dir, step, [len(data) for data in files.values()])
    final = _write_and_commit(ckpt_dir, step, files, needed)
    if keep_last > 0:
        for _, old in _committed(ckpt_dir)[:-keep_last]:
            if old != final:  # saving an older step than existing ones must not delete itself
                _remove_dir(old)
        _fsync_dir(ckpt_dir)
    return final


def _encode(step: int, state: Any, meta: dict) -> dict[str, bytes]:
    """The files of a checkpoint, manifest last (the order they are written in)."""
    # Serialize before touching the disk: an unserializable state or meta leaves nothing behind.
    files = {
        STATE_FILE: serialization.to_bytes(state),
        META_FILE: json.dumps(meta, indent=2, sort_keys=True).encode(),
    }
    if len(files[META_FILE]) > META_LIMIT:  # `load` would refuse it: never write one
        raise ValueError(f"meta: {len(files[META_FILE]):,} bytes as JSON; at most {META_LIMIT:,}")
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
    return files | {MANIFEST_FILE: json.dumps(manifest, indent=2).encode()}


def _check_space(ckpt_dir: Path, step: int, sizes: list[int]) -> int:
    """The bytes the files take on disk; CheckpointWriteError (ENOSPC) if they do not fit."""
    probe = ckpt_dir
    while not probe.exists() and probe != probe.parent:  # the folder may not exist yet
        probe = probe.parent
    try:
        block = os.statvfs(probe).f_frsize if hasattr(os, "statvfs") else 4096
        free = shutil.disk_usage(probe).free
    except OSError:  # cannot tell: let the write itself succeed or fail
        return sum(sizes)
    block = block or 4096
    # Files take whole blocks; +1/512 for the indirect or extent blocks of large files (ext2/3
    # map 1,024 blocks per indirect block) and a few blocks for the directories.
    on_disk = sum(-(-size // block) * block for size in sizes)
    needed = on_disk + on_disk // 512 + _DISK_MARGIN_BLOCKS * block
    if needed > free:
        raise _write_error(ckpt_dir, step, needed, "not enough free space", errno.ENOSPC)
    return needed


def _write_and_commit(ckpt_dir: Path, step: int, files: dict[str, bytes], needed: int) -> Path:
    """Write ``files`` into a temp dir and rename it to ``step_<step>``; on failure remove the
    temp dir and put back a replaced ``step_<step>``."""
    final = ckpt_dir / f"step_{step}"
    tmp = ckpt_dir / f"step_{step}.tmp-{uuid.uuid4().hex}"
    aside = None
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        for name, data in files.items():
            _write_file(tmp / name, data)
        _fsync_dir(tmp)
        if final.exists():
            # Directories cannot be replaced atomically; park the old one under a name that
            # clean_stale restores if we die before the new one is in place.
            aside = ckpt_dir / f"step_{step}.old-{uuid.uuid4().hex}"
            os.replace(final, aside)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
    except BaseException as error:
        if aside is not None and not final.exists():
            try:  # put the previous copy back so the step is not lost
                os.replace(aside, final)
            except OSError:
                pass  # clean_stale restores it on the next start
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            raise _write_error(ckpt_dir, step, needed, _describe(error), error.errno) from error
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return final


def _describe(error: OSError) -> str:
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or error}{where}"


def _write_error(
    ckpt_dir: Path, step: int, needed: int, cause: str, code: int | None
) -> CheckpointWriteError:
    try:
        free = f"{shutil.disk_usage(ckpt_dir if ckpt_dir.exists() else ckpt_dir.parent).free:,}"
    except OSError:
        free = "an unknown number of"
    try:
        last = latest(ckpt_dir.parent)
        kept = f"the last committed checkpoint {last} is intact" if last else "none was committed"
    except OSError:  # the folder cannot even be listed
        kept = "committed checkpoints, if any, are untouched"
    message = (
        f"could not write checkpoint step_{step} in {ckpt_dir}: {cause}; it needs {needed:,} "
        f"bytes on disk, {free} bytes are free; {kept}"
    )
    return CheckpointWriteError(code, message)


# ------------------------------------------------------------------------ finding and cleaning


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


# ------------------------------------------------------------------------------------ loading


def _state_bound(expected: Any) -> tuple[int, int]:
    """``(bound, raw)``: the most bytes a msgpack state for ``expected`` (a state dict) can
    take, and the bytes of its arrays alone."""
    # Why the target bounds the read: a state file larger than this holds more or larger
    # arrays than the target, so `_check_tree` would refuse it after decoding anyway; refusing
    # it from the manifest's size loses nothing and keeps a 2 GiB file (2.3 GB RSS when read
    # whole) from being read at all. A constant could not do: a DQN replay buffer can be GBs.
    raw, framing = 0, _STATE_SLACK
    stack: list[tuple[str, Any]] = [("", expected)]
    while stack:
        key, node = stack.pop()
        framing += 5 + len(key.encode())  # the key as a msgpack str, its map's header
        if isinstance(node, dict):
            stack.extend((str(k), v) for k, v in node.items())
            continue
        size = _leaf_nbytes(node)
        raw += size
        # flax splits arrays over 2**30 bytes into chunks, each its own leaf (MAX_CHUNK_SIZE).
        framing += (_LEAF_FRAMING + 9 * len(getattr(node, "shape", ()))) * (1 + (size >> 30))
    return raw + framing, raw


def _leaf_nbytes(leaf: Any) -> int:
    shape = getattr(leaf, "shape", None)
    if shape is None:  # a Python scalar (msgpack: <= 9 bytes), None, or a string
        return len(leaf) if isinstance(leaf, str | bytes) else 9
    try:
        itemsize = np.dtype(leaf.dtype).itemsize
    except TypeError:  # JAX's extended dtypes (typed PRNG keys)
        itemsize = getattr(leaf.dtype, "itemsize", 16)
    return math.prod(shape) * itemsize


def _read_manifest(path: Path) -> dict:
    """The manifest of checkpoint ``path``, size- and depth-bounded, with its version checked."""
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        raise CheckpointDamagedError(
            f"{mpath}: manifest missing; not a complete fleetrl checkpoint"
        )
    try:
        manifest = safeio.read_json(mpath, MANIFEST_LIMIT, "manifest")
    except safeio.UnsafeInputError as e:  # too large, too deep, not JSON: names the file
        raise CheckpointDamagedError(str(e)) from None
    except OSError as e:  # permissions, I/O: not damage, so no fallback to an older one
        raise CheckpointError(f"{mpath}: cannot read the manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath}: not a {FORMAT} manifest")
    _check_version(mpath, manifest)
    if not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{mpath}: 'files' must map file names to sha256 and bytes")
    return manifest


def _check_version(mpath: Path, manifest: dict) -> None:
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{mpath}: format_version missing or not an int: {version!r}")
    reads = f"this build ({_version()}) reads v{MIN_FORMAT_VERSION}..v{FORMAT_VERSION}"
    writer = f"written by fleetrl {manifest.get('fleetrl_version', '?')} in format v{version}"
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{mpath}: {writer}; {reads}: upgrade fleetrl")
    if version >= MIN_FORMAT_VERSION:
        return
    if version < 1:
        raise CheckpointError(
            f"{mpath}: written in format v{version}, which no fleetrl release wrote; {reads}"
        )
    raise CheckpointError(  # once a format bump drops an old version's migration
        f"{mpath}: {writer}; {reads}: load it with an older fleetrl release that reads "
        f"v{version}, save it again, and load that"
    )


def _read_listed(path: Path, listed: dict, state_bound: tuple[int, int]) -> dict[str, bytes]:
    """The files ``listed`` (the manifest's table), each size-checked before and sha256-checked
    while read."""
    mpath = path / MANIFEST_FILE
    budget, raw = state_bound
    out = {}
    for name, entry in listed.items():
        # Names come from the file: refuse anything that could point outside the checkpoint.
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{mpath}: invalid file name {name!r}")
        if not isinstance(entry, dict) or not {"sha256", "bytes"} <= entry.keys():
            raise CheckpointError(f"{mpath}: entry for {name!r} lacks sha256/bytes")
        declared = entry["bytes"]
        if not isinstance(declared, int) or isinstance(declared, bool) or declared < 0:
            raise CheckpointError(f"{mpath}: bytes of {name!r} is not a size: {declared!r}")
        fpath = path / name
        if name == META_FILE and declared > META_LIMIT:
            raise CheckpointError(
                f"{fpath}: the manifest declares {declared:,} bytes; meta.json may hold at "
                f"most {META_LIMIT:,}: not a checkpoint fleetrl writes"
            )
        if name != META_FILE:  # the state (and any other payload) shares the target's bound
            if declared > budget:
                raise CheckpointError(
                    f"{fpath}: the manifest declares {declared:,} bytes; the target this run "
                    f"builds holds at most {budget:,} ({raw:,} bytes of arrays plus msgpack "
                    "framing): a checkpoint of another configuration (more seeds, larger "
                    "networks or replay buffer); refused without reading it"
                )
            budget -= declared
        out[name] = _read_checked(fpath, declared, entry["sha256"])
    return out


def _read_checked(fpath: Path, declared: int, sha256: Any) -> bytearray:
    """The bytes of ``fpath``: sized by ``fstat`` before reading, hashed while read."""
    try:  # non-blocking, so a FIFO planted under a listed name cannot hang the reader
        fd = os.open(fpath, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise CheckpointDamagedError(f"{fpath}: listed in the manifest but missing") from None
    except OSError as e:
        raise CheckpointError(f"{fpath}: cannot be read ({e})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointDamagedError(f"{fpath}: listed in the manifest, not a regular file")
        if info.st_size != declared:
            raise CheckpointDamagedError(
                f"{fpath}: expected {declared} bytes, found {info.st_size} bytes (truncated "
                "or incomplete write)"
            )
        data, digest, got = bytearray(declared), hashlib.sha256(), 0
        view = memoryview(data)
        while got < declared:
            n = f.readinto(view[got : got + _READ_CHUNK])
            if not n:
                break
            digest.update(view[got : got + n])
            got += n
        view.release()
        if got != declared or f.read(1):
            raise CheckpointDamagedError(f"{fpath}: changed size while being read")
    if digest.hexdigest() != sha256:
        raise CheckpointDamagedError(
            f"{fpath}: checksum mismatch (sha256 differs from the manifest); the file was "
            "altered or corrupted"
        )
    return data


def _read_verified(
    path: Path, state_bound: tuple[int, int], names: frozenset = frozenset({STATE_FILE, META_FILE})
) -> dict[str, bytes]:
    """Contents of the files listed in the manifest, verified and migrated to `FORMAT_VERSION`:
    all of them, or (``names`` without the state) only those of ``names``."""
    manifest = _read_manifest(path)
    listed = manifest["files"]
    if STATE_FILE not in names:  # meta only: the state is neither read nor migrated
        listed = {name: entry for name, entry in listed.items() if name in names}
    files = _read_listed(path, listed, state_bound)
    for version in range(manifest["format_version"], FORMAT_VERSION):
        if version not in MIGRATIONS:
            raise CheckpointError(f"{path}: this build has no migration from format v{version}")
        manifest, files = MIGRATIONS[version](manifest, files)
    if not names <= files.keys():
        raise CheckpointError(
            f"{path / MANIFEST_FILE}: 'files' must list {' and '.join(sorted(names))}"
        )
    return files


def _decode_meta(path: Path, data: bytes) -> dict:
    mpath = path / META_FILE
    try:
        meta = safeio.loads_json(data, source=mpath)
    except safeio.UnsafeInputError as e:
        raise CheckpointDamagedError(str(e)) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{mpath}: expected a JSON object, got {type(meta).__name__}")
    return meta


def read_meta(path: str | Path) -> dict:
    """The ``meta.json`` of the checkpoint dir ``path``, verified against the manifest (format,
    size, sha256) without reading the state. Raises as `load` does."""
    path = Path(path)
    return _decode_meta(path, _read_verified(path, (0, 0), frozenset({META_FILE}))[META_FILE])


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
    of ``jax.ShapeDtypeStruct`` leaves); it also bounds the bytes read: a state file declaring
    more than the target's arrays plus msgpack framing is refused before it is read.
    ``upgrade(saved, expected)``, if given, may rewrite the decoded state dict of an older
    layout into the expected one (both as state dicts) before it is checked. Restored leaves
    are read-only numpy arrays. Raises CheckpointError (for damage: CheckpointDamagedError),
    naming the offending file, on any mismatch or damage.
    """
    path = Path(path)
    expected = serialization.to_state_dict(target)
    files = _read_verified(path, _state_bound(expected))
    spath, meta = path / STATE_FILE, _decode_meta(path, files[META_FILE])
    try:
        # msgpack_restore only builds dicts, lists, scalars and numeric ndarrays (object dtypes
        # are refused by numpy), so a hostile file cannot execute code here.
        restored = serialization.msgpack_restore(files[STATE_FILE])
    except Exception as e:
        raise CheckpointDamagedError(f"{spath}: cannot decode msgpack state ({e})") from None
    del files  # the encoded state: do not hold it twice while restoring
    if upgrade is not None:
        restored = upgrade(restored, expected)
    _check_tree(restored, expected, "", spath)
    try:
        state = serialization.from_state_dict(target, restored)
    except Exception as e:
        raise CheckpointError(f"{spath}: does not fit the target ({e})") from None
    return state, meta
