"""PPO loss terms as pure functions of arrays. Shapes ``[B]`` (a flattened minibatch)."""

from __future__ import annotations

import jax.numpy as jnp

from fleetrl.types import Array, Metrics


def clipped_surrogate(
    log_prob: Array, old_log_prob: Array, advantages: Array, clip_eps: float
) -> tuple[Array, Metrics]:
    """Clipped policy objective (Schulman et al. 2017, eq. 7), as a loss to minimize."""
    ratio = jnp.exp(log_prob - old_log_prob)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -jnp.mean(jnp.minimum(unclipped, clipped))
    clip_fraction = jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32))
    return loss, {"clip_fraction": clip_fraction}


def kl_penalized_surrogate(
    log_prob: Array,
    old_log_prob: Array,
    advantages: Array,
    kl: Array,
    penalty: Array,
    cutoff: float,
    cutoff_coef: float,
) -> tuple[Array, Metrics]:
    """BatchPPO's objective: surrogate - penalty * KL - cutoff_coef * max(0, KL - cutoff)^2.

    ``kl``: ``[B]`` KL(old || new) per sample; ``cutoff`` = kl_cutoff_factor * kl_target.
    (Schulman et al. 2017, eq. 8; the quadratic cutoff is from BatchPPO's ppo.py.)
    """
    ratio = jnp.exp(log_prob - old_log_prob)
    surrogate = -jnp.mean(ratio * advantages)
    mean_kl = jnp.mean(kl)
    kl_loss = penalty * mean_kl
    cutoff_loss = cutoff_coef * jnp.mean(jnp.maximum(0.0, kl - cutoff) ** 2)
    return surrogate + kl_loss + cutoff_loss, {
        "kl_penalty_loss": kl_loss,
        "kl_cutoff_loss": cutoff_loss,
    }


def value_loss(value: Array, returns: Array) -> Array:
    """0.5 * mean squared error of the value prediction against GAE returns."""
    return 0.5 * jnp.mean((value - returns) ** 2)


def adapt_kl_penalty(penalty: Array, kl: Array, kl_target: float) -> Array:
    """BatchPPO's rule: x1.5 if KL > 1.3 target, /1.5 if KL < 0.7 target (bounded)."""
    penalty = jnp.where(kl > 1.3 * kl_target, penalty * 1.5, penalty)
    penalty = jnp.where(kl < 0.7 * kl_target, penalty / 1.5, penalty)
    return jnp.clip(penalty, 1e-5, 1e5)
