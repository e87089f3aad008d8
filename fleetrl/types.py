"""Types shared by environments, rollouts and algorithms.

Shapes: ``N`` envs in a batch, ``T`` steps in a rollout. Arrays are JAX arrays unless noted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jax

Array = jax.Array
Metrics = dict[str, Array]


@dataclass(frozen=True)
class EnvSpec:
    """Static description of a batched env: what an algorithm needs to build its networks."""

    env_id: str
    num_envs: int
    observation_shape: tuple[int, ...]
    action_kind: Literal["discrete", "continuous"]
    num_actions: int = 0
    """Number of discrete actions (0 for continuous)."""
    action_shape: tuple[int, ...] = ()
    action_low: tuple[float, ...] = ()
    """Lower bounds of a continuous action, flattened (empty for discrete)."""
    action_high: tuple[float, ...] = ()
    max_episode_steps: int = 0
    """Time limit of one episode (truncation), 0 if unknown."""


class TimeStep(NamedTuple):
    """What a batched env returns after ``reset`` or ``step``; every field is ``[N, ...]``.

    ``obs`` is already the first observation of the next episode where an episode ended
    (auto-reset); ``final_obs`` is the observation the step actually reached, the one to
    bootstrap from when ``truncated``. ``episode_return``/``episode_length`` are raw
    (unnormalized) totals of the episode so far, including this step.
    """

    obs: Array
    reward: Array
    terminated: Array
    truncated: Array
    final_obs: Array
    episode_return: Array
    episode_length: Array

    @property
    def episode_done(self) -> Array:
        return self.terminated | self.truncated


class Rollout(NamedTuple):
    """``T`` steps of ``N`` envs, time-major: every field is ``[T, N, ...]``.

    ``next_obs[t]`` is the observation reached by ``action[t]`` (before any auto-reset), so a
    value estimate of it bootstraps truncated steps; ``obs[t + 1]`` differs from it exactly where
    an episode ended at ``t``.
    """

    obs: Array
    action: Array
    reward: Array
    terminated: Array
    truncated: Array
    next_obs: Array
    extras: dict[str, Array]
    episode_return: Array
    episode_length: Array

    @property
    def done(self) -> Array:
        return self.terminated | self.truncated


class Algorithm(NamedTuple):
    """The contract between the driver and an algorithm: three pure, jittable functions.

    ``init(key) -> state``; ``policy(state, obs[N], key, explore) -> (action[N], extras)``;
    ``learn(state, rollout[T, N], key) -> (state, metrics)``. An algorithm module builds one with
    ``make(run_config, spec)``, closing over its static configuration.
    """

    init: Any
    policy: Any
    learn: Any
