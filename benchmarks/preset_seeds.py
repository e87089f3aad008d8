"""Does a preset hold across seeds? Train it on N seeds; report steps and seconds to a return.

Per seed and over the seeds (median and worst): the env steps and seconds to an evaluation
return threshold, and the final and best evaluation returns.

A device-env preset (env.backend gymnax, or auto resolving to it) trains all seeds in one
process, vmapped (``--train.num-seeds N``); a host preset (gymnasium) runs one process per
seed, one after another. Extra arguments after ``--`` are passed to ``fleetrl train``.

    python benchmarks/preset_seeds.py <preset> [--seeds 5] [--first-seed 0] [--threshold X]
        [--cache-dir DIR] [-- --train.total-steps 200000 ...]

The threshold defaults to the preset's ``train.stop_at_return``. "final" is a seed's last
logged evaluation (for a vmapped seed that reached the stop rule early, a re-evaluation of
the parameters it stopped with); seconds count from the start of the seed's process. The
last line printed is the whole result as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from common import median, run_fleetrl


def preset_facts(preset: str, extra: list[str]) -> tuple[str, float | None]:
    """(resolved env backend, train.stop_at_return) of ``preset`` with ``extra`` overrides."""
    from fleetrl.cli import parse_run_config
    from fleetrl.envs import resolve_backend

    run = parse_run_config(preset, extra, f"fleetrl train {preset}")
    return resolve_backend(run.env), run.train.stop_at_return


def seed_results(result: dict, seeds: list[int], threshold: float) -> list[dict]:
    """Per seed, from one run's metrics records (a list per record when vmapped)."""
    rows = [{"seed": s, "steps": None, "seconds": None, "final": None, "best": None} for s in seeds]
    for record in result["records"]:
        value = record.get("eval/episodic_return")
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for row, v in zip(rows, values, strict=True):
            if v is None or math.isnan(v):  # an evaluation where no episode ended
                continue
            row["final"] = v
            row["best"] = v if row["best"] is None else max(row["best"], v)
            if row["steps"] is None and v >= threshold:
                row["steps"], row["seconds"] = record["step"], record["time"]
    for row in rows:
        row["wall"] = result["process_wall"]
    return rows


def train_seeds(
    preset: str, seeds: list[int], vmapped: bool, extra: list[str], cache: str | None
) -> list[tuple[dict, list[int]]]:
    """(run result, its seeds) of ``preset`` trained on ``seeds``: one vmapped run, or one
    process per seed."""
    base = ["--log.progress", "False"]
    if vmapped:
        args = [*base, "--train.num-seeds", str(len(seeds)), "--train.seed", str(seeds[0])]
        return [(run_fleetrl(preset, [*args, *extra], cache), seeds)]
    runs = []
    for seed in seeds:
        result = run_fleetrl(preset, [*base, "--train.seed", str(seed), *extra], cache)
        print(f"  seed {seed} done: {result['process_wall']:.1f} s", flush=True)
        runs.append((result, [seed]))
    return runs


def summarize(rows: list[dict]) -> dict:
    """Median and worst over seeds; a seed that never reached the threshold counts as the
    worst possible (infinite steps), so a median or worst it decides is None (not reached)."""

    def finite(x: float) -> float | None:
        return None if math.isinf(x) else x

    steps = [math.inf if r["steps"] is None else r["steps"] for r in rows]
    seconds = [math.inf if r["seconds"] is None else r["seconds"] for r in rows]
    finals = [-math.inf if r["final"] is None else r["final"] for r in rows]
    return {
        "reached": sum(r["steps"] is not None for r in rows),
        "num_seeds": len(rows),
        "median_steps": finite(median(steps)),
        "worst_steps": finite(max(steps)),
        "median_seconds": finite(median(seconds)),
        "worst_seconds": finite(max(seconds)),
        "median_final": finite(median(finals)),
        "worst_final": finite(min(finals)),
        "median_wall": median([r["wall"] for r in rows]),
    }


def show(value, fmt: str) -> str:
    return "not reached" if value is None else format(value, fmt)


def report(preset: str, threshold: float, rows: list[dict], summary: dict) -> None:
    print(f"\n{preset}: evaluation return >= {threshold:g}")
    print(f"{'seed':>6} {'steps to':>12} {'s to':>8} {'final':>8} {'best':>8} {'wall s':>8}")
    for r in rows:
        final, best = ("-" if r[k] is None else f"{r[k]:.1f}" for k in ("final", "best"))
        print(
            f"{r['seed']:>6} {show(r['steps'], ',d'):>12} {show(r['seconds'], '.1f'):>8} "
            f"{final:>8} {best:>8} {r['wall']:>8.1f}"
        )
    s = summary
    print(f"reached: {s['reached']}/{s['num_seeds']} seeds")
    print(f"steps to threshold: median {show(s['median_steps'], ',.0f')}, "
          f"worst {show(s['worst_steps'], ',.0f')}")  # fmt: skip
    print(f"seconds to threshold: median {show(s['median_seconds'], '.1f')}, "
          f"worst {show(s['worst_seconds'], '.1f')}")  # fmt: skip
    print(f"final return: median {show(s['median_final'], '.1f')}, "
          f"worst {show(s['worst_final'], '.1f')}")  # fmt: skip
    print(json.dumps({"preset": preset, "threshold": threshold, **s, "seeds": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="-- OVERRIDES...: passed to fleetrl train"
    )
    parser.add_argument("preset")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, help="default: the preset's stop_at_return")
    parser.add_argument("--cache-dir", help="FLEETRL_CACHE_DIR of the runs (default: off, cold)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]  # extra: for fleetrl train
    backend, stop_at = preset_facts(args.preset, extra)
    threshold = args.threshold if args.threshold is not None else stop_at
    if threshold is None:
        parser.error(f"{args.preset} has no train.stop_at_return: give --threshold")
    if args.seeds < 1:
        parser.error(f"--seeds: must be >= 1, got {args.seeds}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    vmapped = backend == "gymnax"
    how = "one vmapped run" if vmapped else "one process per seed"
    print(f"{args.preset} ({backend}): seeds {seeds[0]}-{seeds[-1]}, {how}", flush=True)
    runs = train_seeds(args.preset, seeds, vmapped, extra, args.cache_dir)
    rows = [row for result, group in runs for row in seed_results(result, group, threshold)]
    report(args.preset, threshold, rows, summarize(rows))


if __name__ == "__main__":
    main()
