"""``fleetrl`` command line: train, presets, eval, plot.

Exit codes: 0 done, 1 a runtime failure (an env error, divergence, a final checkpoint that could
not be written), 2 a usage error (bad config, unknown or untrusted env, missing extra), 3 a
compiled call or evaluation that never returned, 128 + the signal after Ctrl+C (130) or SIGTERM
(143), with a checkpoint when the training loop was running.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from fleetrl.config import ConfigError
from fleetrl.interrupts import release_and_exit
from fleetrl.xla_cpu import use_one_xla_thread

USAGE = """usage: fleetrl <command> ...

commands:
  train <preset> [--section.key value ...]   train a preset (see `fleetrl presets`)
  train <preset|--resume RUN_DIR> --trust-module MOD [...]
                                             allow env.id MOD:ClassName from a preset or run
                                             config (a module named by --env.id on the command
                                             line is trusted; also: FLEETRL_TRUST_MODULES)
  train <preset> --log.run-dir DIR --resume auto [--allow-config-changes] [...]
                                             continue the run in DIR if there is one, else
                                             start it there (rerun the same command after a
                                             crash or preemption)
  train --resume RUN_DIR [--allow-config-changes] [--section.key value ...]
                                             continue a run from its last checkpoint; only
                                             train.total_steps, the log/eval/checkpoint
                                             cadences and log.* may change unless allowed
  presets                                    list the presets, one line each
  eval RUN_DIR [--episodes N] [--trust-module MOD]
                                             evaluate a run's last checkpoint
  plot RUN_DIR... --out curves.png [--metric NAME] [--no-group]
                                             learning curves, mean and 95% band over seeds
                                             (run dirs differing only in seed pooled)
  visualize RUN_DIR --outdir DIR [--episodes N] [--seed S] [--trust-module MOD]
                                             MP4 of each episode of the last checkpoint
"""


def _error(message: str) -> int:
    print(f"fleetrl: error: {message}", file=sys.stderr)
    return 2


def parse_run_config(preset: str, overrides: list[str], prog: str):
    """Load ``preset`` (a name, a YAML path, or a run's config.yaml) and apply CLI overrides."""
    import tyro

    from fleetrl.algos import get_algorithm
    from fleetrl.config import RunConfig, load_preset

    base = load_preset(preset)
    config_type = RunConfig[get_algorithm(base.algorithm).Config]
    return tyro.cli(
        config_type,
        default=base,
        args=overrides,
        prog=prog,
        config=(tyro.conf.FlagConversionOff,),
    )


def take_trust(argv: list[str]) -> list[str]:
    """Remove ``--trust-module MOD`` from ``argv`` and trust ``MOD``; also trust the module of an
    ``--env.id module:Class`` typed on this command line (`fleetrl.envs.trust`)."""
    from fleetrl.envs import trust

    rest, at = [], 0
    while at < len(argv):
        arg = argv[at]
        if arg == "--trust-module" or arg.startswith("--trust-module="):
            value = arg.partition("=")[2] if "=" in arg else None
            if value is None:
                if at + 1 >= len(argv):
                    raise ConfigError("--trust-module: needs a module path")
                value, at = argv[at + 1], at + 1
            trust.trust_modules(value)
        else:
            if arg in ("--env.id", "--env-id") and at + 1 < len(argv):
                value = argv[at + 1]
            elif arg.startswith(("--env.id=", "--env-id=")):
                value = arg.partition("=")[2]
            else:
                value = ""
            module = trust.module_of(value)
            if module:
                trust.trust_modules(module)
            rest.append(arg)
        at += 1
    return rest


def cmd_train(argv: list[str]) -> int:
    from rich.console import Console

    from fleetrl.programs import enable_compilation_cache
    from fleetrl.progress import print_summary
    from fleetrl.train import train

    resume = None
    allow_changes = "--allow-config-changes" in argv  # a resume may change any setting
    argv = take_trust([arg for arg in argv if arg != "--allow-config-changes"])
    if argv and argv[0] == "--resume":
        if len(argv) < 2:
            return _error("--resume needs a run directory")
        resume, overrides = argv[1], argv[2:]
        config_path = Path(resume) / "config.yaml"
        if not config_path.is_file():
            return _error(f"--resume: {config_path} not found; is {resume} a run directory?")
        preset, prog = str(config_path), f"fleetrl train --resume {resume}"
    elif argv and not argv[0].startswith("-"):
        preset, overrides, prog = argv[0], argv[1:], f"fleetrl train {argv[0]}"
        if "--resume" in overrides:  # `--resume auto`: continue the run in log.run_dir, if any
            at = overrides.index("--resume")
            if overrides[at + 1 : at + 2] != ["auto"]:
                return _error(
                    "after a preset, --resume takes `auto` (continue the run in --log.run-dir "
                    "if it has one, else start it); to continue a run: train --resume RUN_DIR"
                )
            overrides, resume = overrides[:at] + overrides[at + 2 :], "auto"
    else:
        if argv and argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        return _error("train needs a preset name (see `fleetrl presets`) or --resume RUN_DIR")
    run = parse_run_config(preset, overrides, prog)
    may_start = resume == "auto"
    if may_start:
        if not run.log.run_dir:
            return _error("--resume auto needs --log.run-dir: the directory to continue or start")
        resume = run.log.run_dir if (Path(run.log.run_dir) / "config.yaml").is_file() else None
    elif resume:
        run = _keep_run_dir(run, resume)
    if run.train.num_seeds > 1:
        use_one_core_for_vmapped_seeds()
    elif _one_xla_thread_pays(run):
        use_one_xla_thread()
    enable_compilation_cache()
    console = Console(stderr=False)
    if run.log.progress:
        console.print(f"[bold]fleetrl[/] {run.preset}: {run.description}")
    result = train(
        run,
        resume=resume,
        allow_config_changes=allow_changes,
        resume_may_start=may_start,
        command=sys.argv,
        console=console if run.log.progress else None,
    )
    print_summary(console, result)
    return _exit_code(result)


def _exit_code(result) -> int:
    """The exit code of a finished `train`, with a line on stderr for a failure."""
    if result.status == "diverged":
        from fleetrl import checkpoint

        latest = checkpoint.latest(result.run_dir)
        kept = (
            f"the last checkpoint ({latest}) was written before every update was skipped"
            if latest
            else "no checkpoint was written"
        )
        print(f"fleetrl: error: training diverged: {result.detail}; {kept}", file=sys.stderr)
        return 1
    if result.status == "unsaved":
        print(
            f"fleetrl: error: the final checkpoint was not written: {result.detail}",
            file=sys.stderr,
        )
        return 1
    if result.status == "interrupted":
        return 128 + (result.signal or signal.SIGINT)  # 130 after Ctrl+C, 143 after SIGTERM
    return 0


def use_one_core_for_vmapped_seeds() -> None:
    """Pin this process to one CPU before JAX creates its thread pool.

    Why: with jax 0.10.2, XLA:CPU's thread pool sometimes wedges while executing a program
    vmapped over seeds (2 of 3 runs of 16 seeds on our 2-core machine never returned); with one
    CPU, 5 of 5 ran (docs/BENCHMARKS.md, section 4). ``FLEETRL_VMAP_ONE_CORE=0`` opts out.
    """

    if os.environ.get("FLEETRL_VMAP_ONE_CORE", "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return
    cpus = os.sched_getaffinity(0)
    if len(cpus) > 1:
        os.sched_setaffinity(0, {min(cpus)})


def _one_xla_thread_pays(run) -> bool:
    if run.train.xla_threads != "auto":
        return run.train.xla_threads == "one"
    from fleetrl.envs import resolve_backend

    # One thread runs a single seed's tiny kernels 15-35% faster (docs/BENCHMARKS.md, section
    # 1); a CNN's convolutions use every core. Device-env programs still compile on every core
    # (fleetrl.xla_cpu). Host envs stepped in this process run inside XLA's callback, where a
    # second XLA thread only competes with the env for the two cores (PPO at RL-Zoo's CartPole
    # settings ran faster with one, section 6); with worker processes the default pool was as
    # fast or faster (HalfCheetah: 9.3k and 8.2k steps/s against 8.5k and 7.9k).
    mlp = getattr(run.algo, "network", "mlp") == "mlp"
    return mlp and (resolve_backend(run.env) == "gymnax" or run.env.num_workers == 0)


def _keep_run_dir(run, resume: str):
    import dataclasses

    return dataclasses.replace(run, log=dataclasses.replace(run.log, run_dir=str(resume)))


def cmd_presets(argv: list[str]) -> int:
    from fleetrl.config import load_preset, preset_names

    for name in preset_names():
        run = load_preset(name)
        print(f"{name:28s} {run.description}")
    return 0


def _add_trust_argument(parser) -> None:
    parser.add_argument(
        "--trust-module",
        action="append",
        default=[],
        metavar="MOD",
        help="allow the run's env.id MOD:ClassName (importing MOD runs its code)",
    )


def _trust(args) -> None:
    from fleetrl.envs import trust

    trust.trust_modules(*args.trust_module)


def cmd_eval(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fleetrl eval")
    parser.add_argument("run_dir")
    _add_trust_argument(parser)
    parser.add_argument("--episodes", type=int, default=None, help="episodes per seed")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation envs")
    args = parser.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        return _error(f"--episodes: must be >= 1, got {args.episodes}")
    from fleetrl.evaluate import finished_means
    from fleetrl.programs import enable_compilation_cache
    from fleetrl.restore import evaluate_run

    _trust(args)
    enable_compilation_cache()
    result = evaluate_run(args.run_dir, args.episodes, args.seed)
    means, lengths = finished_means(*result)
    for i, (r, done) in enumerate(zip(result.returns, result.finished, strict=True)):
        cut = f"; {r.size - done.sum()} did not end in time" if not done.all() else ""
        std = f" +- {r[done].std():.2f}" if done.any() else " (none ended)"
        print(
            f"seed {i}: return {means[i]:.2f}{std}, length {lengths[i]:.1f} "
            f"({r.size} episodes{cut})"
        )
    return 0


def cmd_plot(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fleetrl plot")
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--out", default="curves.png", help="image; its suffix sets the format")
    parser.add_argument("--metric", default="eval/episodic_return")
    parser.add_argument("--title", default=None)
    parser.add_argument(
        "--no-group",
        action="store_true",
        help="one curve per run dir (default: pool the seeds of run dirs of one configuration)",
    )
    args = parser.parse_args(argv)
    import warnings

    from fleetrl.plot import PlotError, draw, load_curves

    try:
        with warnings.catch_warnings(record=True) as caught:  # a cut-off last line: a note
            warnings.simplefilter("always", UserWarning)
            curves = load_curves(args.run_dirs, args.metric, group=not args.no_group)
        out = draw(curves, args.out, args.metric, args.title)
    except PlotError as error:
        return _error(str(error))
    for warning in caught:
        print(f"fleetrl: warning: {warning.message}", file=sys.stderr)
    for curve in curves:
        print(curve.summary())
    print(f"wrote {out}")
    return 0


def cmd_visualize(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fleetrl visualize")
    parser.add_argument("run_dir")
    _add_trust_argument(parser)
    parser.add_argument("--outdir", required=True, help="folder for the MP4s and episodes.json")
    parser.add_argument("--episodes", type=int, default=None, help="default: eval_episodes, <= 5")
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i")
    args = parser.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        return _error(f"--episodes: must be >= 1, got {args.episodes}")
    from fleetrl.programs import enable_compilation_cache
    from fleetrl.visualize import VideoError, visualize_run

    _trust(args)
    enable_compilation_cache()
    try:
        episodes = visualize_run(args.run_dir, args.outdir, args.episodes, args.seed)
    except VideoError as error:  # a missing package or library, not a usage error
        _error(str(error))
        return 1
    for e in episodes:
        print(f"episode {e['episode']}: return {e['return']:.2f}, length {e['length']}")
    print(f"wrote {len(episodes)} videos and episodes.json to {args.outdir}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "presets": cmd_presets,
    "eval": cmd_eval,
    "plot": cmd_plot,
    "visualize": cmd_visualize,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return _error(f"unknown command {argv[0]!r}.{hint}\n{USAGE}")
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:  # called from Python (the program exits in `_exit_on_signal`)
        print(f"fleetrl: interrupted during `{argv[0]}`", file=sys.stderr)
        return 130


def _dispatch(argv: list[str]) -> int:
    from fleetrl.checkpoint import CheckpointError  # flax: imported after `run` set SIGINT

    try:
        return COMMANDS[argv[0]](argv[1:])
    except ConfigError as error:
        return _error(str(error))
    except CheckpointError as error:
        return _error(f"refusing the checkpoint: {error}")
    except SystemExit as exit_:  # argparse/tyro usage errors
        return int(exit_.code or 0) if isinstance(exit_.code, int) else 2
    except FileNotFoundError as error:
        return _error(str(error))
    except BrokenPipeError:  # `fleetrl presets | head -3`: the reader left, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 128 + signal.SIGPIPE
    except OSError as error:  # disk full, permissions: a message, not a traceback
        print(f"fleetrl: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        from fleetrl.distributed import DistributedError
        from fleetrl.envs.errors import EnvPoolError, UnsupportedEnvError

        if isinstance(error, DistributedError):  # a lost actor, restarts off or used up
            _error(with_notes(error))
            return 1
        if not isinstance(error, EnvPoolError):
            raise
        _error(with_notes(error))
        # an env that fails is not a usage error; one the pool cannot run at all (old gym API,
        # spaces it does not support) is: no rerun helps
        return 2 if isinstance(error, UnsupportedEnvError) else 1


def with_notes(error: BaseException) -> str:
    """``str(error)`` and the notes added to it (``add_note``), which only tracebacks show."""
    return "\n".join([str(error), *getattr(error, "__notes__", ())])


def _exit_on_signal(signum, frame) -> None:
    """SIGINT or SIGTERM outside the training loop, which installs its own handler to
    checkpoint first (fleetrl.interrupts.StopSignals): say so in a line and exit at once with
    128 + the signal (130, 143). SIGTERM's default action killed the process without a word
    and without stopping host-env workers (the resource tracker then warned of leaks).

    Why not Python's KeyboardInterrupt: raised at an arbitrary bytecode, it was lost in 3 of 5
    Ctrl+C during startup (Python drops an exception raised inside a garbage-collector callback,
    and JAX runs one at every collection), and raised inside Python code that C++ called it
    aborted the process (nanobind's ``std::terminate``); and an XLA compilation on a helper
    thread cannot be cancelled, so Python would wait for it at exit. Nothing is lost: committed
    checkpoints and the run directory's files are written atomically, the ``flock`` goes with
    the process, and host-env worker processes are stopped first (`release_and_exit`).
    """
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    try:  # the main thread may be inside a write to these very streams
        sys.stdout.flush()
        print(f"\nfleetrl: {what}", file=sys.stderr)
        sys.stderr.flush()
    except (RuntimeError, OSError):
        pass
    release_and_exit(128 + signum)


def run() -> None:
    """The ``fleetrl`` program (console script and ``python -m fleetrl``)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where ignored
        signal.signal(signal.SIGINT, _exit_on_signal)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_signal)
    sys.exit(main())


if __name__ == "__main__":
    run()
