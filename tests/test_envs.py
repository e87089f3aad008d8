"""The gymnax adapter: auto-reset keeps final_obs; terminated and truncated kept apart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl import envs
from fleetrl.config import ConfigError, EnvConfig
from fleetrl.envs.device import GymnaxEnv
from fleetrl.envs.fake_device import KINDS, FakeDeviceEnv


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


def test_gymnax_spec_says_float32_observations():
    assert GymnaxEnv("CartPole-v1", 1).spec.observation_dtype == "float32"
    assert not GymnaxEnv("CartPole-v1", 1).spec.action_mask


# ---- MemoryChain (bsuite) ----------------------------------------------------------------------


def test_memory_chain_pays_the_remembered_context_and_terminates():
    """bsuite's MemoryChain: the context bit shows in the first observation only (bsuite, and
    gymnax after it, returns from each step the observation from before it, so the first step
    shows it again); step ``memory_length + 1`` pays +1 for acting on it (-1 else) and
    terminates."""
    env = envs.make(EnvConfig(id="MemoryChain-bsuite", backend="gymnax", num_envs=8))
    assert env.spec.observation_shape == (3,) and env.spec.num_actions == 2
    assert env.spec.max_episode_steps == 1000
    state, ts = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    for _ in range(3):  # three episodes: each is memory_length + 1 = 6 steps
        answer = (np.asarray(ts.obs)[:, 2] > 0).astype(np.int32)  # context 2 * bit - 1
        assert set(np.unique(answer)) == {0, 1}  # both contexts occur among 8 envs
        for t in range(6):
            state, ts = step(state, jnp.asarray(answer))
            assert bool(ts.terminated.all()) == (t == 5) and not ts.truncated.any()
        np.testing.assert_array_equal(ts.reward, np.ones(8))
        np.testing.assert_array_equal(ts.episode_length, np.full(8, 6))
    state, ts = env.reset(jax.random.PRNGKey(1))
    wrong = 1 - (np.asarray(ts.obs)[:, 2] > 0).astype(np.int32)
    for _ in range(6):
        state, ts = step(state, jnp.asarray(wrong))
    np.testing.assert_array_equal(ts.reward, -np.ones(8))


def test_memory_chain_parameters_from_env_kwargs_and_truncation():
    """A time limit shorter than the memory cuts every episode: truncated, never terminated."""
    kwargs = "{memory_length: 10, max_steps_in_episode: 4}"
    env = envs.make(EnvConfig(id="MemoryChain-bsuite", backend="gymnax", num_envs=2, kwargs=kwargs))
    assert env.spec.max_episode_steps == 4
    steps = run_steps(env, [jnp.zeros(2, jnp.int32)] * 8)
    truncated = np.array([np.asarray(ts.truncated) for _, ts in steps])
    terminated = np.array([np.asarray(ts.terminated) for _, ts in steps])
    assert not terminated.any()
    np.testing.assert_array_equal(truncated.all(axis=1), [t % 4 == 3 for t in range(8)])
    assert np.asarray(steps[3][1].final_obs)[0, 0] == pytest.approx(1 - 3 / 10)  # time left
    with pytest.raises(ConfigError, match="env.kwargs: MemoryChain-bsuite has no parameter 'x'"):
        envs.make(EnvConfig(id="MemoryChain-bsuite", backend="gymnax", kwargs="{x: 1}"))


# ---- fake device envs --------------------------------------------------------------------------


FAKE_SPECS = {
    "discrete": ((4,), "float32", "discrete", 3),
    "continuous": ((3,), "float32", "continuous", 0),
    "image": ((4, 84, 84), "uint8", "discrete", 3),
    "masked": ((5,), "float32", "discrete", 4),
}


@pytest.mark.parametrize("kind", sorted(FAKE_SPECS))
def test_fake_device_envs_have_their_spec_and_mix_terminations_and_truncations(kind):
    env = envs.make(EnvConfig(id=f"fleetrl/fake-{kind}", num_envs=8, kwargs="{episode_length: 6}"))
    assert isinstance(env, FakeDeviceEnv)
    spec = env.spec
    shape, dtype, action_kind, num_actions = FAKE_SPECS[kind]
    assert (spec.observation_shape, spec.observation_dtype) == (shape, dtype)
    assert (spec.action_kind, spec.num_actions, spec.max_episode_steps) == (
        action_kind,
        num_actions,
        6,
    )
    assert spec.action_mask == (kind == "masked")
    if kind == "continuous":
        assert spec.action_shape == (2,) and spec.action_low == (-1.0, -1.0)
        action = jnp.zeros((8, 2))
    else:
        action = jnp.zeros(8, jnp.int32)
    steps = run_steps(env, [action] * 40)
    first = steps[0][0]
    assert first.dtype == jnp.dtype(dtype) and first.shape == (8, *shape)
    terminated = np.array([np.asarray(ts.terminated) for _, ts in steps])
    truncated = np.array([np.asarray(ts.truncated) for _, ts in steps])
    lengths = np.array([np.asarray(ts.episode_length) for _, ts in steps])
    assert terminated.any() and truncated.any() and not (terminated & truncated).any()
    assert (lengths[truncated] == 6).all() and (lengths <= 6).all()
    for _, ts in steps:
        assert (ts.action_mask is None) == (kind != "masked")
        done = np.asarray(ts.episode_done)
        same = np.asarray(ts.obs == ts.final_obs).reshape(8, -1).all(axis=1)
        assert same[~done].all()
        if kind != "image":  # the time fraction differs; an image may repeat
            assert not same[done].any()


@pytest.mark.parametrize("kind", ["discrete", "image"])
def test_fake_device_envs_pay_the_target_action(kind):
    env = FakeDeviceEnv(kind, 16, terminate_prob=0.0)
    state, ts = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    for _ in range(5):
        target = state.target
        _, ts_wrong = step(state, (target + 1) % 3)
        state, ts = step(state, target)
        np.testing.assert_array_equal(ts.reward, np.ones(16))
        np.testing.assert_array_equal(ts_wrong.reward, np.zeros(16))


def test_fake_device_continuous_pays_closeness_and_clips():
    env = FakeDeviceEnv("continuous", 4)
    state, ts = env.reset(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(ts.obs[:, :2], state.target)
    _, exact = env.step(state, state.target)
    np.testing.assert_allclose(exact.reward, np.zeros(4), atol=1e-6)
    _, far = env.step(state, jnp.full((4, 2), 5.0))
    _, bound = env.step(state, jnp.full((4, 2), 1.0))
    np.testing.assert_allclose(far.reward, bound.reward)


@pytest.mark.parametrize("kind", ["discrete", "masked"])
def test_fake_device_env_ids_resolve_to_the_device_backend(kind):
    env_id = f"fleetrl/fake-{kind}"
    assert sorted(envs.FAKE_DEVICE_IDS.values()) == sorted(KINDS)
    assert envs.resolve_backend(EnvConfig(id=env_id)) == "gymnax"
    envs.check_env_id(env_id, "gymnax")
    envs.check_env_id(env_id, "auto")
    with pytest.raises(ConfigError, match="gymnax env, but env.backend is gymnasium"):
        envs.check_env_id(env_id, "gymnasium")
    with pytest.raises(ConfigError, match="Did you mean fleetrl/fake-masked"):
        envs.check_env_id("fleetrl/fake-maskd", "auto")
    with pytest.raises(ConfigError, match="env.kwargs: fleetrl/fake-.* takes episode_length"):
        envs.make(EnvConfig(id=env_id, kwargs="{length: 3}"))
    with pytest.raises(ConfigError, match="env.kwargs: .*episode_length >= 1"):
        envs.make(EnvConfig(id=env_id, kwargs="{episode_length: 0}"))
