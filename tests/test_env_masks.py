"""Action masks and Discrete observations of host envs (EnvPool, HostEnv), and the masked fake
envs: a mask is found at startup, crosses the pool as [N, A] bool with or without workers, and
reaches TimeStep.action_mask; envs without one are unchanged."""

from __future__ import annotations

import functools
import multiprocessing
import warnings

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium import spaces

from fleetrl import envs
from fleetrl.config import EnvConfig
from fleetrl.envs.errors import (
    EnvResetError,
    EnvStepError,
    MismatchedSpacesError,
    UnsupportedSpaceError,
)
from fleetrl.envs.fake import MaskedActionError, MaskedEnv
from fleetrl.envs.fake_device import FakeDeviceEnv
from fleetrl.envs.pool import EnvPool

MASKED = "fleetrl.envs.fake:MaskedEnv"


@pytest.fixture
def pools():
    """Build pools through ``pools(...)`` (`EnvPool.from_id`, or ``EnvPool`` with a callable);
    afterwards close them and check that no worker is left."""
    made: list[EnvPool] = []

    def make(env, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # gymnasium's toy-text envs
            pool = (EnvPool(env, *args, **kwargs) if callable(env) else
                    EnvPool.from_id(env, *args, **kwargs))  # fmt: skip
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()
    assert not multiprocessing.active_children()


def legal_actions(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random legal action per row of ``mask [N, A]``."""
    return np.array([rng.choice(np.flatnonzero(row)) for row in mask])


def masked_actions(mask: np.ndarray) -> np.ndarray:
    """A masked action per row (0 where every action is legal)."""
    return np.array([np.flatnonzero(~row)[0] if (~row).any() else 0 for row in mask])


# ---- the fake env itself ---------------------------------------------------------------------


def test_masked_env_raises_on_a_masked_action_and_pays_a_legal_one():
    env = MaskedEnv(num_actions=4, episode_length=3)
    obs, info = env.reset(seed=0)
    mask = info["action_mask"]
    assert mask.dtype == np.int8 and mask.shape == (4,) and mask.any()
    np.testing.assert_array_equal(obs, mask.astype(np.float32))
    for step in range(1, 4):
        obs, reward, terminated, truncated, info = env.step(int(np.flatnonzero(mask)[0]))
        assert (reward, terminated, truncated) == (1.0, False, step == 3)
        mask = info["action_mask"]
    while mask.all():  # a mask that forbids something
        _, info = env.reset()
        mask = info["action_mask"]
    with pytest.raises(MaskedActionError, match="is masked"):
        env.step(int(np.flatnonzero(mask == 0)[0]))


# ---- through the pool ------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dict_obs", [False, True])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_masks_cross_the_pool_as_bool_rows_of_the_observation_they_go_with(
    pools, num_workers, dict_obs
):
    pool = pools(MASKED, 4, num_workers, env_kwargs={"dict_obs": dict_obs, "episode_length": 5})
    spec = pool.spec
    assert spec.action_mask and spec.observation_shape == (4,) and spec.num_actions == 4
    assert spec.as_env_spec().action_mask
    ts = pool.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(12):  # through two auto-resets: a mask always goes with its obs
        assert ts.action_mask.dtype == np.bool_ and ts.action_mask.shape == (4, 4)
        assert ts.action_mask.any(axis=1).all()
        np.testing.assert_array_equal(ts.obs, ts.action_mask.astype(np.float32))
        ts = pool.step(legal_actions(ts.action_mask, rng))  # a masked one would raise
        assert (ts.reward == 1.0).all()
    assert not ts.action_mask.all()  # (this seed) so a masked action exists
    with pytest.raises(EnvStepError, match=r"MaskedActionError: env \d: action \d is masked"):
        pool.step(masked_actions(ts.action_mask))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_taxi_masks_from_info_and_one_hot_observations(pools, num_workers):
    pool = pools("Taxi-v4", 3, num_workers)
    spec = pool.spec
    assert spec.action_mask and spec.num_actions == 6
    assert spec.observation_shape == (500,) and spec.observation_dtype == np.float32
    ts = pool.reset(seed=1)
    reference = gymnasium.make("Taxi-v4")
    state, info = reference.reset(seed=1)
    np.testing.assert_array_equal(ts.obs[0], np.eye(500, dtype=np.float32)[state])
    np.testing.assert_array_equal(ts.action_mask[0], info["action_mask"] != 0)
    ts = pool.step(np.array([1, 1, 1]))
    state, _, _, _, info = reference.step(1)
    assert ts.obs[0, state] == 1.0 and ts.obs[0].sum() == 1.0
    np.testing.assert_array_equal(ts.action_mask[0], info["action_mask"] != 0)


@pytest.mark.timeout(30)
def test_discrete_observations_without_masks_are_one_hot_and_carry_no_mask(pools):
    pool = pools("FrozenLake-v1", 2, env_kwargs={"is_slippery": False})
    assert pool.spec.observation_shape == (16,) and not pool.spec.action_mask
    ts = pool.reset(seed=0)
    np.testing.assert_array_equal(ts.obs, np.eye(16, dtype=np.float32)[[0, 0]])
    ts = pool.step(np.array([2, 1]))  # right, down
    np.testing.assert_array_equal(ts.obs.argmax(axis=1), [1, 4])
    assert ts.action_mask is None
    assert pools("CartPole-v1", 2).reset().action_mask is None


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_mask_with_no_legal_action_names_the_env_and_step(pools, num_workers):
    # env 1's 4th step (the startup probe's step was its 1st) leaves nothing legal
    make = functools.partial(_empty_mask_in_env_1, at_step=4)
    pool = pools(make, 2, num_workers)
    ts = pool.reset(seed=0)
    rng = np.random.default_rng(0)
    ts = pool.step(legal_actions(ts.action_mask, rng))
    ts = pool.step(legal_actions(ts.action_mask, rng))
    with pytest.raises(EnvStepError, match="env 1 returned an action mask with no legal action "
                       "at pool step 3") as info:  # fmt: skip
        pool.step(legal_actions(ts.action_mask, rng))
    assert (info.value.env_index, info.value.step) == (1, 3)


def _empty_mask_in_env_1(index: int, at_step: int) -> MaskedEnv:
    return MaskedEnv(index, empty_mask_at_step=at_step if index == 1 else None)


@pytest.mark.timeout(30)
def test_a_mask_on_continuous_actions_is_refused_at_startup(pools):
    with pytest.raises(UnsupportedSpaceError, match="continuous: fleetrl masks Discrete"):
        pools(ContinuousMaskedEnv, 2, 0)
    dict_space = functools.partial(ContinuousMaskedEnv, dict_obs=True)
    with pytest.raises(UnsupportedSpaceError, match="continuous: fleetrl masks Discrete"):
        pools(dict_space, 2, 0)


@pytest.mark.timeout(30)
def test_an_env_without_the_probe_declares_its_mask_or_is_told_to(pools):
    declared = pools(MASKED, 2, 1, env_kwargs={"startup_probe": False})
    assert declared.spec.action_mask
    assert declared.reset(seed=0).action_mask.shape == (2, 4)
    undeclared = pools(UndeclaredMaskedEnv, 2, 0)
    assert not undeclared.spec.action_mask
    with pytest.raises(EnvResetError, match="declare it with metadata.'fleetrl_action_mask'"):
        undeclared.reset()


@pytest.mark.timeout(30)
def test_a_mask_of_the_wrong_shape_is_an_error_at_startup_or_step(pools):
    with pytest.raises(Exception, match=r"action_mask'\] of shape \(3,\), expected \(4,\)"):
        pools(functools.partial(WrongMaskEnv, bad_at_reset=True), 1, 0)
    pool = pools(WrongMaskEnv, 1, 0)
    pool.reset()
    with pytest.raises(EnvStepError, match=r"of shape \(3,\), expected \(4,\)"):
        pool.step(np.array([0]))


@pytest.mark.timeout(30)
def test_dict_observations_need_exactly_observation_and_a_mask_per_action(pools):
    box = spaces.Box(0.0, 1.0, (4,), np.float32)
    extra = spaces.Dict({"observation": box, "action_mask": box, "time": box})
    with pytest.raises(UnsupportedSpaceError, match="exactly the keys 'observation' and 'act"):
        pools(functools.partial(SpacesEnv, extra), 1, 0)
    short = spaces.Dict({"observation": box, "action_mask": spaces.MultiBinary(3)})
    with pytest.raises(UnsupportedSpaceError, match=r"needs \(4,\): one entry per action"):
        pools(functools.partial(SpacesEnv, short), 1, 0)


@pytest.mark.timeout(30)
def test_envs_of_one_pool_all_have_masks_or_none_has(pools):
    def make(index: int):
        return MaskedEnv(index) if index == 0 else UndeclaredMaskedEnv(index)

    with pytest.raises(MismatchedSpacesError, match="env 1 gives no action mask, env 0 does"):
        pools(make, 2, 0)


class SpacesEnv(MaskedEnv):
    """A MaskedEnv claiming another observation space (refused before it is reset)."""

    def __init__(self, observation_space):
        super().__init__()
        self.observation_space = observation_space


class ContinuousMaskedEnv(gymnasium.Env):
    def __init__(self, dict_obs: bool = False):
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        box = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = (spaces.Dict({"observation": box, "action_mask": box})
                                  if dict_obs else box)  # fmt: skip

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {"action_mask": np.ones(2, np.int8)}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {"action_mask": np.ones(2, np.int8)}


class UndeclaredMaskedEnv(MaskedEnv):
    metadata = {"fleetrl_startup_probe": False}


class WrongMaskEnv(MaskedEnv):
    """A mask of 3 entries for 4 actions, at reset or from the second step on."""

    def __init__(self, bad_at_reset: bool = False):
        super().__init__()
        self.bad_at_reset = bad_at_reset

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        self.mask = np.ones(4, np.int8)
        return obs, {"action_mask": np.ones(3 if self.bad_at_reset else 4, np.int8)}

    def step(self, action):
        obs, reward, terminated, truncated, _ = super().step(action)
        self.mask = np.ones(4, np.int8)
        bad = self.num_steps > 1  # the startup probe took step 1
        return obs, reward, terminated, truncated, {"action_mask": np.ones(3 if bad else 4)}


# ---- through HostEnv -------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_host_env_returns_the_mask_and_a_masked_policy_never_takes_a_masked_action(num_workers):
    env = envs.make(EnvConfig(id=MASKED, num_envs=3, num_workers=num_workers))
    try:
        assert env.spec.action_mask and env.spec.observation_dtype == "float32"
        assert len(env._result_shape) == 3
        state, ts = jax.jit(env.reset)(jax.random.PRNGKey(0))
        (_, ts), rewards = _masked_rollout(env, state, ts, 40)
        env.raise_if_failed()  # a masked action would have raised MaskedActionError here
        assert ts.action_mask.dtype == jnp.bool_ and ts.action_mask.shape == (3, 4)
        assert float(rewards.sum()) == 40 * 3
    finally:
        env.close()


def _masked_rollout(env, state, ts, num_steps: int):
    """``num_steps`` steps of a uniform policy over the legal actions, in one compiled scan."""

    def step(carry, key):
        state, ts = carry
        action = jax.random.categorical(key, jnp.where(ts.action_mask, 0.0, -jnp.inf))
        state, ts = env.step(state, action)
        return (state, ts), ts.reward

    keys = jax.random.split(jax.random.PRNGKey(1), num_steps)
    return jax.jit(lambda carry: jax.lax.scan(step, carry, keys))((state, ts))


@pytest.mark.timeout(60)
def test_host_env_without_masks_keeps_two_arrays_and_no_mask():
    env = envs.make(EnvConfig(id="CartPole-v1", backend="gymnasium", num_envs=2))
    try:
        assert not env.spec.action_mask and len(env._result_shape) == 2
        _, ts = env.reset(jax.random.PRNGKey(0))
        assert ts.action_mask is None
        _, ts = env.step(jnp.int32(0), jnp.zeros(2, jnp.int32))
        assert ts.action_mask is None
    finally:
        env.close()


def test_a_failed_host_call_returns_every_action_legal():
    env = envs.make(EnvConfig(id=MASKED, num_envs=2))
    try:
        env.error = RuntimeError("an earlier failure")
        _, ts = env.reset(jax.random.PRNGKey(0))
        assert bool(ts.action_mask.all())
        env.error = None
    finally:
        env.close()


# ---- the masked fake device env --------------------------------------------------------------


def test_fake_device_masked_env_counts_violations_and_pays_legal_actions():
    env = FakeDeviceEnv("masked", 6, episode_length=5)
    assert env.spec.action_mask and env.spec.num_actions == 4
    state, ts = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    for _ in range(20):
        assert ts.action_mask.dtype == jnp.bool_ and bool(ts.action_mask.any(axis=1).all())
        np.testing.assert_array_equal(ts.obs[:, :4], ts.action_mask.astype(jnp.float32))
        state, ts = step(state, jnp.argmax(ts.action_mask, axis=1))  # a legal action
        assert bool((ts.reward == 1.0).all())
    assert int(state.violations.sum()) == 0
    illegal = jnp.argmin(ts.action_mask, axis=1)
    some_illegal = ~ts.action_mask[jnp.arange(6), illegal]
    state, ts = step(state, illegal)
    np.testing.assert_array_equal(state.violations, some_illegal.astype(jnp.int32))
    np.testing.assert_array_equal(ts.reward, jnp.where(some_illegal, -100.0, 1.0))
