"""Loss terms and distributions against hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl import distributions as D
from fleetrl.algos.actor_critic import losses
from fleetrl.algos.dqn import scalar_loss


def test_clipped_surrogate_hand_computed():
    log_ratio = jnp.log(jnp.array([1.5, 0.5, 1.0]))
    advantages = jnp.array([1.0, -1.0, 2.0])
    loss, metrics = losses.clipped_surrogate(log_ratio, jnp.zeros(3), advantages, 0.2)
    # min(1.5*1, 1.2*1) = 1.2; min(0.5*-1, 0.8*-1) = -0.8; min(2, 2) = 2 -> mean 0.8
    assert float(loss) == pytest.approx(-0.8, abs=1e-6)
    assert float(metrics["clip_fraction"]) == pytest.approx(2 / 3)


def test_kl_penalized_surrogate_hand_computed():
    log_ratio = jnp.log(jnp.array([1.5, 0.5]))
    loss, metrics = losses.kl_penalized_surrogate(
        log_ratio,
        jnp.zeros(2),
        jnp.array([1.0, -1.0]),
        jnp.array([0.01, 0.05]),
        penalty=jnp.float32(2.0),
        cutoff=0.02,
        cutoff_coef=1000.0,
    )
    # surrogate -mean(1.5, -0.5) = -0.5; penalty 2 * 0.03 = 0.06; cutoff 1000 * mean(0, 0.03^2)
    assert float(metrics["kl_penalty_loss"]) == pytest.approx(0.06, abs=1e-6)
    assert float(metrics["kl_cutoff_loss"]) == pytest.approx(0.45, abs=1e-5)
    assert float(loss) == pytest.approx(-0.5 + 0.06 + 0.45, abs=1e-5)


def test_value_loss_and_kl_adaptation():
    assert float(losses.value_loss(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]))) == pytest.approx(
        1.25
    )
    kl_target = 0.01
    assert float(
        losses.adapt_kl_penalty(jnp.float32(1.0), jnp.float32(0.02), kl_target)
    ) == pytest.approx(1.5)
    assert float(
        losses.adapt_kl_penalty(jnp.float32(1.5), jnp.float32(0.005), kl_target)
    ) == pytest.approx(1.0)
    assert float(
        losses.adapt_kl_penalty(jnp.float32(1.0), jnp.float32(0.01), kl_target)
    ) == pytest.approx(1.0)


def test_td_loss_hand_computed():
    q, target = jnp.array([0.5, -2.0]), jnp.zeros(2)  # TD errors 0.5 and -2
    np.testing.assert_allclose(scalar_loss(q, target, "huber"), [0.125, 1.5])
    np.testing.assert_allclose(scalar_loss(q, target, "mse"), [0.125, 2.0])


def test_categorical_terms():
    logits = jnp.log(jnp.array([[0.25, 0.75]]))
    assert float(D.categorical_log_prob(logits, jnp.array([1]))[0]) == pytest.approx(math.log(0.75))
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert float(D.categorical_entropy(logits)[0]) == pytest.approx(entropy, rel=1e-6)
    q = jnp.log(jnp.array([[0.5, 0.5]]))
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert float(D.categorical_kl(logits, q)[0]) == pytest.approx(kl, rel=1e-5)


def test_normal_terms():
    mean, log_std = jnp.array([[0.0, 1.0]]), jnp.log(jnp.array([[1.0, 2.0]]))
    action = jnp.array([[1.0, 1.0]])
    expected = (-0.5 - 0.5 * math.log(2 * math.pi)) + (-math.log(2.0) - 0.5 * math.log(2 * math.pi))
    assert float(D.normal_log_prob(mean, log_std, action)[0]) == pytest.approx(expected, rel=1e-6)
    expected_entropy = 0.5 * math.log(2 * math.pi * math.e) * 2 + math.log(2.0)
    assert float(D.normal_entropy(log_std)[0]) == pytest.approx(expected_entropy, rel=1e-6)
    kl = D.normal_kl(mean, log_std, mean + 1.0, log_std)
    # same std: KL = sum (dmean^2 / (2 var)) = 1/2 + 1/8
    np.testing.assert_allclose(kl, [0.625], rtol=1e-6)
