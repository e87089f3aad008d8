"""Pure-JAX fake envs of four kinds of spec, for contract tests and smoke runs.

`FakeDeviceEnv` has the batched ``Env`` interface of `fleetrl.envs.device.GymnaxEnv`
(``spec``, ``reset(key)``, ``step(state, action)`` with auto-reset, terminated and truncated
apart, ``final_obs``, raw episode totals) and is tiny to compile and step, so a test can run
every algorithm on every kind (DESIGN.md, "Algorithm contract v2"). From a config:
``--env.id fleetrl/fake-<kind> --env.backend gymnax`` (or auto), ``env.kwargs`` its
arguments (`fleetrl.envs.FAKE_DEVICE_IDS`).

Each step shows a random target; acting on it pays (an easy contextual bandit, so a smoke run
can also show learning). Episodes end at random (``terminate_prob`` per step: terminated) or
at ``episode_length`` steps (truncated), so both kinds of ending occur.

- ``discrete``: obs ``[4]`` float32 (the target one-hot, then the time fraction), 3 actions,
  reward 1 for the target, else 0.
- ``continuous``: obs ``[3]`` float32 (the target in ``[-1, 1]^2``, the time fraction), actions
  Box ``(2,)`` in ``[-1, 1]`` (clipped), reward ``-|action - target|^2``.
- ``image``: obs ``[4, 84, 84]`` uint8, frames stacked first as Atari's (what a Nature CNN
  takes), every pixel ``60 * (target + 1)``; 3 actions, reward 1 for the target.
- ``masked``: obs ``[5]`` float32 (the mask, then the time fraction), 4 actions, a random mask
  per step with at least one legal action (``TimeStep.action_mask``, ``spec.action_mask``);
  a legal action pays 1, a masked one -100 and counts in ``state.violations``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fleetrl.types import Array, EnvSpec, TimeStep

KINDS = ("discrete", "continuous", "image", "masked")
IMAGE_SHAPE = (4, 84, 84)


class FakeState(NamedTuple):
    """Carry of a `FakeDeviceEnv`; every field is ``[N, ...]``."""

    key: Array
    """One PRNG key (not per env)."""
    target: Array
    """What the current observation asks for: an action ``[N]`` int32, or ``[N, 2]`` float32
    (continuous)."""
    mask: Array
    """``[N, A]`` bool: legal actions in the current observation (all True but for masked)."""
    time: Array
    """Steps into the current episode."""
    episode_return: Array
    episode_length: Array
    violations: Array
    """``[N]`` int32: masked actions taken so far (masked kind; a correct agent keeps 0)."""


class FakeDeviceEnv:
    """``num_envs`` fake envs of ``kind`` (one of `KINDS`) as one batched, auto-resetting env."""

    def __init__(
        self, kind: str, num_envs: int, episode_length: int = 16, terminate_prob: float = 0.05
    ):
        if kind not in KINDS:
            raise ValueError(f"kind: must be one of {KINDS}, got {kind!r}")
        if num_envs < 1 or episode_length < 1 or not 0.0 <= terminate_prob <= 1.0:
            raise ValueError(
                "FakeDeviceEnv: num_envs >= 1, episode_length >= 1 and terminate_prob in [0, 1], "
                f"got {num_envs}, {episode_length}, {terminate_prob}"
            )
        self.kind = kind
        self.episode_length = episode_length
        self.terminate_prob = terminate_prob
        self.spec = _spec(kind, num_envs, episode_length)

    @classmethod
    def from_kwargs(cls, kind: str, num_envs: int, kwargs: dict[str, Any]) -> FakeDeviceEnv:
        """From ``env.kwargs``: ConfigError naming it for an unknown or bad argument."""
        from fleetrl.config import ConfigError

        unknown = sorted(set(kwargs) - {"episode_length", "terminate_prob"})
        if unknown:
            raise ConfigError(
                f"env.kwargs: fleetrl/fake-{kind} takes episode_length and terminate_prob, "
                f"not {', '.join(unknown)}"
            )
        try:
            return cls(kind, num_envs, **kwargs)
        except ValueError as error:
            raise ConfigError(f"env.kwargs: {error}") from None

    def reset(self, key: Array) -> tuple[FakeState, TimeStep]:
        """Start every episode. ``key``: one PRNG key; returns the state and a ``[N]`` TimeStep."""
        n = self.spec.num_envs
        key, draw_key = jax.random.split(key)
        target, mask = self._draw(draw_key)
        zeros, false = jnp.zeros((n,), jnp.float32), jnp.zeros((n,), bool)
        count = jnp.zeros((n,), jnp.int32)
        state = FakeState(key, target, mask, count, zeros, count, count)
        obs = self._observe(target, mask, count)
        return state, TimeStep(obs, zeros, false, false, obs, zeros, count, self._mask(mask))

    def step(self, state: FakeState, action: Array) -> tuple[FakeState, TimeStep]:
        """Act with ``action[N, ...]``; ended episodes restart at once (``final_obs`` is the
        observation the step reached)."""
        key, end_key, next_key, reset_key = jax.random.split(state.key, 4)
        reward, illegal = self._reward(state, action)
        time = state.time + 1
        terminated = jax.random.uniform(end_key, time.shape) < self.terminate_prob
        truncated = (time >= self.episode_length) & ~terminated
        done = terminated | truncated
        target, mask = self._draw(next_key)
        final_obs = self._observe(target, mask, time)
        new_target, new_mask = self._draw(reset_key)
        target = jnp.where(_rows(done, target), new_target, target)
        mask = jnp.where(done[:, None], new_mask, mask)
        time = jnp.where(done, 0, time)
        episode_return = state.episode_return + reward
        episode_length = state.episode_length + 1
        timestep = TimeStep(
            obs=self._observe(target, mask, time),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            final_obs=final_obs,
            episode_return=episode_return,
            episode_length=episode_length,
            action_mask=self._mask(mask),
        )
        next_state = FakeState(
            key,
            target,
            mask,
            time,
            jnp.where(done, 0.0, episode_return),
            jnp.where(done, 0, episode_length),
            state.violations + illegal.astype(jnp.int32),
        )
        return next_state, timestep

    # ---- per kind --------------------------------------------------------------------------

    def _draw(self, key: Array) -> tuple[Array, Array]:
        """A random target and legal-action mask for every env."""
        n, num_actions = self.spec.num_envs, max(self.spec.num_actions, 1)
        target_key, mask_key, legal_key = jax.random.split(key, 3)
        if self.kind == "continuous":
            target = jax.random.uniform(target_key, (n, 2), jnp.float32, -1.0, 1.0)
        else:
            target = jax.random.randint(target_key, (n,), 0, num_actions)
        mask = jnp.ones((n, num_actions), bool)
        if self.kind == "masked":
            legal = jax.random.randint(legal_key, (n,), 0, num_actions)  # at least this one
            mask = jax.random.bernoulli(mask_key, 0.5, (n, num_actions))
            mask = mask | jax.nn.one_hot(legal, num_actions, dtype=bool)
        return target, mask

    def _observe(self, target: Array, mask: Array, time: Array) -> Array:
        fraction = (time / self.episode_length).astype(jnp.float32)[:, None]
        if self.kind == "image":
            pixel = (60 * (target + 1)).astype(jnp.uint8)
            return jnp.broadcast_to(pixel[:, None, None, None], (len(target), *IMAGE_SHAPE))
        if self.kind == "continuous":
            return jnp.concatenate([target, fraction], axis=1)
        if self.kind == "masked":
            return jnp.concatenate([mask.astype(jnp.float32), fraction], axis=1)
        return jnp.concatenate([jax.nn.one_hot(target, 3, dtype=jnp.float32), fraction], axis=1)

    def _reward(self, state: FakeState, action: Array) -> tuple[Array, Array]:
        """``(reward [N] float32, illegal [N] bool)`` of ``action`` in the state's obs."""
        if self.kind == "continuous":
            action = jnp.clip(action, -1.0, 1.0)
            reward = -jnp.sum((action - state.target) ** 2, axis=1)
            return reward.astype(jnp.float32), jnp.zeros(action.shape[:1], bool)
        action = jnp.clip(action.astype(jnp.int32), 0, self.spec.num_actions - 1)
        if self.kind == "masked":
            legal = jnp.take_along_axis(state.mask, action[:, None], axis=1)[:, 0]
            return jnp.where(legal, 1.0, -100.0).astype(jnp.float32), ~legal
        reward = (action == state.target).astype(jnp.float32)
        return reward, jnp.zeros(action.shape, bool)

    def _mask(self, mask: Array) -> Array | None:
        return mask if self.spec.action_mask else None


def _rows(done: Array, like: Array) -> Array:
    """``done [N]`` shaped to broadcast over ``like [N, ...]``."""
    return done.reshape(done.shape + (1,) * (like.ndim - 1))


def _spec(kind: str, num_envs: int, episode_length: int) -> EnvSpec:
    common = dict(
        env_id=f"fleetrl/fake-{kind}", num_envs=num_envs, max_episode_steps=episode_length
    )
    if kind == "continuous":
        return EnvSpec(
            observation_shape=(3,),
            action_kind="continuous",
            action_shape=(2,),
            action_low=(-1.0, -1.0),
            action_high=(1.0, 1.0),
            **common,
        )
    if kind == "image":
        return EnvSpec(
            observation_shape=IMAGE_SHAPE,
            action_kind="discrete",
            num_actions=3,
            observation_dtype="uint8",
            **common,
        )
    if kind == "masked":
        return EnvSpec(
            observation_shape=(5,),
            action_kind="discrete",
            num_actions=4,
            action_mask=True,
            **common,
        )
    return EnvSpec(observation_shape=(4,), action_kind="discrete", num_actions=3, **common)
