"""Tests for fleetrl.checkpoint (round trip, damage detection, retention, crash safety, size
limits, format versions, full disks) and fleetrl.safeio (bounded reads, bounded JSON)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization, struct

from fleetrl import checkpoint as ckpt
from fleetrl import safeio
from fleetrl.checkpoint import CheckpointError
from fleetrl.safeio import UnsafeInputError


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
    with pytest.raises(
        CheckpointError, match=r"in format v2; this build \(.*\) reads v1\.\.v1: upgrade"
    ):
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


def test_read_meta_verifies_meta_without_reading_state(saved):
    assert ckpt.read_meta(saved) == {"env_steps": 100}
    os.truncate(saved / "state.msgpack", 2 << 30)  # neither read nor even size-checked
    declare(saved, "state.msgpack", 2 << 30)
    before = peak_rss_bytes()
    assert ckpt.read_meta(saved) == {"env_steps": 100}
    assert peak_rss_bytes() - before < 64 << 20
    (saved / "meta.json").write_text('{"env_steps": 999}')  # same size, other bytes
    with pytest.raises(ckpt.CheckpointDamagedError, match="meta.json: expected|checksum"):
        ckpt.read_meta(saved)
    rewrite_manifest(saved, format_version=7)
    with pytest.raises(CheckpointError, match="in format v7; .* upgrade fleetrl"):
        ckpt.read_meta(saved)


# ------------------------------------------------------------ size limits before reading (S4)

GIB2 = 2 << 30


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def declare(step_dir: Path, name: str, size: int, sha256: str = "0" * 64) -> None:
    manifest = json.loads((step_dir / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": sha256, "bytes": size}
    (step_dir / "manifest.json").write_text(json.dumps(manifest))


def test_state_larger_than_target_refused_before_reading(saved):
    # A sparse 2 GiB file costs no disk; reading it whole cost 2.3 GB of RSS before the bound.
    f = saved / "state.msgpack"
    os.truncate(f, GIB2)
    declare(saved, "state.msgpack", GIB2)
    before = peak_rss_bytes()
    with pytest.raises(CheckpointError) as e:
        ckpt.load(saved, make_state())
    assert peak_rss_bytes() - before < 64 << 20
    assert not isinstance(e.value, ckpt.CheckpointDamagedError)  # another run's shapes
    msg = str(e.value)
    assert str(f) in msg and "declares 2,147,483,648 bytes" in msg
    bound, raw = ckpt._state_bound(serialization.to_state_dict(make_state()))
    assert f"holds at most {bound:,}" in msg and f"{raw:,} bytes of arrays" in msg


def test_state_file_larger_than_manifest_not_read(saved):
    f = saved / "state.msgpack"
    declared = f.stat().st_size
    os.truncate(f, GIB2)
    before = peak_rss_bytes()
    with pytest.raises(ckpt.CheckpointDamagedError) as e:
        ckpt.load(saved, make_state())
    assert peak_rss_bytes() - before < 64 << 20
    assert f"{f}: expected {declared} bytes, found {GIB2} bytes" in str(e.value)


def test_huge_manifest_refused_before_reading(saved):
    m = saved / "manifest.json"
    os.truncate(m, GIB2)
    before = peak_rss_bytes()
    with pytest.raises(ckpt.CheckpointDamagedError) as e:
        ckpt.load(saved, make_state())
    assert peak_rss_bytes() - before < 64 << 20
    msg = str(e.value)
    assert str(m) in msg and "2,147,483,648 bytes exceeds the limit of 1,048,576" in msg


def test_meta_declared_huge_refused(saved):
    f = saved / "meta.json"
    os.truncate(f, GIB2)
    declare(saved, "meta.json", GIB2)
    with pytest.raises(CheckpointError, match="declares 2,147,483,648 bytes; meta.json") as e:
        ckpt.load(saved, make_state())
    assert str(f) in str(e.value)


def test_meta_that_load_would_refuse_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "META_LIMIT", 100)
    with pytest.raises(ValueError, match="meta: .* bytes as JSON; at most 100"):
        ckpt.save(tmp_path, 1, make_state(), {"notes": "x" * 100})
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("size", [-1, True, "12", 1.5, None])
def test_declared_size_must_be_a_size(saved, size):
    declare(saved, "state.msgpack", size)
    with pytest.raises(CheckpointError, match="is not a size"):
        ckpt.load(saved, make_state())


def test_deeply_nested_manifest_refused(saved):
    (saved / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ckpt.CheckpointDamagedError, match="nested deeper than 64") as e:
        ckpt.load(saved, make_state())
    assert str(saved / "manifest.json") in str(e.value)


def test_deeply_nested_meta_refused(saved):
    data = ("[" * 50_000 + "]" * 50_000).encode()
    (saved / "meta.json").write_bytes(data)
    declare(saved, "meta.json", len(data), hashlib.sha256(data).hexdigest())
    with pytest.raises(ckpt.CheckpointDamagedError, match="nested deeper than 64") as e:
        ckpt.load(saved, make_state())
    assert str(saved / "meta.json") in str(e.value)


def test_fifo_under_a_listed_name_does_not_hang(saved):
    (saved / "state.msgpack").unlink()
    os.mkfifo(saved / "state.msgpack")
    with pytest.raises(ckpt.CheckpointDamagedError, match="not a regular file"):
        ckpt.load(saved, make_state())


def many_leaves_state() -> dict:
    """Every leaf kind the bound must cover: 0-d, many dims, bf16, bool, long and unicode keys."""
    return {
        "k" * 200: {f"leaf_é_{i:04d}" * 8: jnp.float32(i) for i in range(300)},
        "deep": jnp.zeros((1, 1, 1, 1, 1, 1, 1, 2), jnp.bfloat16),
        "mask": jnp.ones((3,), bool),
        "buffer": jnp.zeros((250_000, 4), jnp.float32),
        "scalar": 1.5,
    }


@pytest.mark.parametrize("make", [make_state, many_leaves_state], ids=["train", "many_leaves"])
def test_state_bound_admits_what_save_writes(tmp_path, make):
    state = make()
    bound, raw = ckpt._state_bound(serialization.to_state_dict(state))
    size = len(serialization.to_bytes(state))
    assert raw < size <= bound <= size + (80 << 10)  # tight: under 16 KB past the 64 KiB slack
    restored, _ = ckpt.load(ckpt.save(tmp_path, 1, state, {}), make())
    assert_bit_equal(restored, state)


def test_state_bound_comes_from_the_target():
    # A real DQN replay buffer can be GBs: the bound follows the target, never a constant.
    target = {"buffer": jax.ShapeDtypeStruct((3 << 30,), jnp.uint8)}
    bound, raw = ckpt._state_bound(target)
    assert raw == 3 << 30 and raw < bound < raw + (1 << 20)


# ------------------------------------------------------------ format versions both ways (C7/C8)


@pytest.mark.parametrize("version", [0, -1])
def test_format_version_no_release_wrote_refused(saved, version):
    rewrite_manifest(saved, format_version=version)
    with pytest.raises(CheckpointError) as e:
        ckpt.load(saved, make_state())
    assert not isinstance(e.value, ckpt.CheckpointDamagedError)
    assert re.search(
        rf"written in format v{version}, which no fleetrl release wrote; this build \(.*\) "
        r"reads v1\.\.v1",
        str(e.value),
    )


@pytest.mark.parametrize("version", [True, False, "1", 1.0, None])
def test_format_version_must_be_an_int(saved, version):
    rewrite_manifest(saved, format_version=version)
    with pytest.raises(CheckpointError, match="format_version missing or not an int"):
        ckpt.load(saved, make_state())


def test_newer_format_says_upgrade(saved):
    rewrite_manifest(saved, format_version=3, fleetrl_version="9.9.9")
    with pytest.raises(
        CheckpointError,
        match=r"written by fleetrl 9\.9\.9 in format v3; this build \(.*\) reads v1\.\.v1: "
        "upgrade fleetrl",
    ):
        ckpt.load(saved, make_state())


def test_format_older_than_supported_refused(saved, monkeypatch):
    monkeypatch.setattr(ckpt, "FORMAT_VERSION", 3)
    monkeypatch.setattr(ckpt, "MIN_FORMAT_VERSION", 2)
    with pytest.raises(CheckpointError, match=r"in format v1; .* reads v2\.\.v3: load it with"):
        ckpt.load(saved, make_state())


def test_every_supported_older_format_has_a_migration():
    assert set(ckpt.MIGRATIONS) == set(range(ckpt.MIN_FORMAT_VERSION, ckpt.FORMAT_VERSION))


def make_fake_v0(step_dir: Path) -> None:
    """What a (fictional) format v0 wrote: the state as ``state.mp``, the step count in meta as
    ``steps``. Only its manifest's files table is shared with v1."""
    os.replace(step_dir / "state.msgpack", step_dir / "state.mp")
    meta = json.dumps({"steps": 100}).encode()
    (step_dir / "meta.json").write_bytes(meta)
    manifest = json.loads((step_dir / "manifest.json").read_text())
    manifest["format_version"] = 0
    manifest["files"]["state.mp"] = manifest["files"].pop("state.msgpack")
    manifest["files"]["meta.json"] = {
        "sha256": hashlib.sha256(meta).hexdigest(),
        "bytes": len(meta),
    }
    (step_dir / "manifest.json").write_text(json.dumps(manifest))


def fake_v0_to_v1(manifest: dict, files: dict) -> tuple[dict, dict]:
    files = dict(files)
    if "state.mp" in files:  # read_meta migrates meta.json alone
        files["state.msgpack"] = files.pop("state.mp")
    meta = json.loads(files["meta.json"])
    files["meta.json"] = json.dumps({"env_steps": meta.pop("steps")}).encode()
    return {**manifest, "format_version": 1}, files


def test_old_format_loads_through_its_migration(saved, monkeypatch):
    make_fake_v0(saved)
    calls = []

    def migrate(manifest, files):
        calls.append(manifest["format_version"])
        return fake_v0_to_v1(manifest, files)

    with pytest.raises(CheckpointError, match="format v0, which no fleetrl release wrote"):
        ckpt.load(saved, make_state())
    monkeypatch.setattr(ckpt, "MIN_FORMAT_VERSION", 0)
    monkeypatch.setitem(ckpt.MIGRATIONS, 0, migrate)
    state, meta = ckpt.load(saved, make_state(seed=9))
    assert calls == [0] and meta == {"env_steps": 100}
    assert_bit_equal(state, make_state())
    assert ckpt.read_meta(saved) == {"env_steps": 100} and calls == [0, 0]


def test_migration_sees_only_verified_bytes(saved, monkeypatch):
    make_fake_v0(saved)
    data = bytearray((saved / "state.mp").read_bytes())
    data[-1] ^= 0xFF
    (saved / "state.mp").write_bytes(bytes(data))
    monkeypatch.setattr(ckpt, "MIN_FORMAT_VERSION", 0)
    monkeypatch.setitem(ckpt.MIGRATIONS, 0, lambda m, f: pytest.fail("migrated damaged bytes"))
    with pytest.raises(ckpt.CheckpointDamagedError, match="checksum mismatch"):
        ckpt.load(saved, make_state())


def test_missing_migration_is_an_error(saved, monkeypatch):
    make_fake_v0(saved)
    monkeypatch.setattr(ckpt, "MIN_FORMAT_VERSION", 0)
    with pytest.raises(CheckpointError, match="no migration from format v0"):
        ckpt.load(saved, make_state())


# ------------------------------------------------------------ writes on a full disk (C5/C12)


def step_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_save_that_does_not_fit_creates_nothing(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(ckpt.CheckpointWriteError) as e:
        ckpt.save(tmp_path / "run", 5, make_state(), {})
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert not (tmp_path / "run").exists()  # not even the checkpoints folder
    msg = str(e.value)
    assert str(tmp_path / "run" / "checkpoints") in msg and "1,000 bytes are free" in msg
    assert re.search(r"it needs [\d,]+ bytes on disk", msg) and "none was committed" in msg


def test_save_that_does_not_fit_keeps_previous(tmp_path, monkeypatch):
    first = ckpt.save(tmp_path, 10, make_state(), {"v": 1}, keep_last=1)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(ckpt.CheckpointWriteError, match="not enough free space") as e:
        ckpt.save(tmp_path, 20, make_state(), {}, keep_last=1)
    assert f"the last committed checkpoint {first} is intact" in str(e.value)
    assert step_names(tmp_path) == ["step_10"]


def failing_write(limit: int, code: int):
    """A `_write_file` that writes until ``limit`` bytes in all, then fails with ``code``."""
    written = [0]

    def write(path: Path, data: bytes) -> None:
        room = limit - written[0]
        path.write_bytes(data[: max(room, 0)])
        written[0] += min(len(data), max(room, 0))
        if room < len(data):
            raise OSError(code, os.strerror(code), str(path))

    return write


@pytest.mark.parametrize(
    "code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES], ids=["ENOSPC", "EDQUOT", "EACCES"]
)
def test_failing_write_keeps_last_committed_and_retention(tmp_path, monkeypatch, code):
    state = make_state()
    for step in (10, 20):
        ckpt.save(tmp_path, step, state, {"step": step}, keep_last=2)
    monkeypatch.setattr(ckpt, "_write_file", failing_write(300, code))
    with pytest.raises(ckpt.CheckpointWriteError) as e:
        ckpt.save(tmp_path, 30, make_state(seed=1), {}, keep_last=2)
    monkeypatch.undo()
    assert e.value.errno == code and e.value.__cause__.errno == code
    msg = str(e.value)
    assert str(tmp_path / "checkpoints") in msg and os.strerror(code) in msg
    assert re.search(r"it needs [\d,]+ bytes on disk, [\d,]+ bytes are free", msg)
    assert f"last committed checkpoint {tmp_path / 'checkpoints' / 'step_20'} is intact" in msg
    assert step_names(tmp_path) == ["step_10", "step_20"]  # no temp dir, nothing pruned
    for step in (10, 20):
        restored, meta = ckpt.load(tmp_path / "checkpoints" / f"step_{step}", make_state(seed=4))
        assert meta == {"step": step}
        assert_bit_equal(restored, state)
    ckpt.save(tmp_path, 30, state, {}, keep_last=2)  # the disk has room again
    assert step_names(tmp_path) == ["step_20", "step_30"]


def test_failing_overwrite_of_same_step_keeps_it(tmp_path, monkeypatch):
    ckpt.save(tmp_path, 5, make_state(), {"v": 1})
    monkeypatch.setattr(ckpt, "_write_file", failing_write(10, errno.ENOSPC))
    with pytest.raises(ckpt.CheckpointWriteError):
        ckpt.save(tmp_path, 5, make_state(seed=1), {"v": 2})
    monkeypatch.undo()
    assert step_names(tmp_path) == ["step_5"]
    assert ckpt.load(tmp_path / "checkpoints" / "step_5", make_state())[1] == {"v": 1}


TMPFS_CHILD = """
import errno, json, shutil, sys
import numpy as np
from fleetrl import checkpoint as ckpt

run, out = sys.argv[1], {}
small = {"w": np.arange(16, dtype=np.float32)}
big = {"w": np.zeros(40_000, np.float32)}  # 160 KB: more than the whole 64 KiB file system
ckpt.save(run, 1, small, {"v": 1})
for name in ("precheck", "write"):
    if name == "write":  # let the pre-check pass so that the write itself hits ENOSPC
        usage = shutil.disk_usage(run)
        ckpt.shutil.disk_usage = lambda p: usage._replace(free=1 << 40)
    try:
        ckpt.save(run, 2, big, {"v": 2})
        out[name] = "saved"
    except ckpt.CheckpointWriteError as e:
        out[name] = {"errno": e.errno, "message": str(e)}
    ckpt.shutil.disk_usage = shutil.disk_usage
    out[name + "_left"] = sorted(p.name for p in (ckpt.Path(run) / "checkpoints").iterdir())
out["loaded"] = ckpt.load(ckpt.latest(run), small)[1]
print(json.dumps(out))
"""


def test_real_full_tmpfs(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting a tmpfs needs root and unshare")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m does not work here: {probe.stderr.decode().strip()}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "child.py"
    script.write_text(TMPFS_CHILD)
    # The mount lives in the child's own mount namespace: nothing stays mounted after it exits.
    command = (
        f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(mnt))} && "
        f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {shlex.quote(str(mnt))}"
    )
    child = subprocess.run(
        ["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    for name in ("precheck", "write"):
        assert out[name]["errno"] == errno.ENOSPC, out
        assert f"{mnt / 'checkpoints'}" in out[name]["message"]
        assert f"last committed checkpoint {mnt / 'checkpoints' / 'step_1'}" in out[name]["message"]
        assert out[name + "_left"] == ["step_1"]
    assert "not enough free space" in out["precheck"]["message"]
    assert "No space left on device" in out["write"]["message"]
    assert out["loaded"] == {"v": 1}
    assert not any(mnt.iterdir())  # the tmpfs was the child's alone


# ------------------------------------------------------------ safeio


def test_read_bounded_refuses_before_reading(tmp_path):
    f = tmp_path / "big.json"
    f.touch()
    os.truncate(f, GIB2)
    before = peak_rss_bytes()
    with pytest.raises(UnsafeInputError) as e:
        safeio.read_bounded(f, 1 << 20, "summary")
    assert peak_rss_bytes() - before < 64 << 20
    assert str(e.value).startswith(f"{f}: summary of 2,147,483,648 bytes exceeds the limit of ")
    assert isinstance(e.value, ValueError)
    f.write_bytes(b"x" * 10)
    assert safeio.read_bounded(f, 10) == b"x" * 10
    with pytest.raises(UnsafeInputError, match="exceeds the limit of 9 bytes"):
        safeio.read_bounded(f, 9)
    with pytest.raises(FileNotFoundError):
        safeio.read_bounded(tmp_path / "absent", 10)
    os.mkfifo(tmp_path / "fifo")  # no writer: a blocking open would hang here
    with pytest.raises(UnsafeInputError, match="not a regular file"):
        safeio.read_bounded(tmp_path / "fifo", 10)


@pytest.mark.parametrize(
    "text, depth",
    [
        ("1", 0),
        ("[]", 1),
        ('{"a": [{"b": [1]}]}', 4),
        ('["[[[[[[", "\\\\", "\\"[[[[", "]]]]"]', 1),  # brackets in strings, escaped quotes
        ("[" * 64 + "]" * 64, 64),
    ],
)
def test_loads_json_depth_is_exact(text, depth):
    assert safeio.loads_json(text, source="t", max_depth=depth) == json.loads(text)
    if depth:
        with pytest.raises(UnsafeInputError, match=f"t: JSON nested deeper than {depth - 1}"):
            safeio.loads_json(text, source="t", max_depth=depth - 1)


@pytest.mark.parametrize(
    "data", ["[" * 1_000_000, "{" * 10_000, '{"a":' * 10_000, b"[" * 200_000 + b"]" * 200_000]
)
def test_loads_json_never_recursion_error(data):
    with pytest.raises(UnsafeInputError, match="src: JSON nested deeper than 64"):
        safeio.loads_json(data, source="src")
    with pytest.raises(UnsafeInputError, match="src: "):  # a raised bound: still no RecursionError
        safeio.loads_json(data, source="src", max_depth=10**9)


@pytest.mark.timeout(30)
def test_loads_json_is_linear_in_an_unterminated_string():
    """A 1 MiB manifest of escaped quotes: each quote re-scanned the rest (~70 minutes)."""
    start = time.perf_counter()
    with pytest.raises(UnsafeInputError, match="not JSON"):
        safeio.loads_json('"' + '\\"' * (1 << 19), source="src")  # "\"\"\"...
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("data", [b"{not json", b"", b"\xff\xfe\x00", "1" * 5000, "[1,]"])
def test_loads_json_refuses_non_json_naming_source(data):
    with pytest.raises(UnsafeInputError, match=r"^metrics\.jsonl:7: not JSON"):
        safeio.loads_json(data, source="metrics.jsonl:7")


def test_loads_json_keeps_python_dialect_and_bytes():
    assert safeio.loads_json(b'\xef\xbb\xbf{"a": NaN}', source="s")["a"] != 0  # BOM and NaN
    assert safeio.loads_json('{"a": "\\u00e9"}'.encode("utf-16"), source="s") == {"a": "é"}


def test_read_json(tmp_path):
    f = tmp_path / "metadata.json"
    f.write_text('{"a": [1, 2]}')
    assert safeio.read_json(f, 100, "metadata") == {"a": [1, 2]}
    f.write_text("[" * 100)
    with pytest.raises(UnsafeInputError, match=rf"^{re.escape(str(f))}: JSON nested deeper"):
        safeio.read_json(f, 1000)
