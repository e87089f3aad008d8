"""Advantages and value targets of the actor-critic family's rollouts, ``[T, N]``: GAE (A2C,
PPO) or V-trace (IMPALA, PPO with ``advantage: vtrace``). REINFORCE's Monte-Carlo returns of
whole episodes keep their own bookkeeping (`learner.monte_carlo_batch`)."""

from __future__ import annotations

import jax.numpy as jnp

from fleetrl.returns import gae, vtrace
from fleetrl.types import Array, Metrics, Rollout


def estimate(
    cfg,
    family,
    rollout: Rollout,
    reward: Array,
    value: Array,
    next_value: Array,
    target_log_prob: Array | None = None,
) -> tuple[dict[str, Array], Metrics]:
    """``({"advantages", "returns", "log_prob"}, metrics)``, each field ``[T, N]``.

    ``reward``: the (maybe scaled) rewards; ``value, next_value``: V(obs[t]) and
    V(next_obs[t]) under the current parameters; ``target_log_prob``: log pi(a_t|x_t) under
    them, needed by V-trace only. ``log_prob`` is what the policy loss's ratio and the update's
    KL are taken against: the behaviour log-probabilities with GAE; with V-trace the current
    parameters' (the behaviour's lag is corrected by the weights inside the advantages, so the
    ratio measures only the update's own step, as decoupled PPO does, Hilton et al. 2021).
    """
    behaviour = rollout.extras["log_prob"]
    if family.estimator != "vtrace":
        advantages, returns = gae(
            reward,
            value,
            next_value,
            rollout.terminated,
            rollout.truncated,
            cfg.gamma,
            family.gae_lambda,
        )
        return {"advantages": advantages, "returns": returns, "log_prob": behaviour}, {}
    returns, advantages = vtrace(
        value,
        next_value,
        reward,
        rollout.terminated,
        rollout.truncated,
        behaviour,
        target_log_prob,
        cfg.gamma,
        rho_bar=cfg.rho_bar,
        pg_rho_bar=cfg.pg_rho_bar,
        c_bar=cfg.c_bar,
        lambda_=family.gae_lambda,
    )
    fields = {"advantages": advantages, "returns": returns, "log_prob": target_log_prob}
    return fields, importance_metrics(target_log_prob - behaviour, cfg.rho_bar)


def importance_metrics(log_rho: Array, rho_bar: float) -> Metrics:
    """How far the behaviour policy lagged: the mean importance weight pi/mu and the fraction
    of steps whose weight V-trace clipped at ``rho_bar`` (1 and 0 on-policy)."""
    # On-policy the two log-probabilities differ by float rounding (the actor's program and
    # the learner's batch them differently): a weight within 0.1% of rho_bar is not counted.
    clipped = log_rho > jnp.log(rho_bar) + 1e-3
    return {
        "train/rho_mean": jnp.mean(jnp.exp(log_rho)),
        "train/rho_clipped_fraction": jnp.mean(clipped.astype(jnp.float32)),
    }
