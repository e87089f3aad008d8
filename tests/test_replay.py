"""Replay ring buffer: wrap-around and windows that never cross the write position."""

import jax
import jax.numpy as jnp
import numpy as np

from fleetrl import replay


def filled(capacity, rows, num_envs=2):
    buffer = replay.create({"x": jnp.zeros((num_envs,), jnp.int32)}, capacity)
    t = jnp.arange(rows)[:, None] * 10 + jnp.arange(num_envs)[None, :]
    return replay.add(buffer, {"x": t})


def test_add_wraps_and_counts():
    buffer = filled(5, 7)
    assert int(buffer.size) == 5 and int(buffer.position) == 2
    np.testing.assert_array_equal(buffer.data["x"][:, 0], [50, 60, 20, 30, 40])


def test_sampled_windows_are_consecutive_steps_of_one_env():
    buffer = filled(8, 13, num_envs=3)  # rows hold t = 5..12
    windows = replay.sample_sequences(buffer, jax.random.PRNGKey(0), 512, 3)["x"]
    windows = np.asarray(windows)
    t, env = windows // 10, windows % 10
    assert np.all(np.diff(t, axis=0) == 1)  # consecutive in time, never across the wrap
    assert np.all(env == env[0])
    assert t.min() == 5 and t.max() == 12
