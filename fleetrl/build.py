"""A run's envs and algorithm: what `fleetrl.train`, `fleetrl.restore` and `fleetrl.loop`
build, close and check, kept apart from the driver so that restoring a run (``eval``,
``visualize``) does not import the training loop."""

from __future__ import annotations

import dataclasses

import numpy as np

from fleetrl import envs
from fleetrl.algos import get_algorithm
from fleetrl.config import ConfigError, RunConfig


def build(run: RunConfig, evaluation: bool = True):
    """The training env, evaluation env (None without ``evaluation``) and algorithm of ``run``;
    checks the env fits the algo."""
    module = get_algorithm(run.algorithm)
    if envs.resolve_backend(run.env) == "gymnasium" and run.train.num_seeds > 1:
        raise ConfigError(
            f"train.num_seeds: {run.train.num_seeds} seeds need a device (gymnax) env; a host "
            "(gymnasium) env trains one seed per run. Start one run per seed instead."
        )
    env = envs.make(run.env)
    try:
        module.check_spec(env.spec)
        eval_env = None
        if evaluation:
            eval_config = _eval_env_config(run)
            eval_env = envs.make(eval_config, num_envs=run.train.eval_episodes, beside=env)
    except BaseException:
        close_envs(env)
        raise
    return env, eval_env, module.make(run, env.spec)


def _eval_env_config(run: RunConfig):
    """The env config of evaluation. Host envs: one worker process, so that a hung step times
    out (``env.step_timeout``; an env in this process cannot be interrupted), and faults raise
    whatever ``env.on_error`` says: an episode cut by a restart is no episode of the policy,
    so a failed evaluation is reported as such (NaN) and its envs replaced (`fleetrl.loop`)."""
    if envs.resolve_backend(run.env) != "gymnasium":
        return run.env
    return dataclasses.replace(run.env, num_workers=1, parent_steps=False, on_error="raise")


def close_envs(*envs_) -> None:
    """Close host envs (their worker processes and shared memory); device envs need nothing."""
    for env in envs_:
        if hasattr(env, "close"):
            env.close()


def host_metrics(env) -> dict[str, np.ndarray]:
    """Re-raise a host env's error from the last call; its counters as metrics (host envs)."""
    if not hasattr(env, "raise_if_failed"):
        return {}
    env.raise_if_failed()
    return {name: np.array([value]) for name, value in env.host_metrics().items()}
