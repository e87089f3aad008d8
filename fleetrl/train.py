"""The driver: builds a run's envs, algorithm and programs, restores or starts its state, and
hands them to the training loop (`fleetrl.loop`).

One compiled call = ``run.iterations_per_call`` iterations of (``simulate`` T steps, ``learn``)
for every seed (``vmap``; `fleetrl.programs`). Python only logs, evaluates and checkpoints
between calls.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from fleetrl import checkpoint, envs
from fleetrl.algos import get_algorithm
from fleetrl.algos.guard import upgrade_checkpoint
from fleetrl.config import ConfigError, RunConfig, load_preset, to_dict
from fleetrl.logger import RunLogger
from fleetrl.loop import Loop, TrainResult, host_metrics, solved_returns
from fleetrl.programs import Carry, compile_run, seed_keys, wait_compiled
from fleetrl.rundir import RunLock, new_run_dir, write_config_and_metadata


def build(run: RunConfig):
    """The training env, evaluation env and algorithm of ``run``; checks the env fits the algo."""
    module = get_algorithm(run.algorithm)
    if envs.resolve_backend(run.env) == "gymnasium" and run.train.num_seeds > 1:
        raise ConfigError(
            f"train.num_seeds: {run.train.num_seeds} seeds need a device (gymnax) env; a host "
            "(gymnasium) env trains one seed per run. Start one run per seed instead."
        )
    env = envs.make(run.env)
    try:
        module.check_spec(env.spec)
        # host envs: evaluation steps its few envs in this process
        eval_env = envs.make(run.env, num_envs=run.train.eval_episodes, num_workers=0)
    except BaseException:
        close_envs(env)
        raise
    return env, eval_env, module.make(run, env.spec)


def close_envs(*envs_) -> None:
    """Close host envs (their worker processes and shared memory); device envs need nothing."""
    for env in envs_:
        if hasattr(env, "close"):
            env.close()


RESUME_MAY_CHANGE = (
    "train.total_steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_episodes",
    "train.eval_max_steps",
    "train.checkpoint_every",
    "train.stop_at_return",
    "train.xla_threads",
    "train.call_timeout",
    "train.stop_grace",
    "env.step_timeout",
    "env.max_restarts",
    "env.on_error",
    "log.",
)
"""What a resumed run may change without ``allow_config_changes``: its length, its cadence of
logging, evaluation and checkpoints, and its handling of faults; never what it learns or from
what."""


def resume_changes(saved: RunConfig, run: RunConfig) -> list[str]:
    """``"key: old -> new"`` for each setting ``run`` changes from ``saved`` that a resume may
    not change silently (see `RESUME_MAY_CHANGE`)."""

    def flat(config: RunConfig) -> dict[str, Any]:
        data = to_dict(config)
        return {
            f"{section}.{key}": value
            for section in ("env", "train", "algo", "log")
            for key, value in data[section].items()
        } | {"algorithm": data["algorithm"]}

    old, new = flat(saved), flat(run)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and not key.startswith(RESUME_MAY_CHANGE)
    ]


def train(
    run: RunConfig,
    *,
    resume: str | Path | None = None,
    allow_config_changes: bool = False,
    resume_may_start: bool = False,
    stop_after_steps: int | None = None,
    command: list[str] | None = None,
    console=None,
) -> TrainResult:
    """Train ``run``; with ``resume``, continue the run in that directory from its last checkpoint.

    A resumed run may change only its length and cadences (`RESUME_MAY_CHANGE`) unless
    ``allow_config_changes``. ``resume_may_start``: a run directory without a committed
    checkpoint starts over at step 0 instead of failing (``--resume auto``).
    ``stop_after_steps``: checkpoint and return once that many env steps are done (for tests
    and schedulers). ``console``: a rich Console for the progress bar and messages (None:
    quiet).
    """
    started = time.time()
    run = envs.with_resolved_backend(run)  # a preset's "auto" runs, and is saved, as resolved
    if resume and not allow_config_changes:
        saved_path = Path(resume) / "config.yaml"
        saved = load_preset(str(saved_path)) if saved_path.is_file() else None
        changes = resume_changes(envs.with_resolved_backend(saved), run) if saved else []
        if changes:
            raise ConfigError(
                f"--resume {resume}: the run was trained with other settings; resuming would "
                "change " + "; ".join(changes) + ". Pass --allow-config-changes to resume "
                "with them anyway (the run then no longer replays as one configuration)."
            )
    env, eval_env, algo = build(run)  # bad input fails here, before a run directory exists
    try:
        run_dir = Path(resume) if resume else new_run_dir(run)
        lock = RunLock(run_dir)
        try:
            compile_start = time.time()
            init, *programs = compile_run(run, env, eval_env, algo)
            (init,) = wait_compiled([init], run_dir, run.train.call_timeout)
            carry, counters = _start(run, run_dir, env, init, resume, resume_may_start)
            write_config_and_metadata(run_dir, run, command or [])
            logger = RunLogger(  # while the programs compile
                run_dir,
                run.train.num_seeds,
                run.log.tensorboard,
                counters["env_steps"] if resume else None,
            )
            programs = wait_compiled(programs, run_dir, run.train.call_timeout)
            compile_time = time.time() - compile_start
            loop = Loop(run, run_dir, (env, eval_env, algo), programs, carry, counters, logger)
            status = loop.run_schedule(console, stop_after_steps)
            return loop.result(status, compile_time, started)
        finally:
            lock.release()
    finally:
        close_envs(env, eval_env)


def _start(
    run: RunConfig, run_dir: Path, env, init, resume, may_start: bool = False
) -> tuple[Carry, dict[str, Any]]:
    """The first carry and counters: fresh, or restored from the last checkpoint that loads
    (verified and loaded before anything in the run directory is rewritten; newer damaged
    ones are set aside, with a warning)."""
    carry = init(seed_keys(run))
    host_metrics(env)
    num_seeds, threshold = run.train.num_seeds, run.train.stop_at_return
    counters = {
        "iteration": 0,
        "env_steps": 0,
        "next_eval": run.train.eval_every,
        "next_checkpoint": run.train.checkpoint_every,
        "solved_returns": solved_returns(None, num_seeds, threshold),
    }
    if not resume:
        return carry, counters
    checkpoint.clean_stale(run_dir)
    candidates = checkpoint.committed(run_dir)
    if not candidates:
        if may_start:  # records of the attempt that never checkpointed are dropped (step 0)
            return carry, counters
        raise ConfigError(f"--resume: {run_dir} has no committed checkpoint to resume from")
    damaged: list[tuple[Path, checkpoint.CheckpointError]] = []
    for path in candidates:  # newest first; a damaged one falls back to the one before
        try:
            restored, meta = checkpoint.load(path, {"carry": carry}, upgrade_checkpoint)
            break
        except checkpoint.CheckpointDamagedError as error:  # not: a newer format, other shapes
            damaged.append((path, error))
    else:
        raise damaged[0][1]  # none loads: report the newest
    for path, error in damaged:
        aside = checkpoint.set_aside(path)
        print(
            f"fleetrl: warning: {error}; set aside as {aside.name}; resuming from "
            f"{candidates[len(damaged)].name}",
            file=sys.stderr,
        )
    fresh_env, carry = carry.env, restored["carry"]
    if hasattr(env, "raise_if_failed"):  # host envs start new episodes on resume
        carry = carry._replace(env=fresh_env._replace(key=carry.env.key))
    counters = meta["counters"]
    saved = counters.get("solved_returns")  # absent before fleetrl froze solved seeds
    counters["solved_returns"] = solved_returns(saved, num_seeds, threshold)
    return carry, counters
