"""Before and after, in one invocation: the process wall time (and, for ``train``, the steady
steps/s of its summary.json) of one fleetrl command run from two source trees in turn (the
checkout this script lives in, and ``--before``, e.g. a ``git worktree add /tmp/before HEAD``),
each with its own compilation cache, warmed by one run
first. Rounds alternate the trees, so a machine that gets busier slows both alike.

    python benchmarks/compare_trees.py --before /tmp/before [--rounds 5] [--cold] -- \\
        train ppo-cartpole --train.seed 0 --log.progress False

Prints each round, then the medians and after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import median

AFTER = Path(__file__).resolve().parents[1]


def run(tree: Path, args: list[str], cache: str, out: str) -> tuple[float, float]:
    """``(seconds from spawn to exit, steps/s)`` of ``python -m fleetrl ARGS`` importing fleetrl
    from ``tree`` (steps/s: the compiled calls' speed in summary.json; NaN but for ``train``);
    each run writes its run directory under ``out``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "FLEETRL_CACHE_DIR": cache}
    root = tempfile.mkdtemp(dir=out)
    args = [*args, "--log.root", root] if args[0] == "train" else args
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "fleetrl", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    summaries = list(Path(root).glob("*/summary.json"))
    sps = json.loads(summaries[0].read_text())["steps_per_second"] if summaries else float("nan")
    return wall, sps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, type=Path, help="the other source tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="an empty cache for every run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the fleetrl command")
    options = parser.parse_args()
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    out = tempfile.mkdtemp(prefix="fleetrl-compare-")
    trees = {"before": options.before.resolve(), "after": AFTER}
    caches = {name: tempfile.mkdtemp(dir=out) for name in trees}
    if not options.cold:
        for name, tree in trees.items():
            run(tree, args, caches[name], out)  # warms the cache
    times: dict[str, list[float]] = {name: [] for name in trees}
    speeds: dict[str, list[float]] = {name: [] for name in trees}
    for round_ in range(options.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            cache = tempfile.mkdtemp(dir=out) if options.cold else caches[name]
            wall, sps = run(trees[name], args, cache, out)
            times[name].append(wall)
            speeds[name].append(sps)
        print(
            f"round {round_}: "
            + ", ".join(f"{n} {times[n][-1]:.2f} s ({speeds[n][-1]:,.0f} steps/s)" for n in trees)
        )
    before, after = median(times["before"]), median(times["after"])
    print(
        f"median wall: before {before:.2f} s, after {after:.2f} s, "
        f"after / before {after / before:.3f}"
    )
    before, after = median(speeds["before"]), median(speeds["after"])
    print(
        f"median steps/s: before {before:,.0f}, after {after:,.0f}, "
        f"after / before {after / before:.3f}"
    )


if __name__ == "__main__":
    main()
