"""The driver: builds a run's envs, algorithm and programs, restores or starts its state, and
hands them to the training loop (`fleetrl.loop`).

One compiled call = ``run.iterations_per_call`` iterations of (``simulate`` T steps, ``learn``)
for every seed (``vmap``; `fleetrl.programs`). Python only logs, evaluates and checkpoints
between calls.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from pathlib import Path
from typing import Any

from fleetrl import checkpoint, envs, rundir
from fleetrl.build import build, close_envs, host_metrics
from fleetrl.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    load_preset,
    not_learned,
    to_dict,
)
from fleetrl.logger import RunLogger
from fleetrl.loop import Loop, TrainResult, solved_returns
from fleetrl.programs import Carry, compile_run, seed_keys, wait_compiled
from fleetrl.restore import load_checkpoint
from fleetrl.rundir import RunLock, new_run_dir, write_config_and_metadata

RESUME_MAY_CHANGE = not_learned("length", "cadence", "runtime")
"""What a resumed run may change without ``allow_config_changes``: its length, its cadence of
logging, evaluation and checkpoints, and its handling of faults; never what it learns or from
what."""


def resume_changes(saved: RunConfig, run: RunConfig) -> list[str]:
    """``"key: old -> new"`` for each setting ``run`` changes from ``saved`` that a resume may
    not change silently (see `RESUME_MAY_CHANGE`)."""

    def flat(config: RunConfig) -> dict[str, Any]:
        data = to_dict(config) | {"dist": dataclasses.asdict(config.dist)}  # written or not
        return {
            f"{section}.{key}": value
            for section in ("env", "train", "algo", "log", "dist")
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
    if resume:
        run = _check_resume(run, Path(resume), allow_config_changes)
    run = with_seed(run, console)
    if run.dist.mode != "single":  # Ray actors step the envs (`fleetrl.distributed`)
        from fleetrl.distributed import driver

        build_run, compile_programs = driver.build, driver.compile_run
    else:
        build_run, compile_programs = build, compile_run
    env, eval_env, algo = build_run(run)  # bad input fails here, before a run directory exists
    try:
        run_dir = Path(resume) if resume else new_run_dir(run)
        check_writable(run_dir / "checkpoints", "checkpoints")
        lock = RunLock(run_dir)
        try:
            compile_start = time.time()
            init, *programs = compile_programs(run, env, eval_env, algo)
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


def with_seed(run: RunConfig, console=None) -> RunConfig:
    """``run`` with ``train.seed`` drawn at random when it has none, said on the console: the
    run records it in config.yaml and replays with it (reliability case I14; before, every
    seedless run was seed 0, and two of them were the same run)."""
    if run.train.seed is not None:
        return run
    seed = secrets.randbelow(2**31)
    said = f"train.seed {seed} (drawn; --train.seed {seed} repeats the run)"
    if console is not None:
        console.print(said)
    else:
        print(said)
    return dataclasses.replace(run, train=dataclasses.replace(run.train, seed=seed))


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` and write a file in it, so that a folder that cannot take a checkpoint
    is a usage error now, not a warning after hours of training (reliability case C6)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        rundir.check_writable(folder)
    except OSError as error:
        raise ConfigError(f"{what}: cannot write in {folder}: {error}") from None


def _check_resume(run: RunConfig, run_dir: Path, allow_changes: bool) -> RunConfig:
    """``run`` as the resumed run trains it: an unset seed is the saved one. Unless
    ``allow_changes``, refuse (ConfigError, before any work) settings that differ from those
    the newest checkpoint was trained with (and, for checkpoints that predate recording them,
    from config.yaml and its sha256 in the checkpoint), outside `RESUME_MAY_CHANGE`; a hand
    edit of config.yaml counts as a change (reliability case C11)."""
    saved_path = run_dir / "config.yaml"
    saved = load_preset(str(saved_path)) if saved_path.is_file() else None
    if saved is not None and run.train.seed is None:
        run = dataclasses.replace(run, train=dataclasses.replace(run.train, seed=saved.train.seed))
    if allow_changes or saved is None:
        return run
    trained_with, legacy_sha256 = checkpoint_config(run_dir)
    changes = resume_changes(envs.with_resolved_backend(trained_with or saved), run)
    if legacy_sha256 is not None and not changes and legacy_sha256 != _sha256(saved_path):
        changes = [  # a checkpoint from before fleetrl recorded the config: its hash only
            "config.yaml: its sha256 is not the one the newest checkpoint recorded (edited "
            "by hand, or by a resume that wrote no checkpoint since)"
        ]
    if changes:
        raise ConfigError(
            f"--resume {run_dir}: the run was trained with other settings; resuming would "
            "change " + "; ".join(changes) + ". Pass --allow-config-changes to resume "
            "with them anyway (the run then no longer replays as one configuration)."
        )
    return run


def _sha256(path: Path) -> str:
    import hashlib

    from fleetrl.config import MAX_CONFIG_BYTES
    from fleetrl.safeio import read_bounded

    return hashlib.sha256(read_bounded(path, MAX_CONFIG_BYTES, "config")).hexdigest()


def checkpoint_config(run_dir: Path) -> tuple[RunConfig | None, str | None]:
    """``(config, None)``: the config the newest readable checkpoint of ``run_dir`` recorded
    (whole, since issue 16); for an older checkpoint ``(None, the sha256 of config.yaml it
    recorded)``; ``(None, None)`` without one."""
    for path in checkpoint.committed(run_dir):
        try:
            meta = checkpoint.read_meta(path)
        except checkpoint.CheckpointDamagedError:
            continue  # resume falls back past it too
        if isinstance(meta.get("config"), dict):
            return config_from_dict(meta["config"], "the checkpoint's config"), None
        return None, meta.get("config_sha256")
    return None, None


def _start(
    run: RunConfig, run_dir: Path, env, init, resume, may_start: bool = False
) -> tuple[Carry, dict[str, Any]]:
    """The first carry and counters: fresh, or restored from the last checkpoint that loads
    (verified and loaded before anything in the run directory is rewritten; newer damaged
    ones are set aside, with a warning: `fleetrl.restore.load_checkpoint`)."""
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
    if not checkpoint.committed(run_dir):
        if may_start:  # records of the attempt that never checkpointed are dropped (step 0)
            return carry, counters
        raise ConfigError(f"--resume: {run_dir} has no committed checkpoint to resume from")
    restored, meta, _ = load_checkpoint(
        run_dir, {"carry": carry}, set_aside=True, purpose="resuming from"
    )
    fresh_env, carry = carry.env, restored["carry"]
    if hasattr(env, "raise_if_failed"):  # host envs start new episodes on resume
        carry = carry._replace(env=fresh_env._replace(key=carry.env.key))
    counters = meta["counters"]
    saved = counters.get("solved_returns")  # absent before fleetrl froze solved seeds
    counters["solved_returns"] = solved_returns(saved, num_seeds, threshold)
    return carry, counters
