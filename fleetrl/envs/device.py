"""Pure-JAX environments (gymnax) as a batched, functional, auto-resetting ``Env``.

This is BatchPPO's InGraphBatchEnv done in JAX: ``reset`` and ``step`` are pure functions of
arrays, so ``simulate`` can scan them together with the policy and the update.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fleetrl.config import ConfigError
from fleetrl.types import Array, EnvSpec, TimeStep

# gymnax ids whose modules we load directly (see `_import_gymnax`).
_CLASSIC_CONTROL = {
    "CartPole-v1": ("cartpole", "CartPole"),
    "Acrobot-v1": ("acrobot", "Acrobot"),
    "Pendulum-v1": ("pendulum", "Pendulum"),
    "MountainCar-v0": ("mountain_car", "MountainCar"),
    "MountainCarContinuous-v0": ("continuous_mountain_car", "ContinuousMountainCar"),
}


def _import_gymnax_classic(env_id: str) -> Any:
    """Load one classic-control env class without running ``gymnax/__init__``.

    Why: importing ``gymnax`` imports every env family and, through them, scipy, seaborn and
    matplotlib: 2.2 s of a ~4 s CartPole run on our 2-core machine. The classic-control modules
    need only ``gymnax.environments.{environment,spaces}``. We register empty package modules
    that point at the installed package folders, so the submodules load by their normal names.
    Any failure falls back to the ordinary import.
    """
    module_name, class_name = _CLASSIC_CONTROL[env_id]
    if "gymnax" not in sys.modules:
        spec = importlib.util.find_spec("gymnax")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("gymnax is not installed: pip install gymnax")
        root = Path(next(iter(spec.submodule_search_locations)))
        for name, folder in (
            ("gymnax", root),
            ("gymnax.environments", root / "environments"),
            ("gymnax.environments.classic_control", root / "environments" / "classic_control"),
        ):
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            package.__fleetrl_stub__ = True
            sys.modules[name] = package
    try:
        module = importlib.import_module(f"gymnax.environments.classic_control.{module_name}")
        return getattr(module, class_name)()
    except Exception:
        return _import_gymnax().make(env_id)[0]


def _import_gymnax() -> Any:
    """The real ``gymnax`` package, replacing the stubs of `_import_gymnax_classic` if present."""
    for name in [n for n, m in sys.modules.items() if getattr(m, "__fleetrl_stub__", False)]:
        del sys.modules[name]
    import gymnax

    return gymnax


def is_gymnax_id(env_id: str) -> bool:
    """Whether gymnax has ``env_id``. Cheap checks first: importing all of gymnax takes ~2 s
    and starts JAX's CPU client, which the CLI must configure before (fleetrl.xla_cpu), so a
    gymnasium id (no gymnax id is one, classic control aside) never imports it."""
    if env_id in _CLASSIC_CONTROL:
        return True
    if ":" in env_id or env_id.startswith("ALE/"):
        return False
    import gymnasium

    from fleetrl.envs.worker import register_atari

    register_atari(env_id)  # PongNoFrameskip-v4 and the like
    if env_id in gymnasium.registry:
        return False
    return env_id in _import_gymnax().registered_envs


def gymnax_ids() -> list[str]:
    """Every id gymnax registers (imports all of gymnax)."""
    return list(_import_gymnax().registered_envs)


def make_gymnax(env_id: str) -> tuple[Any, Any]:
    """Return ``(env, params)`` for a gymnax id, importing as little of gymnax as possible."""
    if env_id in _CLASSIC_CONTROL:
        env = _import_gymnax_classic(env_id)
        return env, env.default_params
    gymnax = _import_gymnax()

    if env_id not in gymnax.registered_envs:
        import difflib

        close = difflib.get_close_matches(env_id, gymnax.registered_envs, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"env.id: unknown gymnax environment {env_id!r}.{hint} A gymnasium env needs "
            "--env.backend gymnasium (or auto)."
        )
    return gymnax.make(env_id)


def _with_params(env_id: str, params: Any, overrides: dict[str, Any]) -> Any:
    """``params`` (a gymnax ``EnvParams``) with ``overrides``; ConfigError naming env.kwargs
    for a name it does not have."""
    if not overrides:
        return params
    import dataclasses

    names = [f.name for f in dataclasses.fields(params)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(
            f"env.kwargs: {env_id} has no parameter {', '.join(map(repr, unknown))}; its "
            f"parameters (gymnax EnvParams): {', '.join(names)}"
        )
    return params.replace(**overrides)


class DeviceEnvState(NamedTuple):
    """Carry of a batched device env; every field is ``[N, ...]``."""

    inner: Any
    key: Array
    episode_return: Array
    episode_length: Array


class GymnaxEnv:
    """``num_envs`` copies of a gymnax env stepped as one batch with auto-reset.

    ``step`` keeps termination and truncation apart (gymnax >= 1.0 reports both) and returns the
    pre-reset observation as ``final_obs``. Continuous actions are clipped to the action bounds.
    ``params``: overrides of the env's parameters (``env.kwargs``), e.g. MemoryChain-bsuite's
    ``{"memory_length": 20}``. Observations are float32.
    """

    def __init__(self, env_id: str, num_envs: int, params: dict[str, Any] | None = None):
        if num_envs < 1:
            raise ValueError(f"env.num_envs: must be >= 1, got {num_envs}")
        self._env, self._params = make_gymnax(env_id)
        self._params = _with_params(env_id, self._params, params or {})
        action_space = self._env.action_space(self._params)
        obs_shape = tuple(self._env.observation_space(self._params).shape)
        common = dict(
            env_id=env_id,
            num_envs=num_envs,
            observation_shape=obs_shape,
            max_episode_steps=int(getattr(self._params, "max_steps_in_episode", 0)),
            observation_dtype="float32",
        )
        if hasattr(action_space, "n"):
            self.spec = EnvSpec(action_kind="discrete", num_actions=int(action_space.n), **common)
        elif hasattr(action_space, "low"):
            shape = tuple(action_space.shape)
            low = np.broadcast_to(np.asarray(action_space.low, np.float32), shape).ravel()
            high = np.broadcast_to(np.asarray(action_space.high, np.float32), shape).ravel()
            self.spec = EnvSpec(
                action_kind="continuous",
                action_shape=shape,
                action_low=tuple(float(x) for x in low),
                action_high=tuple(float(x) for x in high),
                **common,
            )
        else:
            raise ConfigError(
                f"env.id: {env_id} has a {type(action_space).__name__} action space; fleetrl "
                "supports Discrete and Box actions."
            )

    def reset(self, key: Array) -> tuple[DeviceEnvState, TimeStep]:
        """Reset all envs. ``key``: one PRNG key; returns the state and a ``[N]`` TimeStep."""
        n = self.spec.num_envs
        key, reset_key = jax.random.split(key)
        obs, inner = jax.vmap(self._env.reset, in_axes=(0, None))(
            jax.random.split(reset_key, n), self._params
        )
        obs = obs.astype(jnp.float32)
        zeros = jnp.zeros((n,), jnp.float32)
        false = jnp.zeros((n,), bool)
        state = DeviceEnvState(inner, key, zeros, jnp.zeros((n,), jnp.int32))
        return state, TimeStep(obs, zeros, false, false, obs, zeros, jnp.zeros((n,), jnp.int32))

    def step(self, state: DeviceEnvState, action: Array) -> tuple[DeviceEnvState, TimeStep]:
        """Step all envs with ``action[N, ...]``; envs whose episode ended are reset."""
        if self.spec.action_kind == "continuous":
            low = jnp.asarray(self.spec.action_low).reshape(self.spec.action_shape)
            high = jnp.asarray(self.spec.action_high).reshape(self.spec.action_shape)
            action = jnp.clip(action, low, high)
        n = self.spec.num_envs
        keys = jax.random.split(state.key, n + 2)
        key, reset_key = keys[0], keys[1]
        final_obs, inner, reward, terminated, _ = jax.vmap(
            self._env.step_env, in_axes=(0, 0, 0, None)
        )(keys[2:], state.inner, action, self._params)
        truncated = jax.vmap(self._env.is_truncated, in_axes=(0, None))(inner, self._params)
        done_any = jnp.any(terminated | truncated)

        # Auto-reset as gymnax's own `step`, but the reset is computed only when an episode
        # ended: most steps end none, and the reset's RNG and state building were a third of
        # the env's cost inside the rollout scan on CPU.
        def reset_ended(_):
            obs_reset, inner_reset = jax.vmap(self._env.reset_env, in_axes=(0, None))(
                jax.random.split(reset_key, n), self._params
            )
            ended = terminated | truncated

            def choose(new, old):
                return jnp.where(ended.reshape(ended.shape + (1,) * (old.ndim - 1)), new, old)

            return jax.tree.map(choose, (obs_reset, inner_reset), (final_obs, inner))

        obs, inner = jax.lax.cond(done_any, reset_ended, lambda _: (final_obs, inner), None)
        reward = reward.astype(jnp.float32)
        terminated = terminated.astype(bool)
        truncated = truncated.astype(bool) & ~terminated
        episode_return = state.episode_return + reward
        episode_length = state.episode_length + 1
        done = terminated | truncated
        timestep = TimeStep(
            obs=obs.astype(jnp.float32),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            final_obs=final_obs.astype(jnp.float32),
            episode_return=episode_return,
            episode_length=episode_length,
        )
        next_state = DeviceEnvState(
            inner,
            key,
            jnp.where(done, 0.0, episode_return),
            jnp.where(done, 0, episode_length),
        )
        return next_state, timestep
