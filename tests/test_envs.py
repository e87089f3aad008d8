"""The gymnax adapter: auto-reset keeps final_obs; terminated and truncated kept apart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl import envs
from fleetrl.config import ConfigError
from fleetrl.envs.device import GymnaxEnv


def run_steps(env, actions):
    state, ts = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    out = []
    for action in actions:
        prev_obs = ts.obs
        state, ts = step(state, action)
        out.append((prev_obs, ts))
    return out


def test_cartpole_autoreset_keeps_final_obs():
    env = GymnaxEnv("CartPole-v1", 4)
    steps = run_steps(env, [jnp.ones(4, jnp.int32)] * 40)
    saw_done = False
    for _, ts in steps:
        done = np.asarray(ts.episode_done)
        assert not np.any(np.asarray(ts.truncated))  # pushing right falls over long before 500
        if done.any():
            saw_done = True
            # the observation reached is out of bounds (pole fell); the new one is a fresh reset
            assert np.all(np.abs(np.asarray(ts.final_obs)[done, 2]) > 0.2)
            assert np.all(np.abs(np.asarray(ts.obs)[done]) <= 0.05 + 1e-6)
        np.testing.assert_array_equal(np.asarray(ts.final_obs)[~done], np.asarray(ts.obs)[~done])
    assert saw_done


def test_episode_stats_are_raw_totals():
    env = GymnaxEnv("CartPole-v1", 2)
    steps = run_steps(env, [jnp.ones(2, jnp.int32)] * 30)
    lengths = [np.asarray(ts.episode_length) for _, ts in steps]
    returns = [np.asarray(ts.episode_return) for _, ts in steps]
    np.testing.assert_array_equal(lengths[0], [1, 1])
    np.testing.assert_array_equal(returns[0], [1.0, 1.0])
    for (_, ts), length in zip(steps, lengths, strict=True):
        np.testing.assert_array_equal(np.asarray(ts.episode_return), length.astype(np.float32))


def test_pendulum_truncates_at_time_limit_and_never_terminates():
    env = GymnaxEnv("Pendulum-v1", 3)
    assert env.spec.max_episode_steps == 200
    steps = run_steps(env, [jnp.zeros((3, 1))] * 201)
    truncated = np.array([np.asarray(ts.truncated) for _, ts in steps])
    terminated = np.array([np.asarray(ts.terminated) for _, ts in steps])
    assert not terminated.any()
    assert truncated[199].all() and truncated.sum() == 3
    assert np.all(np.asarray(steps[199][1].episode_length) == 200)
    # final_obs is the state the 200th step reached (one step of at most 8 rad/s x 0.05 s from
    # the last one), for bootstrapping; obs is already the next episode's reset
    prev_obs, ts = steps[199]
    angle = lambda obs: np.arctan2(np.asarray(obs)[:, 1], np.asarray(obs)[:, 0])
    turned = np.angle(np.exp(1j * (angle(ts.final_obs) - angle(prev_obs))))
    assert np.all(np.abs(turned) <= 0.4 + 1e-5)
    assert not np.allclose(ts.final_obs, ts.obs)
    np.testing.assert_array_equal(steps[198][1].final_obs, steps[198][1].obs)


def test_continuous_actions_are_clipped_to_bounds():
    env = GymnaxEnv("Pendulum-v1", 1)
    big = run_steps(env, [jnp.full((1, 1), 100.0)])[0][1]
    bound = run_steps(env, [jnp.full((1, 1), 2.0)])[0][1]
    np.testing.assert_allclose(big.obs, bound.obs)


def test_specs():
    assert GymnaxEnv("Acrobot-v1", 2).spec.num_actions == 3
    spec = GymnaxEnv("MountainCarContinuous-v0", 2).spec
    assert spec.action_kind == "continuous" and spec.action_low == (-1.0,)
    with pytest.raises(ValueError, match="num_envs"):
        GymnaxEnv("CartPole-v1", 0)


def test_unknown_gymnax_id_names_it():
    with pytest.raises(
        ConfigError, match="env.id: unknown gymnax environment 'CartPol-v1'.*backend gymnasium"
    ):
        GymnaxEnv("CartPol-v1", 1)


@pytest.mark.parametrize(
    "env_id, backend, match",
    [
        ("LunarLander-v3", "gymnax", "gymnasium env, but env.backend is gymnax: add --env.backe"),
        ("SpaceInvaders-MinAtar", "gymnasium", "gymnax env, but .* add --env.backend gymnax"),
        ("CartPol-v1", "gymnax", "neither gymnax nor gymnasium has it. Did you mean CartPole-v1"),
        ("LunarLandr-v3", "auto", "neither .* Did you mean LunarLander-v3"),
        ("Asterix-MinAtr", "auto", "Did you mean Asterix-MinAtar"),  # a gymnax-only id
    ],
)
def test_env_id_the_backend_lacks_says_which_backend_has_it_or_what_is_close(
    env_id, backend, match
):
    with pytest.raises(ConfigError, match=f"env.id: .*{match}"):
        envs.check_env_id(env_id, backend)


@pytest.mark.parametrize(
    "env_id, backend",
    [
        ("CartPole-v1", "gymnax"),
        ("CartPole-v1", "gymnasium"),
        ("LunarLander-v3", "auto"),
        ("SpaceInvaders-MinAtar", "auto"),
        ("fleetrl.envs.fake:FaultyEnv", "gymnasium"),
        ("PongNoFrameskip-v4", "auto"),  # registered by ale-py's import
    ],
)
def test_env_id_the_backend_has_passes(env_id, backend):
    envs.check_env_id(env_id, backend)


def test_atari_ids_build_without_the_atari_preprocessing():
    pytest.importorskip("ale_py")
    from fleetrl.envs.worker import EnvFactory

    env = EnvFactory("ALE/Pong-v5")(0)  # in a fresh worker, ale-py is not imported yet
    assert env.observation_space.shape == (210, 160, 3)
    env.close()
