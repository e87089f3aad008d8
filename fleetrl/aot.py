"""Programs kept on disk as StableHLO, keyed by what they were built from.

JAX's persistent compilation cache saves XLA's work, but it is keyed by the lowered program, so
every run still traces and lowers its programs in Python before it can look one up: on our
2-core CPU that was ~0.85 s of a ~2.5 s warm-cache run of ``fleetrl train ppo-cartpole``. Here
each program is also stored in JAX's portable export format (``jax.export``, StableHLO, no native
code) under a key made of the run's configuration, the argument shapes, fleetrl's own source and
the versions of the libraries that shape the program. A repeated run deserializes it instead of
tracing our Python, and XLA's compilation of it is then a persistent-cache hit.

Programs are exported over their flattened arguments; the output tree structure is pickled next
to the program (a PyTreeDef, from this user's own cache folder). A file that fails to load is
ignored and rewritten. Programs that call back into Python (host envs) are not exported.
(Storing compiled executables instead, with ``jax.experimental.serialize_executable``, crashed
with jaxlib 0.10.2 when a second process loaded them.)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import warnings
from functools import cache
from pathlib import Path

import jax

FORMAT = b"fleetrl-stablehlo-v1\n"
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "gymnax", "numpy")


def cache_folder() -> Path | None:
    """Where programs are kept: beside JAX's persistent cache, or None when it is off."""
    folder = jax.config.jax_compilation_cache_dir
    return Path(folder) / "programs" if folder else None


@cache
def _source_digest() -> str:
    """fleetrl's source, library versions, Python, XLA flags: what shapes a program, short of
    the device (known before JAX's backend starts)."""
    from importlib import metadata

    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    for name in _LIBRARIES:
        try:
            digest.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=none".encode())
    digest.update(sys.version.encode())
    digest.update(os.environ.get("XLA_FLAGS", "").encode())
    digest.update(os.environ.get("JAX_PLATFORMS", "").encode())
    digest.update(str(jax.config.jax_enable_x64).encode())
    return digest.hexdigest()


@cache
def _environment_digest() -> str:
    """`_source_digest` and the device."""
    device = jax.devices()[0]
    return hashlib.sha256(
        f"{_source_digest()}/{device.platform}/{device.device_kind}".encode()
    ).hexdigest()


def _signature(args: tuple) -> str:
    leaves, tree = jax.tree.flatten(args)
    shapes = [(getattr(x, "shape", ()), str(getattr(x, "dtype", type(x)))) for x in leaves]
    return f"{tree}|{shapes}"


_loaded: dict[Path, tuple] = {}  # programs `out_shapes` read, for `lower_cached`


def _program_path(name: str, args: tuple, config_text: str | None) -> Path | None:
    folder = cache_folder()
    if folder is None or config_text is None:
        return None
    key = hashlib.sha256(
        "\n".join((name, config_text, _signature(args), _environment_digest())).encode()
    ).hexdigest()
    return folder / f"{name}-{key[:32]}.bin"


def out_shapes(name: str, jitted, args: tuple, config_text: str | None):
    """What ``jitted`` returns for ``args``, as ShapeDtypeStructs: read from the program on
    disk when `lower_cached` stored one, else traced (`jax.eval_shape`), not lowered."""
    path = _program_path(name, args, config_text)
    loaded = _load(path) if path is not None else None
    if loaded is None:
        return jax.eval_shape(jitted, *args)
    _loaded[path] = loaded
    exported, out_tree = loaded
    return jax.tree.unflatten(
        out_tree, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in exported.out_avals]
    )


def lower_cached(name: str, jitted, args: tuple, config_text: str | None):
    """``jitted`` lowered for ``args`` (arrays or ShapeDtypeStructs), from a program on disk
    when an identical one was stored before; ``config_text`` must hold everything static the
    program was built from (the run's resolved configuration), None to skip the disk.

    Returns ``(lowered, wrap, out_shapes)``: compile ``lowered`` and call ``wrap(compiled)``
    with ``jitted``'s signature; ``out_shapes`` is the output as ShapeDtypeStructs.
    """
    path = _program_path(name, args, config_text)
    if path is None:
        lowered = jitted.lower(*args)
        return lowered, lambda compiled: compiled, lowered.out_info
    leaves, in_tree = jax.tree.flatten(args)
    loaded = _loaded.pop(path, None) or _load(path)
    if loaded is None:
        out_trees = []

        def flat(*flat_args):
            out = jitted(*jax.tree.unflatten(in_tree, flat_args))
            out_leaves, out_tree = jax.tree.flatten(out)
            out_trees.append(out_tree)
            return out_leaves

        exported = jax.export.export(jax.jit(flat))(*leaves)
        loaded = exported, out_trees[-1]
        _store(path, exported, out_trees[-1])
    exported, out_tree = loaded
    out_shapes = jax.tree.unflatten(
        out_tree, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in exported.out_avals]
    )

    def wrap(compiled):
        def call(*call_args):
            return jax.tree.unflatten(out_tree, compiled(*jax.tree.leaves(call_args)))

        return call

    return jax.jit(exported.call).lower(*leaves), wrap, out_shapes


def _load(path: Path):
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(FORMAT):
        return None
    try:
        tree_size = int.from_bytes(data[len(FORMAT) : len(FORMAT) + 8], "little")
        start = len(FORMAT) + 8
        out_tree = pickle.loads(data[start : start + tree_size])
        return jax.export.deserialize(bytearray(data[start + tree_size :])), out_tree
    except Exception as error:  # stale or damaged: trace again and overwrite
        warnings.warn(f"ignoring cached program {path}: {error}", RuntimeWarning, stacklevel=3)
        return None


def _store(path: Path, exported, out_tree) -> None:
    try:
        payload = exported.serialize()
        tree = pickle.dumps(out_tree)
    except Exception:  # e.g. host callbacks: nothing to store
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(FORMAT + len(tree).to_bytes(8, "little") + tree + bytes(payload))
        os.replace(tmp, path)
    except OSError as error:  # a read-only or full cache costs speed, never the run
        warnings.warn(f"could not cache a program in {path.parent}: {error}", stacklevel=3)
