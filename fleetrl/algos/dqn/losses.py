"""The value-based family's kernels as pure functions: the exploration schedule, n-step
bootstrapping, and the TD losses of each member (scalar, C51's categorical projection,
QR-DQN's and IQN's quantile Huber, Munchausen's regularised target). Each loss returns one
value per sample, ``[B]``, so the learner can weight it (prioritized replay) and take the
priorities from it. Tested against hand-computed values in tests/test_value_losses.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fleetrl import distributions as D
from fleetrl.returns import n_step_bootstrap  # noqa: F401 (the family's n-step target)
from fleetrl.types import Array


def epsilon_schedule(env_steps: Array, cfg, total_steps: int) -> Array:
    """Exploration rate after ``env_steps`` (a scalar): linear from ``epsilon_start`` to
    ``epsilon_end`` over the first ``exploration_fraction * total_steps`` env steps (at least
    one), then constant; 0 with noisy nets, which explore by their noise. Returns a scalar."""
    if getattr(cfg, "noisy", False):  # PQN's config has no noisy layers
        return jnp.float32(0.0)
    decay_steps = max(1.0, cfg.exploration_fraction * total_steps)
    fraction = jnp.minimum(env_steps / decay_steps, 1.0)
    return cfg.epsilon_start + fraction * (cfg.epsilon_end - cfg.epsilon_start)


def epsilon_greedy(
    q: Array, epsilon: Array, explore_key: Array, action_key: Array, mask: Array | None
) -> Array:
    """``[N]`` actions: argmax of ``q [N, A]`` (already masked), or with probability
    ``epsilon`` an action drawn uniformly among the legal ones (``mask [N, A]``; None: all)."""
    greedy = jnp.argmax(q, axis=-1).astype(jnp.int32)
    if mask is None:
        random_action = jax.random.randint(action_key, greedy.shape, 0, q.shape[-1])
    else:
        random_action = D.categorical_sample(D.mask_logits(jnp.zeros_like(q), mask), action_key)
    take_random = jax.random.uniform(explore_key, greedy.shape) < epsilon
    return jnp.where(take_random, random_action, greedy)


def scalar_loss(q_taken: Array, target: Array, kind: str) -> Array:
    """Huber (delta 1, as in Mnih et al. 2015) or half squared TD error, ``[B]`` each."""
    error = q_taken - jax.lax.stop_gradient(target)
    if kind == "huber":
        return optax.huber_loss(error, delta=1.0)
    return 0.5 * error**2


def categorical_projection(
    atoms: Array, next_probs: Array, partial_return: Array, discount: Array
) -> Array:
    """C51's target distribution (Bellemare et al. 2017, Algorithm 1).

    The next state's distribution ``next_probs [B, K]`` on ``atoms [K]`` is moved to
    ``partial_return + discount * atoms``, clipped to [v_min, v_max], and each moved atom's mass
    split between its two neighbours on the fixed support, in proportion to closeness (written
    as a triangle kernel, which also covers a moved atom landing exactly on an atom).
    Returns ``[B, K]``, summing to 1, with the gradient stopped.
    """
    moved = partial_return[:, None] + discount[:, None] * atoms[None, :]
    moved = jnp.clip(moved, atoms[0], atoms[-1])
    spacing = atoms[1] - atoms[0]
    # weight[b, i, j]: share of moved atom i that lands on fixed atom j
    weight = jnp.clip(1.0 - jnp.abs(moved[:, :, None] - atoms[None, None, :]) / spacing, 0, 1)
    return jax.lax.stop_gradient(jnp.einsum("bi,bij->bj", next_probs, weight))


def categorical_loss(logits: Array, target_probs: Array) -> Array:
    """Cross-entropy of the predicted ``logits [B, K]`` against ``target_probs [B, K]``, ``[B]``
    (its gradient is the KL divergence's; Rainbow's priorities are this value)."""
    return -jnp.sum(target_probs * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def quantile_huber_loss(quantiles: Array, taus: Array, targets: Array, kappa: float) -> Array:
    """Quantile Huber loss (Dabney et al. 2018a eq. 10; 2018b eq. 3), ``[B]``.

    ``quantiles [B, N]`` at fractions ``taus [B, N]`` against target samples ``targets [B, M]``:
    sum over i of the mean over j of |tau_i - 1{delta_ij < 0}| * Huber_kappa(delta_ij) / kappa,
    with delta_ij = target_j - quantile_i.
    """
    delta = jax.lax.stop_gradient(targets)[:, None, :] - quantiles[:, :, None]  # [B, N, M]
    huber = optax.huber_loss(delta, delta=kappa) / kappa
    weight = jnp.abs(taus[:, :, None] - (delta < 0).astype(delta.dtype))
    return jnp.sum(jnp.mean(weight * huber, axis=2), axis=1)


def munchausen_target(
    q_obs: Array,
    action: Array,
    next_q: Array,
    next_outputs: Array,
    reward: Array,
    discount: Array,
    cfg,
) -> Array:
    """Munchausen-DQN's target (Vieillard et al. 2020, eq. 4), per output ``[B, K]``.

    ``q_obs [B, A]`` and ``next_q [B, A]``: the target network's expected Q at obs and next obs;
    ``next_outputs [B, A, K]``: its outputs at next obs (K = 1 for scalar Q, quantiles for
    M-IQN). pi = softmax(q / tau); the target is
    r + alpha * clip(tau log pi(a|s), l0, 0) + discount * sum_a' pi(a'|s') (out(s', a') - tau
    log pi(a'|s')). ``tau log pi`` is computed as q - tau logsumexp(q / tau), stable for small tau.
    """
    tau = cfg.munchausen_tau
    tau_log_pi = q_obs - tau * jax.nn.logsumexp(q_obs / tau, axis=-1, keepdims=True)
    taken = jnp.take_along_axis(tau_log_pi, action[:, None], axis=-1)[:, 0]
    bonus = cfg.munchausen_alpha * jnp.clip(taken, cfg.munchausen_clip, 0.0)
    next_tau_log_pi = next_q - tau * jax.nn.logsumexp(next_q / tau, axis=-1, keepdims=True)
    next_pi = jax.nn.softmax(next_q / tau, axis=-1)
    soft = jnp.sum(next_pi[..., None] * (next_outputs - next_tau_log_pi[..., None]), axis=1)
    target = (reward + bonus)[:, None] + discount[:, None] * soft
    return jax.lax.stop_gradient(target)
