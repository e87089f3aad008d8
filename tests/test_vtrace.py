"""The V-trace kernel (`fleetrl.returns.vtrace`): a hand-computed segment with a terminated and a
truncated step and clipped weights, a plain-Python reference of the paper's sums, its on-policy
reduction to GAE and n-step returns, and rlax's V-trace on segments rlax can express."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl.returns import gae, vtrace


def _args(value, next_value, reward, terminated, truncated, log_rho):
    """``vtrace``'s positional arrays, the behaviour log-prob 0 and the target ``log_rho``."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return (
        f32(value),
        f32(next_value),
        f32(reward),
        jnp.asarray(terminated, bool),
        jnp.asarray(truncated, bool),
        jnp.zeros(np.shape(value), jnp.float32),
        f32(log_rho),
    )


def test_hand_computed_segment_with_episode_ends_and_clipped_weights():
    # one env, gamma 0.5, all bars 1: t=1 terminates, t=2 is truncated (bootstraps from 10)
    value = [[1.0], [1.0], [2.0], [2.0]]
    next_value = [[1.0], [9.0], [10.0], [4.0]]  # V(next_obs[t]); 9 is never read (terminal)
    reward = [[1.0], [2.0], [3.0], [4.0]]
    terminated = [[False], [True], [False], [False]]
    truncated = [[False], [False], [True], [False]]
    rho = np.array([[2.0], [0.5], [4.0], [0.5]])  # t=0 and t=2 clipped to 1
    vs, adv = vtrace(*_args(value, next_value, reward, terminated, truncated, np.log(rho)), 0.5)
    # t=3, the segment's last step: delta = 0.5 (4 + 0.5 * 4 - 2) = 2; q = V(next_obs) = 4
    # t=2, truncated: delta = 1 (3 + 0.5 * 10 - 2) = 6, no trace from t=3; q = 10
    # t=1, terminated: delta = 0.5 (2 - 1) = 0.5; no bootstrap, no trace
    # t=0: delta = 1 (1 + 0.5 * 1 - 1) = 0.5, acc = 0.5 + 0.5 * min(1, 2) * 0.5 = 0.75;
    #      q = 1 + 0.5 = 1.5 (= vs[1]), advantage = 1 (1 + 0.5 * 1.5 - 1) = 0.75
    np.testing.assert_allclose(vs[:, 0], [1.75, 1.5, 8.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(adv[:, 0], [0.75, 0.5, 6.0, 2.0], rtol=1e-6)


def vtrace_reference(value, next_value, reward, terminated, truncated, rho, gamma, bars):
    """The paper's definition as sums (Espeholt et al. 2018, eq. 1 and 4), one env at a time:
    vs_t = V_t + sum_{s >= t} gamma^(s-t) (prod_{t <= i < s} c_i) delta_s over the steps of
    t's episode inside the segment."""
    rho_bar, pg_rho_bar, c_bar, lam = bars
    steps, envs = reward.shape
    vs, adv = np.zeros((steps, envs)), np.zeros((steps, envs))
    for n in range(envs):
        boot = np.where(terminated[:, n], 0.0, next_value[:, n])
        delta = np.minimum(rho_bar, rho[:, n]) * (reward[:, n] + gamma * boot - value[:, n])
        done = terminated[:, n] | truncated[:, n]
        for t in range(steps):
            total, weight, s = 0.0, 1.0, t
            while True:
                total += weight * delta[s]
                if done[s] or s == steps - 1:
                    break
                weight *= gamma * lam * min(c_bar, rho[s, n])
                s += 1
            vs[t, n] = value[t, n] + total
        for t in range(steps):
            if done[t] or t == steps - 1:
                q = next_value[t, n]
            else:  # lambda-blend of the next target and the next value (rlax's q estimate)
                q = next_value[t, n] + lam * (vs[t + 1, n] - value[t + 1, n])
            target = reward[t, n] + gamma * (0.0 if terminated[t, n] else q)
            adv[t, n] = min(pg_rho_bar, rho[t, n]) * (target - value[t, n])
    return vs, adv


def _random_segment(rng, steps=9, envs=4, ends=True):
    """A segment whose V(next_obs[t]) is V(obs[t+1]) wherever no episode ended at t."""
    value = rng.normal(size=(steps, envs))
    next_value = np.concatenate([value[1:], rng.normal(size=(1, envs))])
    terminated = np.zeros((steps, envs), bool)
    truncated = np.zeros((steps, envs), bool)
    if ends:
        terminated[2, 0] = truncated[5, 0] = True
        truncated[steps - 1, 1] = True
        terminated[0, 2] = terminated[steps - 1, 2] = True
        ended = terminated | truncated
        next_value[ended] = rng.normal(size=ended.sum())  # the reached obs, not obs[t+1]
    reward = rng.normal(size=(steps, envs))
    log_rho = rng.normal(scale=0.7, size=(steps, envs))
    return value, next_value, reward, terminated, truncated, log_rho


@pytest.mark.parametrize("bars", [(1.0, 1.0, 1.0, 1.0), (1.5, 0.8, 0.9, 0.7)])
def test_matches_the_papers_sums_with_episode_ends(bars):
    rng = np.random.default_rng(0)
    segment = _random_segment(rng)
    rho_bar, pg_rho_bar, c_bar, lam = bars
    vs, adv = vtrace(
        *_args(*segment),
        0.9,
        rho_bar=rho_bar,
        pg_rho_bar=pg_rho_bar,
        c_bar=c_bar,
        lambda_=lam,
    )
    value, next_value, reward, terminated, truncated, log_rho = segment
    ref_vs, ref_adv = vtrace_reference(
        value, next_value, reward, terminated, truncated, np.exp(log_rho), 0.9, bars
    )
    np.testing.assert_allclose(vs, ref_vs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lam", [1.0, 0.9])
def test_on_policy_it_is_gae(lam):
    """rho = c = 1: the targets are GAE(lambda)'s returns and the advantages GAE's, with
    terminated and truncated steps; lambda 1 gives n-step returns bootstrapped at the
    segment's end or at a truncation."""
    rng = np.random.default_rng(1)
    value, next_value, reward, terminated, truncated, _ = _random_segment(rng)
    on_policy = np.zeros_like(value)
    args = _args(value, next_value, reward, terminated, truncated, on_policy)
    vs, adv = vtrace(*args, 0.95, lambda_=lam)
    v, next_v, r, term, trunc = args[:5]
    gae_adv, gae_returns = gae(r, v, next_v, term, trunc, 0.95, lam)
    np.testing.assert_allclose(vs, gae_returns, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv, gae_adv, rtol=1e-5, atol=1e-5)
    if lam == 1.0:  # env 3 has no episode end: the discounted sum bootstrapped at T - 1
        steps = reward.shape[0]
        discounts = 0.95 ** np.arange(steps)
        first = discounts @ reward[:, 3] + 0.95**steps * next_value[-1, 3]
        assert vs[0, 3] == pytest.approx(first, rel=1e-5)


@pytest.mark.parametrize("ends", [False, True])
@pytest.mark.parametrize("lam, rho_bar, pg_rho_bar", [(1.0, 1.0, 1.0), (0.8, 1.5, 0.7)])
def test_matches_rlax(ends, lam, rho_bar, pg_rho_bar):
    """rlax's single-sequence V-trace, vmapped over envs, with its conventions: discount_t
    per step (0 where an episode terminated), v_t the values of the states reached (the
    bootstrap at the end). rlax has one discount per step and so no truncation: the segments
    here end episodes only by termination. Its trace coefficient is min(1, rho): c_bar 1."""
    rlax = pytest.importorskip("rlax")
    rng = np.random.default_rng(2)
    value, next_value, reward, terminated, truncated, log_rho = _random_segment(rng, ends=False)
    if ends:
        terminated[3, 0] = terminated[0, 1] = terminated[-1, 2] = True
        next_value[terminated] = 123.0  # never read
    vs, adv = vtrace(
        *_args(value, next_value, reward, terminated, truncated, log_rho),
        0.9,
        rho_bar=rho_bar,
        pg_rho_bar=pg_rho_bar,
        lambda_=lam,
    )
    discount = 0.9 * (1.0 - terminated)
    theirs = jax.vmap(
        lambda *xs: rlax.vtrace_td_error_and_advantage(
            *xs,
            lambda_=lam,
            clip_rho_threshold=rho_bar,
            clip_pg_rho_threshold=pg_rho_bar,
        ),
        in_axes=1,
        out_axes=1,
    )(
        *(jnp.asarray(x, jnp.float32) for x in (value, next_value, reward, discount)),
        jnp.exp(jnp.asarray(log_rho, jnp.float32)),
    )
    np.testing.assert_allclose(vs, theirs.errors + value, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv, theirs.pg_advantage, rtol=1e-5, atol=1e-5)


def test_targets_carry_no_gradient():
    rng = np.random.default_rng(3)
    value, next_value, reward, terminated, truncated, log_rho = _random_segment(rng)

    def total(v):
        args = _args(v, next_value, reward, terminated, truncated, log_rho)
        vs, adv = vtrace(*args, 0.9)
        return jnp.sum(vs) + jnp.sum(adv)

    assert np.all(jax.grad(total)(jnp.asarray(value, jnp.float32)) == 0.0)
