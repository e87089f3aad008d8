"""The continuous family's kernels as pure functions: Polyak averaging, TD3's target policy
smoothing, the clipped double-Q (soft) target, and the critic, actor and temperature losses.
Per-sample losses take a ``valid [B]`` mask (replay windows whose bootstrap observation was
lost count 0). Tested against hand-computed values in tests/test_continuous.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fleetrl.types import Array


def polyak(online, target, tau: float):
    """``target <- tau * online + (1 - tau) * target``, leaf by leaf."""
    return jax.tree.map(lambda on, tg: tg + tau * (on - tg), online, target)


def smoothed_target_action(action: Array, key: Array, noise: float, noise_clip: float) -> Array:
    """TD3's target policy smoothing (Fujimoto et al. 2018, eq. 14): ``action [B, A]`` in
    ``[-1, 1]`` plus Gaussian noise of std ``noise`` clipped to ``[-noise_clip, noise_clip]``,
    the sum clipped back to ``[-1, 1]``. ``noise == 0``: the action unchanged (DDPG)."""
    if noise == 0:
        return action
    eps = jnp.clip(noise * jax.random.normal(key, action.shape), -noise_clip, noise_clip)
    return jnp.clip(action + eps, -1.0, 1.0)


def soft_min_target(
    next_q: Array, next_log_prob: Array, alpha: Array, partial_return: Array, discount: Array
) -> Array:
    """The critics' regression target ``[B]``: ``partial_return + discount * (min_i
    next_q[i] - alpha * next_log_prob)``.

    ``next_q [n, B]``: the target critics at the bootstrap observation and the next action;
    the min over the ``n`` critics is TD3's clipped double Q (one critic: DDPG's plain target).
    ``next_log_prob [B]`` with ``alpha``: SAC's entropy bonus (0 for DDPG and TD3).
    ``partial_return, discount`` from `fleetrl.returns.n_step_bootstrap`: discount is 0 where
    the episode terminated, and truncated steps keep theirs (they bootstrap)."""
    soft_value = jnp.min(next_q, axis=0) - alpha * next_log_prob
    return jax.lax.stop_gradient(partial_return + discount * soft_value)


def critic_loss(q: Array, target: Array, valid: Array) -> Array:
    """``0.5 * sum_i (q[i] - target)^2`` averaged over the valid samples: each of the ``n``
    critics ``q [n, B]`` regresses on the same target ``[B]``. Stable-Baselines3's SAC halves
    its MSEs so; its TD3 and DDPG do not, which Adam's scale invariance makes the same step
    (the logged loss is half of theirs, and ``max_grad_norm`` acts at twice the gradient)."""
    per_sample = 0.5 * jnp.sum((q - target[None]) ** 2, axis=0)
    return masked_mean(per_sample, valid)


def deterministic_actor_loss(q_first: Array, valid: Array) -> Array:
    """DDPG's and TD3's actor loss: ``-Q_1(s, mu(s))`` averaged (the first critic only, as
    TD3's paper does)."""
    return -masked_mean(q_first, valid)


def sac_actor_loss(q: Array, log_prob: Array, alpha: Array, valid: Array) -> Array:
    """SAC's actor loss: ``alpha * log pi(a|s) - min_i Q_i(s, a)`` with ``a ~ pi``
    reparameterised, averaged; ``q [n, B]``, ``log_prob [B]``."""
    return masked_mean(alpha * log_prob - jnp.min(q, axis=0), valid)


def temperature_loss(log_alpha: Array, log_prob: Array, target_entropy: float, valid) -> Array:
    """SAC's temperature loss ``-log_alpha * (log pi + target_entropy)`` averaged (the gradient
    raises alpha when the policy's entropy ``-log pi`` is below the target, lowers it above),
    in log alpha as Stable-Baselines3 parametrises it."""
    gap = jax.lax.stop_gradient(log_prob + target_entropy)
    return -masked_mean(log_alpha * gap, valid)


def masked_mean(x: Array, valid: Array) -> Array:
    """The mean of ``x [B]`` over ``valid [B]`` (0 if none is valid)."""
    valid = valid.astype(x.dtype)
    return jnp.sum(valid * x) / jnp.maximum(jnp.sum(valid), 1.0)
