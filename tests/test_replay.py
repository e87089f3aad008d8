"""Replay: frame stacks rebuilt exactly as gymnasium's FrameStackObservation gives them, n-step
windows across episode ends, validity at the start and the wrap, side-ring overflow detected,
dtypes kept, and add/read under jit and scan; then the earlier sequence layout."""

import functools

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl import replay

STACK, NUM_ENVS, NUM_STEPS, CHUNK = 4, 2, 51, 3
add = jax.jit(replay.add)  # one compile per shape instead of one per op


class CounterEnv(gymnasium.Env):
    """2x3 uint8 frames encoding (env, episode, step). Even episodes terminate after 1-3 steps,
    odd ones reach the TimeLimit of 5 (episodes 5, 11, ... terminate at 5 too: both flags)."""

    observation_space = gymnasium.spaces.Box(0, 255, (2, 3), np.uint8)
    action_space = gymnasium.spaces.Discrete(2)

    def __init__(self, index: int):
        self.index, self.episode, self.t = index, index - 1, 0  # envs out of phase

    def reset(self, *, seed=None, options=None):
        self.episode, self.t = self.episode + 1, 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        e = self.episode
        terminated = (e % 2 == 0 and self.t == 1 + e % 3) or (e % 6 == 5 and self.t == 5)
        return self._frame(), float(self.t + 10 * action), terminated, False, {}

    def _frame(self):
        e, t = self.episode, self.t
        return np.array([[self.index, e, t], [e * 5 + t, 200 - t, 7]], np.uint8)


@functools.cache
def gymnasium_rollout():
    """``[T, N, ...]`` numpy arrays of auto-reset FrameStackObservation(TimeLimit(CounterEnv)) as
    a `fleetrl.types.Rollout` holds them (``next_obs``: the observation each step reached)."""
    envs = [
        gymnasium.wrappers.FrameStackObservation(
            gymnasium.wrappers.TimeLimit(CounterEnv(i), 5), STACK
        )
        for i in range(NUM_ENVS)
    ]
    current = [env.reset()[0] for env in envs]
    actions = np.random.default_rng(0).integers(0, 2, (NUM_STEPS, NUM_ENVS))
    names = ("obs", "action", "reward", "terminated", "truncated", "next_obs")
    record = {name: [] for name in names}
    for t in range(NUM_STEPS):
        results = [env.step(int(a)) for env, a in zip(envs, actions[t], strict=True)]
        record["obs"].append(np.stack(current))
        for name, i in (("next_obs", 0), ("reward", 1), ("terminated", 2), ("truncated", 3)):
            record[name].append(np.array([r[i] for r in results]))
        current = [
            env.reset()[0] if r[2] or r[3] else r[0] for env, r in zip(envs, results, strict=True)
        ]
    record["action"] = actions.astype(np.int32)
    rollout = {name: np.asarray(value) for name, value in record.items()}
    assert rollout["obs"].dtype == np.uint8 and rollout["obs"].shape[2:] == (STACK, 2, 3)
    done = rollout["terminated"] | rollout["truncated"]
    assert (rollout["terminated"] & rollout["truncated"]).any() and done.sum() > 20
    return rollout


def chunks(rollout, size=CHUNK):
    """The rollout's fields in the order of `replay.add`, ``size`` steps at a time."""
    names = ("obs", "next_obs", "action", "reward", "terminated", "truncated")
    for start in range(0, len(rollout["reward"]), size):
        yield tuple(jnp.asarray(rollout[name][start : start + size]) for name in names)


def read_all(buffer, n):
    """Every (row, env) of the buffer as an ``n``-step window: ``[C * N]``."""
    rows, envs = replay.unleaf(buffer, jnp.arange(buffer.num_leaves))
    return replay.read_windows(buffer, rows, envs, n)


@jax.jit  # one program for both window lengths: one compile
def read_all_1_and_3(buffer):
    return read_all(buffer, 1), read_all(buffer, 3)


def check_against_rollout(window, num_steps, capacity, rollout, frame_stack):
    """The ``n``-step windows of every (row, env) (`read_all` of a buffer of ``capacity`` rows
    after ``num_steps`` steps) equal the rollout's, and are valid exactly where the validity
    rule says (no side-ring overflow here)."""
    window = jax.device_get(window)
    n = len(window.reward)
    leaves = np.arange(capacity * NUM_ENVS)
    rows, envs = leaves // NUM_ENVS, leaves % NUM_ENVS
    count = num_steps - 1 - (num_steps - 1 - rows) % capacity  # the step each row holds
    oldest = num_steps - min(num_steps, capacity)
    expected = (count >= oldest + max(frame_stack, 1) - 1) & (count + n <= num_steps - 1)
    np.testing.assert_array_equal(window.valid, expected)
    t, e = count[expected], envs[expected]
    np.testing.assert_array_equal(window.obs[expected], rollout["obs"][t, e])
    np.testing.assert_array_equal(window.action[expected], rollout["action"][t, e])
    steps = t + np.arange(n)[:, None]  # [n, B]
    for name in ("reward", "terminated", "truncated"):
        np.testing.assert_array_equal(getattr(window, name)[:, expected], rollout[name][steps, e])
    done = rollout["terminated"][steps, e] | rollout["truncated"][steps, e]
    last = t + np.where(done.any(axis=0), np.argmax(done, axis=0), n - 1)
    bootstraps = ~rollout["terminated"][last, e]  # a terminated step's next obs is never read
    np.testing.assert_array_equal(
        window.next_obs[expected][bootstraps], rollout["next_obs"][last, e][bootstraps]
    )
    return expected.sum()


@pytest.mark.parametrize("frame_stack", [STACK, 0])
def test_windows_equal_gymnasium_frame_stacks_from_the_start_and_across_the_wrap(frame_stack):
    rollout = gymnasium_rollout()
    buffer = replay.create((STACK, 2, 3), jnp.uint8, NUM_ENVS, 16, (), jnp.int32, frame_stack, 8)
    assert buffer.obs.shape == ((16, NUM_ENVS, 2, 3) if frame_stack else (16, NUM_ENVS, 4, 2, 3))
    for steps in chunks(rollout):  # 17 adds: a few before the buffer is full, then the wrap
        buffer = add(buffer, *steps)
        for window in read_all_1_and_3(buffer):
            num_valid = check_against_rollout(window, int(buffer.steps), 16, rollout, frame_stack)
            assert num_valid == int(replay.num_valid(buffer, len(window.reward)))
    assert buffer.obs.dtype == buffer.final.dtype == window.obs.dtype == jnp.uint8
    assert window.next_obs.dtype == jnp.uint8


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def hand_written(final_slots, split, masks=False):
    """One env, 8 steps with obs id t, into an 8-row buffer in two adds (``split`` rows first).
    Step 2 terminates; steps 4 and 6 are truncated, reaching final observations 10 and 11.
    ``masks``: with action masks `MASKS`."""
    reward = jnp.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0])[:, None]
    terminated = jnp.zeros((8, 1), bool).at[2].set(True)
    truncated = jnp.zeros((8, 1), bool).at[4].set(True).at[6].set(True)
    next_id = jnp.array([1.0, 2.0, 9.0, 4.0, 10.0, 6.0, 11.0, 8.0])  # 9: terminal, never read
    obs, next_obs = jnp.arange(8.0)[:, None, None], next_id[:, None, None]
    action = jnp.arange(8)[:, None]
    buffer = replay.create((1,), jnp.float32, 1, 8, final_slots=final_slots, num_actions=3)
    if not masks:
        buffer = buffer.replace(action_mask=None)
    for part in (slice(0, split), slice(split, 8)):
        steps = (obs, next_obs, action, reward, terminated, truncated)
        mask = jnp.asarray(MASKS)[part, None] if masks else None
        buffer = replay.add(buffer, *(x[part] for x in steps), action_mask=mask)
    return buffer


MASKS = np.array([[t % 2 == 0, True, t % 3 == 0] for t in range(8)])
"""``[8, 3]``: the legal actions in `hand_written`'s observation t."""


@functools.partial(jax.jit, static_argnums=1)
def windows(buffer, n):
    """The ``n``-step windows starting at rows 0..7 of `hand_written`'s env."""
    return replay.read_windows(buffer, jnp.arange(8), jnp.zeros(8, jnp.int32), n)


def test_n_step_windows_stop_at_terminations_and_bootstrap_truncations_from_the_side_ring():
    buffer = hand_written(final_slots=4, split=5)
    w = jax.device_get(windows(buffer, 3))
    np.testing.assert_array_equal(w.obs[:, 0], np.arange(8))
    np.testing.assert_array_equal(w.action, np.arange(8))
    np.testing.assert_array_equal(w.reward[:, 0], [1, 2, 4])
    np.testing.assert_array_equal(w.terminated[:, 1], [False, True, False])  # steps 1, 2, 3
    np.testing.assert_array_equal(w.truncated[:, 3], [False, True, False])  # steps 3, 4, 5
    # windows 3 and 4 stop at the truncated step 4: its final observation, 10
    np.testing.assert_array_equal(w.next_obs[3:5, 0], [10, 10])
    # 0..4 valid; from 5 on the bootstrap row (8, 9, 10) is not stored
    np.testing.assert_array_equal(w.valid, np.arange(8) <= 4)
    w = jax.device_get(windows(buffer, 1))
    bootstraps = [0, 1, 3, 4, 5, 6]  # step 2 terminated: its next obs, never read, is finite
    np.testing.assert_array_equal(w.next_obs[bootstraps, 0], [1, 2, 4, 10, 6, 11])
    assert np.isfinite(w.next_obs).all()
    np.testing.assert_array_equal(w.valid, np.arange(8) <= 6)  # step 7's next obs: not stored
    assert w.next_action_mask is None  # a buffer without action masks


def test_next_action_masks_are_the_next_rows_and_all_legal_after_a_truncation():
    w = jax.device_get(windows(hand_written(final_slots=4, split=5, masks=True), 1))
    bootstraps = [0, 1, 3, 5]  # 2 terminated, 4 and 6 truncated
    np.testing.assert_array_equal(w.next_action_mask[bootstraps], MASKS[[1, 2, 4, 6]])
    assert w.next_action_mask[[4, 6]].all()  # no env reports the mask of a final observation


@pytest.mark.parametrize("split", [5, 8])  # the two truncations in two adds, or in one
def test_side_ring_overflow_is_detected(split):
    buffer = hand_written(final_slots=1, split=split)  # step 6's final overwrote step 4's
    w = jax.device_get(windows(buffer, 1))
    # 1-step windows: 4 bootstraps from the lost final, 6 from the stored one, 7 is the newest
    np.testing.assert_array_equal(w.valid, [True] * 4 + [False, True, True, False])
    assert w.next_obs[6, 0] == 11
    w = jax.device_get(windows(buffer, 3))
    # 3-step windows: 3 and 4 stop at step 4; 2 at the terminated step 2 (needs no final)
    np.testing.assert_array_equal(w.valid, [True] * 3 + [False] * 5)


def test_validity_at_the_start_and_at_the_wrap():
    stacked = replay.create((4, 1), jnp.float32, 1, 8, frame_stack=4)
    obs, flag = jnp.zeros((1, 1, 4, 1)), jnp.zeros((1, 1), bool)
    one_step = (obs, obs, jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1)), flag, flag)
    counts = []
    for _ in range(11):
        stacked = add(stacked, *one_step)
        counts.append(int(replay.num_valid(stacked, 2)))
        assert int(replay.valid_start(stacked, jnp.arange(8), 2).sum()) == counts[-1]
    # 3 rows of stack history and 2 window rows + the bootstrap row: valid from 6 rows stored
    assert counts == [0, 0, 0, 0, 0, 1, 2, 3, 3, 3, 3]
    # 11 steps in 8 rows: rows 3.. hold steps 3..7, rows 0..2 steps 8..10; valid: steps 6..8
    np.testing.assert_array_equal(
        replay.valid_start(stacked, jnp.arange(8), 2), [1, 0, 0, 0, 0, 0, 1, 1]
    )


def test_uniform_samples_cover_exactly_the_valid_starts():
    rollout = gymnasium_rollout()
    buffer = replay.create((STACK, 2, 3), jnp.uint8, NUM_ENVS, 16, frame_stack=STACK)
    for steps in list(chunks(rollout))[:9]:  # 27 steps: wrapped
        buffer = add(buffer, *steps)
    rows, envs = replay.sample_uniform(buffer, jax.random.PRNGKey(0), 2000, 3)
    assert rows.dtype == envs.dtype == jnp.int32
    drawn = set(np.asarray(replay.leaf(buffer, rows, envs)).tolist())
    valid = np.asarray(replay.valid_start(buffer, jnp.arange(16), 3))
    expected = {row * NUM_ENVS + e for row in np.flatnonzero(valid) for e in range(NUM_ENVS)}
    assert drawn == expected and len(expected) == int(replay.num_valid(buffer, 3))


def test_add_and_read_under_jit_and_inside_scan():
    rollout = gymnasium_rollout()
    buffer = replay.create((STACK, 2, 3), jnp.uint8, NUM_ENVS, 8, frame_stack=STACK)

    def step(buffer, chunk):
        buffer = replay.add(buffer, *chunk)
        return buffer, read_all(buffer, 2)

    chunked = jax.tree.map(lambda *x: jnp.stack(x), *list(chunks(rollout))[:6])
    buffer, read = jax.jit(lambda b: jax.lax.scan(step, b, chunked))(buffer)
    assert int(buffer.steps) == 6 * CHUNK
    checked = 0
    for i in range(6):  # the windows after each add
        window = jax.tree.map(lambda x, i=i: x[i], read)
        checked += check_against_rollout(window, (i + 1) * CHUNK, 8, rollout, STACK)
    assert checked > 20


def test_add_rejects_more_rows_than_the_buffer_holds():
    buffer = replay.create((1,), jnp.float32, 1, 2)
    rows = (jnp.zeros((3, 1, 1)),) * 2 + (jnp.zeros((3, 1), jnp.int32), jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="3 rows"):
        replay.add(buffer, *rows, jnp.zeros((3, 1), bool), jnp.zeros((3, 1), bool))
