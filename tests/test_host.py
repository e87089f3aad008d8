"""Host (gymnasium) envs in the driver: same training loop, errors surfaced, workers cleaned up."""

import dataclasses
import json
import multiprocessing

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl.cli import main
from fleetrl.config import ConfigError
from fleetrl.envs.errors import EnvStepError
from fleetrl.envs.host import HostEnv
from fleetrl.envs.pool import EnvPool
from fleetrl.train import train

FAKE = "fleetrl.envs.fake:FaultyEnv"


def host_run(tiny, env_id=FAKE, kwargs="", num_workers=0, **env):
    run = tiny("ppo-cartpole-gym")
    env_config = dataclasses.replace(
        run.env, id=env_id, kwargs=kwargs, num_workers=num_workers, num_envs=4, **env
    )
    return dataclasses.replace(run, env=env_config)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_no_children():
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("num_workers, parent_steps", [(0, False), (2, False), (1, True)])
def test_host_env_trains_through_the_same_driver(tiny, num_workers, parent_steps):
    run = host_run(tiny, "CartPole-v1", num_workers=num_workers, parent_steps=parent_steps)
    result = train(run)
    assert result.status == "completed"
    assert np.isfinite(result.eval_returns).all()
    logged = records(result.run_dir)
    assert any("faults/env_restarts" in r for r in logged)
    assert any("charts/episodic_return" in r for r in logged)
    assert_no_children()


@pytest.mark.timeout(120)
def test_continuous_actions_out_of_range_are_clipped_and_the_fraction_logged(tiny):
    """Pendulum's actions are in [-2, 2]; a Gaussian policy samples outside it sometimes."""
    run = host_run(tiny, "Pendulum-v1")
    run = dataclasses.replace(run, algo=dataclasses.replace(run.algo, init_log_std=1.0))
    result = train(run)
    fractions = [r["train/action_clip_fraction"] for r in records(result.run_dir) if
                 "train/action_clip_fraction" in r]  # fmt: skip
    assert fractions and all(0.0 <= f <= 1.0 for f in fractions)
    assert max(fractions) > 0.0  # std e^1 around 0: about 45% of the samples fall outside
    assert_no_children()


@pytest.mark.timeout(120)
def test_env_error_in_a_worker_is_raised_with_index_and_traceback(tiny):
    run = host_run(tiny, kwargs="{crash_at_step: 20, fault_envs: [3]}", num_workers=2)
    with pytest.raises(EnvStepError) as info:
        train(run)
    message = str(info.value)
    assert "env 3" in message and "InjectedFault" in message and "Traceback" in message
    assert_no_children()


@pytest.mark.timeout(120)
def test_restart_policy_keeps_training_and_counts_restarts(tiny, tmp_path):
    kwargs = (
        f"{{crash_at_step: 20, fault_envs: [1], counter_path: '{tmp_path / 'faults'}', "
        "max_faults: 1}"
    )
    run = host_run(tiny, kwargs=kwargs, num_workers=2, on_error="restart")
    result = train(run)
    assert result.status == "completed"
    logged = records(result.run_dir)
    assert [r["faults/env_restarts"] for r in logged if "faults/env_restarts" in r][-1] == 1.0
    assert_no_children()


def test_several_seeds_on_host_envs_are_refused_before_any_work(tiny, tmp_path):
    run = host_run(tiny, "CartPole-v1")
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, num_seeds=2))
    with pytest.raises(ConfigError, match="train.num_seeds"):
        train(run)
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(120)
def test_resume_of_a_host_env_run_continues_counters(tiny):
    run = host_run(tiny, "CartPole-v1")
    first = train(run, stop_after_steps=run.steps_per_iteration)
    assert first.status == "stopped"
    second = train(run, resume=first.run_dir)
    assert second.status == "completed" and second.env_steps == run.num_iterations * 128
    assert_no_children()


@pytest.mark.timeout(120)
def test_cli_reports_env_errors_and_unknown_ids(tmp_path, capsys):
    code = main(
        [
            "train",
            "ppo-cartpole-gym",
            "--env.id",
            FAKE,
            "--env.kwargs",
            "{crash_in_init: true}",
            "--log.run-dir",
            str(tmp_path / "run"),
            "--log.progress",
            "False",
        ]
    )
    assert code == 1
    assert "FaultyEnv" in capsys.readouterr().err
    code = main(["train", "ppo-cartpole-gym", "--env.id", "NoSuchEnv-v9"])
    assert code == 2
    assert "NoSuchEnv-v9" in capsys.readouterr().err


class TinyImageEnv(gymnasium.Env):
    """uint8 frames, as Atari's after preprocessing (smaller)."""

    observation_space = gymnasium.spaces.Box(0, 255, (2, 6, 6), np.uint8)
    action_space = gymnasium.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.full((2, 6, 6), 9, np.uint8), {}

    def step(self, action):
        return np.full((2, 6, 6), 9, np.uint8), 0.0, False, False, {}


@pytest.mark.timeout(60)
def test_host_spec_says_the_observation_dtype_the_pool_keeps():
    images = HostEnv(EnvPool(TinyImageEnv, 2, 0))
    floats = HostEnv(EnvPool.from_id("CartPole-v1", 2, 0))
    try:
        assert images.spec.observation_dtype == "uint8" and not images.spec.action_mask
        assert images.reset(jax.random.PRNGKey(0))[1].obs.dtype == jnp.uint8
        assert floats.spec.observation_dtype == "float32"
    finally:
        images.close()
        floats.close()
