"""What runs inside an `EnvPool` worker: a group of envs stepping straight into shared arrays.

The same `EnvGroup` serves in-process pools (``num_workers=0``) on plain arrays. This module is
the entry point of the spawned worker processes, so it imports numpy and gymnasium only (no JAX,
no other fleetrl module than `checks` and `errors`).

Protocol (one round trip per batched step): the parent writes the actions and a command code into
shared memory and releases the worker's ``command`` semaphore; the worker runs the command on its
envs, writes the results and a status code into shared memory, and releases its ``done``
semaphore. Rare messages travel over a pipe: spaces and attach at startup, seeds for a reset, and
the formatted traceback of a failure (status ``FAILED``) or a list of warnings for the parent to
show once per pool (status ``NOTED``), both sent after ``done``, so that a long message cannot
block the worker on a full pipe while the parent waits on the semaphore.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetrl.envs import adapt, checks
from fleetrl.envs.errors import EnvFailure, summarize

STEP, RESET, CLOSE = 1, 2, 3
OK, FAILED, NOTED = 0, 1, 2
_ALIGN = 64  # bytes; also the per-worker stride of command/status, so workers share no line


# ---- building envs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvFactory:
    """Picklable ``make_env(index)`` for an id: a gymnasium id or ``"module.path:ClassName"``.

    A ``gymnasium.Env`` subclass named by ``module:ClassName`` is called with ``env_kwargs``,
    plus ``env_index=index`` when it accepts that argument; ``max_episode_steps`` then adds a
    ``TimeLimit``. Anything else goes to ``gymnasium.make(env_id, **env_kwargs)``.
    """

    env_id: str
    env_kwargs: tuple[tuple[str, Any], ...] = ()
    max_episode_steps: int | None = None

    def __call__(self, index: int) -> Any:
        import gymnasium

        kwargs = dict(self.env_kwargs)
        constructor = _import_attribute(self.env_id)
        if constructor is None:
            register_atari(self.env_id)
            if self.max_episode_steps is not None:
                kwargs["max_episode_steps"] = self.max_episode_steps
            return gymnasium.make(self.env_id, **kwargs)
        if _accepts(constructor, "env_index"):
            kwargs.setdefault("env_index", index)
        env = constructor(**kwargs)
        if self.max_episode_steps is not None:
            env = gymnasium.wrappers.TimeLimit(env, self.max_episode_steps)
        return env


def register_atari(env_id: str) -> bool:
    """Register ale-py's Atari ids (``ALE/Pong-v5``, ``PongNoFrameskip-v4``: they exist once
    it is imported) unless gymnasium has ``env_id`` already; False when ale-py is missing."""
    import gymnasium

    if env_id in gymnasium.registry:
        return True
    try:
        import ale_py
    except ImportError:  # gymnasium's error names the id; fleetrl.envs.check_env_id the fix
        return False
    gymnasium.register_envs(ale_py)
    return True


def _import_attribute(env_id: str) -> Any:
    """``module:ClassName`` -> the ``gymnasium.Env`` subclass (checked before it is called,
    `fleetrl.envs.trust`), or None for a registered id or gymnasium's ``module:EnvName-v0``.
    Trust in the module was checked by the process that started this pool."""
    if ":" not in env_id:
        return None
    from fleetrl.envs import trust

    return trust.resolve(env_id, check_trust=False)


def _accepts(function: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def call_style(make_env: Any) -> str:
    """How to call ``make_env`` for env ``i``: ``"index"`` -> ``make_env(i)`` when it has a
    required positional parameter, ``"env_index"`` -> ``make_env(env_index=i)`` when it names an
    ``env_index`` parameter, else ``"none"`` -> ``make_env()``."""
    try:
        parameters = list(inspect.signature(make_env).parameters.values())
    except (TypeError, ValueError):
        return "index"
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind in positional and p.default is p.empty for p in parameters):
        return "index"
    if any(p.name == "env_index" and p.kind is not p.POSITIONAL_ONLY for p in parameters):
        return "env_index"
    return "none"


class StartTimeout(BaseException):
    """Raised into an env's constructor that overran the pool's ``start_timeout`` in-process
    (`fleetrl.envs.handles.InProcessWorker`). A BaseException, so that an env's own ``except
    Exception`` (a retry loop) does not swallow it."""


def build_envs(make_env: Any, indices: range, style: str) -> tuple[list[Any], list[bool]]:
    """Construct and check the envs ``indices`` (see `call_style`): their API, their spaces
    (adapted first: `adapt.adapt`), and one probe reset and step (`checks.probe_env`), which
    also tells whether each env gives action masks. Returns the envs and those flags; failures
    raise `EnvFault`, after closing the envs built so far (also on Ctrl+C or a
    `StartTimeout`)."""
    envs, masked = [], []
    for index in indices:
        env = None
        try:
            if style == "index":
                env = make_env(index)
            elif style == "env_index":
                env = make_env(env_index=index)
            else:
                env = make_env()
            checks.check_env_api(env, index)
            env = adapt.adapt(env, index)
            checks.check_spaces(env.observation_space, env.action_space, index)
            masked.append(adapt.has_mask(env, checks.probe_env(env, index), index))
        except BaseException as error:
            for built in envs if env is None else [*envs, env]:
                _close_quietly(built)
            if isinstance(error, checks.ProbeError):
                fault = EnvFault(f"probe {error.call}", index, error.error, error.note)
                raise fault from error.error
            if isinstance(error, (Exception, StartTimeout)):
                raise EnvFault("construct", index, error) from error
            raise
        envs.append(env)
    return envs, masked


def describe_envs(envs: list[Any], masked: list[bool]) -> dict:
    """What the parent needs to check spaces and build the spec."""
    first = envs[0]
    spec = getattr(first, "spec", None)
    return {
        "spaces": [(env.observation_space, env.action_space) for env in envs],
        "action_masks": masked,
        "max_episode_steps": getattr(spec, "max_episode_steps", None) or 0,
        "env_id": getattr(spec, "id", None),
    }


def _close_quietly(env: Any) -> None:
    try:
        env.close()
    except Exception:
        pass


# ---- shared arrays ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where each array lives in one buffer: ``{name: (offset, shape, dtype)}``."""

    fields: dict
    size: int

    @classmethod
    def of(
        cls, num_envs, num_slots, obs_shape, obs_dtype, action_shape, action_dtype, mask_actions=0
    ) -> Layout:
        """Float32 outputs first and contiguous (padding is zeros), so that one sum checks them
        all for NaN/Inf; per-worker command and status words on their own cache lines.
        ``mask_actions``: the number of discrete actions of envs with action masks (an
        ``action_mask`` field of that many bools per env), 0 for none."""
        shapes = {
            "obs": ((num_envs, *obs_shape), obs_dtype),
            "final_obs": ((num_envs, *obs_shape), obs_dtype),
            "reward": ((num_envs,), np.float32),
            "episode_return": ((num_envs,), np.float32),
            "terminated": ((num_envs,), np.bool_),
            "truncated": ((num_envs,), np.bool_),
            "episode_length": ((num_envs,), np.int32),
            "actions": ((num_envs, *action_shape), action_dtype),
            "command": ((num_slots, _ALIGN // 4), np.int32),
            "status": ((num_slots, _ALIGN // 4), np.int32),
        }
        if mask_actions:
            shapes["action_mask"] = ((num_envs, mask_actions), np.bool_)
        fields, offset = {}, 0
        for name, (shape, dtype) in shapes.items():
            dtype = np.dtype(dtype)
            fields[name] = (offset, shape, dtype.str)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            offset += -(-nbytes // _ALIGN) * _ALIGN
        return cls(fields, max(offset, _ALIGN))

    def float_block(self, buffer) -> np.ndarray:
        """One float32 view over every float32 output: observations (when float32), rewards
        and episode returns, with the zero padding between them."""
        first = "obs" if np.dtype(self.fields["obs"][2]) == np.float32 else "reward"
        start = self.fields[first][0]
        stop = self.fields["terminated"][0]
        return np.ndarray(((stop - start) // 4,), np.float32, buffer=buffer, offset=start)

    def arrays(self, buffer) -> dict[str, np.ndarray]:
        """Numpy views of every field on ``buffer`` (a shared-memory ``buf`` or a bytearray)."""
        return {
            name: np.ndarray(shape, dtype=np.dtype(dtype), buffer=buffer, offset=offset)
            for name, (offset, shape, dtype) in self.fields.items()
        }


# ---- stepping --------------------------------------------------------------------------------


class EnvFault(Exception):
    """An env failed in ``phase`` ("construct", "probe reset", "probe step", "reset" or "step");
    ``env_index`` None: somewhere in the group, outside one env's calls. Carries what the parent
    reports (`failure`), with the traceback as text."""

    def __init__(self, phase: str, env_index: int | None, error: BaseException, note: str = ""):
        super().__init__(phase, env_index)
        self.phase = phase
        self.env_index = env_index
        self.error = error
        self.note = note
        self.traceback_text = "".join(traceback.format_exception(error)).rstrip()

    def failure(self, error: BaseException | None) -> EnvFailure:
        """What the parent's error needs, with ``error`` as the exception (None: unpicklable)."""
        summary = summarize(self.error)
        return EnvFailure(
            self.phase, self.env_index, summary, self.traceback_text, error, self.note
        )


class EnvGroup:
    """The envs ``start..start+len(envs)-1`` of a pool, reading actions from and writing results
    into the rows of ``arrays`` that belong to them. Warnings for the parent (`checks.dtype_note`)
    collect in ``notes`` as ``(kind, env_index, text)``. With an ``action_mask`` array, each
    env's mask (`adapt.read_mask`) of the observation written goes there too."""

    def __init__(self, envs: list[Any], start: int, arrays: dict, slot: int, action_offset: int):
        rows = slice(start, start + len(envs))
        self.envs = envs
        self.start = start
        self.slot = slot
        self.action_offset = action_offset
        self.discrete = arrays["actions"].dtype.kind in "iu"
        self.action_dtype = envs[0].action_space.dtype
        self.obs_space = envs[0].observation_space
        self.obs_shape = tuple(self.obs_space.shape)
        self.view = {k: v[rows] for k, v in arrays.items() if k not in ("command", "status")}
        self.num_actions = arrays["action_mask"].shape[1] if "action_mask" in arrays else 0
        self.returns = [0.0] * len(envs)
        self.lengths = [0] * len(envs)
        self.reset_checked = [False] * len(envs)
        self.step_checked = [False] * len(envs)
        self.notes: list[tuple[str, int, str]] = []
        self.noted: set[str] = set()

    def reset(self, seeds: list[int | None] | None) -> None:
        """Reset every env (``seeds[j]`` for env ``start + j``, or unseeded)."""
        view = self.view
        for j, env in enumerate(self.envs):
            seed = None if seeds is None else seeds[j]
            try:
                result = env.reset(seed=seed)
                if not self.reset_checked[j]:  # its shape too
                    checks.check_reset_result(result, self.obs_space, self.start + j)
                    self._note_dtype(j, result[0], "reset")
                    if not self.num_actions:
                        adapt.check_undeclared(result[1], self.start + j)
                    self.reset_checked[j] = True
                else:
                    checks.check_observation_shape(result[0], self.obs_space, "reset")
                if seed is not None:
                    env.action_space.seed(seed)
                view["obs"][j] = result[0]
                if self.num_actions:
                    view["action_mask"][j] = adapt.read_mask(result[1], self.num_actions)
            except Exception as error:
                raise EnvFault("reset", self.start + j, error) from error
        view["final_obs"][...] = view["obs"]
        for name in ("reward", "terminated", "truncated", "episode_return", "episode_length"):
            view[name][...] = 0
        self.returns = [0.0] * len(self.envs)
        self.lengths = [0] * len(self.envs)

    def step(self) -> None:
        """Step every env once with its row of ``actions``; auto-reset the ones that end.

        Hot loop: Python lists written with one slice assignment each, reached observations
        included (~0.15 us less per env than a row write each, as gymnasium's SyncVectorEnv
        does), one block copy for ``obs``. Each observation's shape is compared exactly first
        (~0.12 us): numpy would broadcast a () or (1,) observation into its row without a word.
        Masks are read only where the pool has them (`adapt.read_mask`).
        """
        actions = self._actions()
        returns, lengths, num_actions = self.returns, self.lengths, self.num_actions
        shape, step_checked = self.obs_shape, self.step_checked
        rewards, terminateds, truncateds, episode_returns, episode_lengths = [], [], [], [], []
        reached, reset_obs, masks = [], [], [] if num_actions else None
        for j, env in enumerate(self.envs):
            try:
                result = env.step(actions[j])
                if not step_checked[j]:
                    checks.check_step_result(result, self.obs_space, self.start + j)
                    self._note_dtype(j, result[0], "step")
                    step_checked[j] = True
                obs, reward, terminated, truncated, info = result
                if getattr(obs, "shape", None) != shape:  # exact: else numpy broadcasts
                    checks.check_observation_shape(obs, self.obs_space, "step")
                returns[j] += reward
                if num_actions and not (terminated or truncated):
                    masks.append(adapt.read_mask(info, num_actions))
            except Exception as error:
                raise EnvFault("step", self.start + j, error) from error
            lengths[j] += 1
            rewards.append(reward)
            terminateds.append(terminated)
            # both flags set: the episode terminated; truncated stays False so that nothing
            # bootstraps from the reached state (reliability case I12)
            truncateds.append(truncated and not terminated)
            episode_returns.append(returns[j])
            episode_lengths.append(lengths[j])
            if terminated or truncated:
                obs = np.array(obs)  # a copy: an env may reuse its array in reset()
                reset_obs.append((j, self._auto_reset(j, env, masks)))
                returns[j] = 0.0
                lengths[j] = 0
            reached.append(obs)
        outputs = (rewards, terminateds, truncateds, episode_returns, episode_lengths)
        self._write(reached, reset_obs, outputs, masks)

    def _actions(self) -> list:
        """This group's actions, as the envs take them (the Discrete space's ``start`` added)."""
        view = self.view
        if not self.discrete:
            return list(view["actions"].astype(self.action_dtype))
        actions = view["actions"].tolist()
        if self.action_offset:
            actions = [a + self.action_offset for a in actions]
        return actions

    def _write(self, reached: list, reset_obs: list, outputs: tuple, masks: list | None) -> None:
        view = self.view
        view["final_obs"][...] = reached
        view["obs"][...] = view["final_obs"]
        for j, obs in reset_obs:
            view["obs"][j] = obs
        rewards, terminateds, truncateds, episode_returns, episode_lengths = outputs
        view["reward"][...] = rewards
        view["terminated"][...] = terminateds
        view["truncated"][...] = truncateds
        view["episode_return"][...] = episode_returns
        view["episode_length"][...] = episode_lengths
        if masks is not None:
            view["action_mask"][...] = masks

    def _auto_reset(self, j: int, env: Any, masks: list | None) -> Any:
        """The first observation of env ``j``'s next episode; its mask appended to ``masks``."""
        try:
            obs, info = env.reset()
            if getattr(obs, "shape", None) != self.obs_shape:
                checks.check_observation_shape(obs, self.obs_space, "reset")
            if masks is not None:
                masks.append(adapt.read_mask(info, self.num_actions))
        except Exception as error:
            raise EnvFault("reset", self.start + j, error) from error
        return obs

    def _note_dtype(self, j: int, obs: Any, where: str) -> None:
        """One dtype note per group (the parent warns once per pool anyway)."""
        if "dtype" not in self.noted:
            note = checks.dtype_note(
                obs, self.obs_space, self.view["obs"].dtype, self.start + j, where
            )
            if note is not None:
                self.noted.add("dtype")
                self.notes.append(("dtype", self.start + j, note))

    def close(self) -> None:
        for env in self.envs:
            _close_quietly(env)


# ---- the worker process ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs besides its pipe and semaphores."""

    make_env: Any
    call_style: str
    slot: int
    indices: range
    parent_pid: int
    cpu: int | None
    """Pin the process to this CPU (None: keep the inherited affinity)."""
    spin_seconds: float
    """Busy-wait this long for the next command after answering, before blocking."""
    from_main_thread: bool = True
    """Started by the parent's main thread: the worker may ask Linux to kill it with that
    thread (see `_die_with_parent`)."""


def worker_main(conn, command_sem, done_sem, config: WorkerConfig) -> None:
    """Entry point of a worker process: build envs, attach to the pool's memory, serve commands.

    Ignores SIGINT (a Ctrl+C reaches the whole process group; the parent decides what happens)
    and exits on its own when the parent dies: Linux kills it at once (`_die_with_parent`), or,
    for a worker started by another thread of the parent, a thread of its own notices within
    `PARENT_POLL_SECONDS`, even while an env hangs in a step (`_watch_parent`); it also checks
    the parent pid every second while idle.
    """
    if config.from_main_thread and not _die_with_parent(config.parent_pid):
        return
    if not config.from_main_thread:
        _watch_parent(config.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if config.cpu is not None:
        try:
            os.sched_setaffinity(0, {config.cpu})
        except (AttributeError, OSError):
            pass
    try:
        envs, masked = build_envs(config.make_env, config.indices, config.call_style)
    except EnvFault as fault:
        conn.send(("failed", _payload(fault)))
        return
    conn.send(("spaces", describe_envs(envs, masked)))
    try:
        message = conn.recv()
    except EOFError:
        message = ("exit",)
    if message[0] != "attach":
        for env in envs:
            _close_quietly(env)
        return
    _, shm_name, layout, action_offset = message
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=shm_name)
    arrays = layout.arrays(shm.buf)
    group = EnvGroup(envs, config.indices.start, arrays, config.slot, action_offset)
    conn.send(("ready",))
    try:
        _serve(conn, command_sem, done_sem, group, arrays, config)
    finally:
        group.close()
        del group, arrays
        shm.close()


def _die_with_parent(parent_pid: int) -> bool:
    """Ask Linux for SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); False if it
    already has. A no-op elsewhere.

    Why: the idle loop's parent check cannot run while an env is inside a long step, so a
    SIGKILLed trainer left such a worker running as an orphan until the step ended. Linux sends
    the signal when the parent *thread* that started the worker ends, so only workers started
    by the parent's main thread ask for it (a pool restarting a worker from a JAX callback
    thread keeps the idle check alone). The pid check closes the race of a parent that died
    before the ``prctl`` call: the worker then already has another parent.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG (linux/prctl.h)
        except (OSError, AttributeError):
            pass
    return os.getppid() == parent_pid


PARENT_POLL_SECONDS = 0.5


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent is gone, checked on a daemon thread: ``PR_SET_PDEATHSIG`` ties a
    worker to the parent *thread* that started it, so workers started from another thread (the
    evaluation pool, started beside compilation; a restart from XLA's callback thread) cannot
    use it, and the idle loop's check does not run while an env hangs in a step."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="fleetrl-parent-watch", daemon=True).start()


def _serve(conn, command_sem, done_sem, group: EnvGroup, arrays: dict, config) -> None:
    """Run commands until CLOSE or the parent is gone. Whatever a command raises is reported to
    the parent as a fault, with its traceback: the worker stays alive and idle, so that the
    parent can still ask it to close its envs."""
    slot, command, status = config.slot, arrays["command"], arrays["status"]
    spin = config.spin_seconds
    while True:
        idle_since = time.perf_counter()
        if not _acquire(command_sem.acquire, spin):
            if os.getppid() != config.parent_pid:
                return
            continue
        # adaptive: keep spinning only while the parent answers within the spin window
        spin = config.spin_seconds if time.perf_counter() - idle_since < config.spin_seconds else 0
        code = int(command[slot, 0])
        if code == CLOSE:
            return
        fault = None
        try:
            seeds = conn.recv() if code == RESET else None
        except (EOFError, OSError):  # the parent is gone
            return
        try:
            if code == STEP:
                group.step()
            elif code == RESET:
                group.reset(seeds)
        except EnvFault as error:
            fault = error
        except Exception as error:  # outside one env's calls (an output numpy cannot store)
            fault = EnvFault("reset" if code == RESET else "step", None, error)
        notes = group.notes
        if notes:
            group.notes = []
        status[slot, 0] = FAILED if fault else NOTED if notes else OK
        done_sem.release()
        try:
            if fault is not None:
                conn.send(_payload(fault))
            elif notes:
                conn.send(notes)
        except OSError:  # the parent is gone
            return


def _acquire(acquire, spin_seconds: float) -> bool:
    """Busy-wait up to ``spin_seconds`` for the semaphore, then block for up to 1 s."""
    if spin_seconds:
        end = time.perf_counter() + spin_seconds
        while time.perf_counter() < end:
            if acquire(False):
                return True
            # let a process woken on this core (the parent) run now, not at our slice's end
            os.sched_yield()
    return acquire(True, 1.0)


def _payload(fault: EnvFault) -> EnvFailure:
    """A picklable description of ``fault``; the original exception only if it pickles."""
    import pickle

    try:
        error = pickle.loads(pickle.dumps(fault.error))
    except Exception:
        error = None
    return fault.failure(error)
