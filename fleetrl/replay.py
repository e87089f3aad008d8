"""Device-resident replay buffer, held in the algorithm state.

Transitions are stored time-major per env, ``[capacity_rows, N, ...]``, in the order the envs
produced them, so n-step targets are read at sampling time from consecutive rows of one env
(no episode bookkeeping at insertion, and n can change without refilling the buffer).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from fleetrl.types import Array


@struct.dataclass
class ReplayBuffer:
    data: dict[str, Array]
    """Each field ``[capacity_rows, N, ...]``."""
    position: Array
    """Next row to write."""
    size: Array
    """Rows holding data (<= capacity_rows)."""

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]

    @property
    def num_envs(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[1]


def create(example: dict[str, Array], capacity_rows: int) -> ReplayBuffer:
    """An empty buffer shaped like ``example`` (fields ``[N, ...]``, one step of N envs)."""
    data = jax.tree.map(lambda x: jnp.zeros((capacity_rows,) + x.shape, x.dtype), example)
    return ReplayBuffer(data, jnp.int32(0), jnp.int32(0))


def add(buffer: ReplayBuffer, steps: dict[str, Array]) -> ReplayBuffer:
    """Append ``T`` rows (fields ``[T, N, ...]``), overwriting the oldest when full."""
    num_rows = jax.tree.leaves(steps)[0].shape[0]
    rows = (buffer.position + jnp.arange(num_rows)) % buffer.capacity
    data = jax.tree.map(lambda store, new: store.at[rows].set(new), buffer.data, steps)
    return ReplayBuffer(
        data,
        (buffer.position + num_rows) % buffer.capacity,
        jnp.minimum(buffer.size + num_rows, buffer.capacity),
    )


def sample_sequences(buffer: ReplayBuffer, key: Array, batch_size: int, length: int) -> Any:
    """``batch_size`` windows of ``length`` consecutive steps of one env: ``[length, B, ...]``.

    Windows start uniformly among the rows whose next ``length - 1`` rows are stored too
    (requires ``size >= length``); the env of each window is uniform.
    """
    row_key, env_key = jax.random.split(key)
    oldest = (buffer.position - buffer.size) % buffer.capacity
    offset = jax.random.randint(row_key, (batch_size,), 0, buffer.size - length + 1)
    env = jax.random.randint(env_key, (batch_size,), 0, buffer.num_envs)
    rows = (oldest + offset[None, :] + jnp.arange(length)[:, None]) % buffer.capacity
    return jax.tree.map(lambda store: store[rows, env[None, :]], buffer.data)
