"""Programs kept on disk as StableHLO, keyed by what they were built from.

JAX's persistent compilation cache saves XLA's work, but it is keyed by the lowered program, so
every run still traces and lowers its programs in Python before it can look one up: on our
2-core CPU that was ~0.85 s of a ~2.5 s warm-cache run of ``fleetrl train ppo-cartpole``. Here
each program is also stored in JAX's portable export format (``jax.export``, StableHLO, no native
code) under a key made of the run's configuration, the argument shapes, fleetrl's own source and
the versions of the libraries that shape the program. A repeated run deserializes it instead of
tracing our Python, and XLA's compilation of it is then a persistent-cache hit.

Programs are exported over their flattened arguments; the output tree structure (a PyTreeDef) is
stored next to the program as JSON (`tree_to_json`), never pickled: a file in the cache folder
must not be able to run code when it is read. A file that fails to load is ignored with a
warning and rewritten. Programs that call back into Python (host envs), and programs whose
output tree JSON cannot carry, are not stored.
(Storing compiled executables instead, with ``jax.experimental.serialize_executable``, crashed
with jaxlib 0.10.2 when a second process loaded them.)
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import sys
import warnings
from functools import cache
from pathlib import Path

import jax
from jax.tree_util import PyTreeDef

# v1 held a pickled tree: such files (and anything else) are ignored, never unpickled
FORMAT = b"fleetrl-stablehlo-v2\n"
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
    return loaded[2]


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
        _store(path, exported, out_trees[-1])
        loaded = exported, out_trees[-1], _output_shapes(exported, out_trees[-1])
    exported, out_tree, shapes = loaded

    def wrap(compiled):
        def call(*call_args):
            return jax.tree.unflatten(out_tree, compiled(*jax.tree.leaves(call_args)))

        return call

    return jax.jit(exported.call).lower(*leaves), wrap, shapes


def _output_shapes(exported, out_tree: PyTreeDef):
    avals = exported.out_avals
    return jax.tree.unflatten(out_tree, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals])


def _load(path: Path):
    """``(exported, out_tree, out_shapes)`` stored at ``path``; None when there is none, or
    when it does not load (warned; the program is then traced again and the file rewritten)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        # a file at a key's path in another format is damaged or planted: the key covers
        # fleetrl's source (`_source_digest`), so another version never writes to this path
        if not data.startswith(FORMAT):
            raise ValueError(f"not in the format {FORMAT.decode().strip()}")
        start = len(FORMAT) + 8
        tree_size = int.from_bytes(data[len(FORMAT) : start], "little")
        out_tree = tree_from_json(data[start : start + tree_size])
        exported = jax.export.deserialize(bytearray(data[start + tree_size :]))
        return exported, out_tree, _output_shapes(exported, out_tree)
    except Exception as error:  # stale, damaged or tampered: trace again and overwrite
        warnings.warn(f"ignoring cached program {path}: {error}", RuntimeWarning, stacklevel=3)
        return None


def _store(path: Path, exported, out_tree: PyTreeDef) -> None:
    try:
        payload = exported.serialize()
        tree = tree_to_json(out_tree).encode()
        if tree_from_json(tree) != out_tree:
            raise ValueError("the output tree does not survive JSON")
    except Exception:
        # Nothing to store: a program calling back into Python (host envs), or an output tree
        # JSON cannot carry (a function in a flax struct's static field, a class defined inside
        # a function); keeping such a tree would take pickle, which runs code when read. The
        # next run traces this program again.
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(FORMAT + len(tree).to_bytes(8, "little") + tree + bytes(payload))
        os.replace(tmp, path)
    except OSError as error:  # a read-only or full cache costs speed, never the run
        warnings.warn(f"could not cache a program in {path.parent}: {error}", stacklevel=3)


# --- output trees as JSON ---------------------------------------------------------------------
# A node is [type name, auxiliary data, [children]]; a leaf is null. Type names are
# "module:qualname" and are resolved only to the containers below or to a class that a package of
# `_PACKAGES` defines, has already imported (nothing is imported for a file) and registered as a
# pytree node. Auxiliary data is plain JSON, with tuples as {"tuple": [...]} and dicts as
# {"dict": [[key, value], ...]} (any keys), so each value comes back as the type it was: a
# PyTreeDef compares its nodes' data with ==, and () != [].

_CONTAINERS = {
    "builtins:tuple": tuple,
    "builtins:list": list,
    "builtins:dict": dict,
    "builtins:NoneType": type(None),
    "collections:OrderedDict": collections.OrderedDict,
}
_PACKAGES = frozenset({"fleetrl", "flax", "optax", "gymnax", "jax", "jaxlib", "numpy"})
_SCALARS = (type(None), bool, int, float, str)
_LEAF = jax.tree.structure(0)


def tree_to_json(tree: PyTreeDef) -> str:
    """``tree`` as JSON (`tree_from_json` reads it back); ValueError when a node's type cannot
    be named that way or its auxiliary data is more than JSON values."""
    return json.dumps(_node_to_json(tree), separators=(",", ":"), allow_nan=False)


def tree_from_json(text: str | bytes) -> PyTreeDef:
    """The PyTreeDef `tree_to_json` wrote; raises (ValueError, TypeError, RuntimeError, ...) on
    anything malformed, unknown or outside the allowed types, and never runs code the text names.
    """
    tree = _node_from_json(json.loads(text))
    # only trees that flattening could have made: rebuilt from its own unflattening (rejects a
    # dict node with unsorted or repeated keys, a None node with children, missing fields)
    if jax.tree.structure(jax.tree.unflatten(tree, [0] * tree.num_leaves)) != tree:
        raise ValueError("not a tree flattening makes")
    return tree


def _node_to_json(tree: PyTreeDef):
    node = tree.node_data()
    if node is None:
        return None
    kind, data = node
    name = f"{kind.__module__}:{kind.__qualname__}"
    if _node_type(name) is not kind:
        raise ValueError(f"pytree node type {name} cannot be named in JSON")
    return [name, _value_to_json(data), [_node_to_json(child) for child in tree.children()]]


def _node_from_json(node) -> PyTreeDef:
    if node is None:
        return _LEAF
    name, data, children = node
    if type(name) is not str or type(children) is not list:
        raise ValueError("a node is [type name, data, [children]]")
    kind, data = _node_type(name), _value_from_json(data)
    _check_node(kind, data, len(children))
    children = [_node_from_json(child) for child in children]
    return PyTreeDef.from_node_data_and_children(
        jax.tree_util.default_registry, (kind, data), children
    )


def _check_node(kind: type, data, num_children: int) -> None:
    """Raises unless ``data`` and ``num_children`` fit a ``kind`` node. jaxlib trusts them: with
    the wrong counts, a dict node or a dataclass node crashed the process (segmentation fault,
    jaxlib 0.10.2) when unflattened or printed."""
    if kind in (dict, collections.OrderedDict):
        fits = type(data) is (list if kind is dict else tuple) and len(data) == num_children
    elif kind is type(None):
        fits = data is None and num_children == 0
    elif kind in (tuple, list):
        fits = data is None
    elif issubclass(kind, tuple):  # a NamedTuple
        fits = data is None and num_children == len(kind._fields)
    elif dataclasses.is_dataclass(kind):
        fits = type(data) is tuple and (len(data), num_children) == _dataclass_arity(kind)
    else:  # flattened and unflattened by the class's own Python functions, which check
        fits = True
    if not fits:
        raise ValueError(
            f"a {kind.__qualname__} node with data {data!r:.60}, {num_children} children"
        )


@cache
def _dataclass_arity(kind: type) -> tuple[int, int]:
    """How many static and how many pytree fields a dataclass node has, read by flattening a
    bare instance (`jax.tree_util.register_dataclass` keeps its field lists out of reach)."""
    probe = object.__new__(kind)
    for field in dataclasses.fields(kind):
        object.__setattr__(probe, field.name, 0)
    tree = jax.tree.structure(probe)
    return len(tree.node_data()[1]), len(tree.children())


def _node_type(name: str) -> type:
    if name in _CONTAINERS:
        return _CONTAINERS[name]
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name)
    if module_name.split(".")[0] not in _PACKAGES or module is None:
        raise ValueError(f"pytree node type {name}: not from an allowed, imported package")
    found = module
    for part in qualname.split("."):
        if not part.isidentifier() or part.startswith("__"):
            raise ValueError(f"pytree node type {name}: not a class name")
        found = getattr(found, part)
    if not isinstance(found, type) or not jax.tree_util.default_registry.is_node(found):
        raise ValueError(f"pytree node type {name}: not a class registered as a pytree node")
    if f"{found.__module__}:{found.__qualname__}" != name:
        raise ValueError(f"pytree node type {name}: an alias")
    return found


def _value_to_json(value):
    if type(value) in _SCALARS:
        return value
    if type(value) is list:
        return [_value_to_json(v) for v in value]
    if type(value) is tuple:
        return {"tuple": [_value_to_json(v) for v in value]}
    if type(value) is dict:
        return {"dict": [[_value_to_json(k), _value_to_json(v)] for k, v in value.items()]}
    raise ValueError(f"a {type(value).__qualname__} in a pytree node's data has no JSON form")


def _value_from_json(value):
    if type(value) in _SCALARS:
        return value
    if type(value) is list:
        return [_value_from_json(v) for v in value]
    if type(value) is dict and len(value) == 1:
        ((tag, items),) = value.items()
        if tag == "tuple" and type(items) is list:
            return tuple(_value_from_json(v) for v in items)
        if tag == "dict" and type(items) is list:
            return {_value_from_json(k): _value_from_json(v) for k, v in items}
    raise ValueError("a pytree node's data is JSON values, tuples and dicts")


def folder_problem(folder: Path) -> str | None:
    """Creates ``folder`` (mode 0o700) if missing; why it cannot hold code this process will
    run, or None when it is this user's alone (the checks ssh makes of ~/.ssh)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not hasattr(os, "getuid"):  # Windows: no owner and mode bits to check
        return None
    for path in (folder, folder / "programs"):  # programs: it may predate a chmod of folder
        if not path.exists():
            continue
        stat = path.stat()
        if stat.st_uid != os.getuid():
            return f"{path} is owned by user id {stat.st_uid}, not by you"
        if stat.st_mode & 0o022:
            return f"{path} is writable by group or others (fix: chmod go-w {path})"
    return None
