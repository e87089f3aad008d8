"""``env.observe``: keep some elements of a 1-D observation (a partially observed env).

CartPole with ``--env.observe 0 2`` sees cart position and pole angle but not the velocities:
the classic test of a recurrent policy. Device envs get `ObservedEnv` (the slice inside the
compiled ``reset``/``step``, ``final_obs`` included); host envs get
`fleetrl.envs.factory.ObserveWrapper` in every worker, so their pool and spec hold the reduced
observation. Both check the indices against the env's observation with `check_observe`.

Imports numpy only (workers import it through the factory).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


def check_observe(
    indices: tuple[int, ...], shape: tuple[int, ...] | None, env_id: str, space: Any = None
) -> None:
    """``ConfigError`` naming env.observe unless ``indices`` are distinct indices of a 1-D
    observation of ``shape`` (None: not a Box observation; ``space`` says what it is)."""
    from fleetrl.config import ConfigError

    if shape is None or len(shape) != 1:
        what = f"shape {shape}" if shape is not None else f"{space}"
        raise ConfigError(
            f"env.observe: keeps elements of a 1-D observation, but {env_id} has {what} "
            "observations; leave env.observe empty"
        )
    size = shape[0]
    outside = [i for i in indices if not 0 <= i < size]
    if outside:
        raise ConfigError(
            f"env.observe: indices {outside} are out of range for the observation of {env_id}, "
            f"of size {size} (valid: 0..{size - 1})"
        )
    if len(set(indices)) != len(indices):
        raise ConfigError(f"env.observe: duplicate indices in {tuple(indices)}")


class ObservedEnv:
    """A batched device ``Env`` (gymnax, `fleetrl.envs.fake_device`) seeing only the elements
    ``indices`` of its observations: ``spec.observation_shape`` is ``(len(indices),)``; the
    env state is the wrapped env's, unchanged."""

    def __init__(self, env: Any, indices: tuple[int, ...]):
        check_observe(indices, env.spec.observation_shape, env.spec.env_id)
        self.env = env
        self.indices = np.asarray(indices, np.int32)
        self.spec = dataclasses.replace(env.spec, observation_shape=(len(indices),))

    def reset(self, key):
        """``env.reset(key)`` with ``obs`` and ``final_obs`` reduced to ``[N, len(indices)]``."""
        state, timestep = self.env.reset(key)
        return state, self._observe(timestep)

    def step(self, state, action):
        """``env.step(state, action)`` with ``obs`` and ``final_obs`` reduced."""
        state, timestep = self.env.step(state, action)
        return state, self._observe(timestep)

    def _observe(self, timestep):
        return timestep._replace(
            obs=timestep.obs[:, self.indices], final_obs=timestep.final_obs[:, self.indices]
        )
