"""Kernels of the actor-critic family against hand-computed values: Monte-Carlo returns,
masked categoricals, weighted policy-gradient losses, the recurrent unroll and its resets,
REINFORCE's whole-episode bookkeeping and recurrent minibatches that keep sequences whole."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl import distributions as D
from fleetrl.algos.actor_critic import learner as L
from fleetrl.algos.actor_critic import losses, networks
from fleetrl.config import ConfigError, load_preset
from fleetrl.returns import monte_carlo_returns
from fleetrl.types import EnvSpec, Rollout


def test_monte_carlo_returns_hand_computed():
    # one env, 5 steps: an episode ends (terminated) at t=1, another is truncated at t=3
    # (bootstrapping 10 there), and t=4 begins an episode that has not ended in the window
    reward = jnp.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    terminated = jnp.array([[False], [True], [False], [False], [False]])
    truncated = jnp.array([[False], [False], [False], [True], [False]])
    next_value = jnp.full((5, 1), 10.0)
    returns, complete = monte_carlo_returns(reward, terminated, truncated, next_value, 0.5)
    # t=3: 4 + 0.5*10 = 9; t=2: 3 + 0.5*9 = 7.5; t=1: 2; t=0: 1 + 0.5*2 = 2; t=4: partial 5
    np.testing.assert_allclose(returns[:, 0], [2.0, 2.0, 7.5, 9.0, 5.0])
    np.testing.assert_array_equal(complete[:, 0], [True, True, True, True, False])


def test_masked_categorical_never_picks_an_illegal_action():
    logits = jnp.array([[5.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    mask = jnp.array([[False, True, True], [True, False, False]])
    masked = D.mask_logits(logits, mask)
    # mode: the best legal action, not the best action
    np.testing.assert_array_equal(jnp.argmax(masked, axis=-1), [2, 0])
    samples = jax.vmap(lambda k: D.categorical_sample(masked, k))(
        jax.random.split(jax.random.PRNGKey(0), 500)
    )
    assert np.all(np.take_along_axis(np.asarray(mask), np.asarray(samples).T, axis=1))
    # probabilities renormalized over the legal actions; entropy and KL finite
    p = math.exp(0.0) / (math.exp(0.0) + math.exp(1.0))
    assert float(jnp.exp(D.categorical_log_prob(masked, jnp.array([1, 0])))[0]) == pytest.approx(
        p, rel=1e-5
    )
    assert float(D.categorical_log_prob(masked, jnp.array([1, 0]))[1]) == pytest.approx(
        0.0, abs=1e-6
    )
    entropy = D.categorical_entropy(masked)
    assert float(entropy[0]) == pytest.approx(
        -(p * math.log(p) + (1 - p) * math.log(1 - p)), rel=1e-5
    )
    assert float(entropy[1]) == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.isfinite(D.categorical_kl(masked, D.mask_logits(jnp.zeros((2, 3)), mask))))
    assert D.mask_logits(logits, None) is logits


def test_weighted_losses_hand_computed():
    log_prob = jnp.array([-1.0, -2.0, -3.0])
    advantages = jnp.array([1.0, 2.0, 3.0])
    # -(mean of log_prob * A) = -(-1 - 4 - 9) / 3
    assert float(losses.policy_gradient(log_prob, advantages)) == pytest.approx(14 / 3)
    weights = jnp.array([1.0, 1.0, 0.0])  # the third step does not count
    assert float(losses.policy_gradient(log_prob, advantages, weights)) == pytest.approx(2.5)
    assert float(
        losses.value_loss(jnp.array([1.0, 3.0, 100.0]), jnp.array([0.0, 1.0, 0.0]), weights)
    ) == pytest.approx(1.25)
    z = losses.standardize(jnp.array([1.0, 3.0, 50.0]), weights)
    np.testing.assert_allclose(z[:2], [-1.0, 1.0], atol=1e-6)
    assert float(losses.mean(jnp.array([1.0]), jnp.array([0.0]))) == 0.0


def _spec(num_envs=3, **kw):
    return EnvSpec("fake", num_envs, (2,), "discrete", num_actions=2, max_episode_steps=0, **kw)


@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_unroll_resets_where_an_episode_began(core):
    """Unrolling a sequence with a reset at t equals starting a fresh sequence at t; the core
    state carries information when it is not reset."""
    cfg = dataclasses.replace(
        load_preset("ppo-gru-memorychain").algo, core=core, core_size=8, hidden_sizes=(8,)
    )
    net = networks.build(cfg, _spec())
    params = net.init(jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (6, 3, 2))
    resets = jnp.zeros((6, 3), bool).at[3].set(True)
    core0 = jax.tree.map(lambda x: x + 0.5, net.initial_core(3))
    out, value, _ = networks.unroll(net, params, core0, obs, resets)
    fresh_out, fresh_value, _ = networks.unroll(
        net, params, net.initial_core(3), obs[3:], jnp.zeros((3, 3), bool)
    )
    np.testing.assert_allclose(out[3:], fresh_out, atol=1e-6)
    np.testing.assert_allclose(value[3:], fresh_value, atol=1e-6)
    no_reset, _, _ = networks.unroll(net, params, core0, obs, jnp.zeros((6, 3), bool))
    assert not np.allclose(no_reset[3:], fresh_out, atol=1e-4)  # the state mattered


def _tiny_run(preset, **algo):
    run = load_preset(preset)
    return dataclasses.replace(
        run,
        env=dataclasses.replace(run.env, num_envs=4),
        train=dataclasses.replace(run.train, num_steps=6, total_steps=48),
        algo=dataclasses.replace(run.algo, **algo),
    )


def test_recurrent_minibatches_keep_sequences_whole():
    run = _tiny_run("ppo-gru-memorychain", num_minibatches=2, hidden_sizes=(4,), core_size=4)
    spec = _spec(num_envs=4)
    algo = L.make(run, spec)
    parts = L.build_parts(run, spec)
    env_index = jnp.broadcast_to(jnp.arange(4.0), (6, 4))
    batch = {
        "obs": env_index[..., None],
        "resets": jnp.zeros((6, 4), bool),
        "core": jnp.arange(4.0)[:, None],
    }
    split = L.minibatches(parts, batch, jax.random.PRNGKey(3))
    assert split["obs"].shape == (2, 6, 2, 1) and split["core"].shape == (2, 2, 1)
    for m in range(2):  # each minibatch: whole sequences of 2 envs, with their own start states
        seq_envs = split["obs"][m, :, :, 0]
        assert np.all(seq_envs == seq_envs[0])
        np.testing.assert_array_equal(seq_envs[0], split["core"][m, :, 0])
    assert algo.init_actor(None, 4).shape == (4, 4)


def _rollout(reward, terminated, obs_dim=2):
    t, n = reward.shape
    zeros = jnp.zeros((t, n))
    return Rollout(
        obs=jnp.ones((t, n, obs_dim)),
        action=jnp.zeros((t, n), jnp.int32),
        reward=reward,
        terminated=terminated,
        truncated=jnp.zeros((t, n), bool),
        next_obs=jnp.ones((t, n, obs_dim)),
        extras={"log_prob": jnp.log(jnp.full((t, n), 0.5))},
        episode_return=zeros,
        episode_length=zeros,
    )


def test_reinforce_learns_each_step_once_when_its_episode_has_ended():
    run = _tiny_run("reinforce-cartpole", hidden_sizes=(4,))
    run = dataclasses.replace(
        run,
        train=dataclasses.replace(run.train, num_steps=4),
        env=dataclasses.replace(run.env, num_envs=1),
    )
    spec = EnvSpec("fake", 1, (2,), "discrete", num_actions=2, max_episode_steps=4)
    algo = L.make(run, spec)
    state = algo.init(jax.random.PRNGKey(0))
    learn = jax.jit(algo.learn)
    # rollout 1: an episode ends at t=1; steps 2-3 belong to one still running
    r1 = _rollout(jnp.ones((4, 1)), jnp.array([[False], [True], [False], [False]]))
    state, m1 = learn(state, r1, jax.random.PRNGKey(1))
    assert int(m1["train/learned_steps"]) == 2 and int(m1["train/dropped_steps"]) == 0
    # rollout 2: that episode ends at t=0; the two open steps of rollout 1 are learned now
    r2 = _rollout(jnp.ones((4, 1)), jnp.array([[True], [False], [False], [True]]))
    state, m2 = learn(state, r2, jax.random.PRNGKey(2))
    assert int(m2["train/learned_steps"]) == 2 + 4 and int(m2["train/dropped_steps"]) == 0
    # rollout 3: no episode ends: nothing new to learn
    state, m3 = learn(
        state, _rollout(jnp.ones((4, 1)), jnp.zeros((4, 1), bool)), jax.random.PRNGKey(3)
    )
    assert int(m3["train/learned_steps"]) == 0
    # rollout 4: still no end: rollout 3's steps are dropped (an episode longer than a rollout)
    state, m4 = learn(
        state, _rollout(jnp.ones((4, 1)), jnp.zeros((4, 1), bool)), jax.random.PRNGKey(4)
    )
    assert int(m4["train/dropped_steps"]) == 4


def test_reinforce_refuses_rollouts_shorter_than_an_episode():
    run = _tiny_run("reinforce-cartpole")
    spec = EnvSpec("CartPole-v1", 4, (4,), "discrete", num_actions=2, max_episode_steps=500)
    with pytest.raises(ConfigError, match="train.num_steps"):
        L.make(run, spec)


@pytest.mark.parametrize("core, kind", [("lstm", "masked"), ("gru", "discrete")])
def test_a_recurrent_learner_replays_what_the_actor_did(core, kind):
    """Replaying a segment from its stored start state, resetting where episodes began, gives
    the actor's own log-probabilities; and the value of ``next_obs[t]`` is the value of
    ``obs[t + 1]`` wherever no episode ended at ``t`` (the bootstrap uses the state after t)."""
    from fleetrl.envs.fake_device import FakeDeviceEnv
    from fleetrl.rollout import reset, simulate

    run = _tiny_run("ppo-gru-memorychain", core=core, core_size=8, hidden_sizes=(8,))
    env = FakeDeviceEnv(kind, 4, episode_length=5, terminate_prob=0.2)
    algo = L.make(run, env.spec)
    state = algo.init(jax.random.PRNGKey(0))
    carry = reset(env, jax.random.PRNGKey(1), algo)
    rollout_fn = jax.jit(lambda c: simulate(algo, env, state, c, 12))
    carry, _ = rollout_fn(carry)  # a second segment: its start state is not the initial one
    _, rollout = rollout_fn(carry)
    assert rollout.done[:-1].any()  # episodes end inside the segment
    parts = L.build_parts(run, env.spec)
    batch, _ = L.sequence_batch(parts, state, rollout, rollout.reward)
    out, _ = L.evaluate_batch(parts, state.params, batch)
    replayed = parts.dist.log_prob(out, batch["action"].reshape(-1)).reshape(12, 4)
    np.testing.assert_allclose(replayed, rollout.extras["log_prob"], atol=1e-5)
    resets = batch["resets"]
    _, values, cores = networks.unroll(
        parts.net, state.params, rollout.actor_state, rollout.obs, resets
    )
    merge = lambda x: x.reshape((48,) + x.shape[2:])
    _, next_values, _ = parts.net.both(
        state.params, jax.tree.map(merge, cores), merge(rollout.next_obs)
    )
    next_values = next_values.reshape(12, 4)
    same = ~np.asarray(rollout.done[:-1])
    np.testing.assert_allclose(
        np.asarray(next_values[:-1])[same], np.asarray(values[1:])[same], atol=1e-5
    )
