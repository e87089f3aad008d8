"""``simulate``: T steps of policy + batched env, as one ``lax.scan`` (BatchPPO's simulate()).

With a device env the whole rollout is traced into the caller's compiled program.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from fleetrl.types import Array, Rollout


class EnvCarry(NamedTuple):
    """What links one rollout to the next: env state, the current observation, a PRNG key."""

    env_state: Any
    obs: Array
    key: Array


def simulate(policy, env, algo_state, carry: EnvCarry, num_steps: int) -> tuple[EnvCarry, Rollout]:
    """Run ``num_steps`` steps of ``policy(algo_state, obs, key) -> (action, extras)`` in ``env``.

    Returns the new carry and a time-major ``Rollout`` (``[num_steps, N, ...]``).
    """

    def step(carry: EnvCarry, policy_key: Array) -> tuple[EnvCarry, Rollout]:
        action, extras = policy(algo_state, carry.obs, policy_key)
        env_state, ts = env.step(carry.env_state, action)
        transition = Rollout(
            obs=carry.obs,
            action=action,
            reward=ts.reward,
            terminated=ts.terminated,
            truncated=ts.truncated,
            next_obs=ts.final_obs,
            extras=extras,
            episode_return=ts.episode_return,
            episode_length=ts.episode_length,
        )
        return EnvCarry(env_state, ts.obs, carry.key), transition

    # all policy keys in one split: fewer small ops inside the scan body
    keys = jax.random.split(carry.key, num_steps + 1)
    carry, rollout = jax.lax.scan(step, carry._replace(key=keys[0]), keys[1:])
    return carry, rollout


def reset(env, key: Array) -> EnvCarry:
    """Reset ``env`` and build the first carry."""
    key, env_key = jax.random.split(key)
    env_state, ts = env.reset(env_key)
    return EnvCarry(env_state, ts.obs, key)
