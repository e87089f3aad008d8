"""Restoring a run from its directory: one path for ``fleetrl eval``, ``visualize`` and
``train --resume``.

The newest committed checkpoint that loads wins: a damaged newer one (truncated, altered,
undecodable: `fleetrl.checkpoint.CheckpointDamagedError`) is skipped with a warning, as resume
always did; ``eval`` and ``visualize`` leave it where it is (they only read the run), resume sets
it aside so that a later save of a lower step is not shadowed by it. A newer format or another
run's shapes are refused, never skipped: no older checkpoint of the run would fit either.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fleetrl import checkpoint
from fleetrl.config import ConfigError, RunConfig, load_preset


def read_config(run_dir: str | Path) -> RunConfig:
    """The run's ``config.yaml``, validated (a ConfigError names what is wrong)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; is {run_dir} a run directory?")
    return load_preset(str(path))


def load_checkpoint(
    run_dir: str | Path, target: Any, *, set_aside: bool = False, purpose: str = "using"
) -> tuple[Any, dict, Path]:
    """``(state, meta, path)`` of the newest committed checkpoint of ``run_dir`` that loads into
    ``target``; damaged newer ones are skipped with a warning (renamed ``step_<N>.damaged-*``
    with ``set_aside``). ConfigError when there is no committed checkpoint; the newest one's
    error when none loads. ``purpose``: the warning's verb ("resuming from", ...)."""
    from fleetrl.algos.guard import upgrade_checkpoint

    candidates = checkpoint.committed(run_dir)
    if not candidates:
        raise ConfigError(f"{run_dir}: no committed checkpoint")
    damaged: list[tuple[Path, checkpoint.CheckpointError]] = []
    for path in candidates:  # newest first
        try:
            state, meta = checkpoint.load(path, target, upgrade_checkpoint)
            break
        except checkpoint.CheckpointDamagedError as error:
            damaged.append((path, error))
    else:
        raise damaged[0][1]
    for old, error in damaged:
        what = f"set aside as {checkpoint.set_aside(old).name}" if set_aside else "skipped"
        print(f"fleetrl: warning: {error}; {what}; {purpose} {path.name}", file=sys.stderr)
    return state, meta, path


class LoadedRun(NamedTuple):
    """A run directory's configuration, envs, algorithm and restored algorithm state
    (``[num_seeds, ...]``); the caller closes the envs (`fleetrl.build.close_envs`)."""

    run: RunConfig
    env: Any
    eval_env: Any
    algo: Any
    algo_state: Any
    step: int
    """Env steps per seed at the checkpoint."""


def load_run(
    run_dir: str | Path,
    run: RunConfig | None = None,
    purpose: str = "using",
    evaluation: bool = True,
) -> LoadedRun:
    """Build ``run_dir``'s envs (the evaluation env only with ``evaluation``) and algorithm
    (``run``: its config, possibly edited; default its config.yaml) and restore its newest
    loadable checkpoint into them."""
    import jax

    from fleetrl.build import build, close_envs
    from fleetrl.programs import make_init, seed_keys

    run = run or read_config(run_dir)
    if not checkpoint.committed(run_dir):
        raise ConfigError(f"{run_dir}: no committed checkpoint to restore")
    env, eval_env, algo = build(run, evaluation)
    try:
        init = make_init(algo, env)
        if run.dist.mode != "single":  # the learner's state alone (`fleetrl.distributed`)
            from fleetrl.distributed.driver import learner_side

            algo, init, _ = learner_side(run, algo, env.spec)
        target = {"carry": jax.eval_shape(init, seed_keys(run))}
        restored, meta, path = load_checkpoint(run_dir, target, purpose=purpose)
    except BaseException:
        close_envs(env, eval_env)
        raise
    step = meta.get("counters", {}).get("env_steps", int(path.name.removeprefix("step_")))
    return LoadedRun(run, env, eval_env, algo, restored["carry"].algo_state, int(step))


class Evaluation(NamedTuple):
    """Per seed and episode (``[num_seeds, episodes]``): returns, lengths, and whether the
    episode ended within the step limit (an unfinished one's return is the return so far)."""

    returns: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray


def evaluate_run(run_dir, episodes: int | None = None, seed: int = 12345) -> Evaluation:
    """Evaluate the newest loadable checkpoint of ``run_dir`` (``episodes`` per seed, default
    the run's ``train.eval_episodes``) on envs seeded with ``seed``."""
    import dataclasses

    import jax

    from fleetrl.build import close_envs, host_metrics
    from fleetrl.evaluate import make_evaluate
    from fleetrl.programs import compile_light, over_seeds, raw_keys

    run = read_config(run_dir)
    if episodes is not None:
        run = dataclasses.replace(run, train=dataclasses.replace(run.train, eval_episodes=episodes))
    loaded = load_run(run_dir, run, purpose="evaluating")
    try:
        algo_state = loaded.algo_state
        keys = raw_keys([seed + i for i in range(run.train.num_seeds)])
        evaluate = jax.jit(
            over_seeds(
                make_evaluate(loaded.algo, loaded.eval_env, run.train.eval_max_steps or None)
            )
        )
        returns, lengths, finished = jax.device_get(
            compile_light(evaluate, algo_state, keys)(algo_state, keys)
        )
        host_metrics(loaded.eval_env)
    finally:
        close_envs(loaded.env, loaded.eval_env)
    return Evaluation(np.asarray(returns), np.asarray(lengths), np.asarray(finished))
