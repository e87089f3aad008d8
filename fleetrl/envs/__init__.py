"""Environments: ``make`` builds a batched ``Env`` from an ``EnvConfig``."""

from __future__ import annotations

BACKENDS = ("gymnax", "gymnasium")

FAKE_DEVICE_IDS = {
    f"fleetrl/fake-{kind}": kind for kind in ("discrete", "continuous", "image", "masked")
}
"""Ids of the fake device envs (`fleetrl.envs.fake_device.FakeDeviceEnv`, backend gymnax),
for smoke runs of every algorithm on every kind of spec: ``--env.id fleetrl/fake-masked``. The
kinds are `fleetrl.envs.fake_device.KINDS`, spelled out here so that resolving an id imports
no JAX."""


def resolve_backend(config) -> str:
    """``config.backend``, with "auto" resolved: gymnax when it has the id, else gymnasium."""
    if config.backend != "auto":
        return config.backend
    return "gymnax" if _has("gymnax", config.id) else "gymnasium"


def with_resolved_backend(run):
    """``run`` (a ``RunConfig``) with ``env.backend`` "auto" replaced by the backend it resolves
    to: what a run records in config.yaml, resumes against and keys its programs by."""
    import dataclasses

    if run.env.backend != "auto":
        return run
    env = dataclasses.replace(run.env, backend=resolve_backend(run.env))
    return dataclasses.replace(run, env=env)


def check_env_id(env_id: str, backend: str) -> None:
    """``ConfigError`` naming ``env.id`` when ``backend`` ("gymnax", "gymnasium" or "auto") has
    no env ``env_id``: which ``--env.backend`` has it, or the closest ids either has.

    Why: a device preset (env.backend gymnax) given a gymnasium id, ``fleetrl train
    ppo-cartpole --env.id LunarLander-v3``, failed with gymnax's traceback.
    """
    from fleetrl.config import ConfigError

    wanted = BACKENDS if backend == "auto" else (backend,)
    if any(_has(name, env_id) for name in wanted):
        return
    others = [name for name in BACKENDS if name not in wanted and _has(name, env_id)]
    if others:
        where = "on the host, in worker processes" if others[0] == "gymnasium" else "in JAX"
        raise ConfigError(
            f"env.id: {env_id!r} is a {others[0]} env, but env.backend is {backend}: add "
            f"--env.backend {others[0]} (its envs step {where}), or --env.backend auto, which "
            "picks the backend that has the id"
        )
    import difflib

    from fleetrl.envs.device import gymnax_ids

    known = [*FAKE_DEVICE_IDS, *gymnax_ids(), *_gymnasium_ids()]
    known = list(dict.fromkeys(known))  # CartPole-v1 is in both
    close = difflib.get_close_matches(env_id, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"env.id: unknown environment {env_id!r}: neither gymnax nor gymnasium has it.{hint} "
        "A custom env is given as module.path:ClassName."
    )


def _has(backend: str, env_id: str) -> bool:
    if env_id in FAKE_DEVICE_IDS:
        return backend == "gymnax"
    if backend == "gymnax":
        from fleetrl.envs.device import is_gymnax_id

        return is_gymnax_id(env_id)
    from fleetrl.envs.worker import register_atari

    if ":" in env_id:  # module.path:ClassName: a trusted module's gymnasium.Env subclass
        from fleetrl.envs import trust

        trust.resolve(env_id)
        return True
    if not register_atari(env_id) and env_id.startswith("ALE/"):
        from fleetrl.config import ConfigError

        raise ConfigError(
            f"env.id: {env_id} needs the Atari emulator: pip install 'fleetrl[atari]'"
        )
    return env_id in _gymnasium_ids()


def _gymnasium_ids() -> list[str]:
    import gymnasium

    return list(gymnasium.registry)


def make(config, num_envs: int | None = None, num_workers: int | None = None, beside=None):
    """Build the batched env of ``config`` (an ``EnvConfig``), optionally with another size.

    ``num_workers`` overrides the config's worker count for host envs. ``beside``: a host env
    of the same config whose spec this one shares while its pool starts on a thread (the
    evaluation env, beside compilation: `fleetrl.envs.host.HostEnv.from_config`). An id the
    backend does not have is a ``ConfigError`` (see `check_env_id`), and so is an
    ``env.observe`` that does not fit the env's observation (`fleetrl.envs.observe`).
    """
    num_envs = config.num_envs if num_envs is None else num_envs
    backend = resolve_backend(config)
    if backend not in BACKENDS:
        raise ValueError(f"env.backend: unknown backend {config.backend!r}")
    check_env_id(config.id, config.backend)
    if backend == "gymnax":
        return _make_device(config, num_envs)
    from fleetrl.envs import trust
    from fleetrl.envs.host import HostEnv

    trust.check_kwargs(config.id, config.env_kwargs())
    return HostEnv.from_config(config, num_envs, num_workers, beside)


def _make_device(config, num_envs: int):
    """A gymnax env or a fake device env, ``env.kwargs`` its parameters, seeing
    ``env.observe`` of its observation."""
    if config.id in FAKE_DEVICE_IDS:
        from fleetrl.envs.fake_device import FakeDeviceEnv

        env = FakeDeviceEnv.from_kwargs(FAKE_DEVICE_IDS[config.id], num_envs, config.env_kwargs())
    else:
        from fleetrl.envs.device import GymnaxEnv

        env = GymnaxEnv(config.id, num_envs, config.env_kwargs())
    if not config.observe:
        return env
    from fleetrl.envs.observe import ObservedEnv

    return ObservedEnv(env, config.observe)
