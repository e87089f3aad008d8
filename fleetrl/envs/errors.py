"""Errors raised by `fleetrl.envs.pool.EnvPool`; all derive from `EnvPoolError`.

Each error names where it happened (env index, worker index, pool step) and, for a failure
inside a worker process, carries the worker's formatted traceback in its message: a parent that
only saw `EOFError` (SB3's SubprocVecEnv) or a re-raised message without the stack
(gymnasium's AsyncVectorEnv) cannot tell which env failed or why.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import NamedTuple


class EnvPoolError(RuntimeError):
    """Base class of every error an `EnvPool` raises about its envs or workers."""


class EnvConstructionError(EnvPoolError):
    """An env's constructor (or the pool's startup checks of it) failed."""

    def __init__(self, message: str, env_index: int | None = None):
        super().__init__(message)
        self.env_index = env_index

    def __reduce__(self):  # the subclasses' constructors differ from (message,): pickle them
        return (type(self), (str(self), self.env_index))


class UnsupportedEnvError(EnvConstructionError):
    """The pool cannot run this env as it is: the old gym API, a space it cannot batch, spaces
    that differ across envs. A usage problem, found at startup; the message says what to do and
    carries no traceback (it would only show fleetrl's own check).

    The subclasses keep the builtin class these checks raised before (``TypeError``,
    ``NotImplementedError``, ``ValueError``), so that code catching those still does.
    """


class OldGymApiError(UnsupportedEnvError, TypeError):
    """The env follows the pre-gymnasium API (no ``reset(seed=...)``, 4-tuple ``step``)."""


class UnsupportedSpaceError(UnsupportedEnvError, NotImplementedError):
    """An observation or action space the pool cannot batch (Tuple, Dict, MultiDiscrete...)."""


class MismatchedSpacesError(UnsupportedEnvError, ValueError):
    """The envs of one pool do not all have the same spaces."""


class MissingDependencyError(UnsupportedEnvError, ImportError):
    """An env's constructor needs a package that is not installed (Box2D, mujoco, ale-py...)."""


# what installs the packages gymnasium's env families import, as fleetrl extras
_EXTRAS = {"box2d": "box2d", "mujoco": "mujoco", "ale_py": "atari", "ale-py": "atari"}


def _missing_dependency(cause: BaseException | None, index: int, label: str, summary: str):
    """A `MissingDependencyError` when ``cause`` says a package is missing, else None."""
    missing = type(cause).__name__ == "DependencyNotInstalled" or isinstance(
        cause, ModuleNotFoundError
    )
    if not missing:
        return None
    text = str(cause).lower()
    extras = [extra for name, extra in _EXTRAS.items() if name in text]
    hint = f'pip install "fleetrl[{extras[0]}]"' if extras else "install the package it names"
    return MissingDependencyError(
        f"env {index} ({label}) needs a package that is not installed: {summary}. Fix: {hint}",
        index,
    )


class EnvResetError(EnvPoolError):
    """An env raised in ``reset``."""

    def __init__(self, message: str, env_index: int | None = None, step: int = 0):
        super().__init__(message)
        self.env_index = env_index
        self.step = step

    def __reduce__(self):
        return (type(self), (str(self), self.env_index, self.step))


class EnvStepError(EnvPoolError):
    """An env raised in ``step``, or returned a non-finite observation or reward."""

    def __init__(self, message: str, env_index: int | None = None, step: int = 0, action=None):
        super().__init__(message)
        self.env_index = env_index
        self.step = step
        self.action = action

    def __reduce__(self):
        return (type(self), (str(self), self.env_index, self.step, self.action))


class WorkerDiedError(EnvPoolError):
    """A worker process exited without being asked to (SIGKILL, ``os._exit``, OOM killer)."""

    def __init__(self, worker_index: int, env_indices: range, exitcode: int | None, phase: str):
        super().__init__(
            f"worker {worker_index} (envs {_span(env_indices)}) died during {phase}: "
            f"{describe_exitcode(exitcode)}"
        )
        self.worker_index = worker_index
        self.env_indices = env_indices
        self.exitcode = exitcode
        self.phase = phase

    def __reduce__(self):
        args = (self.worker_index, self.env_indices, self.exitcode, self.phase)
        return (type(self), args)


class EnvTimeoutError(EnvPoolError, TimeoutError):
    """Workers did not answer within the pool's ``step_timeout`` or ``start_timeout``."""

    def __init__(self, worker_indices: list[int], env_indices: list[int], seconds: float, phase):
        what = "worker" if len(worker_indices) == 1 else "workers"
        verb = "did not start" if phase == "start" else f"did not finish {phase}"
        super().__init__(
            f"{what} {', '.join(map(str, worker_indices))} (envs {_join(env_indices)}) {verb} "
            f"within {seconds:g} s; killed. Raise the pool's "
            f"{'start_timeout' if phase == 'start' else 'step_timeout'} if the env is just slow."
        )
        self.worker_indices = worker_indices
        self.env_indices = env_indices
        self.seconds = seconds
        self.phase = phase

    def __reduce__(self):
        args = (self.worker_indices, self.env_indices, self.seconds, self.phase)
        return (type(self), args)


# ---- from what a worker reported to the error the caller sees -------------------------------


class Fault(NamedTuple):
    """What went wrong in one worker. ``kind``: "env" (an env raised; ``payload`` is ``(phase,
    env_index, traceback_text, exception or None)``), "nonfinite" (``payload`` is ``(env_index,
    what)``), "died" or "timeout"."""

    kind: str
    slot: int
    payload: tuple | None = None
    exitcode: int | None = None


@dataclass(frozen=True)
class FaultContext:
    """What a pool knows that its error messages need."""

    label: str
    groups: list[range]
    local_slots: set[int]
    """Slots stepped in the parent process."""
    step_timeout: float
    start_timeout: float


def error_of(fault: Fault, phase: str, context: FaultContext, step: int, actions) -> EnvPoolError:
    """The exception for ``fault``, which happened during pool ``phase`` ("startup", "reset",
    "step 12", ...) at pool step ``step``; ``actions`` is the pool's action buffer."""
    indices = context.groups[fault.slot]
    if fault.kind == "died":
        return WorkerDiedError(fault.slot, indices, fault.exitcode, phase)
    if fault.kind == "timeout":
        return _timeout([fault], phase, context)
    index = fault.payload[0] if fault.kind == "nonfinite" else fault.payload[1]
    action = None if actions is None else actions[index].tolist()
    if fault.kind == "nonfinite":
        return EnvStepError(
            f"env {index} returned a non-finite {fault.payload[1]} at pool {phase} (last action "
            f"{action!r}); the env's state is probably corrupt (check_finite=False lets it "
            "through)",
            index,
            step,
            action,
        )
    env_phase, index, text, cause = fault.payload
    if isinstance(cause, UnsupportedEnvError):
        return cause
    where = "in-process" if fault.slot in context.local_slots else f"in worker {fault.slot}"
    summary = text.strip().splitlines()[-1] if text.strip() else "?"
    if env_phase == "construct":
        missing = _missing_dependency(cause, index, context.label, summary)
        if missing is not None:
            return missing
        error = EnvConstructionError(
            f"env {index} ({context.label}) failed to construct {where}: {summary}\n\n{text}",
            index,
        )
    elif env_phase == "reset":
        error = EnvResetError(
            f"env {index} raised in reset {where} during pool {phase}: {summary}\n\n{text}",
            index,
            step,
        )
    else:
        error = EnvStepError(
            f"env {index} raised in step {where} at pool {phase} with action {action!r}: "
            f"{summary}\n\n{text}",
            index,
            step,
            action,
        )
    error.__cause__ = cause
    return error


def first_error(faults: list[Fault], phase: str, context: FaultContext, step: int, actions):
    """The most telling error of ``faults`` (env errors, then deaths, then timeouts, these
    merged into one), or None."""
    if not faults:
        return None
    order = {"env": 0, "nonfinite": 1, "died": 2, "timeout": 3}
    first = min(faults, key=lambda f: (order[f.kind], f.slot))
    if first.kind == "timeout":
        return _timeout([f for f in faults if f.kind == "timeout"], phase, context)
    return error_of(first, phase, context, step, actions)


def _timeout(faults: list[Fault], phase: str, context: FaultContext) -> EnvTimeoutError:
    slots = sorted(f.slot for f in faults)
    envs = [i for slot in slots for i in context.groups[slot]]
    if phase == "startup":
        return EnvTimeoutError(slots, envs, context.start_timeout, "start")
    return EnvTimeoutError(slots, envs, context.step_timeout, phase)


def describe_exitcode(exitcode: int | None) -> str:
    """``-9`` -> ``'killed by signal SIGKILL'``, ``3`` -> ``'exit code 3'``."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _span(indices: range) -> str:
    return f"{indices.start}-{indices.stop - 1}" if len(indices) > 1 else str(indices.start)


def _join(indices: list[int]) -> str:
    return ", ".join(map(str, indices))
