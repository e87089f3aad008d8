"""Action distributions as pure functions of network outputs. Batched over leading axes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fleetrl.types import Array


def categorical_sample(logits: Array, key: Array) -> Array:
    return jax.random.categorical(key, logits).astype(jnp.int32)


def categorical_log_prob(logits: Array, action: Array) -> Array:
    log_probs = jax.nn.log_softmax(logits)
    return jnp.take_along_axis(log_probs, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def categorical_entropy(logits: Array) -> Array:
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def categorical_kl(logits_p: Array, logits_q: Array) -> Array:
    """KL(p || q) of two categoricals given by logits."""
    log_p = jax.nn.log_softmax(logits_p)
    log_q = jax.nn.log_softmax(logits_q)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def normal_sample(mean: Array, log_std: Array, key: Array) -> Array:
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)


def normal_log_prob(mean: Array, log_std: Array, action: Array) -> Array:
    """Diagonal Gaussian log density, summed over the last (action) axis."""
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi), axis=-1)


def normal_entropy(log_std: Array) -> Array:
    return jnp.sum(log_std + 0.5 * math.log(2 * math.pi * math.e), axis=-1)


def normal_kl(mean_p: Array, log_std_p: Array, mean_q: Array, log_std_q: Array) -> Array:
    """KL(p || q) of two diagonal Gaussians, summed over the action axis."""
    var_p = jnp.exp(2 * log_std_p)
    var_q = jnp.exp(2 * log_std_q)
    return jnp.sum(
        log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5, axis=-1
    )


MASKED_LOGIT = -1e9
"""The logit of an illegal action: finite, so that entropies and KLs stay finite (a 0 x -inf
would be NaN), and far enough below any real logit that its probability is exactly 0 in float32."""


def mask_logits(logits: Array, mask: Array | None) -> Array:
    """``logits`` with illegal actions (``mask`` False, ``[..., A]`` bool) set to
    `MASKED_LOGIT`: sampling, the mode, log-probabilities, entropy and KL then see only the legal
    actions (TF-Agents' masked categorical). ``mask=None``: every action is legal."""
    if mask is None:
        return logits
    return jnp.where(mask, logits, jnp.asarray(MASKED_LOGIT, logits.dtype))


# ---- tanh-squashed Gaussian (SAC, Haarnoja et al. 2018, appendix C) ---------------------------

_LOG2 = math.log(2.0)


def tanh_log_det(pre_tanh: Array) -> Array:
    """``sum log(1 - tanh(u)^2)`` over the action axis, computed as ``2 (log 2 - u -
    softplus(-2u))``: the same quantity without ``log(0)`` where ``|u|`` is large (1 - tanh(u)^2
    underflows to 0 in float32 from |u| ~ 9)."""
    return jnp.sum(2.0 * (_LOG2 - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh)), axis=-1)


def squashed_normal_sample(mean: Array, log_std: Array, key: Array) -> tuple[Array, Array]:
    """A reparameterised draw ``a = tanh(u)``, ``u ~ N(mean, exp(log_std))``, in ``(-1, 1)``, and
    its log density ``log N(u) - sum log(1 - tanh(u)^2)`` (change of variables), summed over the
    action axis. Gradients flow to ``mean`` and ``log_std`` through both."""
    pre_tanh = normal_sample(mean, log_std, key)
    return jnp.tanh(pre_tanh), squashed_normal_log_prob(mean, log_std, pre_tanh)


def squashed_normal_log_prob(mean: Array, log_std: Array, pre_tanh: Array) -> Array:
    """Log density of ``tanh(pre_tanh)`` under the squashed Gaussian. Takes the pre-tanh value:
    inverting tanh at a stored action near +-1 is ill-conditioned (atanh(1) = inf)."""
    return normal_log_prob(mean, log_std, pre_tanh) - tanh_log_det(pre_tanh)


def squashed_normal_mode(mean: Array) -> Array:
    """The deterministic action: ``tanh(mean)`` (what SAC evaluates with)."""
    return jnp.tanh(mean)
