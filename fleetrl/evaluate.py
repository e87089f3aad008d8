"""Evaluation: episodes of the deterministic policy on separately seeded envs, compiled."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fleetrl.rollout import reset
from fleetrl.types import Array


def make_evaluate(algo, env, max_steps: int | None = None):
    """Return ``evaluate(algo_state, key) -> (returns[E], lengths[E], finished[E])``.

    Each of the ``E = env.spec.num_envs`` envs plays one episode with ``explore=False``; the loop
    stops when all have finished or after ``max_steps`` steps (default: the env's time limit, or
    1000 if it has none; unfinished episodes report the return so far with ``finished=False``).
    """
    num_episodes = env.spec.num_envs
    max_steps = max_steps or env.spec.max_episode_steps or 1000

    def evaluate(algo_state, key: Array):
        carry = reset(env, key)
        zeros = jnp.zeros((num_episodes,), jnp.float32)
        init = (
            carry.env_state,
            carry.obs,
            carry.key,
            zeros,
            jnp.zeros_like(zeros, jnp.int32),
            jnp.zeros((num_episodes,), bool),
            jnp.int32(0),
        )

        def cond(loop):
            finished, t = loop[5], loop[6]
            return ~jnp.all(finished) & (t < max_steps)

        def body(loop):
            env_state, obs, key, returns, lengths, finished, t = loop
            key, policy_key = jax.random.split(key)
            action, _ = algo.policy(algo_state, obs, policy_key, explore=False)
            env_state, ts = env.step(env_state, action)
            live = ~finished
            returns = jnp.where(live, ts.episode_return, returns)
            lengths = jnp.where(live, ts.episode_length, lengths)
            return env_state, ts.obs, key, returns, lengths, finished | ts.episode_done, t + 1

        _, _, _, returns, lengths, finished, _ = jax.lax.while_loop(cond, body, init)
        return returns, lengths, finished

    return evaluate


def evaluate_run(run_dir, episodes: int | None = None, seed: int = 12345):
    """Evaluate the last checkpoint of ``run_dir``: returns, lengths ``[num_seeds, episodes]``."""
    import dataclasses
    from pathlib import Path

    import numpy as np

    from fleetrl import checkpoint
    from fleetrl.algos.guard import upgrade_checkpoint
    from fleetrl.config import ConfigError, load_preset
    from fleetrl.loop import host_metrics
    from fleetrl.programs import compile_light, make_init, over_seeds, raw_keys, seed_keys
    from fleetrl.train import build, close_envs

    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: not found; is {run_dir} a run directory?")
    run = load_preset(str(config_path))
    if episodes is not None:
        run = dataclasses.replace(run, train=dataclasses.replace(run.train, eval_episodes=episodes))
    latest = checkpoint.latest(run_dir)
    if latest is None:
        raise ConfigError(f"{run_dir}: no committed checkpoint to evaluate")
    env, eval_env, algo = build(run)
    try:
        target = {"carry": jax.eval_shape(make_init(algo, env), seed_keys(run))}
        restored, _ = checkpoint.load(latest, target, upgrade_checkpoint)
        algo_state = restored["carry"].algo_state
        keys = raw_keys([seed + i for i in range(run.train.num_seeds)])
        evaluate = jax.jit(
            over_seeds(make_evaluate(algo, eval_env, run.train.eval_max_steps or None))
        )
        returns, lengths, _ = jax.device_get(
            compile_light(evaluate, algo_state, keys)(algo_state, keys)
        )
        host_metrics(eval_env)
    finally:
        close_envs(env, eval_env)
    return np.asarray(returns), np.asarray(lengths)
