"""``fleetrl`` command line: train, presets, eval, plot.

Usage errors exit with code 2; an interrupted training (Ctrl+C, SIGTERM) exits with 130 after
writing a checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fleetrl.checkpoint import CheckpointError
from fleetrl.config import ConfigError

USAGE = """usage: fleetrl <command> ...

commands:
  train <preset> [--section.key value ...]   train a preset (see `fleetrl presets`)
  train --resume RUN_DIR [--section.key value ...]
                                             continue a run from its last checkpoint
  presets                                    list the presets, one line each
  eval RUN_DIR [--episodes N]                evaluate a run's last checkpoint
  plot RUN_DIR... --out curves.png [--metric NAME]
                                             learning curves, mean and 95% band over seeds
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


def cmd_train(argv: list[str]) -> int:
    from rich.console import Console

    from fleetrl.progress import print_summary
    from fleetrl.train import enable_compilation_cache, train

    resume = None
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
    else:
        if argv and argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        return _error("train needs a preset name (see `fleetrl presets`) or --resume RUN_DIR")
    run = parse_run_config(preset, overrides, prog)
    if resume:
        run = _keep_run_dir(run, resume)
    if run.train.num_seeds > 1:
        use_one_core_for_vmapped_seeds()
    enable_compilation_cache()
    console = Console(stderr=False)
    if run.log.progress:
        console.print(f"[bold]fleetrl[/] {run.preset}: {run.description}")
    result = train(
        run, resume=resume, command=sys.argv, console=console if run.log.progress else None
    )
    print_summary(console, result)
    return 130 if result.status == "interrupted" else 0


def use_one_core_for_vmapped_seeds() -> None:
    """Pin this process to one CPU before JAX creates its thread pool.

    Why: with jax 0.10.2, XLA:CPU's thread pool sometimes wedges while executing a program
    vmapped over seeds (2 of 3 runs of 16 seeds on our 2-core machine never returned); with one
    CPU, 5 of 5 ran (docs/BENCHMARKS.md, section 4). ``FLEETRL_VMAP_ONE_CORE=0`` opts out.
    """
    import os

    if os.environ.get("FLEETRL_VMAP_ONE_CORE", "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return
    cpus = os.sched_getaffinity(0)
    if len(cpus) > 1:
        os.sched_setaffinity(0, {min(cpus)})


def _keep_run_dir(run, resume: str):
    import dataclasses

    return dataclasses.replace(run, log=dataclasses.replace(run.log, run_dir=str(resume)))


def cmd_presets(argv: list[str]) -> int:
    from fleetrl.config import load_preset, preset_names

    for name in preset_names():
        run = load_preset(name)
        print(f"{name:28s} {run.description}")
    return 0


def cmd_eval(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fleetrl eval")
    parser.add_argument("run_dir")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per seed")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation envs")
    args = parser.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        return _error(f"--episodes: must be >= 1, got {args.episodes}")
    from fleetrl.evaluate import evaluate_run
    from fleetrl.train import enable_compilation_cache

    enable_compilation_cache()
    returns, lengths = evaluate_run(args.run_dir, args.episodes, args.seed)
    for i, (r, n) in enumerate(zip(returns, lengths, strict=True)):
        print(
            f"seed {i}: return {r.mean():.2f} +- {r.std():.2f}, length {n.mean():.1f} "
            f"({r.size} episodes)"
        )
    return 0


def cmd_plot(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fleetrl plot")
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--out", default="curves.png")
    parser.add_argument("--metric", default="eval/episodic_return")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    from fleetrl.plot import plot_runs

    out = plot_runs(args.run_dirs, args.out, metric=args.metric, title=args.title)
    print(f"wrote {out}")
    return 0


COMMANDS = {"train": cmd_train, "presets": cmd_presets, "eval": cmd_eval, "plot": cmd_plot}


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
        return COMMANDS[argv[0]](argv[1:])
    except ConfigError as error:
        return _error(str(error))
    except CheckpointError as error:
        return _error(f"refusing the checkpoint: {error}")
    except SystemExit as exit_:  # argparse/tyro usage errors
        return int(exit_.code or 0) if isinstance(exit_.code, int) else 2
    except FileNotFoundError as error:
        return _error(str(error))


if __name__ == "__main__":
    sys.exit(main())
