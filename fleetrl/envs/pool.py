"""`EnvPool`: a batch of gymnasium envs stepped by worker processes through shared memory.

BatchPPO's ExternalProcess + BatchEnv, for any gymnasium env: ``num_envs`` envs spread over
``num_workers`` spawned processes (several envs each; ``num_workers=0`` steps them in-process
with the same semantics). One batched round trip per step: the parent writes the actions into
shared memory and wakes each worker once; each worker steps its envs in a loop, auto-resets the
ones that ended, writes observations, rewards, flags and episode totals straight into shared
memory and answers. No JAX here: `fleetrl.envs.host` wraps this NumPy-level API.

Failures are loud and bounded (reliability cases F1-F7, I1-I12 of our reference list): an env
that raises becomes an `EnvStepError`/`EnvResetError`/`EnvConstructionError` with the env index,
the pool step, the action and the worker's traceback; a worker that dies becomes a
`WorkerDiedError` within 0.1 s; a hung step an `EnvTimeoutError` after ``step_timeout``, or an
`EnvInterruptedError` within 0.1 s of the caller's ``should_stop()`` turning True. With
``on_error="restart"`` the pool instead replaces the failed worker, resets its envs and reports
their episodes as truncated. ``close()`` is idempotent, takes at most a few seconds, leaves no
process and no shared memory behind, and also runs when a forgotten pool is garbage-collected
or the interpreter exits.
"""

from __future__ import annotations

import collections
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import numpy as np

from fleetrl.envs import checks
from fleetrl.envs.checks import PoolSpec
from fleetrl.envs.errors import (
    EnvConstructionError,
    EnvInterruptedError,
    EnvPoolError,
    EnvPoolWarning,
    Fault,
    FaultContext,
    error_of,
    first_error,
    with_first_line,
)
from fleetrl.envs.worker import RESET, STEP, EnvFactory, Layout
from fleetrl.envs.workerset import WorkerSet, release

RESTART_WINDOW = 1000
"""Batched steps over which `EnvPool` counts restarts against ``max_restarts``."""


class HostTimeStep(NamedTuple):
    """`fleetrl.types.TimeStep` as NumPy arrays, every field ``[N, ...]``; fresh copies.

    ``obs`` is already the first observation of the next episode where an episode ended
    (auto-reset in the same step); ``final_obs`` is the observation the step reached (equal to
    ``obs`` where nothing ended). ``reward`` float32; ``terminated``/``truncated`` bool, never
    both: an env returning both counts as terminated (nothing bootstraps from it).
    ``episode_return`` (float32) and ``episode_length`` (int32) are raw totals of the episode so
    far including this step; on the step an episode ends they hold the finished episode's
    totals. Box observations come out as float32, except uint8 ones (images), which stay uint8.
    ``action_mask``: ``[N, A]`` bool, True where an action is legal in ``obs``, for envs with
    action masks (`PoolSpec.action_mask`, `fleetrl.envs.adapt`); None otherwise.
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: np.ndarray
    episode_return: np.ndarray
    episode_length: np.ndarray
    action_mask: np.ndarray | None = None

    @property
    def episode_done(self) -> np.ndarray:
        return self.terminated | self.truncated


_RELEASES: list[weakref.finalize] = []  # each open pool's release, for `release_all`


def release_all() -> None:
    """Stop every open pool's worker processes (each closes its envs) and free its shared
    memory, leaving in-process envs alone: for an exit that skips the interpreter's shutdown
    (`fleetrl.interrupts.release_and_exit`)."""
    for finalizer in list(_RELEASES):
        found = finalizer.peek()
        if found is not None:
            _, _, (resources,), _ = found  # (pool, release, args, kwargs)
            release(resources, in_process=False)


class EnvPool:
    """``num_envs`` gymnasium envs in ``num_workers`` processes (0: in this process).

    ``make_env`` builds env ``i`` (see `fleetrl.envs.worker.call_style`): ``make_env(i)``,
    ``make_env(env_index=i)`` or ``make_env()``; it must pickle when ``num_workers > 0`` (a
    module-level function or class, a ``functools.partial`` of one, or use `from_id`).

    The envs' ``info`` dicts are dropped: only arrays cross the process boundary. Action masks
    (``info["action_mask"]`` or a Dict observation's entry, found by the startup probe) cross as
    ``HostTimeStep.action_mask``; a mask with no legal action is an `EnvStepError` (or a
    restart). Discrete observations come out one-hot (`fleetrl.envs.adapt`).

    Startup checks each env where it is built: its API, its spaces, and one probe reset and step
    (`fleetrl.envs.checks.probe_env`, which says which envs should opt out). An env the pool
    cannot run (old gym API, unsupported or mismatched spaces) raises an
    `fleetrl.envs.errors.UnsupportedEnvError` whose message says what to do.

    Seeding: env ``i`` is reset with ``seed + i`` on the first reset (its action space too);
    later auto-resets continue the env's own RNG, so trajectories do not depend on
    ``num_workers``. ``seed=None`` leaves the envs unseeded.

    ``on_error="raise"``: the first failure is raised and the pool can only be closed.
    ``on_error="restart"``: the failed worker is rebuilt in a fresh process (the parent's own
    share: in-process) and its envs reset with seeds ``seed + i + num_envs * num_restarts``
    (``seed``: the last one given to `reset` or the constructor). In the returned step those
    envs show ``truncated=True``, ``reward=0``, ``final_obs`` = their last good observation and
    the broken episode's totals; ``last_restarted`` marks them, so that a trainer can drop the
    transition instead of bootstrapping through a fault. ``num_restarts`` counts restarts; once
    ``max_restarts`` restarts fall within `RESTART_WINDOW` batched steps (an env that fails
    for good, even if only every few steps), the next fault raises the last error: occasional
    faults over a long run never exhaust it.
    ``step_timeout`` applies to worker processes only (an in-process env's step cannot be
    interrupted); ``start_timeout`` to worker processes and to in-process constructors run on
    the main thread (a SIGALRM: `fleetrl.envs.handles.interrupt_after`).

    ``should_stop``: called every `fleetrl.envs.handles.POLL_SECONDS` (0.1 s) while the pool
    waits for workers; once it returns True the wait ends with an
    `fleetrl.envs.errors.EnvInterruptedError` (a trainer's Ctrl+C need not wait for a hung
    worker's ``step_timeout``). Like any error, it leaves the pool closable only.

    ``check_finite``: NaN/Inf in an observation or reward is an `EnvStepError` (or a restart);
    it costs one float64 sum per step (2.5 us with 16 CartPole envs).

    Observations must keep their space's shape exactly (else an `EnvStepError` or
    `EnvResetError`). Two things pass with an `fleetrl.envs.errors.EnvPoolWarning`, once per
    pool each: an observation of another dtype than its space's (the pool casts it to its own
    dtype, see `HostTimeStep`), checked on each env's first reset and step; and one outside a
    Box's finite bounds (passed through unchanged), checked over the batch on every step for
    the first `checks.BOUNDS_EVERY` (1,000) steps, then on every 1,000th.

    Speed (docs/BENCHMARKS.md, "Host env pool"): ``parent_steps=True`` makes the parent step one
    share of the envs itself while the ``num_workers`` processes step theirs, instead of idling
    until they answer; on C cores, ``num_workers=C-1, parent_steps=True`` was the fastest setting
    on our 2-core VM (that share is in-process: no ``step_timeout``). ``pin_workers`` pins each
    worker to one CPU: faster on an idle machine, much slower when other processes compete for
    the cores. ``spin_us``: a worker that has answered busy-waits this long for the next command
    before blocking, as long as the parent keeps sending within that window (so a slow parent
    is not robbed of a core); a parent that stepped envs busy-waits as long for the workers.
    """

    def __init__(
        self,
        make_env: Any,
        num_envs: int,
        num_workers: int = 0,
        *,
        seed: int | None = 0,
        step_timeout: float = 60.0,
        start_timeout: float = 60.0,
        on_error: Literal["raise", "restart"] = "raise",
        max_restarts: int = 10,
        check_finite: bool = True,
        parent_steps: bool = False,
        pin_workers: bool = False,
        spin_us: float = 300.0,
        env_id: str | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        timeouts = (step_timeout, start_timeout)
        checks.check_pool_arguments(
            num_envs, num_workers, parent_steps, timeouts, on_error, max_restarts
        )
        if num_workers:
            checks.check_picklable(make_env)
        self.num_envs = num_envs
        self.num_workers = num_workers
        self.seed = seed
        self.step_timeout = step_timeout
        self.start_timeout = start_timeout
        self.on_error = on_error
        self.max_restarts = max_restarts
        self.check_finite = check_finite
        self.num_steps = 0
        """Batched steps sent so far (the "pool step" named in errors)."""
        self.num_restarts = 0
        self._recent_restarts: collections.deque[int] = collections.deque()  # their steps
        self.last_clip_fraction = 0.0
        """Fraction of continuous action elements clipped to the Box in the last step."""
        self.last_restarted = np.zeros(num_envs, dtype=bool)
        """Envs whose worker was restarted during the last ``step``/``reset``."""
        self.spec: PoolSpec | None = None
        self._label = env_id or getattr(make_env, "__name__", type(make_env).__name__)
        if should_stop is not None and not callable(should_stop):
            raise TypeError(f"should_stop: must be callable or None, got {should_stop!r}")
        options = dict(
            start_timeout=start_timeout,
            pin_workers=pin_workers,
            spin_us=spin_us,
            parent_steps=parent_steps,
            should_stop=should_stop,
        )
        self._set_up_workers(make_env, options)
        self._reset_bookkeeping()
        try:
            self._start(env_id)
        except BaseException:
            self.close()
            raise

    def _reset_bookkeeping(self) -> None:
        """The pool's state before it starts: no arrays, not broken, closed or waiting."""
        self._arrays: dict | None = None
        self._broken: BaseException | None = None
        self._closed = self._waiting = self._has_reset = False
        self._deadline = 0.0
        self._prev: tuple | None = None
        self._restart_seed = self.seed
        self._bounds: tuple | None = None  # (low, high) to check observations against
        self._next_bounds_check = 0  # the pool step at which to check them
        self._warned: set[str] = set()  # kinds of EnvPoolWarning shown

    def _set_up_workers(self, make_env: Any, options: dict) -> None:
        """The `WorkerSet` (nothing started yet), what error messages need of it, and its
        release when the pool is closed, collected or left at exit."""
        self._workers = WorkerSet(make_env, self.num_envs, self.num_workers, options)
        self._context = FaultContext(
            self._label,
            self._workers.groups,
            self._workers.local_slots,
            self.step_timeout,
            self.start_timeout,
        )
        self._finalizer = weakref.finalize(self, release, self._workers.resources)
        _RELEASES[:] = [f for f in _RELEASES if f.alive] + [self._finalizer]

    @classmethod
    def from_id(
        cls,
        env_id: str,
        num_envs: int,
        num_workers: int = 0,
        *,
        env_kwargs: dict | None = None,
        max_episode_steps: int | None = None,
        **pool_kwargs: Any,
    ) -> EnvPool:
        """A pool of ``gymnasium.make(env_id, **env_kwargs)`` envs, or of ``Class(**env_kwargs)``
        for ``env_id="module.path:Class"`` (given ``env_index=i`` when it takes one)."""
        factory = EnvFactory(env_id, tuple((env_kwargs or {}).items()), max_episode_steps)
        return cls(factory, num_envs, num_workers, env_id=env_id, **pool_kwargs)

    # ---- public API -------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> HostTimeStep:
        """Reset every env, env ``i`` with ``seed + i`` (default: the pool's seed on the first
        reset, unseeded afterwards). Rewards, flags and episode totals are zero."""
        self._check_usable()
        if self._waiting:
            raise EnvPoolError("reset() called between step_async() and step_wait()")
        if seed is None and not self._has_reset:
            seed = self.seed
        if seed is not None:
            self._restart_seed = seed
        with self._breaking():
            self.last_restarted[:] = False
            self._workers.send(RESET, self._seed_payloads(seed))
            faults = self._wait(time.monotonic() + self.step_timeout)
            timestep = self._finish(faults, "reset", stepped=False)
        self._has_reset = True
        return timestep

    def step(self, actions: np.ndarray) -> HostTimeStep:
        """Step every env with ``actions [N, ...]`` (one batched round trip)."""
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        """Check ``actions`` and start a step, which `step_wait` returns; the parent is free in
        between (envs stepped by the parent itself step here)."""
        self._check_usable()
        if not self._has_reset:
            raise EnvPoolError("call reset() before step()")
        if self._waiting:
            raise EnvPoolError("step_async() called twice without step_wait()")
        self.last_clip_fraction = checks.check_actions(actions, self.spec, self._arrays["actions"])
        self.num_steps += 1
        self._deadline = time.monotonic() + self.step_timeout
        self._waiting = True
        with self._breaking():
            self.last_restarted[:] = False
            self._workers.send(STEP)

    def step_wait(self) -> HostTimeStep:
        """Wait for the step started by `step_async` and return it."""
        if not self._waiting:
            raise EnvPoolError("step_wait() called without step_async()")
        self._waiting = False
        with self._breaking():
            faults = self._wait(self._deadline)
            return self._finish(faults, f"step {self.num_steps}", stepped=True)

    def close(self) -> None:
        """Stop the workers and free the shared memory. Idempotent; returns within ~4 s even
        with hung workers (1 s to close their envs, then SIGTERM, then SIGKILL)."""
        self._closed = True
        self._arrays = None
        self._finalizer()

    @property
    def resource_names(self) -> list[str]:
        """Names under /dev/shm this pool created (shared memory, semaphores): for leak tests."""
        return list(self._workers.resources.names)

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EnvPool({self._label!r}, num_envs={self.num_envs}, num_workers={self.num_workers})"

    # ---- startup and restarts ---------------------------------------------------------------

    def _start(self, env_id: str | None) -> None:
        workers = self._workers
        self._raise_first(workers.launch(range(len(workers.groups))), "startup")
        env_spaces = [s for w in workers.workers for s in w.info["spaces"]]
        checks.check_same_spaces(env_spaces)  # each env's own were checked where it was built
        masked = [m for w in workers.workers for m in w.info["action_masks"]]
        checks.check_same_masks(masked)
        info = workers.workers[0].info
        label = env_id or info["env_id"] or self._label
        spec = self.spec = checks.make_spec(
            label, self.num_envs, *env_spaces[0], info["max_episode_steps"], masked[0]
        )
        layout = Layout.of(
            self.num_envs,
            len(workers.groups),
            spec.observation_shape,
            spec.observation_dtype,
            spec.action_shape,
            spec.action_dtype,
            spec.num_actions if spec.action_mask else 0,
        )
        workers.allocate(layout, int(getattr(spec.action_space, "start", 0)))
        self._arrays = workers.arrays
        self._raise_first(workers.attach(range(len(workers.groups))), "startup")
        self._bounds = checks.observation_bounds(spec.observation_space, spec.observation_dtype)

    def _restart(self, slot: int, error: EnvPoolError) -> None:
        """Replace worker ``slot`` by a fresh one with reset envs; raise ``error`` (the last
        one) once the restart budget is spent."""
        expected = (self.spec.observation_space, self.spec.action_space)
        indices = self._workers.groups[slot]
        while True:
            recent = self._recent_restarts
            while recent and recent[0] <= self.num_steps - RESTART_WINDOW:
                recent.popleft()
            if len(recent) >= self.max_restarts:
                raise with_first_line(
                    error,
                    f"EnvPool gave up after {len(recent)} worker restarts within "
                    f"{RESTART_WINDOW} steps (max_restarts={self.max_restarts}; "
                    f"{self.num_restarts} in all); the last failure: ",
                )
            self.num_restarts += 1
            recent.append(self.num_steps)
            try:
                self._raise_first(self._workers.replace(slot), "startup")
                info = self._workers.workers[slot].info
                for index, env_spaces, masked in zip(
                    indices, info["spaces"], info["action_masks"], strict=True
                ):
                    if env_spaces != expected or masked != self.spec.action_mask:
                        raise EnvConstructionError(
                            f"env {index} came back from a restart with spaces {env_spaces} "
                            f"(action mask: {masked}), the pool has {expected} (action mask: "
                            f"{self.spec.action_mask})",
                            index,
                        )
                seed = self._restart_seed
                seed = None if seed is None else seed + self.num_envs * self.num_restarts
                self._workers.send(RESET, self._seed_payloads(seed), slots=[slot])
                deadline = time.monotonic() + self.step_timeout
                fault = self._workers.wait(deadline, True, slots=[slot]).get(slot)
                if fault is not None:
                    raise self._error(fault, "reset after a restart")
                self.last_restarted[indices.start : indices.stop] = True
                return
            except EnvInterruptedError:
                raise
            except EnvPoolError as next_error:
                error = next_error

    # ---- one round trip -----------------------------------------------------------------------

    def _wait(self, deadline: float) -> dict[int, Fault]:
        # raise mode gives up at the first fault; restart mode needs every healthy answer
        faults = self._workers.wait(deadline, stop_at_fault=self.on_error == "raise")
        if self.check_finite:
            for slot, fault in self._nonfinite().items():
                faults.setdefault(slot, fault)
        if self.spec.action_mask and (not faults or self.on_error == "restart"):
            # (raise mode stops at the first fault: rows of workers still busy are no answer)
            for index in checks.find_no_legal_action(self._arrays["action_mask"]):
                slot = self._workers.slot_of(index)
                faults.setdefault(slot, Fault("no_legal_action", slot, (index,)))
        return faults

    def _finish(self, faults: dict[int, Fault], phase: str, stepped: bool) -> HostTimeStep:
        """Turn the shared arrays into a `HostTimeStep`, raising or restarting on faults."""
        if faults:
            interrupted = any(f.kind == "interrupted" for f in faults.values())
            if self.on_error == "raise" or interrupted:  # never restart on the way out
                self._raise_first(list(faults.values()), phase)
            for slot, fault in sorted(faults.items()):
                self._restart(slot, self._error(fault, phase))
        if self._workers.notes:
            self._warn_notes()
        if self._bounds is not None and self.num_steps >= self._next_bounds_check:
            self._check_bounds(phase)
        a = self._arrays
        timestep = HostTimeStep(
            a["obs"].copy(),
            a["reward"].copy(),
            a["terminated"].copy(),
            a["truncated"].copy(),
            a["final_obs"].copy(),
            a["episode_return"].copy(),
            a["episode_length"].copy(),
            a["action_mask"].copy() if self.spec.action_mask else None,
        )
        if self.on_error == "restart":
            self._mark_restarted(timestep, stepped)
        return timestep

    def _mark_restarted(self, timestep: HostTimeStep, stepped: bool) -> None:
        """Envs restarted mid-step end their episode as truncated at the last good obs."""
        if stepped and self.last_restarted.any():
            prev_obs, prev_return, prev_length = self._prev
            rows = self.last_restarted
            timestep.final_obs[rows] = prev_obs[rows]
            timestep.reward[rows] = 0.0
            timestep.terminated[rows] = False
            timestep.truncated[rows] = True
            timestep.episode_return[rows] = prev_return[rows]
            timestep.episode_length[rows] = prev_length[rows]
        done = timestep.episode_done
        self._prev = (
            timestep.obs.copy(),
            np.where(done, 0.0, timestep.episode_return).astype(np.float32),
            np.where(done, 0, timestep.episode_length).astype(np.int32),
        )

    def _nonfinite(self) -> dict[int, Fault]:
        """A fault for each worker with a NaN/Inf reward or (float) observation."""
        obs_is_float = self.spec.observation_dtype.kind == "f"
        found = checks.find_nonfinite(self._arrays, self._workers.float_block, obs_is_float)
        faults = {}
        for index, what in found:
            slot = self._workers.slot_of(index)
            faults.setdefault(slot, Fault("nonfinite", slot, (index, what)))
        return faults

    def _warn_notes(self) -> None:
        """Show each kind of the workers' warnings once per pool (`EnvPoolWarning`)."""
        notes = self._workers.notes  # shared with the workers: emptied in place
        for kind, _, text in notes:
            self._warn(kind, text)
        notes.clear()

    def _check_bounds(self, phase: str) -> None:
        self._next_bounds_check = checks.next_bounds_check(self.num_steps)
        found = checks.find_out_of_bounds(self._arrays, self._bounds)
        if found is None:
            return
        index, element, value, low, high = found
        self._warn(
            "bounds",
            f"env {index} returned an observation outside its observation space "
            f"{self.spec.observation_space} at pool {phase}: element {element} is {value:g}, "
            f"bounds [{low:g}, {high:g}]; fleetrl passes values beyond the bounds through "
            f"unchanged (warned once per pool; checked on every step for the first "
            f"{checks.BOUNDS_EVERY} steps, then on every {checks.BOUNDS_EVERY}th)",
        )
        self._bounds = None  # warned: nothing more to check

    def _warn(self, kind: str, text: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        frame, level = sys._getframe(), 1  # point the warning at the pool's caller
        while frame.f_back is not None and frame.f_code.co_filename == __file__:
            frame, level = frame.f_back, level + 1
        warnings.warn(text, EnvPoolWarning, stacklevel=level)

    def _seed_payloads(self, seed: int | None) -> dict[int, list | None]:
        """Reset payload per worker: the seeds of its envs (None: unseeded)."""
        groups = enumerate(self._workers.groups)
        return {slot: None if seed is None else [seed + i for i in group] for slot, group in groups}

    # ---- errors -------------------------------------------------------------------------------

    def _error(self, fault: Fault, phase: str) -> EnvPoolError:
        actions = None if self._arrays is None else self._arrays["actions"]
        return error_of(fault, phase, self._context, self.num_steps, actions)

    def _raise_first(self, faults: list[Fault], phase: str) -> None:
        actions = None if self._arrays is None else self._arrays["actions"]
        error = first_error(faults, phase, self._context, self.num_steps, actions)
        if error is not None:
            raise error

    def _check_usable(self) -> None:
        if self._closed:
            raise EnvPoolError("EnvPool is closed")
        if self._broken is not None:
            first_line = str(self._broken).splitlines()[0] if str(self._broken) else ""
            raise EnvPoolError(
                f"EnvPool is unusable after an earlier error ({type(self._broken).__name__}: "
                f"{first_line}); close() it, or build it with on_error='restart'"
            ) from self._broken

    @contextmanager
    def _breaking(self):
        """Any exception escaping (an unrecovered fault, Ctrl+C) leaves the pool closable only."""
        try:
            yield
        except BaseException as error:
            self._waiting = False
            if self._broken is None:
                self._broken = error
            raise
