"""Environments: ``make`` builds a batched ``Env`` from an ``EnvConfig``."""

from __future__ import annotations


def resolve_backend(config) -> str:
    """``config.backend``, with "auto" resolved: gymnax when it has the id, else gymnasium."""
    if config.backend != "auto":
        return config.backend
    from fleetrl.envs.device import is_gymnax_id

    return "gymnax" if is_gymnax_id(config.id) else "gymnasium"


def make(config, num_envs: int | None = None, num_workers: int | None = None):
    """Build the batched env of ``config`` (an ``EnvConfig``), optionally with another size.

    ``num_workers`` overrides the config's worker count for host envs (evaluation runs its envs
    in-process).
    """
    num_envs = config.num_envs if num_envs is None else num_envs
    backend = resolve_backend(config)
    if backend == "gymnax":
        from fleetrl.envs.device import GymnaxEnv

        return GymnaxEnv(config.id, num_envs)
    if backend == "gymnasium":
        from fleetrl.envs.host import HostEnv

        return HostEnv.from_config(config, num_envs, num_workers)
    raise ValueError(f"env.backend: unknown backend {config.backend!r}")
