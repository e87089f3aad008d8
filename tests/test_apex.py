"""Ape-X's pieces without Ray (fleetrl.algos.dqn.apex, host_replay): the epsilon ladder, an
actor's windows by hand and against the device replay's, initial priorities against the
learner's signal and a hand TD error, the host replay's sum tree against fleetrl.prioritized
(same probabilities, chi-square), ring overwrite, stale updates and weights, the learner step
(loss down on a fixed batch, priorities) and target updates; C51, IQN, Munchausen, noisy
dueling and masked members through the whole actor -> replay -> learner path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fleetrl import prioritized, replay
from fleetrl.algos import dqn
from fleetrl.algos.dqn import apex, learner
from fleetrl.config import load_preset
from fleetrl.types import EnvSpec, Rollout


def parts_of(num_actions=3, action_mask=False, **algo):
    """The value family's `Parts` for a fake 4-dim env, through the real config path."""
    run = load_preset("dqn-cartpole")
    fields = dict(hidden_sizes=(16,), batch_size=8)
    run = dataclasses.replace(run, algo=dataclasses.replace(run.algo, **fields | algo))
    spec = EnvSpec("fake", 2, (4,), "discrete", num_actions=num_actions, action_mask=action_mask)
    return learner.build_parts(run, spec)


def rollout_of(obs, next_obs, reward, terminated, truncated, action=None, action_mask=None):
    shape = reward.shape
    zeros = np.zeros(shape, np.float32)
    action = np.zeros(shape, np.int32) if action is None else action
    return Rollout(
        obs, action, reward, terminated, truncated, next_obs, {}, zeros, zeros, (), action_mask
    )


def random_segment(rng, num_steps=8, num_envs=4, num_actions=3, masks=False):
    """A consistent segment: ``next_obs[t] == obs[t + 1]`` wherever the episode goes on."""
    shape = (num_steps, num_envs)
    terminated = rng.random(shape) < 0.15
    truncated = (rng.random(shape) < 0.1) & ~terminated
    obs = rng.normal(size=shape + (4,)).astype(np.float32)
    next_obs = rng.normal(size=shape + (4,)).astype(np.float32)
    goes_on = ~(terminated | truncated)[:-1]
    next_obs[:-1] = np.where(goes_on[..., None], obs[1:], next_obs[:-1])
    mask = None
    if masks:
        mask = rng.random(shape + (num_actions,)) < 0.6
        mask[..., 0] = True
    action = rng.integers(0, num_actions, shape).astype(np.int32)
    reward = rng.normal(size=shape).astype(np.float32)
    return rollout_of(obs, next_obs, reward, terminated, truncated, action, mask)


def bootstrap(window, gamma=0.5):
    ret, discount = dqn.n_step_bootstrap(
        jnp.asarray(window.reward),
        jnp.asarray(window.terminated),
        jnp.asarray(window.truncated),
        gamma,
    )
    return np.asarray(ret), np.asarray(discount)


# ---- actors -------------------------------------------------------------------------------------


def test_epsilon_ladder_and_the_actors_epsilon():
    np.testing.assert_allclose(apex.epsilon_ladder(1), [0.4])
    ladder = apex.epsilon_ladder(8)
    assert ladder.shape == (8,) and np.all(np.diff(ladder) < 0)
    np.testing.assert_allclose(ladder[[0, 3, 7]], [0.4, 0.4**4, 0.4**8])  # 1 + 7 i / 7
    np.testing.assert_allclose(apex.epsilon_ladder(3, base=0.5, alpha=2.0), [0.5, 0.25, 0.125])
    with pytest.raises(ValueError, match="num_actors"):
        apex.epsilon_ladder(0)
    params = {"w": jnp.ones(2)}
    ap = apex.with_epsilon({"params": params, "epsilon": jnp.float32(1.0)}, ladder[7])
    assert ap["params"] is params and ap["epsilon"].dtype == jnp.float32
    assert float(ap["epsilon"]) == pytest.approx(0.4**8)


def test_segment_windows_by_hand():
    """Env 0 terminates at step 1 and is truncated at step 3; env 1 runs on; both are cut by
    the segment's end (T = 5, n = 3). gamma 0.5."""
    reward = np.array([[1, 1], [2, 1], [4, 1], [8, 1], [16, 1]], np.float32)
    terminated = np.zeros((5, 2), bool)
    terminated[1, 0] = True
    truncated = np.zeros((5, 2), bool)
    truncated[3, 0] = True
    ids = np.arange(5)[:, None] + 10 * np.arange(2)  # obs id 10 env + t; next obs 100 + that
    window = apex.segment_windows(
        rollout_of(ids[..., None], 100 + ids[..., None], reward, terminated, truncated), 3
    )
    # window b = 2 t + env
    np.testing.assert_array_equal(window.obs[:, 0], [0, 10, 1, 11, 2, 12, 3, 13, 4, 14])
    expected_reward = [[1, 2, 0], [1, 1, 1], [2, 0, 0], [1, 1, 1], [4, 8, 0],
                       [1, 1, 1], [8, 0, 0], [1, 1, 0], [16, 0, 0], [1, 0, 0]]  # fmt: skip
    np.testing.assert_array_equal(window.reward.T, expected_reward)
    ended = np.zeros((10, 3), bool)
    ended[0, 1] = ended[2, 0] = True  # the termination, nothing after it
    np.testing.assert_array_equal(window.terminated.T, ended)
    cut = np.zeros((10, 3), bool)
    cut[4, 1] = cut[6, 0] = True  # the truncation
    cut[7, 1] = cut[8, 0] = cut[9, 0] = True  # the segment's end
    np.testing.assert_array_equal(window.truncated.T, cut)
    np.testing.assert_array_equal(
        window.next_obs[:, 0], [101, 112, 101, 113, 103, 114, 103, 114, 104, 114]
    )
    assert window.valid.all() and window.action_mask is None and window.next_action_mask is None
    ret, discount = bootstrap(window)
    np.testing.assert_allclose(ret, [2, 1.75, 2, 1.75, 8, 1.75, 8, 1.5, 16, 1])
    np.testing.assert_allclose(discount, [0, 0.125, 0, 0.125, 0.25, 0.125, 0.5, 0.25, 0.5, 0.5])


def test_segment_windows_masks_and_clipped_rewards():
    reward = np.array([[1, 3], [2, -2], [4, 0.5], [8, 1], [16, 1]], np.float32)
    terminated = np.zeros((5, 2), bool)
    terminated[1, 0] = True
    truncated = np.zeros((5, 2), bool)
    truncated[3, 0] = True
    mask = np.ones((5, 2, 2), bool)
    mask[1::2, :, 0] = False  # action 0 illegal at odd steps
    ids = np.zeros((5, 2, 1), np.float32)
    rollout = rollout_of(ids, ids, reward, terminated, truncated, action_mask=mask)
    final = np.array([[False, True], [False, True]])
    window = apex.segment_windows(rollout, 3, clip_rewards=True, final_action_mask=final)
    np.testing.assert_array_equal(window.reward[:, 1], [1, -1, 1])  # env 1 from step 0: signs
    np.testing.assert_array_equal(window.action_mask, mask.reshape(10, 2))
    # env 1 bootstraps from steps 2, 3, 4 (the last: the obs after the segment), then is cut;
    # env 0's windows all end an episode or are cut: no mask known, all legal
    legal_first = np.ones(10, bool)
    legal_first[[1, 5]] = False  # mask[3] (odd), the final mask
    np.testing.assert_array_equal(window.next_action_mask[:, 0], legal_first)
    assert window.next_action_mask[:, 1].all()
    unknown = apex.segment_windows(rollout, 3)
    assert unknown.next_action_mask[5].all()  # no final mask: all legal


def test_segment_windows_agree_with_the_device_replay():
    """Where the device replay holds a window (its bootstrap row stored), both give the same
    window: the same n-step return, discount, observations, masks, and bootstrap observation
    where it is used."""
    rng = np.random.default_rng(0)
    num_steps, num_envs, n = 12, 3, 3
    rollout = random_segment(rng, num_steps, num_envs, masks=True)
    ours = apex.segment_windows(rollout, n)
    starts = num_steps - n  # t + n <= T - 1
    rows = np.repeat(np.arange(starts), num_envs)
    envs = np.tile(np.arange(num_envs), starts)

    @jax.jit  # one compile instead of one per op
    def through_replay(steps, mask):
        buffer = replay.create((4,), jnp.float32, num_envs, 16, final_slots=16, num_actions=3)
        buffer = replay.add(buffer, *steps, action_mask=mask)
        return replay.read_windows(buffer, jnp.asarray(rows), jnp.asarray(envs), n)

    fields = ("obs", "next_obs", "action", "reward", "terminated", "truncated")
    theirs = through_replay([getattr(rollout, name) for name in fields], rollout.action_mask)
    assert bool(theirs.valid.all())
    first = slice(0, starts * num_envs)  # window b = t * N + env: the same order
    ret, discount = bootstrap(
        ours._replace(
            reward=ours.reward[:, first],
            terminated=ours.terminated[:, first],
            truncated=ours.truncated[:, first],
        )
    )
    ret_replay, discount_replay = bootstrap(theirs)
    np.testing.assert_allclose(ret, ret_replay, rtol=1e-6)
    np.testing.assert_array_equal(discount, discount_replay)
    for name in ("obs", "action", "action_mask"):
        np.testing.assert_array_equal(getattr(ours, name)[first], getattr(theirs, name))
    used = discount > 0
    np.testing.assert_array_equal(ours.next_obs[first][used], theirs.next_obs[used])
    np.testing.assert_array_equal(ours.next_action_mask[first][used], theirs.next_action_mask[used])


def scalar_priorities_by_hand(parts, params, target_params, window, key):
    """(|TD| + epsilon) ** alpha of double DQN with the network applied directly."""
    cfg = parts.cfg
    apply = lambda p, obs: parts.network.apply(p, obs, None, True, rngs={"noise": key})[..., 0]
    q = apply(params, window.obs)
    taken = jnp.take_along_axis(q, window.action[:, None], axis=1)[:, 0]
    choice = jnp.argmax(apply(params, window.next_obs), axis=1)
    next_q = jnp.take_along_axis(apply(target_params, window.next_obs), choice[:, None], 1)[:, 0]
    ret, discount = dqn.n_step_bootstrap(
        window.reward, window.terminated, window.truncated, cfg.gamma
    )
    td = taken - (ret + discount * next_q)
    return (jnp.abs(td) + cfg.priority_epsilon) ** cfg.priority_alpha


def test_initial_priorities_are_the_learners_signal_with_online_params_as_target():
    parts = parts_of(n_step=3, double_q=True)
    params = learner.init_params(parts, jax.random.PRNGKey(0))
    window = apex.segment_windows(random_segment(np.random.default_rng(1)), 3)
    key = jax.random.PRNGKey(2)
    got = apex.make_priority_fn(parts)(params, window, key)
    assert got.shape == (32,)
    _, _, signal = learner.member_loss(
        parts, params, params, jax.tree.map(jnp.asarray, window), key
    )
    cfg = parts.cfg
    expected = prioritized.priority(signal, cfg.priority_alpha, cfg.priority_epsilon)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    by_hand = scalar_priorities_by_hand(parts, params, params, window, key)
    np.testing.assert_allclose(got, by_hand, rtol=1e-5, atol=1e-6)


# ---- host replay --------------------------------------------------------------------------------


def windows(count, n=2, start=0):
    """``count`` windows whose obs (and reward) hold their id ``start + i``."""
    ids = np.arange(start, start + count, dtype=np.float32)
    return replay.Window(
        obs=ids[:, None].repeat(4, 1),
        action=np.arange(count, dtype=np.int32),
        reward=np.tile(ids, (n, 1)),
        terminated=np.zeros((n, count), bool),
        truncated=np.zeros((n, count), bool),
        next_obs=ids[:, None].repeat(4, 1) + 0.5,
        valid=np.ones(count, bool),
    )


VALUES = np.array([0.5, 0.0, 2.0, 1.0, 0.0, 3.5, 0.25, 1.75, 0.0, 4.0])
"""Priorities exact in float32 and float64: both trees sum them without rounding."""


def test_sum_tree_samples_with_the_probabilities_of_fleetrl_prioritized():
    buffer = apex.HostReplay(len(VALUES))
    buffer.add(windows(len(VALUES)), VALUES)
    device = prioritized.update(
        prioritized.create(len(VALUES)),
        jnp.arange(len(VALUES)),
        jnp.asarray(VALUES, jnp.float32),
    )
    np.testing.assert_array_equal(buffer.tree.tree, device.tree)  # the same layout and sums
    # masses on a grid of 1/64, every boundary among them: exact in both precisions
    masses = np.concatenate([np.arange(VALUES.sum() * 64 + 1) / 64, [VALUES.sum() * 2]])
    ours = buffer.tree.descend(masses)
    np.testing.assert_array_equal(
        ours, prioritized.descend(device, jnp.asarray(masses, jnp.float32))
    )
    assert (VALUES[ours] > 0).all()
    leaves, probabilities = prioritized.sample(device, jax.random.PRNGKey(0), 64)
    np.testing.assert_allclose(
        buffer.tree.get(np.asarray(leaves)) / buffer.tree.total, probabilities, rtol=1e-6
    )


def test_sampling_frequencies_follow_priorities_chi_square():
    buffer = apex.HostReplay(len(VALUES))
    buffer.add(windows(len(VALUES)), VALUES)
    draws = 100_000
    sample = buffer.sample(draws, 0.4, np.random.default_rng(0))
    np.testing.assert_array_equal(sample.window.obs[:, 0], sample.indices)  # the slots' windows
    counts = np.bincount(sample.indices, minlength=len(VALUES))
    assert not counts[VALUES == 0].any()
    positive = VALUES > 0
    result = stats.chisquare(counts[positive], draws * VALUES[positive] / VALUES.sum())
    assert result.pvalue > 1e-3, result  # fixed rng: deterministic; fails only if the law is off


def test_importance_weights_as_fleetrl_prioritized():
    buffer = apex.HostReplay(4)
    buffer.add(windows(2), np.array([1.0, 3.0]))  # P = 1/4, 3/4 over 2 windows
    sample = buffer.sample(64, 0.5, np.random.default_rng(0))
    assert set(sample.indices) == {0, 1} and sample.weights.dtype == np.float32
    # (2 P) ** -0.5: 2 ** 0.5 and (2 / 3) ** 0.5, over the largest
    expected = np.where(sample.indices == 0, 1.0, 3.0**-0.5)
    np.testing.assert_allclose(sample.weights, expected, rtol=1e-6)
    probabilities = jnp.asarray(np.where(sample.indices == 0, 0.25, 0.75))
    device = prioritized.importance_weights(probabilities, 2, 0.5)
    np.testing.assert_allclose(sample.weights, device, rtol=1e-6)


def test_ring_overwrites_the_oldest_and_round_trips_windows():
    buffer = apex.HostReplay(4)
    np.testing.assert_array_equal(buffer.add(windows(3), np.arange(1.0, 4.0)), [0, 1, 2])
    np.testing.assert_array_equal(buffer.add(windows(3, start=3), np.arange(4.0, 7.0)), [3, 0, 1])
    assert buffer.size == len(buffer) == 4 and buffer.added == 6
    np.testing.assert_array_equal(buffer.tree.get(np.arange(4)), [5, 6, 3, 4])
    sample = buffer.sample(32, 1.0, np.random.default_rng(0))
    ids = sample.window.obs[:, 0]
    np.testing.assert_array_equal(ids, np.array([4, 5, 2, 3])[sample.indices])
    np.testing.assert_array_equal(sample.window.reward, np.tile(ids, (2, 1)))  # [n, B] again
    np.testing.assert_array_equal(sample.window.next_obs[:, 0], ids + 0.5)
    # more windows than slots: only the newest 4 are kept
    np.testing.assert_array_equal(buffer.add(windows(6, start=10)), [0, 1, 2, 3])  # 8th-11th
    sample = buffer.sample(32, 1.0, np.random.default_rng(1))
    np.testing.assert_array_equal(sample.window.obs[:, 0], 12 + sample.indices)
    assert buffer.max_priority == 6.0  # no priorities given: max_priority each


def test_updates_of_overwritten_slots_are_ignored():
    buffer = apex.HostReplay(4)
    buffer.add(windows(4), np.ones(4))
    sample = buffer.sample(64, 0.4, np.random.default_rng(0))
    assert set(sample.indices) == {0, 1, 2, 3}
    buffer.add(windows(2, start=4), np.array([0.5, 0.25]))  # slots 0 and 1 now hold others
    applied = buffer.update(sample.indices, np.full(64, 9.0), sample.generations)
    assert applied == np.isin(sample.indices, [2, 3]).sum()
    np.testing.assert_array_equal(buffer.tree.get(np.arange(4)), [0.5, 0.25, 9, 9])
    assert buffer.max_priority == 9.0
    assert buffer.tree.total == pytest.approx(18.75)


def test_host_replay_refuses_what_would_corrupt_it():
    buffer = apex.HostReplay(4)
    with pytest.raises(ValueError, match="no window"):
        buffer.sample(2, 0.4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="finite"):
        buffer.add(windows(2), np.array([1.0, np.nan]))
    buffer.add(windows(2), np.ones(2))
    with pytest.raises(ValueError, match="window.reward"):
        buffer.add(windows(2, n=3), np.ones(2))  # another n
    with pytest.raises(ValueError, match="shape"):
        buffer.update(np.array([0]), np.ones(2), np.array([0]))
    invalid = windows(2)._replace(valid=np.array([False, True]))
    slots = buffer.add(invalid, np.ones(2))
    np.testing.assert_array_equal(buffer.tree.get(slots), [0, 1])  # never sampled


# ---- learner ------------------------------------------------------------------------------------


def test_learner_step_lowers_the_loss_and_returns_td_priorities():
    parts = parts_of(n_step=3, double_q=True, learning_rate=1e-2, anneal_lr=False)
    state = apex.init_learner(parts, jax.random.PRNGKey(0))
    window = apex.segment_windows(random_segment(np.random.default_rng(1)), 3)
    weights = np.ones(32, np.float32)
    step = apex.make_learner_step(parts)
    key = jax.random.PRNGKey(2)
    after, priorities, metrics = step(state, window, weights, key)
    # target == online before the step: the actor's initial priorities, and the |TD| ones
    np.testing.assert_allclose(
        priorities, apex.make_priority_fn(parts)(state.params, window, key), rtol=1e-6
    )
    by_hand = scalar_priorities_by_hand(parts, state.params, state.target_params, window, key)
    np.testing.assert_allclose(priorities, by_hand, rtol=1e-5, atol=1e-6)
    assert int(metrics["train/skipped_updates"]) == 0 and float(metrics["train/lost_windows"]) == 0
    first = float(metrics["losses/td_loss"])
    for k in range(60):
        after, priorities, metrics = step(after, window, weights, jax.random.PRNGKey(k))
    assert int(after.count) == 61
    assert float(metrics["losses/td_loss"]) < 0.5 * first
    # against a moved online network and the frozen target: still its |TD|
    by_hand = scalar_priorities_by_hand(parts, after.params, after.target_params, window, key)
    _, priorities, _ = step(after, window, weights, key)
    np.testing.assert_allclose(priorities, by_hand, rtol=1e-5, atol=1e-6)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, after.target_params, state.params)))


def test_target_update_counts_env_steps_past_int32():
    cfg = dqn.Config(target_update_interval=10, tau=0.5)
    state = apex.LearnerState({"w": jnp.float32(1.0)}, {"w": jnp.float32(9.0)}, (), jnp.int32(0))
    assert apex.target_update(cfg, state, 5, 9) is state  # no multiple of 10 crossed
    assert float(apex.target_update(cfg, state, 9, 10).target_params["w"]) == 5.0
    huge = 2**40 + 5
    twice = apex.target_update(cfg, state, huge, huge + 20)  # two crossings
    assert float(twice.target_params["w"]) == 1.0 + 8.0 * 0.25
    copy = apex.target_update(dataclasses.replace(cfg, tau=1.0), state, huge, huge + 10)
    assert float(copy.target_params["w"]) == 1.0


@pytest.mark.parametrize(
    "algo",
    [
        dict(distributional="c51", num_atoms=11, n_step=3),
        dict(munchausen=True),
        dict(distributional="iqn", num_tau_samples=4, num_tau_prime_samples=4, num_cosines=8),
        dict(noisy=True, dueling=True, action_mask=True),
    ],
    ids=["c51", "munchausen", "iqn", "noisy-dueling-masked"],
)
def test_members_through_actor_replay_and_learner(algo):
    algo = dict(algo)
    masks = algo.pop("action_mask", False)
    parts = parts_of(action_mask=masks, **algo)
    n = parts.cfg.n_step
    state = apex.init_learner(parts, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    buffer = apex.HostReplay(64)
    priority_fn = apex.make_priority_fn(parts)
    for actor in range(3):
        window = apex.segment_windows(random_segment(rng, masks=masks), n)
        priorities = priority_fn(state.params, window, jax.random.PRNGKey(actor))
        assert priorities.shape == (32,) and bool(jnp.all(priorities > 0))
        buffer.add(window, np.asarray(priorities))
    assert buffer.size == 64 and buffer.added == 96
    step = apex.make_learner_step(parts)
    for k in range(3):
        sample = buffer.sample(16, 0.4, rng)
        state, priorities, metrics = step(
            state, sample.window, sample.weights, jax.random.PRNGKey(k)
        )
        assert buffer.update(sample.indices, np.asarray(priorities), sample.generations) == 16
        assert all(np.isfinite(float(v)) for v in metrics.values())
    assert int(state.count) == 3 and int(metrics["train/skipped_updates"]) == 0
