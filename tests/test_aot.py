"""Programs kept on disk (fleetrl.aot): a repeated run loads them instead of tracing, and nothing
in the cache folder can run code when it is read (security issue S1)."""

import dataclasses
import json
import os
import pickle
import types
from typing import Any

import jax
import numpy as np
import pytest
from flax import struct

from fleetrl import aot, envs, programs
from fleetrl.config import load_preset
from fleetrl.train import build, train

DEVICE_PRESETS = ["ppo-cartpole", "dqn-cartpole", "ppo-pendulum"]


@pytest.mark.parametrize("preset", DEVICE_PRESETS)
def test_a_repeated_run_loads_its_programs_and_matches(preset, tiny, tmp_path, monkeypatch):
    run = tiny(preset, seed=0)  # a seedless run draws one: the two runs must be the same
    first = train(run)
    programs_ = sorted(p.name for p in aot.cache_folder().iterdir())
    assert any(name.startswith("train-") for name in programs_)

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced a program that is on disk")

    monkeypatch.setattr(jax.export, "export", no_tracing)
    again = dataclasses.replace(run, log=dataclasses.replace(run.log, run_dir=str(tmp_path / "b")))
    second = train(again)
    np.testing.assert_array_equal(first.eval_returns, second.eval_returns)


def test_a_damaged_program_file_is_ignored_and_rewritten(tiny, tmp_path, monkeypatch):
    # a program folder of its own (JAX's cache stays where it is): every file in it is this run's
    monkeypatch.setattr(aot, "cache_folder", lambda: tmp_path / "programs")
    run = tiny("ppo-cartpole")
    train(run)
    assert any(aot.cache_folder().glob("*.bin"))
    for path in aot.cache_folder().glob("*.bin"):
        path.write_bytes(aot.FORMAT + b"\x05\x00\x00\x00\x00\x00\x00\x00garbage")
    again = dataclasses.replace(run, log=dataclasses.replace(run.log, run_dir=str(tmp_path / "b")))
    with pytest.warns(RuntimeWarning, match="ignoring cached program"):
        result = train(again)
    assert result.status == "completed"
    assert all(p.read_bytes()[-7:] != b"garbage" for p in aot.cache_folder().glob("*.bin"))


# --- no code runs from the cache folder ---------------------------------------------------------


class _Touch:
    """Unpickling it runs a shell command: what a planted cache file could have done to v1."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _split(data: bytes) -> tuple[bytes, bytes]:
    """(tree, exported program) of a file `aot` stored."""
    start = len(aot.FORMAT) + 8
    size = int.from_bytes(data[len(aot.FORMAT) : start], "little")
    return data[start : start + size], data[start + size :]


def _program_file(tree: bytes, payload: bytes, marker: bytes = aot.FORMAT) -> bytes:
    return marker + len(tree).to_bytes(8, "little") + tree + payload


def test_a_pickle_in_a_cache_file_of_the_old_format_never_runs(tiny, tmp_path, monkeypatch):
    sentinel, proof = tmp_path / "SENTINEL", tmp_path / "PROOF"
    pickle.loads(pickle.dumps(_Touch(proof)))  # the payload does run code when unpickled
    assert proof.exists()
    monkeypatch.setattr(aot, "cache_folder", lambda: tmp_path / "programs")
    run = tiny("ppo-cartpole")
    train(run)
    for path in aot.cache_folder().glob("*.bin"):
        payload = _split(path.read_bytes())[1]
        old = _program_file(pickle.dumps(_Touch(sentinel)), payload, b"fleetrl-stablehlo-v1\n")
        path.write_bytes(old)
    again = dataclasses.replace(run, log=dataclasses.replace(run.log, run_dir=str(tmp_path / "b")))
    with pytest.warns(RuntimeWarning, match="ignoring cached program"):
        result = train(again)
    assert result.status == "completed"
    assert not sentinel.exists()
    assert all(p.read_bytes().startswith(aot.FORMAT) for p in aot.cache_folder().glob("*.bin"))


@pytest.mark.parametrize(
    "node",
    [
        ["os:system", "touch {sentinel}", [None]],
        ["builtins:eval", "open('{sentinel}', 'w')", [None]],
        ["builtins:__import__", "os", [None]],
        ["posix:system", "touch {sentinel}", [None]],
        ["fleetrl.aot:os.system", "touch {sentinel}", [None]],  # a function via an allowed package
        ["fleetrl.programs:Carry.__init__.__globals__", None, [None]],
        ["numpy:ndarray", None, [None]],  # an allowed package's class that is not a pytree node
        ["builtins:tuple", {"call": ["os:system", "touch {sentinel}"]}, [None]],
        ["builtins:dict", [], [None, None]],  # wrong counts crashed jaxlib: checked first
        ["fleetrl.normalize:RunningStats", {"tuple": []}, []],
        ["builtins:dict", ["b", "a"], [None, None]],  # not a tree flattening makes
    ],
)
def test_a_cache_file_naming_anything_else_is_ignored(node, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    text = json.dumps(node).replace("{sentinel}", str(sentinel))
    path = tmp_path / "program.bin"
    payload = jax.export.export(jax.jit(lambda x: [x]))(np.float32(1)).serialize()
    path.write_bytes(_program_file(text.encode(), bytes(payload)))
    with pytest.warns(RuntimeWarning, match="ignoring cached program"):
        assert aot._load(path) is None
    assert not sentinel.exists()


def test_a_program_file_in_the_right_format_loads(tmp_path):
    path = tmp_path / "program.bin"
    exported = jax.export.export(jax.jit(lambda x: [x]))(np.float32(1))
    out_tree = jax.tree.structure({"a": (None,), "b": [0]})  # one leaf, as the program
    aot._store(path, exported, out_tree)
    assert aot._load(path)[1] == out_tree


def _run_trees(preset: str, monkeypatch) -> dict[str, Any]:
    """The output trees of ``preset``'s programs (init, train, evaluate), as `compile_run` builds
    them: traced, neither lowered nor compiled."""
    run = envs.with_resolved_backend(load_preset(preset))
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, seed=0))
    trees = {}

    def trace_only(name, jitted, args, config_text):
        shapes = jax.eval_shape(jitted, *args)
        trees[name] = jax.tree.structure(shapes)
        return types.SimpleNamespace(compile=lambda **_: None), lambda compiled: compiled, shapes

    monkeypatch.setattr(aot, "lower_cached", trace_only)
    monkeypatch.setattr(aot, "cache_folder", lambda: None)  # out_shapes: traced too
    env, eval_env, algo = build(run)
    programs.compile_run(run, env, eval_env, algo)
    return trees


@pytest.mark.parametrize("preset", DEVICE_PRESETS)
def test_the_output_trees_of_device_presets_survive_json(preset, monkeypatch):
    trees = _run_trees(preset, monkeypatch)
    assert sorted(trees) == ["evaluate", "init", "train"]
    for name, tree in trees.items():
        text = aot.tree_to_json(tree)
        assert "pickle" not in text
        assert aot.tree_from_json(text) == tree, name
        assert aot.tree_from_json(text.encode()) == tree, name


@struct.dataclass
class _Static:
    """A flax struct with a static (auxiliary) field, as flax's TrainState has."""

    x: Any
    static: Any = struct.field(pytree_node=False)


@pytest.mark.parametrize(
    "static", [(1, 2.5, "a", None, True), [1, (2,)], {"a": (1,), 3: [None]}, {(1, 2): 1}, ()]
)
def test_auxiliary_data_comes_back_as_the_types_it_was(static, monkeypatch):
    monkeypatch.setattr(aot, "_PACKAGES", aot._PACKAGES | {__name__.split(".")[0]})
    tree = jax.tree.structure(_Static(0, static))
    assert aot.tree_from_json(aot.tree_to_json(tree)) == tree
    assert jax.tree.unflatten(aot.tree_from_json(aot.tree_to_json(tree)), [0]).static == static


def test_a_tree_json_cannot_carry_is_not_stored(tmp_path, monkeypatch):
    monkeypatch.setattr(aot, "_PACKAGES", aot._PACKAGES | {__name__.split(".")[0]})
    exported = jax.export.export(jax.jit(lambda x: [x]))(np.float32(1))
    for unrepresentable in (len, np.float32(1), float("nan")):  # a function, NumPy, NaN != NaN
        tree = jax.tree.structure(_Static(0, unrepresentable))
        with pytest.raises(ValueError):
            aot.tree_to_json(tree)
        aot._store(tmp_path / "program.bin", exported, tree)
        assert not (tmp_path / "program.bin").exists()
    monkeypatch.setattr(aot, "_PACKAGES", frozenset({"fleetrl"}))  # a class of another package
    with pytest.raises(ValueError, match="not from an allowed"):
        aot.tree_to_json(jax.tree.structure(_Static(0, None)))


# --- the cache folder must be this user's alone -------------------------------------------------


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_a_cache_folder_others_may_write_is_refused(mode, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(mode)
    monkeypatch.setenv("FLEETRL_CACHE_DIR", str(folder))
    before = jax.config.jax_compilation_cache_dir
    programs.enable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir == before
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fleetrl: warning: ")
    assert str(folder) in line and f"chmod go-w {folder}" in line


def test_a_cache_folder_of_another_user_is_refused(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: folder.stat().st_uid + 1)
    monkeypatch.setenv("FLEETRL_CACHE_DIR", str(folder))
    before = jax.config.jax_compilation_cache_dir
    programs.enable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir == before
    assert "is owned by user id" in capsys.readouterr().err


def test_a_programs_folder_others_may_write_is_refused_too(tmp_path):
    (tmp_path / "cache" / "programs").mkdir(parents=True, mode=0o700)
    (tmp_path / "cache").chmod(0o700)
    (tmp_path / "cache" / "programs").chmod(0o777)
    assert "programs is writable by group or others" in aot.folder_problem(tmp_path / "cache")


def test_a_new_cache_folder_is_created_private(tmp_path):
    folder = tmp_path / "a" / "cache"
    assert aot.folder_problem(folder) is None
    assert folder.stat().st_mode & 0o777 == 0o700


def test_auto_picks_one_xla_thread_for_small_networks():
    """`auto` runs MLP policies on device envs and on in-process host envs with one XLA thread
    (their programs still compile on every core, fleetrl.xla_cpu); the rest on one per core."""
    from fleetrl.cli import _one_xla_thread_pays

    def with_(run, section, **fields):
        return dataclasses.replace(
            run, **{section: dataclasses.replace(getattr(run, section), **fields)}
        )

    assert _one_xla_thread_pays(load_preset("ppo-cartpole"))
    assert _one_xla_thread_pays(load_preset("dqn-cartpole"))
    gym = with_(load_preset("ppo-cartpole-gym"), "env", num_workers=0)
    assert _one_xla_thread_pays(gym)
    assert not _one_xla_thread_pays(with_(gym, "env", num_workers=2))
    assert not _one_xla_thread_pays(load_preset("ppo-breakout"))
    forced = with_(load_preset("ppo-cartpole"), "train", xla_threads="all")
    assert not _one_xla_thread_pays(forced)
