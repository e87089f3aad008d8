"""Evaluation: episodes of the deterministic policy on separately seeded envs, compiled."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fleetrl.rollout import EnvCarry, reset
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
        actor_params = algo.actor_params(algo_state)
        carry = reset(env, key, algo)
        zeros = jnp.zeros((num_episodes,), jnp.float32)
        init = (
            carry,
            zeros,
            jnp.zeros_like(zeros, jnp.int32),
            jnp.zeros((num_episodes,), bool),
            jnp.int32(0),
        )

        def cond(loop):
            finished, t = loop[3], loop[4]
            return ~jnp.all(finished) & (t < max_steps)

        def body(loop):
            carry, returns, lengths, finished, t = loop
            key, act_key = jax.random.split(carry.key)
            action, actor_state, _ = algo.act(
                actor_params, carry.actor_state, carry.obs, act_key, False, carry.action_mask
            )
            env_state, ts = env.step(carry.env_state, action)
            live = ~finished
            returns = jnp.where(live, ts.episode_return, returns)
            lengths = jnp.where(live, ts.episode_length, lengths)
            # each env plays one episode: what its actor state becomes after it does not matter
            carry = EnvCarry(env_state, ts.obs, key, actor_state, ts.action_mask)
            return carry, returns, lengths, finished | ts.episode_done, t + 1

        _, returns, lengths, finished, _ = jax.lax.while_loop(cond, body, init)
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
