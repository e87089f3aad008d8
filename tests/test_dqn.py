"""DQN: hand-computed TD targets, the epsilon schedule, target refreshes, and a smoke run with
Double DQN and n-step returns."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl import replay
from fleetrl.algos import dqn
from fleetrl.config import load_preset
from fleetrl.train import train
from fleetrl.types import EnvSpec, Rollout
from tests.test_train import records


def test_one_step_target_vanilla_and_double_q_hand_computed():
    # 3 samples, 2 actions, gamma 0.5: [continues, terminated, truncated]
    online = jnp.array([[[1.0, 2.0], [0.0, 5.0], [3.0, 0.0]]])  # [n=1, B=3, A=2]
    target = jnp.array([[[4.0, 3.0], [6.0, 1.0], [2.0, 8.0]]])
    reward = jnp.array([[1.0, 2.0, -1.0]])
    terminated = jnp.array([[False, True, False]])
    truncated = jnp.array([[False, False, True]])
    args = (reward, terminated, truncated, 0.5)
    # DQN: max of the target net: 1 + .5 * 4; terminal: 2 (no bootstrap); truncated: -1 + .5 * 8
    np.testing.assert_array_equal(dqn.td_target(online, target, *args, False), [3.0, 2.0, 3.0])
    # Double DQN: target net at the online argmax (1, -, 0): 1 + .5 * 3; 2; -1 + .5 * 2
    np.testing.assert_array_equal(dqn.td_target(online, target, *args, True), [2.5, 2.0, 0.0])


def test_three_step_target_from_a_hand_written_sequence_through_replay_sampling():
    """One env, 8 steps stored across the ring buffer's wrap, sampled as 3-step windows; Q is a
    table indexed by the observation id, so each window's target is computed by hand."""
    # step t: obs id t, reward, terminated, truncated, id of the observation reached
    reward = [1.0, 2.0, 4.0, 1.0, 2.0, 1.0, 1.0, 1.0]
    terminated = [False, False, True, False, False, False, False, False]
    truncated = [False, False, False, False, True, False, False, False]
    next_id = [1, 2, 9, 4, 10, 6, 7, 8]  # 9: terminal state, 10: final obs of the cut episode
    steps = {
        "obs": jnp.arange(8.0)[:, None, None],  # [T=8, N=1, 1]
        "reward": jnp.array(reward)[:, None],
        "terminated": jnp.array(terminated)[:, None],
        "truncated": jnp.array(truncated)[:, None],
        "next_obs": jnp.array(next_id, jnp.float32)[:, None, None],
    }
    q_table = jnp.stack([10.0 * jnp.arange(11.0), -jnp.ones(11)], axis=-1)  # V(id) = 10 id

    @jax.jit  # one compile instead of one per op
    def sample_targets(steps, key):
        buffer = replay.create(jax.tree.map(lambda x: x[0], steps), capacity_rows=8)
        buffer = replay.add(buffer, jax.tree.map(lambda x: x[:3], steps))  # overwritten next
        buffer = replay.add(buffer, steps)
        batch = replay.sample_sequences(buffer, key, 256, 3)
        next_q = q_table[batch["next_obs"][..., 0].astype(jnp.int32)]  # [3, B, 2]
        args = (batch["reward"], batch["terminated"], batch["truncated"], 0.5, False)
        return batch["obs"][0, :, 0], dqn.td_target(next_q, next_q, *args)

    start, got = sample_targets(steps, jax.random.PRNGKey(0))
    expected = {
        0: 1 + 0.5 * 2 + 0.25 * 4,  # terminal at step 2: no bootstrap
        1: 2 + 0.5 * 4,  # stops at the terminal step 2; step 3's reward is another episode's
        2: 4.0,
        3: 1 + 0.5 * 2 + 0.25 * 100,  # truncated at step 4: bootstraps from V(10)
        4: 2 + 0.5 * 100,
        5: 1 + 0.5 * 1 + 0.25 * 1 + 0.125 * 80,  # three rewards, then V(8)
    }
    start = np.asarray(start).astype(int)
    assert set(start) == set(expected)
    np.testing.assert_array_equal(got, [expected[s] for s in start])


def test_epsilon_schedule():
    cfg = dqn.Config(epsilon_start=1.0, epsilon_end=0.1, exploration_fraction=0.5)
    epsilon = lambda step: float(dqn.epsilon_schedule(jnp.int32(step), cfg, total_steps=1000))
    assert epsilon(0) == pytest.approx(1.0)
    assert epsilon(250) == pytest.approx(0.55)  # halfway through the 500 decay steps
    assert epsilon(500) == pytest.approx(0.1)
    assert epsilon(10_000) == pytest.approx(0.1)


def tiny_dqn(**algo):
    """A 2-env DQN on a fake 4-dim, 2-action env, built through the real config path."""
    run = load_preset("dqn-cartpole")
    run = dataclasses.replace(
        run,
        env=dataclasses.replace(run.env, num_envs=2),
        train=dataclasses.replace(run.train, num_steps=4, total_steps=80),
    )
    fields = dict(hidden_sizes=(8,), batch_size=8, buffer_size=64, learning_starts=0)
    run = dataclasses.replace(run, algo=dataclasses.replace(run.algo, **fields, **algo))
    return run, dqn.make(run, EnvSpec("fake", 2, (4,), "discrete", num_actions=2))


def fake_rollout(rng, num_steps=4, num_envs=2):
    shape = (num_steps, num_envs)
    zeros = jnp.zeros(shape)
    return Rollout(
        obs=jnp.asarray(rng.normal(size=shape + (4,)), jnp.float32),
        action=jnp.asarray(rng.integers(0, 2, shape)),
        reward=jnp.asarray(rng.normal(size=shape), jnp.float32),
        terminated=jnp.asarray(rng.random(shape) < 0.2),
        truncated=jnp.zeros(shape, bool),
        next_obs=jnp.asarray(rng.normal(size=shape + (4,)), jnp.float32),
        extras={},
        episode_return=zeros,
        episode_length=zeros,
    )


def same_tree(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in pairs)


def test_target_network_is_copied_every_target_update_interval_gradient_steps():
    run, algo = tiny_dqn(gradient_steps=1, target_update_interval=3)
    state = algo.init(jax.random.PRNGKey(0))
    assert same_tree(state.target_params, state.params)
    learn = jax.jit(algo.learn)
    rng = np.random.default_rng(0)
    for step in range(1, 8):
        previous_target = state.target_params
        state, metrics = learn(state, fake_rollout(rng), jax.random.PRNGKey(step))
        assert int(state.gradient_steps) == step
        if step % 3 == 0:  # refreshed (tau 1: a copy)
            assert same_tree(state.target_params, state.params)
        else:  # frozen since the last refresh while the online network moves
            assert same_tree(state.target_params, previous_target)
            assert not same_tree(state.target_params, state.params)
        expected_epsilon = dqn.epsilon_schedule(state.env_steps, run.algo, run.train.total_steps)
        assert float(metrics["train/epsilon"]) == pytest.approx(float(expected_epsilon))
    assert int(state.env_steps) == 7 * 8


def test_double_q_three_step_smoke_run(tiny):
    run = tiny("dqn-cartpole")
    run = dataclasses.replace(run, algo=dataclasses.replace(run.algo, double_q=True, n_step=3))
    result = train(run)
    assert result.status == "completed" and np.isfinite(result.eval_returns).all()
    td_losses = [r["losses/td_loss"] for r in records(result.run_dir) if "losses/td_loss" in r]
    assert (
        len(td_losses) == 2 and np.all(np.isfinite(td_losses)) and np.all(np.array(td_losses) > 0)
    )
