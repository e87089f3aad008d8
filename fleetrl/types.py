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
    observation_dtype: str = "float32"
    """dtype of ``TimeStep.obs``: float32, or uint8 for images (Atari frames stay uint8 until
    the network scales them)."""
    action_mask: bool = False
    """Whether ``TimeStep.action_mask`` holds a ``[N, num_actions]`` bool mask of the legal
    actions (discrete actions only); without one every action is legal and the field is None."""
    frame_stack: int = 0
    """Observations are stacks of the last ``frame_stack`` frames along axis 0, as gymnasium's
    ``FrameStackObservation`` with its default reset padding gives them (Atari: 4); 0 = not
    stacked. Replay stores each frame once (`fleetrl.replay`)."""


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
    action_mask: Array | None = None
    """``[N, A]`` bool, True where an action is legal in ``obs`` (envs whose spec says
    ``action_mask``); None otherwise."""

    @property
    def episode_done(self) -> Array:
        return self.terminated | self.truncated


class Rollout(NamedTuple):
    """``T`` steps of ``N`` envs, time-major: every field is ``[T, N, ...]`` but ``actor_state``.

    ``next_obs[t]`` is the observation reached by ``action[t]`` (before any auto-reset), so a
    value estimate of it bootstraps truncated steps; ``obs[t + 1]`` differs from it exactly where
    an episode ended at ``t``. ``actor_state`` is the actor state (``[N, ...]`` leaves) the
    segment started from, what a recurrent learner replays the segment from; within the
    segment the actor resets it where an episode ended (``done[t - 1]``).
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
    actor_state: Any = ()
    action_mask: Array | None = None
    """``[T, N, A]``: the legal actions in ``obs[t]`` (None for envs without a mask)."""

    @property
    def done(self) -> Array:
        return self.terminated | self.truncated


class Health(NamedTuple):
    """What the driver checks of a learner state (`Algorithm.health`), for one seed.

    ``params``: the parameters whose finiteness a checkpoint requires (a pytree);
    ``skipped_updates``: updates skipped as non-finite so far (int32, cumulative);
    ``nonfinite_streak``: consecutive skipped updates up to now (int32). The driver logs
    ``train/skipped_updates`` per iteration from the first and stops a seed whose streak says it
    diverged (`fleetrl.loop`).
    """

    params: Any
    skipped_updates: Array
    nonfinite_streak: Array


class Algorithm(NamedTuple):
    """The contract between the driver and an algorithm (v2, DESIGN.md): pure, jittable
    functions that an algorithm module's ``make(run_config, spec)`` builds, closing over its
    static configuration. No classes, no hidden state.

    - ``init(key) -> state``: the learner state (parameters, optimizer, replay, counters).
    - ``actor_params(state) -> actor_params``: what acting needs and nothing more (parameters,
      normalizer statistics, epsilon): small, what a remote actor would receive.
    - ``init_actor(key, num_envs) -> actor_state``: per-env actor state (``[N, ...]`` leaves: a
      recurrent core's hidden state); ``()`` for a feed-forward actor. ``simulate`` replaces an
      env's entry with the fresh one where its episode ended.
    - ``act(actor_params, actor_state, obs[N], key, explore, mask) -> (action[N], actor_state,
      extras)``: ``mask`` is the ``[N, A]`` legal-action mask or None (a masked action is never
      chosen); ``extras`` holds the behaviour ``log_prob`` (and ``value``) where the algorithm
      has them, stored in the `Rollout`.
    - ``learn(state, rollout[T, N], key) -> (state, metrics)``.
    - ``health(state) -> Health``: what the driver checks (finite parameters, skipped updates).
    """

    init: Any
    actor_params: Any
    init_actor: Any
    act: Any
    learn: Any
    health: Any
