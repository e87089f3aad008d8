"""Tests for fleetrl.checkpoint: round trip, damage detection, retention, crash safety."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from fleetrl import checkpoint as ckpt
from fleetrl.checkpoint import CheckpointError


class Counters(NamedTuple):
    env_steps: jax.Array
    updates: jax.Array


@struct.dataclass
class Algo:
    params: dict
    opt_state: optax.OptState
    scale: float = struct.field(pytree_node=False, default=1.0)


def make_state(seed: int = 0, hidden: int = 64) -> dict:
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {
        "actor": {
            "Dense_0": {
                "kernel": jax.random.normal(k1, (4, hidden)),
                "bias": jnp.zeros((hidden,)),
            }
        },
        "critic": {"Dense_0": {"kernel": jax.random.normal(k2, (hidden, 1))}},
    }
    opt = optax.adam(3e-4)
    opt_state = opt.init(params)
    # One update so the moments and the count are not all zeros.
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)
    return {
        "algo_state": Algo(params=params, opt_state=opt_state),
        "counters": Counters(env_steps=jnp.int32(12345), updates=jnp.asarray(7)),
        "key": jax.random.PRNGKey(seed + 1),
        "done": jnp.asarray([True, False]),
        "lr": jnp.float32(3e-4),
    }


def assert_bit_equal(a, b) -> None:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def rewrite_manifest(step_dir: Path, **changes) -> None:
    mpath = step_dir / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest.update(changes)
    mpath.write_text(json.dumps(manifest))


def test_round_trip_bit_exact(tmp_path):
    state = make_state()
    meta = {"env_steps": 12345, "config_hash": "abc", "seeds": [0, 1]}
    path = ckpt.save(tmp_path, 12345, state, meta)
    assert path == tmp_path / "checkpoints" / "step_12345"
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "meta.json", "state.msgpack"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == ckpt.FORMAT and manifest["format_version"] == 1
    assert manifest["step"] == 12345 and "fleetrl_version" in manifest
    restored, meta2 = ckpt.load(path, make_state(seed=5))
    assert meta2 == meta
    assert_bit_equal(restored, state)
    assert isinstance(restored["algo_state"], Algo)
    assert isinstance(restored["counters"], Counters)
    assert isinstance(restored["algo_state"].opt_state[0], optax.ScaleByAdamState)


def test_load_into_abstract_target(tmp_path):
    state = make_state()
    path = ckpt.save(tmp_path, 1, state, {})
    restored, _ = ckpt.load(path, jax.eval_shape(lambda: make_state()))
    assert_bit_equal(restored, state)


@pytest.fixture
def saved(tmp_path) -> Path:
    return ckpt.save(tmp_path, 100, make_state(), {"env_steps": 100})


def test_truncated_state_refused(saved):
    f = saved / "state.msgpack"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="bytes") as e:
        ckpt.load(saved, make_state())
    assert str(f) in str(e.value)
    assert f"expected {len(data)} bytes" in str(e.value)


def test_flipped_byte_refused(saved):
    f = saved / "state.msgpack"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch") as e:
        ckpt.load(saved, make_state())
    assert str(f) in str(e.value) and "altered or corrupted" in str(e.value)


def test_missing_file_refused(saved):
    (saved / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="missing") as e:
        ckpt.load(saved, make_state())
    assert str(saved / "meta.json") in str(e.value)


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'{"format": "other"}'])
def test_garbage_manifest_refused(saved, content):
    (saved / "manifest.json").write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        ckpt.load(saved, make_state())
    assert str(saved / "manifest.json") in str(e.value)


def test_missing_manifest_refused(saved):
    (saved / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest") as e:
        ckpt.load(saved, make_state())
    assert str(saved / "manifest.json") in str(e.value)


def test_future_format_version_refused(saved):
    rewrite_manifest(saved, format_version=2)
    with pytest.raises(CheckpointError, match=r"in format v2; this build \(.*\) reads <= v1"):
        ckpt.load(saved, make_state())


def test_path_traversal_in_manifest_refused(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"]["../escape"] = {"sha256": "0", "bytes": 0}
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="invalid file name"):
        ckpt.load(saved, make_state())


def test_shape_mismatch_names_leaf(saved):
    target = make_state()
    kernel = target["algo_state"].params["actor"]["Dense_0"]["kernel"]
    target["algo_state"].params["actor"]["Dense_0"]["kernel"] = jnp.zeros((8, 64))
    assert kernel.shape == (4, 64)
    with pytest.raises(CheckpointError) as e:
        ckpt.load(saved, target)
    msg = str(e.value)
    assert str(saved / "state.msgpack") in msg
    assert "algo_state/params/actor/Dense_0/kernel: shape (4, 64) in checkpoint, (8, 64)" in msg


def test_dtype_mismatch_names_leaf(saved):
    target = make_state()
    target["lr"] = jnp.zeros((), jnp.int32)
    with pytest.raises(CheckpointError, match=r"lr: dtype float32 in checkpoint, int32 expected"):
        ckpt.load(saved, target)


def test_extra_or_missing_key_refused(saved):
    extra = make_state()
    extra["new_thing"] = jnp.zeros(3)
    with pytest.raises(CheckpointError, match=r"missing from checkpoint: \['new_thing'\]"):
        ckpt.load(saved, extra)
    fewer = make_state()
    del fewer["done"]
    with pytest.raises(CheckpointError, match=r"not in target: \['done'\]"):
        ckpt.load(saved, fewer)


def test_retention_keeps_last(tmp_path):
    state = make_state()
    for step in (10, 20, 30, 40, 50):
        ckpt.save(tmp_path, step, state, {}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_40", "step_50"]
    for step in (60, 70):
        ckpt.save(tmp_path, step, state, {}, keep_last=0)
    assert len(list((tmp_path / "checkpoints").iterdir())) == 4


def test_saving_older_step_does_not_delete_itself(tmp_path):
    state = make_state()
    ckpt.save(tmp_path, 1000, state, {}, keep_last=1)
    path = ckpt.save(tmp_path, 500, state, {}, keep_last=1)
    assert path.is_dir()


def test_overwrite_same_step(tmp_path):
    ckpt.save(tmp_path, 5, make_state(seed=0), {"v": 1})
    path = ckpt.save(tmp_path, 5, make_state(seed=1), {"v": 2})
    state, meta = ckpt.load(path, make_state())
    assert meta == {"v": 2}
    assert_bit_equal(state, make_state(seed=1))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_5"]


def test_latest_numeric_and_ignores_tmp(tmp_path):
    assert ckpt.latest(tmp_path) is None
    state = make_state()
    ckpt.save(tmp_path, 900, state, {}, keep_last=0)
    ckpt.save(tmp_path, 1000, state, {}, keep_last=0)
    (tmp_path / "checkpoints" / "step_5000.tmp-deadbeef").mkdir()
    (tmp_path / "checkpoints" / "notes.txt").write_text("x")
    (tmp_path / "checkpoints" / "step_abc").mkdir()
    assert ckpt.latest(tmp_path) == tmp_path / "checkpoints" / "step_1000"


def test_kill_mid_save_keeps_previous(tmp_path):
    state = make_state()
    ckpt.save(tmp_path, 100, state, {"env_steps": 100})
    # What a process killed while writing step 200 leaves behind: a tmp dir, no manifest.
    tmp = tmp_path / "checkpoints" / "step_200.tmp-0123abcd"
    tmp.mkdir()
    (tmp / "state.msgpack").write_bytes(b"\x85partial")
    assert ckpt.latest(tmp_path) == tmp_path / "checkpoints" / "step_100"
    restored, meta = ckpt.load(ckpt.latest(tmp_path), make_state(seed=3))
    assert meta == {"env_steps": 100}
    assert_bit_equal(restored, state)
    ckpt.clean_stale(tmp_path)
    assert not tmp.exists()
    assert ckpt.latest(tmp_path) == tmp_path / "checkpoints" / "step_100"


def test_failure_during_commit_cleans_up(tmp_path, monkeypatch):
    state = make_state()
    ckpt.save(tmp_path, 100, state, {})

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        ckpt.save(tmp_path, 200, state, {})
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_100"]


def test_clean_stale_restores_parked_copy(tmp_path):
    ckpt.save(tmp_path, 7, make_state(), {"v": 1})
    d = tmp_path / "checkpoints"
    # Crash between parking the old step_7 and renaming the new one into place.
    os.replace(d / "step_7", d / "step_7.old-abc")
    (d / "step_7.tmp-def").mkdir()
    ckpt.clean_stale(tmp_path)
    assert sorted(p.name for p in d.iterdir()) == ["step_7"]
    assert ckpt.load(d / "step_7", make_state())[1] == {"v": 1}


class _Evil:
    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_pickle_payload_never_executed(saved, tmp_path):
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(str(sentinel)))
    (saved / "state.msgpack").write_bytes(payload)
    rewrite_manifest(
        saved,
        files={
            "state.msgpack": {
                "sha256": hashlib.sha256(payload).hexdigest(),
                "bytes": len(payload),
            },
            "meta.json": json.loads((saved / "manifest.json").read_text())["files"]["meta.json"],
        },
    )
    try:
        ckpt.load(saved, make_state())
    except CheckpointError as e:
        assert str(saved / "state.msgpack") in str(e)
    assert not sentinel.exists()
