"""DQN's kernels as pure functions: the exploration schedule, TD targets (DQN, Double DQN,
n-step) and the TD loss. Tested against hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fleetrl.returns import n_step_target
from fleetrl.types import Array


def epsilon_schedule(env_steps: Array, cfg, total_steps: int) -> Array:
    """Exploration rate after ``env_steps`` (a scalar): linear from ``epsilon_start`` to
    ``epsilon_end`` over the first ``exploration_fraction * total_steps`` env steps (at least
    one), then constant. Returns a scalar."""
    decay_steps = max(1.0, cfg.exploration_fraction * total_steps)
    fraction = jnp.minimum(env_steps / decay_steps, 1.0)
    return cfg.epsilon_start + fraction * (cfg.epsilon_end - cfg.epsilon_start)


def td_target(
    next_q_online: Array,
    next_q_target: Array,
    reward: Array,
    terminated: Array,
    truncated: Array,
    gamma: float,
    double_q: bool,
) -> Array:
    """TD target for Q(obs[t], action[t]) from ``n`` consecutive steps of one env (n = 1: DQN).

    Args: ``next_q_online, next_q_target``: ``[n, B, A]``, Q(next_obs[t + k], .) under the
    online and the target network (``next_q_online`` is read only when ``double_q``);
    ``reward, terminated, truncated``: ``[n, B]``. The bootstrap action is the target network's
    argmax (Mnih et al. 2015) or, with ``double_q``, the online network's (van Hasselt et al.
    2016, eq. 4); its value always comes from the target network. Rewards are summed up to the
    first episode end and bootstrap from the state that step reached unless it was terminal, so
    a truncated step still bootstraps (``returns.n_step_target``). Returns ``[B]``, with the
    gradient stopped.
    """
    next_action = jnp.argmax(next_q_online if double_q else next_q_target, axis=-1)
    next_value = jnp.take_along_axis(next_q_target, next_action[..., None], axis=-1)[..., 0]
    target = n_step_target(reward, terminated, truncated, next_value, gamma)
    return jax.lax.stop_gradient(target)


def td_loss(error: Array, kind: str) -> Array:
    """Mean Huber (delta 1, as in Mnih et al. 2015) or squared TD error over ``error[B]``."""
    if kind == "huber":
        return jnp.mean(optax.huber_loss(error, delta=1.0))
    return jnp.mean(0.5 * error**2)
