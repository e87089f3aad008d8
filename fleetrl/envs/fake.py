"""`FaultyEnv`: a small gymnasium env with injectable faults, for pool tests and benchmarks.

Modelled on RLlib's ``CartPoleCrashing``: crashes (probabilistic or at step n) in ``step``,
``reset`` and the constructor, stalls, hard exits, NaN/Inf injection, restricted to some env
indices, with a fault counter kept in a file so that it survives worker restarts ("crash once,
then work"). ``burn_us`` spends that much CPU time per step, to stand in for a costly simulator.

Also `OldGymEnv`, an env in the pre-gymnasium API, to test that pools reject it, and
`MaskedEnv`, an env with action masks that raises on a masked action.
"""

from __future__ import annotations

import os
import random
import signal
import time
import types
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces


class InjectedFault(RuntimeError):
    """What `FaultyEnv` raises when told to crash."""


class FaultyEnv(gymnasium.Env):
    """A random walk seen through ``obs_size`` float32 coordinates; actions Discrete(2) (push
    left/right) or, with ``continuous``, Box(-1, 1, (1,)).

    Dynamics: ``position += 0.1 * push + noise``; terminated when ``|position| > 1``, truncated
    after ``max_episode_steps``; reward 1 per step; deterministic given the reset seed. A step
    costs ~2 us plus ``burn_us``.

    Faults fire only in envs whose ``env_index`` is in ``fault_envs`` (default: all) and, when
    ``counter_path`` is given, only while fewer than ``max_faults`` faults are recorded there
    (each fault appends one byte, so the count survives process restarts). Step and reset
    numbers count calls since construction, from 1 (so an env with step or reset faults opts out
    of the pool's startup probe, which would count). ``exit_how``: "exit" (``os._exit(3)``) or
    "sigkill"; only use these in worker processes. ``close_path``: ``close()`` appends the
    env index and a newline to that file (to see which envs were closed).

    Bad observations: ``reshape_at_step``/``reshape_at_reset`` return one of shape
    ``reshape_to`` at that step or reset; ``obs_dtype`` is the dtype the fault envs return
    (the space stays float32); ``obs_bound`` declares the Box as ``[-obs_bound, obs_bound]``
    (the walk stays within ``obs_size + 1``) and ``out_of_bounds_at_step`` returns twice the
    bound there. ``startup_probe``: True keeps the pool's startup probe although faults count
    calls (a reset fault at reset 1 then fires in the probe).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        env_index: int = 0,
        *,
        obs_size: int = 4,
        continuous: bool = False,
        max_episode_steps: int = 200,
        burn_us: float = 0.0,
        fault_envs: tuple[int, ...] | None = None,
        counter_path: str | None = None,
        max_faults: int | None = None,
        crash_in_init: bool = False,
        init_delay: float = 0.0,
        crash_at_step: int | None = None,
        crash_at_reset: int | None = None,
        crash_step_prob: float = 0.0,
        crash_reset_prob: float = 0.0,
        stall_at_step: int | None = None,
        stall_seconds: float = 0.0,
        exit_at_step: int | None = None,
        exit_how: str = "exit",
        nonfinite_at_step: int | None = None,
        nonfinite_in: str = "obs",
        nonfinite_value: float = float("nan"),
        both_flags_at_step: int | None = None,
        close_path: str | None = None,
        reshape_at_step: int | None = None,
        reshape_at_reset: int | None = None,
        reshape_to: tuple[int, ...] = (3,),
        obs_dtype: str = "float32",
        obs_bound: float | None = None,
        out_of_bounds_at_step: int | None = None,
        startup_probe: bool | None = None,
    ):
        faults = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.faults = types.SimpleNamespace(**faults)
        self.env_index = env_index
        self.continuous = continuous
        self.max_episode_steps = max_episode_steps
        self.burn_ns = int(burn_us * 1000)
        at_step = (crash_at_step, stall_at_step, exit_at_step, nonfinite_at_step)
        at_step += (both_flags_at_step, reshape_at_step, out_of_bounds_at_step)
        self.step_faults = any(x is not None for x in at_step) or bool(crash_step_prob)
        self.obs_dtype = np.dtype(obs_dtype) if self._in_fault_envs() else np.dtype(np.float32)
        self.cast = self.obs_dtype != np.float32
        reset_faults = crash_at_reset is not None or reshape_at_reset is not None
        reset_faults = reset_faults or bool(crash_reset_prob)
        if startup_probe is False or (startup_probe is None and (self.step_faults or reset_faults)):
            # the faults count calls from construction: no startup probe (checks.probe_env)
            self.metadata = {**self.metadata, "fleetrl_startup_probe": False}
        self._make_spaces(obs_size, obs_bound, continuous)
        self.num_steps = self.num_resets = self.episode_steps = 0
        self.position = 0.0
        self.noise = random.Random(env_index)
        self.fault_rng = random.Random(env_index)
        if init_delay and self._fault():
            time.sleep(init_delay)
        if crash_in_init and self._fault():
            raise InjectedFault(f"injected crash in the constructor of env {env_index}")

    def _make_spaces(self, obs_size: int, obs_bound: float | None, continuous: bool) -> None:
        bound = np.inf if obs_bound is None else obs_bound
        self.observation_space = spaces.Box(-bound, bound, (obs_size,), np.float32)
        if continuous:
            self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        else:
            self.action_space = spaces.Discrete(2)
        self.scale = np.arange(1, obs_size + 1, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        f = self.faults
        self.num_resets += 1
        if (f.crash_at_reset == self.num_resets and self._fault()) or (
            f.crash_reset_prob and self.fault_rng.random() < f.crash_reset_prob and self._fault()
        ):
            raise InjectedFault(
                f"injected crash in reset {self.num_resets} of env {self.env_index}"
            )
        self.noise = random.Random(int(self.np_random.integers(2**62)))
        self.position = self.noise.uniform(-0.05, 0.05)
        self.episode_steps = 0
        obs = self.scale * np.float32(self.position)
        if self.cast:
            obs = obs.astype(self.obs_dtype)
        if f.reshape_at_reset == self.num_resets and self._fault():
            obs = np.resize(obs, f.reshape_to)
        return obs, {}

    def step(self, action: Any):
        self.num_steps += 1
        self.episode_steps += 1
        if self.burn_ns:
            _burn(self.burn_ns)
        if self.continuous:
            push = float(np.asarray(action).reshape(-1)[0])
        else:
            push = 2.0 * action - 1.0
        self.position += 0.1 * push + self.noise.gauss(0.0, 0.05)
        obs = self.scale * np.float32(self.position)
        if self.cast:
            obs = obs.astype(self.obs_dtype)
        terminated = abs(self.position) > 1.0
        truncated = self.episode_steps >= self.max_episode_steps
        if not self.step_faults:
            return obs, 1.0, terminated, truncated, {}
        return self._step_with_faults(obs, terminated, truncated)

    def _step_with_faults(self, obs, terminated, truncated):
        f, n, reward = self.faults, self.num_steps, 1.0
        if f.stall_at_step == n and self._fault():
            time.sleep(f.stall_seconds)
        if f.exit_at_step == n and self._fault():
            if f.exit_how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(3)
        if (f.crash_at_step == n and self._fault()) or (
            f.crash_step_prob and self.fault_rng.random() < f.crash_step_prob and self._fault()
        ):
            raise InjectedFault(f"injected crash in step {n} of env {self.env_index}")
        if f.nonfinite_at_step == n and self._fault():
            if f.nonfinite_in == "obs":
                obs[0] = f.nonfinite_value
            else:
                reward = f.nonfinite_value
        if f.both_flags_at_step == n:
            terminated = truncated = True
        if f.reshape_at_step == n and self._fault():
            obs = np.resize(obs, f.reshape_to)
        if f.out_of_bounds_at_step == n and self._fault():
            obs[0] = 2 * f.obs_bound
        return obs, reward, terminated, truncated, {}

    def close(self) -> None:
        if self.faults.close_path is not None:
            with open(self.faults.close_path, "a") as closed:
                closed.write(f"{self.env_index}\n")

    def _in_fault_envs(self) -> bool:
        return self.faults.fault_envs is None or self.env_index in self.faults.fault_envs

    def _fault(self) -> bool:
        """Whether a fault may fire here now; records it in the counter file if so."""
        f = self.faults
        if not self._in_fault_envs():
            return False
        if f.counter_path is None:
            return True
        if f.max_faults is not None and fault_count(f.counter_path) >= f.max_faults:
            return False
        with open(f.counter_path, "ab") as counter:
            counter.write(b"x")
        return True


def fault_count(path: str) -> int:
    """Faults recorded in ``path`` by `FaultyEnv` (in any process)."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _burn(nanoseconds: int) -> None:
    """Spend ``nanoseconds`` of this thread's CPU time (not wall time: a preempted worker does
    not get the time for free)."""
    end = time.thread_time_ns() + nanoseconds
    while time.thread_time_ns() < end:
        pass


class OldGymEnv:
    """The gym <= 0.25 API: ``reset()`` without a seed returning the obs alone, 4-tuple steps.

    ``new_reset``: a half-ported env, whose reset is gymnasium's (``seed``, ``(obs, info)``) but
    whose step still returns 4 values: only stepping it tells.
    """

    def __init__(self, env_index: int = 0, new_reset: bool = False):
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        if new_reset:
            self.reset = self._new_reset

    def reset(self):
        return np.zeros(2, np.float32)

    def _new_reset(self, *, seed: int | None = None, options: dict | None = None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 1.0, False, {}

    def close(self):
        pass


class MaskedActionError(RuntimeError):
    """What `MaskedEnv` raises when stepped with an action its mask forbids."""


class MaskedEnv(gymnasium.Env):
    """Discrete(``num_actions``) actions, a random legal-action mask each step (at least one
    action legal) in ``info["action_mask"]`` (int8, as gymnasium's Taxi), or with ``dict_obs``
    in a Dict observation ``{"observation", "action_mask"}`` (PettingZoo's convention).

    A masked action raises `MaskedActionError` (so a run that finishes took none); a legal one
    pays 1. The observation is the mask as float32; episodes are truncated after
    ``episode_length`` steps. ``empty_mask_at_step``: the mask after the env's step of that
    number (counted from construction, from 1, the pool's startup probe included) allows
    nothing. ``startup_probe=False`` opts out of the pool's probe
    and declares the mask in ``metadata`` instead (`fleetrl.envs.adapt.DECLARE_KEY`).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        env_index: int = 0,
        *,
        num_actions: int = 4,
        episode_length: int = 10,
        dict_obs: bool = False,
        empty_mask_at_step: int | None = None,
        startup_probe: bool = True,
    ):
        self.env_index = env_index
        self.episode_length = episode_length
        self.dict_obs = dict_obs
        self.empty_mask_at_step = empty_mask_at_step
        self.action_space = spaces.Discrete(num_actions)
        observation = spaces.Box(0.0, 1.0, (num_actions,), np.float32)
        if dict_obs:
            mask_space = spaces.Box(0, 1, (num_actions,), np.int8)
            observation = spaces.Dict({"observation": observation, "action_mask": mask_space})
        self.observation_space = observation
        if not startup_probe:
            self.metadata = {**self.metadata, "fleetrl_startup_probe": False}
            self.metadata["fleetrl_action_mask"] = True
        self.mask = np.ones(num_actions, np.int8)
        self.num_steps = self.episode_steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.episode_steps = 0
        return self._output()

    def step(self, action: Any):
        if not self.mask[action]:
            raise MaskedActionError(
                f"env {self.env_index}: action {action} is masked (mask {self.mask.tolist()}) "
                f"at step {self.episode_steps + 1} of its episode"
            )
        self.num_steps += 1
        self.episode_steps += 1
        obs, info = self._output()
        truncated = self.episode_steps >= self.episode_length
        return obs, 1.0, False, truncated, info

    def _output(self) -> tuple[Any, dict]:
        """The next observation and info, with a fresh mask."""
        n = self.action_space.n
        mask = self.np_random.integers(0, 2, n).astype(np.int8)
        mask[self.np_random.integers(n)] = 1
        if self.num_steps == self.empty_mask_at_step:
            mask[:] = 0
        self.mask = mask
        obs = mask.astype(np.float32)
        if self.dict_obs:
            return {"observation": obs, "action_mask": mask.copy()}, {}
        return obs, {"action_mask": mask.copy()}
