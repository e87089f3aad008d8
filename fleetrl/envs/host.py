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

from fleetrl.envs.callback import host_call
from fleetrl.envs.checks import PoolSpec
from fleetrl.envs.errors import EnvConstructionError
from fleetrl.envs.pool import EnvPool, HostTimeStep
from fleetrl.envs.worker import EnvFactory, register_atari
from fleetrl.types import Array, EnvSpec, TimeStep


@dataclasses.dataclass(frozen=True)
class GymnasiumFactory:
    """Picklable ``make_env(index)``: `EnvFactory` plus fleetrl's standard preprocessing."""

    env_id: str
    env_kwargs: tuple[tuple[str, Any], ...] = ()
    preprocess: str = "none"

    def __call__(self, index: int) -> Any:
        kwargs = dict(self.env_kwargs)
        if self.preprocess == "atari":
            return _atari(self.env_id, kwargs)
        return EnvFactory(self.env_id, tuple(kwargs.items()))(index)


def _atari(env_id: str, kwargs: dict[str, Any]) -> Any:
    """Standard Atari preprocessing (Machado et al. 2018 / CleanRL): no-op starts, frame skip 4
    with max-pooling, 84x84 grayscale, 4 stacked frames; ``ale-py`` ships the ROMs."""
    import gymnasium

    if not register_atari(env_id):
        raise ImportError(
            f"env.id: {env_id} needs the Atari emulator: pip install 'fleetrl[atari]' (ale-py)"
        )
    kwargs.setdefault("frameskip", 1)  # AtariPreprocessing skips frames itself
    env = gymnasium.make(env_id, **kwargs)
    env = gymnasium.wrappers.AtariPreprocessing(
        env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True, scale_obs=False
    )
    return gymnasium.wrappers.FrameStackObservation(env, 4)


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


def _unpack(packed) -> TimeStep:
    """The callback's two arrays as a TimeStep (episode lengths are exact in float32 < 2^24)."""
    obs_pair, scalars = packed
    return TimeStep(
        obs=obs_pair[0],
        reward=scalars[0],
        terminated=scalars[1] > 0,
        truncated=scalars[2] > 0,
        final_obs=obs_pair[1],
        episode_return=scalars[3],
        episode_length=scalars[4].astype(jnp.int32),
    )


class HostEnv:
    """``num_envs`` gymnasium envs in an `EnvPool`, as a batched, auto-resetting ``Env``.

    ``state`` is an int32 step counter; observations are float32 (uint8 for images). Not
    ``vmap``-able: a host env serves one seed.
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
        self._result_shape = (
            jax.ShapeDtypeStruct((2, n, *obs), self.observation_dtype),  # obs, final_obs
            jax.ShapeDtypeStruct((5, n), np.float32),  # reward, flags, episode totals
        )

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

        factory = GymnasiumFactory(config.id, tuple(config.env_kwargs().items()), config.preprocess)
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
            return cls(make_pool(), make_pool)
        spec = dataclasses.replace(beside.pool_spec, num_envs=num_envs)
        return cls(_in_background(make_pool), make_pool, spec)

    @property
    def pool(self) -> EnvPool:
        """The pool; waits for one still starting (`from_config`), raising its start's error."""
        if isinstance(self._pool, Future):
            pool = self._pool.result()
            if pool.spec.observation_shape != self.pool_spec.observation_shape:
                pool.close()
                raise EnvConstructionError(
                    f"{pool.spec.env_id}: the evaluation envs' observations have shape "
                    f"{pool.spec.observation_shape}, the training envs' "
                    f"{self.pool_spec.observation_shape}"
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

    def _cast(self, ts: HostTimeStep) -> tuple[np.ndarray, np.ndarray]:
        obs_pair, scalars = self._zeros()
        obs_pair[0], obs_pair[1] = ts.obs, ts.final_obs
        scalars[0], scalars[1], scalars[2] = ts.reward, ts.terminated, ts.truncated
        scalars[3], scalars[4] = ts.episode_return, ts.episode_length
        return obs_pair, scalars

    def _zeros(self) -> tuple[np.ndarray, np.ndarray]:
        return tuple(np.zeros(s.shape, s.dtype) for s in self._result_shape)

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
