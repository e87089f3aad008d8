"""The programs of a run: what one compiled call does, and how it is compiled and cached.

One compiled call = ``run.iterations_per_call`` iterations of (``simulate`` T steps, ``learn``)
for every seed (``vmap``); init and evaluation are programs of their own. Python traces each
program, XLA compiles it in the background (`compile_program`), and JAX's persistent cache plus
`fleetrl.aot` keep it for the next run of the same configuration.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fleetrl import aot, seeds, xla_cpu
from fleetrl.config import SHAPES_PROGRAMS, RunConfig, dump_yaml, not_learned, with_defaults
from fleetrl.evaluate import make_evaluate
from fleetrl.interrupts import CallWatchdog
from fleetrl.rollout import EnvCarry, reset, simulate
from fleetrl.types import Array
from fleetrl.xla_cpu import parallel_compile


class Carry(NamedTuple):
    """Everything that evolves during training, for one seed (``[S, ...]`` when vmapped)."""

    algo_state: Any
    env: EnvCarry
    key: Array


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
    """Turn on JAX's persistent compilation cache in `compilation_cache_dir`, created private
    (mode 0o700); a folder others may write to is refused with a warning, and the cache stays off.
    """
    folder = compilation_cache_dir()
    if folder is None:
        return
    # The folder holds code this process runs: XLA executables (native code) in JAX's cache and
    # fleetrl.aot's programs. Anyone who can write there runs code as this user, so, as ssh does
    # with ~/.ssh, a folder writable by others or owned by someone else is not used.
    try:
        problem = aot.folder_problem(Path(folder))
    except OSError as error:
        problem = f"cannot create it ({error.strerror})"
    if problem is not None:
        print(
            f"fleetrl: warning: compilation cache {folder} not used: {problem}; running without "
            "it (or choose a folder of your own with FLEETRL_CACHE_DIR)",
            file=sys.stderr,
        )
        return
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


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


_COMPILERS: dict[str, ThreadPoolExecutor] = {}


def _compiler(name: str) -> ThreadPoolExecutor:
    """One compiler thread per name, started on first use."""
    if name not in _COMPILERS:
        _COMPILERS[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    return _COMPILERS[name]


def compile_program(
    name: str, run: RunConfig, env, jitted, args: tuple, light: bool = False, aside: bool = False
):
    """Lower one of the run's programs here and compile it in the background.

    Returns ``(future, out_shapes)``: the future gives the compiled callable. Python traces and
    lowers the next program while XLA compiles this one: the two overlap on our 2 cores. One
    client compiles one program at a time (one compiler thread; compiling two at once once
    deadlocked XLA:CPU, jax 0.10.2); ``aside``: on a second thread, on JAX's own client, while
    the first compiles on `fleetrl.xla_cpu`'s helper client (two clients with pools of their
    own; none of the ~60 cold runs of our benchmarks and tests hung, and the driver waits for
    compilation under ``train.call_timeout``). A program identical to one
    compiled by an earlier run is loaded from disk instead of traced (`fleetrl.aot`; device
    envs only, since host envs' programs call back into this process).
    """
    static = None if hasattr(env, "raise_if_failed") else program_config(run)
    lowered, wrap, out_shapes = aot.lower_cached(name, jitted, args, static)
    compile_fn = _compile_light if light else (lambda lowered: lowered.compile())

    def compile_it():
        if aside:
            return wrap(compile_fn(lowered))
        with parallel_compile():
            return wrap(compile_fn(lowered))

    compiler = _compiler("fleetrl-compile-aside" if aside else "fleetrl-compile")
    return compiler.submit(compile_it), out_shapes


def program_config(run: RunConfig) -> str:
    """What of ``run`` shapes its compiled programs (device envs), as YAML: the settings that
    change nothing learned (`fleetrl.config.NOT_LEARNED`) at their defaults, but those that
    still shape a program (`fleetrl.config.SHAPES_PROGRAMS`) (``run`` as `train` passes it,
    with its env backend resolved)."""
    kinds = ("seed", "length", "cadence", "runtime")
    reset = tuple(key for key in not_learned(*kinds) if key not in SHAPES_PROGRAMS)
    return dump_yaml(with_defaults(run, reset))


def make_init(algo, env):
    """``init(keys[S]) -> Carry`` for all seeds."""

    def init(key: Array) -> Carry:
        init_key, env_key, loop_key = jax.random.split(key, 3)
        return Carry(algo.init(init_key), reset(env, env_key, algo), loop_key)

    return jax.jit(over_seeds(init))


def freezes_seeds(run: RunConfig) -> bool:
    """Whether the run's train call takes a frozen-seeds mask (`make_train_call`): several
    seeds and a ``train.stop_at_return`` (without one, the select would only make XLA copy
    DQN's replay buffer every call)."""
    return run.train.num_seeds > 1 and run.train.stop_at_return is not None


def frozen_arg(run: RunConfig, solved: list) -> tuple:
    """The train call's arguments after the carry: ``(frozen[S],)`` from the per-seed solved
    records (None: not solved), or none when the call takes no mask (`freezes_seeds`)."""
    if not freezes_seeds(run):
        return ()
    return (np.array([r is not None for r in solved]),)


def make_train_call(algo, env, num_steps: int, iterations: int, freezable: bool = False):
    """``call(carry[S]) -> (carry[S], metrics[S, iterations])``, one compiled program.

    ``freezable`` (several seeds): ``call(carry[S], frozen[S])``; a frozen seed's envs and
    policy still run, but its algorithm state (parameters, optimizer, statistics) stays as it
    was: a seed that reached ``train.stop_at_return`` stops learning while the others go on.
    """

    bounds = _clip_bounds(env)

    def iteration(carry: Carry, frozen):
        key, learn_key = jax.random.split(carry.key)
        env_carry, rollout = simulate(algo, env, carry.algo_state, carry.env, num_steps)
        algo_state, metrics = algo.learn(carry.algo_state, rollout, learn_key)
        if bounds is not None:  # device envs clip; host envs report the pool's own count
            outside = (rollout.action < bounds[0]) | (rollout.action > bounds[1])
            metrics["train/action_clip_fraction"] = jnp.mean(outside)
        if freezable:
            algo_state = jax.tree.map(
                lambda old, new: jnp.where(frozen, old, new), carry.algo_state, algo_state
            )
        metrics.update(health_metrics(algo.health(carry.algo_state), algo.health(algo_state)))
        done = rollout.done
        metrics["episodes/return_sum"] = jnp.sum(jnp.where(done, rollout.episode_return, 0.0))
        metrics["episodes/length_sum"] = jnp.sum(jnp.where(done, rollout.episode_length, 0))
        metrics["episodes/count"] = jnp.sum(done)
        return Carry(algo_state, env_carry, key), metrics

    def call(carry: Carry, frozen=None):
        if iterations == 1:
            # No loop at all: a CNN's backward pass is ~10x slower inside an XLA:CPU loop (see
            # fleetrl/algos/actor_critic/learner.py), and a one-trip scan still cost that here (one
            # ppo-breakout iteration: 130 s with it, 10.6 s without; BENCHMARKS section 10).
            # The CNN presets run one iteration per call.
            carry, metrics = iteration(carry, frozen)
            return carry, jax.tree.map(lambda x: jnp.asarray(x)[None], metrics)
        return jax.lax.scan(lambda c, _: iteration(c, frozen), carry, None, length=iterations)

    # No donate_argnums: with jax 0.10.2 on CPU, a donating executable loaded from the persistent
    # compilation cache hung forever on its second use in the same process (vmapped seeds).
    return jax.jit(over_seeds(call))


def health_metrics(before, after) -> dict[str, Array]:
    """From the `Health` of the state before and after an iteration: ``train/skipped_updates``
    (updates skipped as non-finite in it) and ``train/nonfinite_streak`` (consecutive skipped
    updates at its end), which the driver reads to stop a diverged run (`fleetrl.loop`)."""
    return {
        "train/skipped_updates": after.skipped_updates - before.skipped_updates,
        "train/nonfinite_streak": after.nonfinite_streak,
    }


def _clip_bounds(env):
    """``(low, high)`` of a device env's continuous actions, which it clips to them (reliability
    case I4: the clipped fraction is logged as ``train/action_clip_fraction``); else None."""
    spec = env.spec
    if spec.action_kind != "continuous" or hasattr(env, "raise_if_failed"):
        return None
    shape = spec.action_shape
    low = np.asarray(spec.action_low, np.float32).reshape(shape)
    return low, np.asarray(spec.action_high, np.float32).reshape(shape)


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
        return (one_seed if num_seeds == 1 else jax.vmap(fn, axis_name=seeds.AXIS))(*args)

    return apply


def compile_run(run, env, eval_env, algo):
    """Futures of the compiled init, train call and evaluation (see `compile_program`).

    When the train call compiles on `fleetrl.xla_cpu`'s helper client, it is traced first and
    init and evaluation compile beside it on JAX's own client: PPO on CartPole was ready
    ~0.6 s sooner on a cold cache (the train call's compilation, ~2 s, is the longest step).
    Otherwise init compiles while Python traces the rest, then evaluation (~0.25 s, while the
    train call is traced), then the train call.
    """
    init = make_init(algo, env)
    keys = (seed_keys(run),)
    frozen = frozen_arg(run, [None] * run.train.num_seeds)
    train_call = make_train_call(
        algo, env, run.train.num_steps, run.iterations_per_call, freezable=bool(frozen)
    )
    evaluate = jax.jit(over_seeds(make_evaluate(algo, eval_env, run.train.eval_max_steps or None)))
    keys_0 = eval_keys(run, 0)
    aside = xla_cpu.compiles_elsewhere() and not hasattr(env, "raise_if_failed")
    if aside:
        static = program_config(run)
        carry = aot.out_shapes("init", init, keys, static)
        train = compile_program("train", run, env, train_call, (carry, *frozen))[0]
        init = compile_program("init", run, env, init, keys, light=True, aside=True)[0]
    else:
        init, carry = compile_program("init", run, env, init, keys, light=True)
    args = (carry.algo_state, keys_0)
    evaluate = compile_program("evaluate", run, eval_env, evaluate, args, light=True, aside=aside)[
        0
    ]
    if not aside:
        train = compile_program("train", run, env, train_call, (carry, *frozen))[0]
    return init, train, evaluate


def wait_compiled(futures, run_dir: Path, timeout: float) -> list:
    """The compiled programs of ``futures``, waited for under a `CallWatchdog` (``timeout``
    seconds, train.call_timeout): a compiler that never returns stops the run (exit code 3)."""
    watchdog = CallWatchdog(run_dir, timeout)
    watchdog.start(what="compiling the run's programs")
    try:
        return [future.result() for future in futures]
    finally:
        watchdog.stop()


def eval_keys(run: RunConfig, env_steps: int) -> np.ndarray:
    """Evaluation envs are seeded apart from training and identically across resumes."""
    seeds = [run.train.seed + i for i in range(run.train.num_seeds)]
    return raw_keys(seeds, salt=(1_000_003 + env_steps) & 0xFFFFFFFF)
