"""DQN: hand-computed TD targets, the epsilon schedule, target refreshes, and a smoke run with
Double DQN and n-step returns."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl import replay
from fleetrl.algos import dqn
from fleetrl.algos.dqn import learner as dqn_learner
from fleetrl.config import load_preset
from fleetrl.train import train
from fleetrl.types import EnvSpec, Rollout
from tests.test_train import records


def test_three_step_target_from_a_hand_written_sequence_through_replay_sampling():
    """One env, 9 steps stored across the ring buffer's wrap, sampled as 3-step windows; V is a
    table indexed by the observation id, so each window's target is computed by hand. The
    bootstrap observation comes from the next row, or from the side ring at a truncation."""
    # step t: obs id t, reward, terminated, truncated, id of the observation reached
    reward = [1.0, 2.0, 4.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    terminated = [False, False, True, False, False, False, False, False, False]
    truncated = [False, False, False, False, True, False, False, False, False]
    next_id = [1, 2, 9, 4, 10, 6, 7, 8, 11]  # 9: terminal state, 10: final obs of the cut episode
    col = lambda xs, dtype: jnp.array(xs, dtype)[:, None]
    obs = jnp.arange(9.0)[:, None, None]  # [T=9, N=1, 1]
    steps = (obs, col(next_id, jnp.float32)[..., None], col([0] * 9, jnp.int32))
    steps += (col(reward, jnp.float32), col(terminated, bool), col(truncated, bool))
    value = 10.0 * jnp.arange(12.0)  # V(id) = 10 id

    @jax.jit  # one compile instead of one per op
    def sample_targets(steps, key):
        buffer = replay.create((1,), jnp.float32, 1, capacity_rows=8)
        buffer = replay.add(buffer, *jax.tree.map(lambda x: x[:3], steps))
        buffer = replay.add(buffer, *jax.tree.map(lambda x: x[3:], steps))  # wraps: step 0 goes
        rows, envs = replay.sample_uniform(buffer, key, 256, 3)
        window = replay.read_windows(buffer, rows, envs, 3)
        ret, discount = dqn.n_step_bootstrap(
            window.reward, window.terminated, window.truncated, 0.5
        )
        bootstrap = value[window.next_obs[:, 0].astype(jnp.int32)]
        return window.obs[:, 0], ret + discount * bootstrap

    start, got = sample_targets(steps, jax.random.PRNGKey(0))
    expected = {  # the buffer holds steps 1..8; windows need the row after them: starts 1..5
        1: 2 + 0.5 * 4,  # stops at the terminal step 2; step 3's reward is another episode's
        2: 4.0,
        3: 1 + 0.5 * 2 + 0.25 * 100,  # truncated at step 4: bootstraps from V(10)
        4: 2 + 0.5 * 100,
        5: 1 + 0.5 * 1 + 0.25 * 1 + 0.125 * 80,  # three rewards, then V(8) from row 8
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


def test_target_network_is_copied_every_target_update_interval_env_steps():
    """SB3's unit: 2 envs x 4 steps = 8 env steps per learn, interval 16: a copy at the start
    of every second learn, of the online network as the envs last acted with it."""
    run, algo = tiny_dqn(gradient_steps=1, target_update_interval=16)
    state = algo.init(jax.random.PRNGKey(0))
    assert same_tree(state.target_params, state.params)
    learn = jax.jit(algo.learn)
    rng = np.random.default_rng(0)
    for step in range(1, 8):
        previous = state
        state, metrics = learn(state, fake_rollout(rng), jax.random.PRNGKey(step))
        assert int(state.gradient_steps) == step
        if step % 2 == 0:  # refreshed before this learn's gradient step (tau 1: a copy)
            assert same_tree(state.target_params, previous.params)
        else:  # frozen since the last refresh while the online network moves
            assert same_tree(state.target_params, previous.target_params)
        assert not same_tree(state.target_params, state.params)
        expected_epsilon = dqn.epsilon_schedule(state.env_steps, run.algo, run.train.total_steps)
        assert float(metrics["train/epsilon"]) == pytest.approx(float(expected_epsilon))
    assert int(state.env_steps) == 7 * 8


def test_polyak_target_updates_count_every_interval_crossed():
    cfg = dqn.Config(target_update_interval=4, tau=0.5)
    online, target = {"w": jnp.float32(1.0)}, {"w": jnp.float32(9.0)}
    refresh = lambda before, after: float(
        dqn_learner.refresh_target(cfg, online, target, jnp.int32(before), jnp.int32(after))["w"]
    )
    assert refresh(0, 3) == 9.0  # no multiple of 4 crossed
    assert refresh(3, 4) == 5.0  # one: halfway
    assert refresh(0, 12) == 1.0 + 8.0 * 0.5**3  # three, all toward the same online value


def test_double_q_three_step_smoke_run(tiny):
    run = tiny("dqn-cartpole")
    run = dataclasses.replace(run, algo=dataclasses.replace(run.algo, double_q=True, n_step=3))
    result = train(run)
    assert result.status == "completed" and np.isfinite(result.eval_returns).all()
    td_losses = [r["losses/td_loss"] for r in records(result.run_dir) if "losses/td_loss" in r]
    assert (
        len(td_losses) == 2 and np.all(np.isfinite(td_losses)) and np.all(np.array(td_losses) > 0)
    )
