"""Loss terms of the actor-critic family as pure functions of arrays, shapes ``[B]`` (a
flattened minibatch). ``weights`` (``[B]``, optional): a weighted mean instead of the mean, for
steps that do not count (REINFORCE's unfinished episodes, a recurrent burn-in)."""

from __future__ import annotations

import jax.numpy as jnp

from fleetrl.types import Array, Metrics


def mean(x: Array, weights: Array | None = None) -> Array:
    """``mean(x)``, or the ``weights``-weighted mean (0 when every weight is 0)."""
    if weights is None:
        return jnp.mean(x)
    return jnp.sum(x * weights) / jnp.maximum(jnp.sum(weights), 1e-8)


def standardize(x: Array, weights: Array | None = None) -> Array:
    """``(x - mean) / (std + 1e-8)`` over the (weighted) batch."""
    if weights is None:
        return (x - x.mean()) / (x.std() + 1e-8)
    centred = x - mean(x, weights)
    return centred / (jnp.sqrt(mean(centred**2, weights)) + 1e-8)


def policy_gradient(log_prob: Array, advantages: Array, weights: Array | None = None) -> Array:
    """The score-function loss of REINFORCE and A2C: ``-mean(log pi(a|s) * A)``."""
    return -mean(log_prob * advantages, weights)


def clipped_surrogate(
    log_prob: Array,
    old_log_prob: Array,
    advantages: Array,
    clip_eps: float,
    weights: Array | None = None,
) -> tuple[Array, Metrics]:
    """Clipped policy objective (Schulman et al. 2017, eq. 7), as a loss to minimize."""
    ratio = jnp.exp(log_prob - old_log_prob)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -mean(jnp.minimum(unclipped, clipped), weights)
    clip_fraction = mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), weights)
    return loss, {"clip_fraction": clip_fraction}


def kl_penalized_surrogate(
    log_prob: Array,
    old_log_prob: Array,
    advantages: Array,
    kl: Array,
    penalty: Array,
    cutoff: float,
    cutoff_coef: float,
    weights: Array | None = None,
) -> tuple[Array, Metrics]:
    """BatchPPO's objective: surrogate - penalty * KL - cutoff_coef * max(0, KL - cutoff)^2.

    ``kl``: ``[B]`` KL(old || new) per sample; ``cutoff`` = kl_cutoff_factor * kl_target.
    (Schulman et al. 2017, eq. 8; the quadratic cutoff is from BatchPPO's ppo.py.)
    """
    ratio = jnp.exp(log_prob - old_log_prob)
    surrogate = -mean(ratio * advantages, weights)
    kl_loss = penalty * mean(kl, weights)
    cutoff_loss = cutoff_coef * mean(jnp.maximum(0.0, kl - cutoff) ** 2, weights)
    return surrogate + kl_loss + cutoff_loss, {
        "kl_penalty_loss": kl_loss,
        "kl_cutoff_loss": cutoff_loss,
    }


def value_loss(value: Array, returns: Array, weights: Array | None = None) -> Array:
    """0.5 * mean squared error of the value prediction against its targets."""
    return 0.5 * mean((value - returns) ** 2, weights)


def adapt_kl_penalty(penalty: Array, kl: Array, kl_target: float) -> Array:
    """BatchPPO's rule: x1.5 if KL > 1.3 target, /1.5 if KL < 0.7 target (bounded)."""
    penalty = jnp.where(kl > 1.3 * kl_target, penalty * 1.5, penalty)
    penalty = jnp.where(kl < 0.7 * kl_target, penalty / 1.5, penalty)
    return jnp.clip(penalty, 1e-5, 1e5)
