"""Running mean and variance of a stream of arrays (Chan et al. parallel update).

Kept in the algorithm state, so a checkpoint restores it and resume is exact.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from fleetrl.types import Array


@struct.dataclass
class RunningStats:
    mean: Array
    var: Array
    count: Array

    @classmethod
    def create(cls, shape: tuple[int, ...]) -> RunningStats:
        return cls(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.float32(1e-4))

    def update(self, batch: Array) -> RunningStats:
        """Fold in ``batch[B, *shape]``."""
        batch = batch.reshape((-1,) + self.mean.shape)
        batch_mean = batch.mean(axis=0)
        batch_var = batch.var(axis=0)
        batch_count = jnp.float32(batch.shape[0])
        total = self.count + batch_count
        delta = batch_mean - self.mean
        mean = self.mean + delta * batch_count / total
        m2 = (
            self.var * self.count
            + batch_var * batch_count
            + delta**2 * self.count * batch_count / total
        )
        return RunningStats(mean, m2 / total, total)

    def normalize(self, x: Array, clip: float) -> Array:
        return jnp.clip((x - self.mean) / jnp.sqrt(self.var + 1e-8), -clip, clip)

    def scale(self, x: Array, clip: float) -> Array:
        """Divide by the standard deviation only (reward scaling keeps the sign and offset)."""
        return jnp.clip(x / jnp.sqrt(self.var + 1e-8), -clip, clip)
