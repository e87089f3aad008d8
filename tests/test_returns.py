"""GAE and n-step targets against plain-Python references."""

import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl.returns import gae, n_step_target


def gae_reference(reward, value, next_value, terminated, truncated, gamma, lam):
    T, N = reward.shape
    adv = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            bootstrap = 0.0 if terminated[t, n] else next_value[t, n]
            delta = reward[t, n] + gamma * bootstrap - value[t, n]
            if terminated[t, n] or truncated[t, n]:
                running = 0.0
            running = delta + gamma * lam * running
            adv[t, n] = running
    return adv, adv + value


def test_gae_matches_reference_with_termination_and_truncation():
    rng = np.random.default_rng(0)
    T, N = 7, 3
    reward = rng.normal(size=(T, N))
    value = rng.normal(size=(T, N))
    next_value = rng.normal(size=(T, N))
    terminated = np.zeros((T, N), bool)
    truncated = np.zeros((T, N), bool)
    terminated[2, 0] = True
    truncated[4, 0] = True
    truncated[6, 1] = True
    terminated[0, 2] = truncated[5, 2] = True
    args = [jnp.asarray(x, jnp.float32) for x in (reward, value, next_value)]
    adv, ret = gae(*args, jnp.asarray(terminated), jnp.asarray(truncated), 0.99, 0.95)
    ref_adv, ref_ret = gae_reference(reward, value, next_value, terminated, truncated, 0.99, 0.95)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)


def test_gae_hand_computed_truncation_bootstraps_final_obs():
    # one env, two steps, truncated at step 0: A0 = r0 + g*V(final_obs0) - V0 (no recursion)
    reward = jnp.array([[1.0], [2.0]])
    value = jnp.array([[0.5], [0.25]])
    next_value = jnp.array([[3.0], [4.0]])
    truncated = jnp.array([[True], [False]])
    terminated = jnp.array([[False], [True]])
    adv, _ = gae(reward, value, next_value, terminated, truncated, 0.9, 0.8)
    assert adv[0, 0] == pytest.approx(1.0 + 0.9 * 3.0 - 0.5)
    assert adv[1, 0] == pytest.approx(2.0 - 0.25)  # terminal: no bootstrap


def n_step_reference(reward, terminated, truncated, bootstrap, gamma):
    n, B = reward.shape
    out = np.zeros(B)
    for b in range(B):
        total, discount = 0.0, 1.0
        for k in range(n):
            total += discount * reward[k, b]
            discount *= gamma
            if terminated[k, b]:
                break
            if truncated[k, b] or k == n - 1:
                total += discount * bootstrap[k, b]
                break
        out[b] = total
    return out


@pytest.mark.parametrize("n", [1, 3, 5])
def test_n_step_target_matches_reference(n):
    rng = np.random.default_rng(n)
    B = 64
    reward = rng.normal(size=(n, B))
    bootstrap = rng.normal(size=(n, B))
    terminated = rng.random((n, B)) < 0.15
    truncated = (rng.random((n, B)) < 0.15) & ~terminated
    got = n_step_target(
        jnp.asarray(reward, jnp.float32),
        jnp.asarray(terminated),
        jnp.asarray(truncated),
        jnp.asarray(bootstrap, jnp.float32),
        0.97,
    )
    np.testing.assert_allclose(
        got, n_step_reference(reward, terminated, truncated, bootstrap, 0.97), rtol=1e-5, atol=1e-5
    )


def test_one_step_target_hand_computed():
    got = n_step_target(
        jnp.array([[1.0, 1.0]]),
        jnp.array([[False, True]]),
        jnp.array([[False, False]]),
        jnp.array([[10.0, 10.0]]),
        0.5,
    )
    np.testing.assert_allclose(got, [6.0, 1.0])
