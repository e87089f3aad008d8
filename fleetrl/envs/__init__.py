"""Environments: ``make`` builds a batched ``Env`` from an ``EnvConfig``."""

from __future__ import annotations


def make(config, num_envs: int | None = None):
    """Build the batched env of ``config`` (an ``EnvConfig``), optionally with another size."""
    num_envs = config.num_envs if num_envs is None else num_envs
    if config.backend == "gymnax":
        from fleetrl.envs.device import GymnaxEnv

        return GymnaxEnv(config.id, num_envs)
    raise ValueError(f"env.backend: unknown backend {config.backend!r}")
