"""The value-based family's kernels against hand-computed values: n-step bootstrapping, C51's
projection (terminal, truncated, n-step, clipped and on-atom cases), the quantile Huber loss,
Munchausen's target with its clip; and the networks' heads: dueling identity, noisy layers,
IQN's fractions."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from fleetrl.algos import dqn
from fleetrl.algos.dqn import learner as dqn_learner
from fleetrl.algos.dqn.networks import make_network
from fleetrl.config import load_preset
from fleetrl.types import EnvSpec


def test_n_step_bootstrap_stops_at_the_first_episode_end():
    # gamma 0.5; columns: no end, terminated at k=1, truncated at k=0, truncated at k=2
    reward = jnp.array([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [4.0, 4.0, 4.0, 4.0]])
    terminated = jnp.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    truncated = jnp.array([[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]], bool)
    ret, discount = dqn.n_step_bootstrap(reward, terminated, truncated, 0.5)
    np.testing.assert_allclose(ret, [3.0, 2.0, 1.0, 3.0])
    np.testing.assert_allclose(discount, [0.125, 0.0, 0.5, 0.125])


def test_categorical_projection_hand_computed():
    atoms = jnp.array([0.0, 1.0, 2.0, 3.0])
    probs = jnp.array(
        [
            [0.0, 1.0, 0.0, 0.0],  # terminal: all mass to the reward 1.5, split 1 | 2
            [0.25, 0.25, 0.25, 0.25],  # truncated / n-step: 1 + 0.5 z = 1, 1.5, 2, 2.5
            [0.0, 0.0, 0.5, 0.5],  # 2.5 + z = 4.5, 5.5: clipped to v_max
            [1.0, 0.0, 0.0, 0.0],  # 1 + z = 1: exactly on an atom
        ]
    )
    ret = jnp.array([1.5, 1.0, 2.5, 1.0])
    discount = jnp.array([0.0, 0.5, 1.0, 1.0])
    target = dqn.categorical_projection(atoms, probs, ret, discount)
    expected = [[0, 0.5, 0.5, 0], [0, 0.375, 0.5, 0.125], [0, 0, 0, 1], [0, 1, 0, 0]]
    np.testing.assert_allclose(target, expected, atol=1e-6)
    np.testing.assert_allclose(target.sum(-1), 1.0, atol=1e-6)
    loss = dqn.categorical_loss(jnp.zeros((1, 4)), target[:1])
    np.testing.assert_allclose(loss, [math.log(4.0)], rtol=1e-6)


def test_quantile_huber_loss_hand_computed():
    # two quantiles 0 and 2 at fractions 1/4, 3/4 against one target 1: each |delta| = 1,
    # Huber 0.5, weights |0.25 - 0| and |0.75 - 1|: 0.125 + 0.125
    loss = dqn.quantile_huber_loss(
        jnp.array([[0.0, 2.0]]), jnp.array([[0.25, 0.75]]), jnp.array([[1.0]]), 1.0
    )
    np.testing.assert_allclose(loss, [0.25])
    # one quantile 0 at 1/2 against targets 3 and -1: Huber 2.5 and 0.5, weights 1/2: mean 0.75
    loss = dqn.quantile_huber_loss(
        jnp.array([[0.0]]), jnp.array([[0.5]]), jnp.array([[3.0, -1.0]]), 1.0
    )
    np.testing.assert_allclose(loss, [0.75])
    # kappa 2: |delta| 3 > 2: 2 * (3 - 1) / 2 = 2; |delta| 1: 0.5 / 2; weights 1/2: mean 0.5625
    loss = dqn.quantile_huber_loss(
        jnp.array([[0.0]]), jnp.array([[0.5]]), jnp.array([[3.0, -1.0]]), 2.0
    )
    np.testing.assert_allclose(loss, [0.5625])


def test_munchausen_target_hand_computed_with_its_clip():
    cfg = dqn.Config(munchausen=True, munchausen_alpha=0.9, munchausen_tau=1.0)
    q_obs = jnp.array([[1.0, 1.0], [0.0, 5.0]])
    action = jnp.array([0, 0])
    next_q = jnp.zeros((2, 2))  # pi' = (1/2, 1/2), tau log pi' = -ln 2
    next_outputs = jnp.array([[[2.0], [4.0]], [[2.0], [4.0]]])
    reward, discount = jnp.array([1.0, 1.0]), jnp.array([0.5, 0.0])
    target = dqn.munchausen_target(q_obs, action, next_q, next_outputs, reward, discount, cfg)
    ln2 = math.log(2.0)
    # row 0: tau log pi(a|s) = -ln 2 (inside the clip); soft value 3 + ln 2
    # row 1: tau log pi(a|s) = -log(1 + e^5) < -1: clipped to -1; terminal
    np.testing.assert_allclose(target[:, 0], [1 - 0.9 * ln2 + 0.5 * (3 + ln2), 1 - 0.9], rtol=1e-6)
    small = dataclasses.replace(cfg, munchausen_tau=0.03)
    big = dqn.munchausen_target(
        q_obs * 100, action, next_q + 50, next_outputs, reward, discount, small
    )
    assert bool(jnp.all(jnp.isfinite(big)))


def _network(**flags):
    cfg = dqn.Config(hidden_sizes=(16, 16), **flags)
    return cfg, make_network(cfg, 3)


def test_dueling_head_has_zero_mean_advantage():
    for distributional in ("none", "c51", "qr"):
        cfg, net = _network(dueling=True, distributional=distributional, num_quantiles=5)
        obs = jax.random.normal(jax.random.PRNGKey(0), (7, 4))
        params = net.init(jax.random.PRNGKey(1), obs)
        out, captured = net.apply(params, obs, mutable=["intermediates"])
        value = captured["intermediates"]["value"][0]  # [B, 1, 1, K]
        # Q = V + A - mean A: the mean over actions of Q is V
        np.testing.assert_allclose(out.mean(axis=1), value[:, 0, 0], rtol=1e-5, atol=1e-5)


def test_noisy_layers_draw_fresh_noise_when_acting_and_none_in_evaluation():
    run = load_preset("dqn-cartpole")
    run = dataclasses.replace(
        run, algo=dataclasses.replace(run.algo, noisy=True, hidden_sizes=(16,))
    )
    spec = EnvSpec("fake", 5, (4,), "discrete", num_actions=3)
    algo = dqn.make(run, spec)
    state = algo.init(jax.random.PRNGKey(0))
    ap = algo.actor_params(state)
    assert float(ap["epsilon"]) == 0.0  # noise replaces epsilon
    parts = algo.act.args[0]
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    sampled = [
        dqn_learner.forward(parts, state.params, obs, jax.random.PRNGKey(k), 1, True)[0]
        for k in range(2)
    ]
    assert not np.allclose(sampled[0], sampled[1])  # a new draw per acting step
    mean = [
        dqn_learner.forward(parts, state.params, obs, jax.random.PRNGKey(k), 1, False)[0]
        for k in range(2)
    ]
    np.testing.assert_array_equal(mean[0], mean[1])  # evaluation: the mean weights
    greedy = [algo.act(ap, (), obs, jax.random.PRNGKey(k), False)[0] for k in range(3)]
    assert all(np.array_equal(greedy[0], g) for g in greedy)


def test_iqn_samples_its_fractions_and_acts_on_fixed_ones_in_evaluation():
    run = load_preset("dqn-cartpole")
    algo_cfg = dataclasses.replace(
        run.algo,
        distributional="iqn",
        hidden_sizes=(16, 16),
        num_tau_samples=8,
        num_tau_prime_samples=6,
        num_quantile_samples=4,
    )
    algo = dqn.make(dataclasses.replace(run, algo=algo_cfg), EnvSpec("f", 2, (4,), "discrete", 3))
    parts = algo.act.args[0]
    state = algo.init(jax.random.PRNGKey(0))
    obs = jnp.ones((5, 4))
    out, taus = dqn_learner.forward(parts, state.params, obs, jax.random.PRNGKey(1), 8, True)
    assert out.shape == (5, 3, 8) and taus.shape == (5, 8)
    assert float(taus.min()) >= 0.0 and float(taus.max()) < 1.0
    assert len(np.unique(np.asarray(taus))) == 40  # independent per sample and fraction
    out, taus = dqn_learner.forward(parts, state.params, obs, jax.random.PRNGKey(2), 4, False)
    np.testing.assert_allclose(taus[0], [0.125, 0.375, 0.625, 0.875])
    ap = algo.actor_params(state)
    actions = [algo.act(ap, (), obs, jax.random.PRNGKey(k), False)[0] for k in range(3)]
    assert all(np.array_equal(actions[0], a) for a in actions)
