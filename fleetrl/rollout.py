"""``simulate``: T steps of the actor + batched env, as one ``lax.scan`` (BatchPPO's simulate()).

With a device env the whole rollout is traced into the caller's compiled program.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fleetrl.types import Array, Rollout


class EnvCarry(NamedTuple):
    """What links one rollout to the next: env state, the current observation (and its legal
    actions where the env masks them), a PRNG key, and the actor's per-env state."""

    env_state: Any
    obs: Array
    key: Array
    actor_state: Any = ()
    action_mask: Array | None = None


def simulate(algo, env, algo_state, carry: EnvCarry, num_steps: int) -> tuple[EnvCarry, Rollout]:
    """Run ``num_steps`` steps of ``algo.act`` (exploring) in ``env``.

    The actor acts with ``algo.actor_params(algo_state)``; its per-env state is threaded through
    the scan and replaced by a fresh one (``algo.init_actor``, drawn once per segment: an env
    that ends two episodes in one segment starts both from the same entry) where an episode
    ended. Returns
    the new carry and a time-major ``Rollout`` (``[num_steps, N, ...]``) that records the actor
    state the segment started from.
    """
    return simulate_with(algo, env, algo.actor_params(algo_state), carry, num_steps)


def simulate_with(
    algo, env, actor_params, carry: EnvCarry, num_steps: int
) -> tuple[EnvCarry, Rollout]:
    """`simulate` with the actor's parameters given (a Ray actor holds no learner state)."""
    keys = jax.random.split(carry.key, num_steps + 1)  # one split: fewer ops in the scan body
    fresh = algo.init_actor(jax.random.fold_in(keys[0], 1), env.spec.num_envs)

    def step(carry: EnvCarry, act_key: Array) -> tuple[EnvCarry, Rollout]:
        action, actor_state, extras = algo.act(
            actor_params, carry.actor_state, carry.obs, act_key, True, carry.action_mask
        )
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
            action_mask=carry.action_mask,
        )
        actor_state = reset_where(ts.episode_done, fresh, actor_state)
        return EnvCarry(env_state, ts.obs, carry.key, actor_state, ts.action_mask), transition

    start = carry.actor_state
    carry, rollout = jax.lax.scan(step, carry._replace(key=keys[0]), keys[1:])
    return carry, rollout._replace(actor_state=start)


def reset_where(done: Array, fresh: Any, state: Any) -> Any:
    """``state`` with the entries of envs where ``done[N]`` replaced by ``fresh``'s."""

    def choose(new, old):
        return jnp.where(done.reshape(done.shape + (1,) * (old.ndim - 1)), new, old)

    return jax.tree.map(choose, fresh, state)


def reset(env, key: Array, algo=None) -> EnvCarry:
    """Reset ``env`` and build the first carry (with ``algo``'s fresh actor state)."""
    key, env_key = jax.random.split(key)
    env_state, ts = env.reset(env_key)
    actor_key = jax.random.fold_in(env_key, 1)
    actor_state = () if algo is None else algo.init_actor(actor_key, env.spec.num_envs)
    return EnvCarry(env_state, ts.obs, key, actor_state, ts.action_mask)
