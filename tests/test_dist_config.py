"""The distributed layer's parts that need no Ray running: its config, its security checks,
how segments join, and that nothing outside `fleetrl.distributed` imports ray."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleetrl.config import ConfigError, DistConfig, config_from_dict, load_preset, to_dict
from fleetrl.distributed import cluster


def with_dist(preset: str, **dist):
    run = load_preset(preset)
    data = to_dict(run) | {"dist": dist}
    return config_from_dict(data, preset)


def test_single_mode_configs_read_as_before():
    run = load_preset("ppo-cartpole")
    assert run.dist == DistConfig() and "dist" not in to_dict(run)
    sync = with_dist("ppo-cartpole", mode="sync", actors=4)
    assert to_dict(sync)["dist"]["actors"] == 4
    assert config_from_dict(to_dict(sync), "again") == sync


@pytest.mark.parametrize(
    "preset, dist, field, words",
    [
        ("ppo-cartpole", {"mode": "sync", "actors": 3}, "dist.actors", "multiple of"),
        ("ppo-cartpole", {"mode": "sync", "actors": 0}, "dist.actors", ">= 1"),
        ("a2c-cartpole", {"mode": "async"}, "dist.mode", "impala"),
        ("ppo-cartpole", {"mode": "sync", "address": "nohost"}, "dist.address", "HOST:PORT"),
        ("ppo-cartpole", {"mode": "sync", "sample_timeout": 0}, "dist.sample_timeout", "> 0"),
        ("ppo-cartpole", {"mode": "parallel"}, "dist.mode", ""),
        ("ppo-cartpole", {"mode": "sync", "actor": 2}, "actor", "unknown"),
    ],
)
def test_bad_dist_settings_are_refused_by_name(preset, dist, field, words):
    with pytest.raises(ConfigError, match=re.escape(field)) as error:
        with_dist(preset, **dist)
    assert words in str(error.value)


def test_several_seeds_are_single_process_only():
    run = load_preset("ppo-cartpole")
    data = to_dict(run) | {"dist": {"mode": "sync"}}
    data["train"] = data["train"] | {"num_seeds": 2}
    with pytest.raises(ConfigError, match="train.num_seeds"):
        config_from_dict(data, "x")


def test_joining_another_host_needs_token_authentication():
    cluster.check_join("127.0.0.1:6379", {})
    cluster.check_join("localhost:6379", {})
    cluster.check_join("[::1]:6379", {})
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE=token") as error:
        cluster.check_join("10.1.2.3:6379", {})
    assert "dist.address 10.1.2.3:6379" in str(error.value)
    with pytest.raises(ConfigError):
        cluster.check_join("head.example.org:6379", {"RAY_AUTH_MODE": "disabled"})
    cluster.check_join("10.1.2.3:6379", {"RAY_AUTH_MODE": "token"})


def test_a_local_cluster_gets_token_authentication(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    extra = cluster.local_auth_env({})
    assert extra["RAY_AUTH_MODE"] == "token" and len(extra["RAY_AUTH_TOKEN"]) == 32
    assert cluster.local_auth_env({})["RAY_AUTH_TOKEN"] != extra["RAY_AUTH_TOKEN"]
    assert cluster.local_auth_env({"RAY_AUTH_MODE": "disabled"}) == {}  # the user's choice
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("theirs")
    assert cluster.local_auth_env({}) == {"RAY_AUTH_MODE": "token"}  # Ray reads their token


def test_segments_join_side_by_side():
    from fleetrl.distributed.calls import concat_segments

    def segment(value, n):
        return {
            "obs": np.full((5, n, 4), value, np.float32),
            "action": np.full((5, n), value),
            "reward": np.ones((5, n)),
            "terminated": np.zeros((5, n), bool),
            "truncated": np.zeros((5, n), bool),
            "next_obs": np.zeros((5, n, 4), np.float32),
            "extras": {"log_prob": np.zeros((5, n))},
            "episode_return": np.zeros((5, n)),
            "episode_length": np.zeros((5, n), np.int32),
            "actor_state": (np.full((n, 3), value),),
            "action_mask": None,
        }

    rollout = concat_segments([segment(0, 2), segment(1, 2)])
    assert rollout.obs.shape == (1, 5, 4, 4) and rollout.extras["log_prob"].shape == (1, 5, 4)
    assert rollout.action[0, 0].tolist() == [0, 0, 1, 1]
    assert rollout.actor_state[0].shape == (1, 4, 3) and rollout.action_mask is None


def test_only_the_distributed_package_imports_ray():
    root = Path(__file__).resolve().parents[1] / "fleetrl"
    importers = [
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if re.search(r"^\s*(import ray|from ray)", path.read_text(), re.M)
    ]
    assert all(path.startswith("distributed/") for path in importers), importers


def test_without_ray_a_distributed_run_says_how_to_install_it():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from fleetrl.distributed import require_ray\n"
        "from fleetrl.config import ConfigError\n"
        "try:\n    require_ray()\nexcept ConfigError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "fleetrl[ray]"' in out.stdout


def test_resume_compares_dist_settings():
    from fleetrl.train import resume_changes

    run = load_preset("ppo-cartpole")
    sync = dataclasses.replace(run, dist=DistConfig(mode="sync"))
    assert any(change.startswith("dist.mode") for change in resume_changes(run, sync))
    longer = dataclasses.replace(sync, dist=DistConfig(mode="sync", sample_timeout=5.0))
    assert resume_changes(sync, longer) == []  # a runtime setting
