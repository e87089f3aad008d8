"""Evaluation: episodes of the deterministic policy on separately seeded envs, compiled."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fleetrl.rollout import reset
from fleetrl.types import Array


def make_evaluate(algo, env, max_steps: int | None = None):
    """Return ``evaluate(algo_state, key) -> (returns[E], lengths[E], finished[E])``.

    Each of the ``E = env.spec.num_envs`` envs plays one episode with ``explore=False``; the loop
    stops when all have finished or after ``max_steps`` steps (default: the env's time limit, or
    1000 if it has none; unfinished episodes report the return so far with ``finished=False``).
    """
    num_episodes = env.spec.num_envs
    max_steps = episode_limit(max_steps, env.spec)

    def evaluate(algo_state, key: Array):
        carry = reset(env, key)
        zeros = jnp.zeros((num_episodes,), jnp.float32)
        init = (
            carry.env_state,
            carry.obs,
            carry.key,
            zeros,
            jnp.zeros_like(zeros, jnp.int32),
            jnp.zeros((num_episodes,), bool),
            jnp.int32(0),
        )

        def cond(loop):
            finished, t = loop[5], loop[6]
            return ~jnp.all(finished) & (t < max_steps)

        def body(loop):
            env_state, obs, key, returns, lengths, finished, t = loop
            key, policy_key = jax.random.split(key)
            action, _ = algo.policy(algo_state, obs, policy_key, explore=False)
            env_state, ts = env.step(env_state, action)
            live = ~finished
            returns = jnp.where(live, ts.episode_return, returns)
            lengths = jnp.where(live, ts.episode_length, lengths)
            return env_state, ts.obs, key, returns, lengths, finished | ts.episode_done, t + 1

        _, _, _, returns, lengths, finished, _ = jax.lax.while_loop(cond, body, init)
        return returns, lengths, finished

    return evaluate


def episode_limit(max_steps: int | None, spec) -> int:
    """Steps an evaluation episode may take: ``max_steps`` (``train.eval_max_steps``), else the
    env's time limit, else 1000."""
    return max_steps or spec.max_episode_steps or 1000


def finished_means(returns, lengths, finished) -> tuple[np.ndarray, np.ndarray]:
    """Per seed, the mean return and length of the episodes that ended (``[S, E]`` in; NaN for
    a seed none of whose episodes ended): an episode cut at the step limit is not one of the
    policy's returns (an env that never ends reported the return so far as if it were)."""
    count = finished.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finished, returns, 0.0).sum(axis=1) / count
        mean_length = np.where(finished, lengths, 0).sum(axis=1) / count
    return mean.astype(np.float32), mean_length.astype(np.float32)
