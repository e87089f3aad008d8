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
    """An env raised in ``step``, or returned a non-finite observation or reward, or an action
    mask with no legal action."""

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
    """Workers did not answer within the pool's ``step_timeout`` or ``start_timeout``; or, with
    ``in_process``, an env's constructor in this process did not return within
    ``start_timeout`` (``phase`` "start")."""

    def __init__(
        self,
        worker_indices: list[int],
        env_indices: list[int],
        seconds: float,
        phase: str,
        in_process: bool = False,
    ):
        # name the CLI field too: `fleetrl train` users never see the pool's arguments
        knob = "start" if phase == "start" else "step"
        advice = (
            f"Raise the pool's {knob}_timeout (--env.{knob}-timeout from the command line) if "
            "the env is just slow."
        )
        if in_process:
            message = (
                f"env {_join(env_indices)} did not finish its constructor in-process within "
                f"{seconds:g} s; interrupted. {advice}"
            )
        else:
            what = "worker" if len(worker_indices) == 1 else "workers"
            verb = "did not start" if phase == "start" else f"did not finish {phase}"
            message = (
                f"{what} {_join(worker_indices)} (envs {_join(env_indices)}) {verb} within "
                f"{seconds:g} s; killed. {advice}"
            )
        super().__init__(message)
        self.worker_indices = worker_indices
        self.env_indices = env_indices
        self.seconds = seconds
        self.phase = phase
        self.in_process = in_process

    def __reduce__(self):
        args = (self.worker_indices, self.env_indices, self.seconds, self.phase, self.in_process)
        return (type(self), args)


class EnvInterruptedError(EnvPoolError):
    """The pool's ``should_stop`` returned True while it waited for workers (a trainer that
    got SIGINT/SIGTERM); the pool can only be closed afterwards."""

    def __init__(self, worker_indices: list[int], env_indices: list[int], phase: str, step: int):
        what = "worker" if len(worker_indices) == 1 else "workers"
        where = f"pool {phase}"
        if not phase.startswith("step") and phase != "startup":  # "reset after a restart"
            where += f" at pool step {step}"
        super().__init__(
            f"interrupted while waiting for {what} {_join(worker_indices)} (envs "
            f"{_join(env_indices)}) during {where}: should_stop() returned True"
        )
        self.worker_indices = worker_indices
        self.env_indices = env_indices
        self.phase = phase
        self.step = step

    def __reduce__(self):
        return (type(self), (self.worker_indices, self.env_indices, self.phase, self.step))


class ObservationShapeError(ValueError):
    """An env returned an observation whose shape is not its space's (the cause of an
    `EnvStepError` or `EnvResetError`, or of a startup failure)."""


class EnvPoolWarning(UserWarning):
    """Something an `EnvPool` lets through but you should know about (an observation of another
    dtype than its space's, or outside its bounds); each kind is warned once per pool."""


# ---- from what a worker reported to the error the caller sees -------------------------------


class EnvFailure(NamedTuple):
    """What a worker reports about an env that raised (the payload of a `Fault` of kind "env")."""

    phase: str
    """"construct", "probe reset", "probe step" (the startup check), "reset" or "step"."""
    env_index: int | None
    """None: the worker could not tell which of its envs (a failure outside an env's call)."""
    summary: str
    """``type: message`` of the exception itself (its traceback's last line may be a note)."""
    traceback_text: str
    error: BaseException | None
    """The exception, if it pickled."""
    note: str = ""
    """A line for the message after the summary (how to opt out of the startup check)."""


def summarize(error: BaseException) -> str:
    """``'ValueError: bad seed'``: one line naming the exception, for the first line of ours."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class Fault(NamedTuple):
    """What went wrong in one worker. ``kind``: "env" (an env raised; ``payload`` is an
    `EnvFailure`), "nonfinite" (``payload`` is ``(env_index, what)``), "no_legal_action"
    (``payload`` is ``(env_index,)``), "died", "timeout"
    (``payload``, for a constructor interrupted in-process: ``(env_index,)``) or "interrupted"
    (``should_stop`` said so while the pool waited for this worker)."""

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
    if fault.kind == "interrupted":
        return _interrupted([fault], phase, context, step)
    if fault.kind == "nonfinite":
        index, what = fault.payload
        action = None if actions is None else actions[index].tolist()
        return EnvStepError(
            f"env {index} returned a non-finite {what} at pool {phase} (last action "
            f"{action!r}); the env's state is probably corrupt (check_finite=False "
            "(--env.check-finite False) lets it through)",
            index,
            step,
            action,
        )
    if fault.kind == "no_legal_action":
        (index,) = fault.payload
        action = None if actions is None else actions[index].tolist()
        return EnvStepError(
            f"env {index} returned an action mask with no legal action at pool {phase} (last "
            f"action {action!r}): every observation must leave at least one action legal",
            index,
            step,
            action,
        )
    return _env_error(fault, phase, context, step, actions)


def _env_error(fault: Fault, phase: str, context: FaultContext, step: int, actions):
    """The error for an env that raised: the exception's own summary on the first line (what
    the CLI shows), then the note, then the worker's traceback."""
    failure: EnvFailure = fault.payload
    index, cause = failure.env_index, failure.error
    if isinstance(cause, UnsupportedEnvError):
        return cause
    where = "in-process" if fault.slot in context.local_slots else f"in worker {fault.slot}"
    who = (
        f"env {index}" if index is not None else f"one of envs {_span(context.groups[fault.slot])}"
    )
    startup = failure.phase in ("construct", "probe reset", "probe step")
    # fleetrl's own shape check: its message says it all, its traceback only shows fleetrl
    shape_error = isinstance(cause, ObservationShapeError) and not startup
    if failure.phase == "construct":
        missing = _missing_dependency(cause, index, context.label, failure.summary)
        if missing is not None:
            return missing
        head = f"{who} ({context.label}) failed to construct {where}"
    elif startup:
        call = failure.phase.split()[1]
        head = f"{who} ({context.label}) raised in its startup check ({call}) {where}"
    elif shape_error:
        head = f"{who} returned an observation of the wrong shape in {failure.phase} {where}"
    else:
        head = f"{who} raised in {failure.phase} {where}"
    if failure.phase == "reset":
        head += f" during pool {phase}"
    elif not startup:
        action = None if actions is None or index is None else actions[index].tolist()
        head += f" at pool {phase} with action {action!r}"
    detail = str(cause) if shape_error else failure.summary
    text = "" if shape_error else failure.traceback_text
    message = f"{head}: {detail}" + (f"\n{failure.note}" if failure.note else "")
    message += f"\n\n{text}" if text else ""
    if startup:
        error = EnvConstructionError(message, index)
    elif failure.phase == "reset":
        error = EnvResetError(message, index, step)
    else:
        error = EnvStepError(message, index, step, action)
    error.__cause__ = cause
    return error


def with_first_line(error: EnvPoolError, text: str) -> EnvPoolError:
    """``error`` with ``text`` put before its message: in the message itself, which is all the
    CLI prints (a note added with ``add_note`` would only show in a traceback)."""
    error.args = (f"{text}{error.args[0] if error.args else ''}", *error.args[1:])
    return error


def first_error(faults: list[Fault], phase: str, context: FaultContext, step: int, actions):
    """The most telling error of ``faults`` (an interruption, then env errors, then deaths,
    then timeouts; interruptions and timeouts each merged into one), or None."""
    if not faults:
        return None
    order = {
        "interrupted": 0,
        "env": 1,
        "nonfinite": 2,
        "no_legal_action": 2,
        "died": 3,
        "timeout": 4,
    }
    first = min(faults, key=lambda f: (order[f.kind], f.slot))
    if first.kind == "timeout":
        return _timeout([f for f in faults if f.kind == "timeout"], phase, context)
    if first.kind == "interrupted":
        return _interrupted([f for f in faults if f.kind == "interrupted"], phase, context, step)
    return error_of(first, phase, context, step, actions)


def _timeout(faults: list[Fault], phase: str, context: FaultContext) -> EnvTimeoutError:
    slots = sorted(f.slot for f in faults)
    if len(faults) == 1 and faults[0].payload:  # a constructor interrupted in-process
        return EnvTimeoutError(slots, list(faults[0].payload), context.start_timeout, "start", True)
    envs = [i for slot in slots for i in context.groups[slot]]
    if phase == "startup":
        return EnvTimeoutError(slots, envs, context.start_timeout, "start")
    return EnvTimeoutError(slots, envs, context.step_timeout, phase)


def _interrupted(faults: list[Fault], phase: str, context: FaultContext, step: int):
    slots = sorted(f.slot for f in faults)
    envs = [i for slot in slots for i in context.groups[slot]]
    return EnvInterruptedError(slots, envs, phase, step)


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
