"""Host environments (gymnasium) behind the same ``Env`` contract as device envs.

`HostEnv` wraps an `EnvPool` so that ``simulate()`` and the driver use it unchanged: ``reset``
and ``step`` are jittable functions whose env step runs on the host through
`fleetrl.envs.callback.host_call` (a leaner ``io_callback``), so a whole iteration (rollout,
then the update) is still one compiled call. Measured against a Python loop that calls a jitted
policy and the pool in turn (``benchmarks/host_loop.py``): see docs/BENCHMARKS.md, "Host envs".

The JAX-side env state is only a step counter (the envs' real state lives in the pool), so a
checkpoint cannot hold it: a resumed run starts new episodes (exact resume is for device envs).
An error in the pool (an env raising, a dead or hung worker) cannot cross XLA cleanly: the
callback records it, returns zeros until the call ends, and `raise_if_failed` re-raises the
original error, with its env index and traceback, as soon as the driver gets control back.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fleetrl.config import ConfigError
from fleetrl.envs.callback import host_call
from fleetrl.envs.checks import PoolSpec
from fleetrl.envs.errors import EnvConstructionError
from fleetrl.envs.factory import GymnasiumFactory
from fleetrl.envs.pool import EnvPool, HostTimeStep
from fleetrl.types import Array, EnvSpec, TimeStep

__all__ = ["GymnasiumFactory", "HostEnv"]  # the factory lives in a JAX-free module for workers


def _in_background(make: Callable[[], Any]) -> Future:
    """``make()`` on a daemon thread (an exit never waits for it); its result as a Future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(make())
        except BaseException as error:  # handed to whoever waits for it
            future.set_exception(error)

    threading.Thread(target=run, name="fleetrl-start-envs", daemon=True).start()
    return future


def _start(make_pool: Callable[[], EnvPool]) -> EnvPool:
    """``make_pool()``; a config error an env's construction raised (``env.observe`` that does
    not fit the observation, `fleetrl.envs.factory.ObserveWrapper`) as that ConfigError."""
    try:
        return make_pool()
    except EnvConstructionError as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise


def _unpack(packed) -> TimeStep:
    """The callback's arrays as a TimeStep (episode lengths are exact in float32 < 2^24)."""
    obs_pair, scalars = packed[:2]
    return TimeStep(
        obs=obs_pair[0],
        reward=scalars[0],
        terminated=scalars[1] > 0,
        truncated=scalars[2] > 0,
        final_obs=obs_pair[1],
        episode_return=scalars[3],
        episode_length=scalars[4].astype(jnp.int32),
        action_mask=packed[2] if len(packed) > 2 else None,
    )


class HostEnv:
    """``num_envs`` gymnasium envs in an `EnvPool`, as a batched, auto-resetting ``Env``.

    ``state`` is an int32 step counter; observations are float32 (uint8 for images; Discrete
    ones one-hot). Envs with action masks (`fleetrl.envs.adapt`) fill ``TimeStep.action_mask``
    (``[N, A]`` bool) and ``spec.action_mask``. Not ``vmap``-able: a host env serves one seed.
    """

    def __init__(self, pool: EnvPool | Future, make_pool=None, pool_spec: PoolSpec | None = None):
        self._pool = pool  # a Future while it starts beside compilation (`from_config`)
        self._make_pool = make_pool  # for `restart`
        self.pool_spec = pool_spec or pool.spec
        self.spec: EnvSpec = self.pool_spec.as_env_spec()
        self.observation_dtype = np.dtype(self.pool_spec.observation_dtype)
        self.error: BaseException | None = None
        self.clip_fraction_sum = 0.0
        self.num_host_steps = 0
        n, obs = self.spec.num_envs, self.spec.observation_shape
        # The callback returns two arrays, not seven: jax converts each returned array with a
        # device_put, which cost as much as stepping 8 CartPoles in a profile of the host loop.
        # Envs with action masks add a third; the others pay nothing for it.
        self._result_shape = (
            jax.ShapeDtypeStruct((2, n, *obs), self.observation_dtype),  # obs, final_obs
            jax.ShapeDtypeStruct((5, n), np.float32),  # reward, flags, episode totals
        )
        if self.spec.action_mask:
            self._result_shape += (jax.ShapeDtypeStruct((n, self.spec.num_actions), np.bool_),)

    @classmethod
    def from_config(
        cls, config, num_envs: int, num_workers: int | None = None, beside: HostEnv | None = None
    ) -> HostEnv:
        """A host env for an ``EnvConfig`` (``num_workers`` overrides the config's); its id
        was checked by `fleetrl.envs.make`. ``beside``: a host env of the same config, whose
        spec this one shares; the pool then starts on a thread and the env is returned at once.

        Why ``beside``: the evaluation env's worker process took 0.2-0.7 s to start (spawn,
        imports, the startup probe), which the trainer waited for before compiling; started
        beside compilation it costs nothing (docs/BENCHMARKS.md, section 12). Its start fails
        late, at the first evaluation, only where the training env of the same config started.
        """
        from fleetrl.interrupts import STOP_REQUESTED

        kwargs = tuple(config.env_kwargs().items())
        factory = GymnasiumFactory(config.id, kwargs, config.preprocess, config.observe)
        workers = config.num_workers if num_workers is None else num_workers
        make_pool = functools.partial(
            EnvPool,
            factory,
            num_envs,
            workers,
            seed=None,
            step_timeout=config.step_timeout,
            start_timeout=config.start_timeout,
            on_error=config.on_error,
            max_restarts=config.max_restarts,
            check_finite=config.check_finite,
            parent_steps=config.parent_steps and workers > 0,
            env_id=config.id,
            # a SIGINT/SIGTERM stops a wait for a hung worker (checkpoint, exit 130)
            should_stop=STOP_REQUESTED.is_set,
        )
        if beside is None:
            pool = _start(make_pool)
            # the pool sees stacked frames only as a shape; replay needs to know they are frames
            spec = dataclasses.replace(pool.spec, frame_stack=factory.frame_stack)
            return cls(pool, make_pool, spec)
        spec = dataclasses.replace(beside.pool_spec, num_envs=num_envs)
        return cls(_in_background(make_pool), make_pool, spec)

    @property
    def pool(self) -> EnvPool:
        """The pool; waits for one still starting (`from_config`), raising its start's error."""
        if isinstance(self._pool, Future):
            pool = self._pool.result()
            found, expected = pool.spec, self.pool_spec
            if (found.observation_shape, found.action_mask) != (
                expected.observation_shape,
                expected.action_mask,
            ):
                pool.close()
                raise EnvConstructionError(
                    f"{found.env_id}: the evaluation envs' observations have shape "
                    f"{found.observation_shape} (action mask: {found.action_mask}), the "
                    f"training envs' {expected.observation_shape} (action mask: "
                    f"{expected.action_mask})"
                )
            self._pool = pool
        return self._pool

    def restart(self) -> None:
        """Replace the pool by a fresh one (after a failure the pool only closes), started on a
        thread: for an evaluation env, whose compiled program calls this object's methods. A
        start that fails is the next evaluation's error (its NaN), not the run's end."""
        if self._make_pool is None:
            raise RuntimeError("this HostEnv was built from a pool: it cannot make another")
        self.error = None
        self.close()
        self._pool = _in_background(self._make_pool)

    # ---- the Env contract (jittable) -------------------------------------------------------

    def reset(self, key: Array) -> tuple[Array, TimeStep]:
        """Reset all envs with seeds drawn from ``key`` (env i gets seed + i)."""
        seed = jax.random.randint(key, (), 0, 2**30, dtype=jnp.int32)
        packed = host_call(self._host_reset, self._result_shape, seed)
        return jnp.int32(0), _unpack(packed)

    def step(self, state: Array, action: Array) -> tuple[Array, TimeStep]:
        """Step all envs with ``action[N, ...]`` on the host; ended episodes auto-reset."""
        packed = host_call(self._host_step, self._result_shape, action)
        return state + 1, _unpack(packed)

    # ---- host side -------------------------------------------------------------------------

    def _host_reset(self, seed) -> TimeStep:
        if self.error is not None:
            return self._zeros()
        try:
            return self._cast(self.pool.reset(seed=int(seed)))
        except Exception as error:  # re-raised by raise_if_failed, outside XLA
            self.error = error
            return self._zeros()

    def _host_step(self, action) -> TimeStep:
        if self.error is not None:
            return self._zeros()
        try:
            ts = self.pool.step(np.array(action))  # a copy: XLA reuses the buffer
        except Exception as error:
            self.error = error
            return self._zeros()
        self.clip_fraction_sum += self.pool.last_clip_fraction
        self.num_host_steps += 1
        return self._cast(ts)

    def _cast(self, ts: HostTimeStep) -> tuple[np.ndarray, ...]:
        obs_pair, scalars = (np.empty(s.shape, s.dtype) for s in self._result_shape[:2])
        obs_pair[0], obs_pair[1] = ts.obs, ts.final_obs
        scalars[0], scalars[1], scalars[2] = ts.reward, ts.terminated, ts.truncated
        scalars[3], scalars[4] = ts.episode_return, ts.episode_length
        if ts.action_mask is None:
            return obs_pair, scalars
        return obs_pair, scalars, ts.action_mask

    def _zeros(self) -> tuple[np.ndarray, ...]:
        """What a failed call returns until it ends: zeros, and every action legal (an
        all-False mask would give a masked policy nothing to choose from)."""
        zeros = tuple(np.zeros(s.shape, s.dtype) for s in self._result_shape[:2])
        if not self.spec.action_mask:
            return zeros
        return (*zeros, np.ones(self._result_shape[2].shape, np.bool_))

    # ---- for the driver --------------------------------------------------------------------

    def raise_if_failed(self) -> None:
        """Re-raise an error the pool raised during the last compiled call."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def host_metrics(self) -> dict[str, float]:
        """Counters since the last call: worker restarts, fraction of action elements clipped."""
        metrics = {"faults/env_restarts": float(self.pool.num_restarts)}
        if self.spec.action_kind == "continuous":
            steps = max(self.num_host_steps, 1)
            metrics["train/action_clip_fraction"] = self.clip_fraction_sum / steps
        self.clip_fraction_sum, self.num_host_steps = 0.0, 0
        return metrics

    def close(self) -> None:
        """Close the pool (a starting one once it has started; one that failed to start has
        nothing to close)."""
        try:
            pool = self.pool
        except Exception:
            return
        pool.close()
