"""``env.observe``: a 1-D observation reduced to some of its elements on both backends (obs and
final_obs alike, the spec saying so), and bad indices refused as config errors naming the
field before anything runs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl import envs
from fleetrl.cli import parse_run_config
from fleetrl.config import ConfigError, EnvConfig, config_from_dict, dump_yaml, load_yaml
from fleetrl.envs.device import GymnaxEnv
from fleetrl.envs.factory import GymnasiumFactory, ObserveWrapper


def test_gymnax_observe_slices_obs_and_final_obs_of_every_step():
    full = envs.make(EnvConfig(id="CartPole-v1", backend="gymnax", num_envs=3))
    seen = envs.make(EnvConfig(id="CartPole-v1", backend="gymnax", num_envs=3, observe=(2, 0)))
    assert seen.spec.observation_shape == (2,)
    assert dataclasses.replace(seen.spec, observation_shape=(4,)) == full.spec
    key = jax.random.PRNGKey(0)
    (full_state, full_ts), (state, ts) = jax.jit(full.reset)(key), jax.jit(seen.reset)(key)
    np.testing.assert_array_equal(ts.obs, full_ts.obs[:, [2, 0]])
    full_step, step = jax.jit(full.step), jax.jit(seen.step)
    saw_done = False
    for _ in range(30):  # pushing right: episodes end (auto-reset) within 30 steps
        action = jnp.ones(3, jnp.int32)
        full_state, full_ts = full_step(full_state, action)
        state, ts = step(state, action)
        np.testing.assert_array_equal(ts.obs, full_ts.obs[:, [2, 0]])
        np.testing.assert_array_equal(ts.final_obs, full_ts.final_obs[:, [2, 0]])
        saw_done |= bool(ts.episode_done.any())
    assert saw_done


@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_gymnasium_observe_reduces_the_pool_and_spec(num_workers):
    config = EnvConfig(
        id="CartPole-v1", backend="gymnasium", num_envs=2, num_workers=num_workers, observe=(0, 2)
    )
    env = envs.make(config)
    full = envs.make(dataclasses.replace(config, observe=()))
    try:
        assert env.spec.observation_shape == (2,) and env.pool.spec.observation_shape == (2,)
        key = jax.random.PRNGKey(0)  # the same seeds: the same episodes
        np.testing.assert_array_equal(env.reset(key)[1].obs, full.reset(key)[1].obs[:, [0, 2]])
        for _ in range(20):
            action = jnp.ones(2, jnp.int32)
            ts, full_ts = env.step(0, action)[1], full.step(0, action)[1]
            np.testing.assert_array_equal(ts.obs, full_ts.obs[:, [0, 2]])
            np.testing.assert_array_equal(ts.final_obs, full_ts.final_obs[:, [0, 2]])
    finally:
        env.close()
        full.close()


def test_observe_wrapper_keeps_the_bounds_of_the_kept_elements():
    env = GymnasiumFactory("CartPole-v1", observe=(1, 2))(0)
    assert isinstance(env, ObserveWrapper)
    inner = env.env.observation_space
    assert env.observation_space.shape == (2,)
    np.testing.assert_array_equal(env.observation_space.high, inner.high[[1, 2]])
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2,) and env.step(0)[0].shape == (2,)


@pytest.mark.parametrize(
    "backend, env_id, observe, match",
    [
        ("gymnax", "CartPole-v1", (0, 4), r"indices \[4\] are out of range .* size 4"),
        ("gymnasium", "CartPole-v1", (0, 4), r"indices \[4\] are out of range .* size 4"),
        ("gymnax", "fleetrl/fake-image", (0,), r"1-D observation.*shape \(4, 84, 84\)"),
        ("gymnasium", "FrozenLake-v1", (0,), "1-D observation.*has Discrete.16. observations"),
    ],
)
def test_observe_that_does_not_fit_the_observation_is_a_config_error(
    backend, env_id, observe, match
):
    match = f"env.observe: .*{match}"
    with pytest.raises(ConfigError, match=match):
        envs.make(EnvConfig(id=env_id, backend=backend, num_envs=2, observe=observe))


@pytest.mark.timeout(30)
def test_observe_that_does_not_fit_is_a_config_error_from_a_worker_too():
    config = EnvConfig(id="CartPole-v1", backend="gymnasium", num_workers=1, observe=(7,))
    with pytest.raises(ConfigError, match=r"env.observe: indices \[7\] are out of range"):
        envs.make(config)


@pytest.mark.parametrize(
    "observe, match", [((0, 0), "duplicate indices"), ((-1,), "indices must be >= 0")]
)
def test_bad_observe_indices_are_refused_by_the_config(observe, match):
    with pytest.raises(ConfigError, match=f"env.observe: {match}"):
        EnvConfig(observe=observe)


def test_observe_parses_from_the_command_line_and_round_trips_through_yaml():
    run = parse_run_config("ppo-cartpole", ["--env.observe", "0", "2"], "fleetrl train")
    assert run.env.observe == (0, 2)
    assert parse_run_config("ppo-cartpole", [], "fleetrl train").env.observe == ()
    again = config_from_dict(load_yaml(dump_yaml(run), "config.yaml"), "x")
    assert again.env.observe == (0, 2)


def test_gymnax_env_without_observe_is_not_wrapped():
    assert isinstance(envs.make(EnvConfig(id="CartPole-v1", backend="gymnax")), GymnaxEnv)
