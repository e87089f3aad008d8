"""The driver: compiles rollout + learn for all seeds into one call and runs the schedule.

One compiled call = ``run.iterations_per_call`` iterations of (``simulate`` T steps, ``learn``)
for every seed (``vmap``). Python only logs, evaluates and checkpoints between calls.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fleetrl import aot, checkpoint, envs, xla_cpu
from fleetrl.algos import get_algorithm
from fleetrl.algos.guard import upgrade_checkpoint
from fleetrl.config import ConfigError, LogConfig, RunConfig, dump_yaml, load_preset, to_dict
from fleetrl.evaluate import make_evaluate
from fleetrl.interrupts import CallWatchdog, StopSignals
from fleetrl.logger import RunLogger
from fleetrl.rollout import EnvCarry, reset, simulate
from fleetrl.rundir import RunLock, new_run_dir, write_config_and_metadata
from fleetrl.types import Array
from fleetrl.xla_cpu import parallel_compile


class Carry(NamedTuple):
    """Everything that evolves during training, for one seed (``[S, ...]`` when vmapped)."""

    algo_state: Any
    env: EnvCarry
    key: Array


@dataclass
class TrainResult:
    run_dir: Path
    status: str
    """completed | threshold (stop_at_return reached) | interrupted (signal) | stopped |
    diverged (updates no longer finite; the last checkpoint predates that) | unsaved
    (the final checkpoint could not be written, see ``detail``)."""
    env_steps: int
    """Env steps per seed."""
    eval_returns: np.ndarray | None
    """Last evaluation return per seed."""
    wall_time: float
    compile_time: float
    steps_per_second: float
    """Env steps per second summed over seeds, compiled calls only."""
    detail: str = ""
    """Why a ``diverged`` run stopped, or why an ``unsaved`` one could not save."""


def compilation_cache_dir() -> str | None:
    """The per-user folder of JAX's persistent compilation cache; None when turned off.

    ``FLEETRL_CACHE_DIR`` chooses the folder; ``FLEETRL_CACHE_DIR=off`` disables it.
    """
    folder = os.environ.get("FLEETRL_CACHE_DIR")
    if folder == "off":
        return None
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "fleetrl", "jax")
    return folder


def enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache in `compilation_cache_dir`."""
    folder = compilation_cache_dir()
    if folder is None:
        return
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


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


def host_metrics(env) -> dict[str, np.ndarray]:
    """Re-raise a host env's error from the last call; its counters as metrics (host envs)."""
    if not hasattr(env, "raise_if_failed"):
        return {}
    env.raise_if_failed()
    return {name: np.array([value]) for name, value in env.host_metrics().items()}


def seed_keys(run: RunConfig) -> Array:
    return raw_keys([run.train.seed + i for i in range(run.train.num_seeds)])


def raw_keys(seeds: list[int], salt: int = 0) -> np.ndarray:
    """``[len(seeds), 2]`` uint32 threefry keys built on the host.

    Equal to ``jax.random.PRNGKey(seed)`` for ``salt=0``; built with NumPy because every small
    jitted helper costs a compilation on a cold cache (~50 ms each on our CPU).
    """
    return np.array([[salt, seed & 0xFFFFFFFF] for seed in seeds], dtype=np.uint32)


# Programs that run once or rarely (init, evaluation) are compiled with XLA:CPU's cheapest
# settings: on our 2-core CPU this cut their compile time from 3.3-3.6 s to 0.8-1.0 s (init) and
# from 1.6 s to 0.45 s (evaluation of PPO on CartPole), for an evaluation that still runs in a
# few milliseconds. The train call keeps the defaults: the same options halve its speed.
LIGHT_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}


def compile_light(jitted, *args):
    """Compile ``jitted`` for ``args`` ahead of time, cheaply on CPU (see LIGHT_CPU_OPTIONS)."""
    return _compile_light(jitted.lower(*args))


def _compile_light(lowered):
    if jax.default_backend() == "cpu":
        return lowered.compile(compiler_options=LIGHT_CPU_OPTIONS)
    return lowered.compile()


_COMPILER: ThreadPoolExecutor | None = None


_ASIDE: ThreadPoolExecutor | None = None


def compile_program(
    name: str, run: RunConfig, env, jitted, args: tuple, light: bool = False, aside: bool = False
):
    """Lower one of the run's programs here and compile it in the background.

    Returns ``(future, out_shapes)``: the future gives the compiled callable. Python traces and
    lowers the next program while XLA compiles this one: the two overlap on our 2 cores. One
    client compiles one program at a time (one compiler thread; compiling two at once once
    deadlocked XLA:CPU, jax 0.10.2); ``aside``: on a second thread, on JAX's own client, while
    the first compiles on `fleetrl.xla_cpu`'s helper client. A program identical to one
    compiled by an earlier run is loaded from disk instead of traced (`fleetrl.aot`; device
    envs only, since host envs' programs call back into this process).
    """
    global _COMPILER, _ASIDE
    static = None if hasattr(env, "raise_if_failed") else program_config(run)
    lowered, wrap, out_shapes = aot.lower_cached(name, jitted, args, static)
    compile_fn = _compile_light if light else (lambda lowered: lowered.compile())

    def compile_it():
        if aside:
            return wrap(compile_fn(lowered))
        with parallel_compile():
            return wrap(compile_fn(lowered))

    if aside:
        if _ASIDE is None:
            _ASIDE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetrl-compile-aside")
        return _ASIDE.submit(compile_it), out_shapes
    if _COMPILER is None:
        _COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetrl-compile")
    return _COMPILER.submit(compile_it), out_shapes


def program_config(run: RunConfig) -> str:
    """What of ``run`` shapes its compiled programs (device envs), as YAML: seeds, evaluation
    and checkpoint cadences, thread choices and logging left out."""
    return dump_yaml(
        dataclasses.replace(
            run,
            train=dataclasses.replace(
                run.train,
                seed=0,
                eval_every=0,
                checkpoint_every=0,
                stop_at_return=None,
                xla_threads="auto",
                call_timeout=0.0,
                stop_grace=0.0,
            ),
            log=LogConfig(),
        )
    )


def make_init(algo, env):
    """``init(keys[S]) -> Carry`` for all seeds."""

    def init(key: Array) -> Carry:
        init_key, env_key, loop_key = jax.random.split(key, 3)
        return Carry(algo.init(init_key), reset(env, env_key), loop_key)

    return jax.jit(over_seeds(init))


def make_train_call(algo, env, num_steps: int, iterations: int, freezable: bool = False):
    """``call(carry[S]) -> (carry[S], metrics[S, iterations])``, one compiled program.

    ``freezable`` (several seeds): ``call(carry[S], frozen[S])``; a frozen seed's envs and
    policy still run, but its algorithm state (parameters, optimizer, statistics) stays as it
    was: a seed that reached ``train.stop_at_return`` stops learning while the others go on.
    """

    def iteration(carry: Carry, frozen):
        key, learn_key = jax.random.split(carry.key)
        env_carry, rollout = simulate(algo.policy, env, carry.algo_state, carry.env, num_steps)
        algo_state, metrics = algo.learn(carry.algo_state, rollout, learn_key)
        if freezable:
            algo_state = jax.tree.map(
                lambda old, new: jnp.where(frozen, old, new), carry.algo_state, algo_state
            )
        done = rollout.done
        metrics["episodes/return_sum"] = jnp.sum(jnp.where(done, rollout.episode_return, 0.0))
        metrics["episodes/length_sum"] = jnp.sum(jnp.where(done, rollout.episode_length, 0))
        metrics["episodes/count"] = jnp.sum(done)
        return Carry(algo_state, env_carry, key), metrics

    def call(carry: Carry, frozen=None):
        if iterations == 1:
            # No loop at all: a CNN's backward pass is ~10x slower inside an XLA:CPU loop (see
            # fleetrl/algos/ppo/learner.py), and a one-trip scan still cost that here (one
            # ppo-breakout iteration: 130 s with it, 10.6 s without; BENCHMARKS section 10).
            # The CNN presets run one iteration per call.
            carry, metrics = iteration(carry, frozen)
            return carry, jax.tree.map(lambda x: jnp.asarray(x)[None], metrics)
        return jax.lax.scan(lambda c, _: iteration(c, frozen), carry, None, length=iterations)

    # No donate_argnums: with jax 0.10.2 on CPU, a donating executable loaded from the persistent
    # compilation cache hung forever on its second use in the same process (vmapped seeds).
    return jax.jit(over_seeds(call))


def over_seeds(fn):
    """``vmap`` over the leading seed axis; with one seed, index it instead.

    Why: with a batch of one, ``vmap`` still rewrites gathers and scans into batched forms;
    on our 2-core CPU that cost 15% of PPO's speed and 2.7 s more compile time.
    """

    def one_seed(*args):
        out = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], out)

    def apply(*args):
        num_seeds = jax.tree.leaves(args)[0].shape[0]
        return (one_seed if num_seeds == 1 else jax.vmap(fn))(*args)

    return apply


DIVERGED_STREAK = 64
"""A seed whose last this many updates, and at least two iterations' worth, were all skipped
as non-finite has diverged: its parameters no longer produce a finite loss, and waiting
longer only burns time."""


def summarize(metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-seed metrics of one call: means over its iterations; episode means over episodes;
    skipped updates summed; the non-finite streak as it stands after the last iteration."""
    metrics = dict(metrics)
    count = metrics.pop("episodes/count").sum(axis=1)
    returns = metrics.pop("episodes/return_sum").sum(axis=1)
    lengths = metrics.pop("episodes/length_sum").sum(axis=1)
    out = {name: value.mean(axis=1) for name, value in metrics.items()}
    if "train/skipped_updates" in metrics:
        out["train/skipped_updates"] = metrics["train/skipped_updates"].sum(axis=1)
        out["train/nonfinite_streak"] = metrics["train/nonfinite_streak"][:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["charts/episodic_return"] = np.where(count > 0, returns / count, np.nan)
        out["charts/episodic_length"] = np.where(count > 0, lengths / count, np.nan)
    return out


def _config_hash(run: RunConfig) -> str:
    return hashlib.sha256(dump_yaml(run).encode()).hexdigest()


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
    if resume and not allow_config_changes:
        saved_path = Path(resume) / "config.yaml"
        changes = resume_changes(load_preset(str(saved_path)), run) if saved_path.is_file() else []
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
            init, *programs = _compile(run, env, eval_env, algo)
            carry, counters = _start(run, run_dir, env, init.result(), resume, resume_may_start)
            write_config_and_metadata(run_dir, run, command or [])
            return _train_loop(
                run,
                run_dir,
                (env, eval_env, algo),
                programs,
                compile_start,
                carry,
                counters,
                bool(resume),
                stop_after_steps,
                console,
                started,
            )
        finally:
            lock.release()
    finally:
        close_envs(env, eval_env)


def _start(
    run: RunConfig, run_dir: Path, env, init, resume, may_start: bool = False
) -> tuple[Carry, dict[str, int]]:
    """The first carry and counters: fresh, or restored from the last checkpoint that loads
    (verified and loaded before anything in the run directory is rewritten; newer damaged
    ones are set aside, with a warning)."""
    carry = init(seed_keys(run))
    host_metrics(env)
    counters = {
        "iteration": 0,
        "env_steps": 0,
        "next_eval": run.train.eval_every,
        "next_checkpoint": run.train.checkpoint_every,
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
    return carry, meta["counters"]


def _compile(run, env, eval_env, algo):
    """Futures of the compiled init, train call and evaluation (see `compile_program`).

    When the train call compiles on `fleetrl.xla_cpu`'s helper client, it is traced first and
    init and evaluation compile beside it on JAX's own client: PPO on CartPole was ready
    ~0.6 s sooner on a cold cache (the train call's compilation, ~2 s, is the longest step).
    Otherwise init compiles while Python traces the rest, then evaluation (~0.25 s, while the
    train call is traced), then the train call.
    """
    init = make_init(algo, env)
    keys = (seed_keys(run),)
    freezable = run.train.num_seeds > 1
    train_call = make_train_call(algo, env, run.train.num_steps, run.iterations_per_call, freezable)
    evaluate = jax.jit(over_seeds(make_evaluate(algo, eval_env, run.train.eval_max_steps or None)))
    eval_keys = _eval_keys(run, 0)
    aside = xla_cpu.compiles_elsewhere() and not hasattr(env, "raise_if_failed")
    if aside:
        static = program_config(run)
        carry = aot.out_shapes("init", init, keys, static)
        train_args = (carry, np.zeros(run.train.num_seeds, bool)) if freezable else (carry,)
        train = compile_program("train", run, env, train_call, train_args)[0]
        init = compile_program("init", run, env, init, keys, light=True, aside=True)[0]
    else:
        init, carry = compile_program("init", run, env, init, keys, light=True)
    args = (carry.algo_state, eval_keys)
    evaluate = compile_program("evaluate", run, eval_env, evaluate, args, True, aside)[0]
    if not aside:
        train_args = (carry, np.zeros(run.train.num_seeds, bool)) if freezable else (carry,)
        train = compile_program("train", run, env, train_call, train_args)[0]
    return init, train, evaluate


def _eval_keys(run: RunConfig, env_steps: int) -> np.ndarray:
    """Evaluation envs are seeded apart from training and identically across resumes."""
    seeds = [run.train.seed + i for i in range(run.train.num_seeds)]
    return raw_keys(seeds, salt=(1_000_003 + env_steps) & 0xFFFFFFFF)


def _train_loop(
    run,
    run_dir,
    built,
    programs,
    compile_start,
    carry,
    counters,
    resuming,
    stop_after_steps,
    console,
    started,
):
    from fleetrl.progress import Progress

    (env, eval_env, algo), num_seeds, spi = built, run.train.num_seeds, run.steps_per_iteration
    logger = RunLogger(  # while the programs compile
        run_dir, num_seeds, run.log.tensorboard, counters["env_steps"] if resuming else None
    )
    train_call, evaluate = (future.result() for future in programs)
    compile_time = time.time() - compile_start
    record_video = None
    if run.log.video_every:
        from fleetrl.visualize import make_training_recorder

        record_video = make_training_recorder(run, algo, env.spec, episodes=run.log.video_episodes)
        counters.setdefault("next_video", run.log.video_every)

    def run_eval(steps: int) -> np.ndarray:
        watchdog.start(run.train.call_timeout, "an evaluation")  # a host env may hang in it
        try:
            returns, lengths, finished = jax.device_get(
                evaluate(carry.algo_state, _eval_keys(run, steps))
            )
        finally:  # an exception must not leave the watchdog to kill the process later
            watchdog.stop()
        host_metrics(eval_env)
        mean = returns.mean(axis=1)
        logger.write(
            steps,
            {
                "eval/episodic_return": mean,
                "eval/episodic_length": lengths.mean(1),
                "eval/finished_fraction": finished.mean(1),
            },
        )
        return mean

    def save() -> bool:
        """Commit a checkpoint; refuse (False) when a parameter is NaN or Inf."""
        nonfinite = _nonfinite_parameters(carry.algo_state)
        if nonfinite:
            divergence.append(
                f"parameters are no longer finite at step {counters['env_steps']:,} "
                f"({', '.join(nonfinite[:4])}{', ...' if len(nonfinite) > 4 else ''})"
            )
            return False
        meta = {
            "counters": counters,
            "config_sha256": _config_hash(run),
            "env_id": run.env.id,
            "num_seeds": num_seeds,
        }
        try:
            checkpoint.save(run_dir, counters["env_steps"], {"carry": carry}, meta)
        except OSError as error:  # disk full, quota, permissions: the previous one stays
            message = (
                f"fleetrl: warning: could not write the checkpoint of step "
                f"{counters['env_steps']:,} in {run_dir / 'checkpoints'}: {error}; the last "
                f"committed one ({checkpoint.latest(run_dir) or 'none'}) is intact"
            )
            print(message, file=sys.stderr)
            save_errors.append(message)
        return True

    # seeds that reached stop_at_return: the evaluation return that did it (they learn no more)
    counters.setdefault("solved_returns", [None] * num_seeds)

    def frozen_arg() -> tuple:
        if num_seeds == 1:
            return ()
        return (np.array([r is not None for r in counters["solved_returns"]]),)

    def note_solved(returns: np.ndarray) -> np.ndarray:
        """Record the seeds this evaluation solved; the returns, with a solved seed's return
        the one that solved it (its parameters have not changed since)."""
        solved = counters["solved_returns"]
        threshold = run.train.stop_at_return
        for i, value in enumerate(np.asarray(returns, dtype=float).tolist()):
            if solved[i] is None and threshold is not None and value >= threshold:
                solved[i] = value
        kept = [r if r is not None else v for r, v in zip(solved, returns, strict=True)]
        return np.array(kept, np.float32)

    divergence: list[str] = []  # why the run diverged, if it did
    metrics: dict[str, np.ndarray] = {}  # of the last call
    save_errors: list[str] = []  # checkpoints that could not be written (training went on)
    warned_seeds: set[int] = set()
    status, eval_returns, last_eval_step, run_time = "completed", None, -1, 0.0
    first_iteration = counters["iteration"]
    watchdog, slowest = CallWatchdog(run_dir, run.train.call_timeout), 0.0
    progress = Progress(console, run, counters["env_steps"]) if console else None
    on_signal = progress.on_signal if progress else None
    with StopSignals(on_signal, run.train.stop_grace, run_dir) as signals:
        try:
            while counters["iteration"] < run.num_iterations:
                call_start = time.time()
                # later calls: 20x the slowest call so far, at least the configured timeout / 5
                watchdog.start(max(20 * slowest, run.train.call_timeout / 5) if slowest else None)
                try:
                    carry, metrics = train_call(carry, *frozen_arg())
                    metrics = summarize(jax.device_get(metrics))
                finally:
                    watchdog.stop()
                metrics.update(host_metrics(env))
                call_time = time.time() - call_start
                slowest = max(slowest, call_time)
                run_time += call_time
                counters["iteration"] += run.iterations_per_call
                steps = counters["env_steps"] = counters["iteration"] * spi
                metrics["charts/sps"] = np.float64(
                    run.iterations_per_call * spi * num_seeds / call_time
                )
                logger.write(steps, metrics)
                ipc = run.iterations_per_call
                if _diverged(metrics, steps, ipc, divergence, warned_seeds, console):
                    status = "diverged"
                    break
                if run.train.eval_every and steps >= counters["next_eval"]:
                    eval_returns, last_eval_step = run_eval(steps), steps
                    eval_returns = note_solved(eval_returns)
                    while counters["next_eval"] <= steps:
                        counters["next_eval"] += run.train.eval_every
                if record_video and steps >= counters["next_video"]:
                    record_video(carry.algo_state, steps, run_dir)
                    while counters["next_video"] <= steps:
                        counters["next_video"] += run.log.video_every
                if progress:
                    progress.update(steps, metrics, eval_returns)
                if run.train.stop_at_return is not None and all(
                    r is not None for r in counters["solved_returns"]
                ):
                    status = "threshold"
                    break
                if (
                    run.train.checkpoint_every
                    and steps >= counters["next_checkpoint"]
                    and not _all_skipping(metrics)  # keep the checkpoints from before
                ):
                    if not save():
                        status = "diverged"
                        break
                    while counters["next_checkpoint"] <= steps:
                        counters["next_checkpoint"] += run.train.checkpoint_every
                if signals.received is not None:
                    status = "interrupted"
                    break
                if stop_after_steps is not None and steps >= stop_after_steps:
                    status = "stopped"
                    break
            if status == "completed" and last_eval_step != counters["env_steps"]:
                eval_returns = note_solved(run_eval(counters["env_steps"]))
            if status != "diverged" and _all_skipping(metrics):
                status = "diverged"
                divergence.append(
                    f"the run stopped at step {counters['env_steps']:,} while every update was "
                    "skipped as non-finite; no checkpoint was written then"
                )
            if status != "diverged":
                errors_before = len(save_errors)
                if not save():
                    status = "diverged"
                elif len(save_errors) > errors_before:
                    status = "unsaved"  # trained, but the final checkpoint is not on disk
        finally:
            logger.close()
            if progress:
                progress.stop()
    steps_here = (counters["iteration"] - first_iteration) * spi * num_seeds
    sps = steps_here / run_time if run_time > 0 else math.nan
    result = TrainResult(
        run_dir,
        status,
        counters["env_steps"],
        eval_returns,
        time.time() - started,
        compile_time,
        sps,
        {"diverged": "; ".join(divergence), "unsaved": "; ".join(save_errors[-1:])}.get(status, ""),
    )
    _write_summary(result)
    return result


def _nonfinite_parameters(algo_state) -> list[str]:
    """Names of the parameter arrays holding a NaN or Inf (checked on the host before saving)."""
    params = getattr(algo_state, "params", algo_state)
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    return [
        jax.tree_util.keystr(path)
        for path, leaf in leaves
        if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.isfinite(leaf).all()
    ]


def _all_skipping(metrics) -> bool:
    """Every seed's latest update was skipped as non-finite: a checkpoint now would only
    rotate out the ones from before."""
    streak = metrics.get("train/nonfinite_streak")
    return streak is not None and bool(np.all(np.asarray(streak) > 0))


def _diverged(
    metrics, steps: int, iterations: int, divergence: list[str], warned: set[int], console
) -> bool:
    """True when every seed's last `DIVERGED_STREAK` updates, and at least two iterations'
    worth, were skipped as non-finite; warns once about a seed that diverged while others
    still learn. ``iterations``: iterations in the call the metrics summarize."""
    streak = metrics.get("train/nonfinite_streak")
    if streak is None:
        return False
    # a fully skipped call skipped every update: its count per iteration is the updates per
    # iteration (320 for the MuJoCo presets, 16 for ppo-cartpole)
    per_iteration = np.asarray(metrics["train/skipped_updates"]) / iterations
    limit = np.maximum(DIVERGED_STREAK, 2 * per_iteration)
    bad = [int(i) for i in np.flatnonzero(np.asarray(streak) >= limit)]
    if not bad:
        return False
    losses = ", ".join(
        f"{name}={np.asarray(value).tolist()}"
        for name, value in metrics.items()
        if name.startswith("losses/") and not np.all(np.isfinite(value))
    )
    why = (
        f"the last {int(np.max(np.asarray(streak)[bad]))} updates had a NaN or Inf gradient "
        f"at step {steps:,}"
        + (f" ({losses})" if losses else "")
        + "; lower algo.learning_rate or algo.max_grad_norm"
    )
    if len(bad) == len(np.asarray(streak)):
        divergence.append(why)
        return True
    new = [i for i in bad if i not in warned]
    if new:
        warned.update(new)
        message = f"fleetrl: warning: seed(s) {new} diverged: {why}; the other seeds go on"
        (console.print(message, markup=False) if console else print(message, file=sys.stderr))
    return False


def _write_summary(result: TrainResult) -> None:
    """``summary.json``: how the last session of the run ended, for people and benchmarks."""
    import json

    from fleetrl.logger import PROCESS_START
    from fleetrl.rundir import atomic_write_text

    summary = {
        "status": result.status,
        **({"detail": result.detail} if result.detail else {}),
        "env_steps": result.env_steps,
        "eval_returns": None
        if result.eval_returns is None
        else np.asarray(result.eval_returns).tolist(),
        "wall_time": result.wall_time,
        "compile_time": result.compile_time,
        "steps_per_second": result.steps_per_second,
        "process_time": time.time() - PROCESS_START,
    }
    atomic_write_text(result.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
