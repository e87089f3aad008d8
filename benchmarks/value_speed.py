"""Steady env steps/s of value-based presets, and the ratios between pairs of runs.

Each case trains a preset in a fresh process for ``--steps`` env steps with evaluation and
checkpoints off, learning from the start (``learning_starts`` 0 unless a case sets it), and
reports env steps/s over the compiled calls after the first (the first holds compilation).
Cases run in the order given; pairs are printed as ratios. Comparisons made with it
(docs/BENCHMARKS.md section 14):

    python benchmarks/value_speed.py per     # prioritized replay's cost, CartPole and MinAtar
    python benchmarks/value_speed.py pqn     # PQN against DQN on MinAtar Breakout
    python benchmarks/value_speed.py atari   # DQN and Rainbow on Atari Pong, CPU budget
"""

from __future__ import annotations

import argparse
import json

from common import median, run_fleetrl

NO_EVAL = ["--train.eval-every", "0", "--train.checkpoint-every", "0", "--train.seed", "0"]

# name: (preset, env steps, env steps per compiled call, extra overrides)
CASES = {
    "dqn-cartpole": ("dqn-cartpole", 51_200, 2_560, ["--algo.learning-starts", "0"]),
    "dqn-cartpole-per": (
        "dqn-cartpole",
        51_200,
        2_560,
        ["--algo.learning-starts", "0", "--algo.prioritized", "True"],
    ),
    "dqn-minatar": ("dqn-breakout-minatar", 65_536, 8_192, ["--algo.learning-starts", "0"]),
    "dqn-minatar-per": (
        "dqn-breakout-minatar",
        65_536,
        8_192,
        ["--algo.learning-starts", "0", "--algo.prioritized", "True"],
    ),
    "rainbow-minatar": ("rainbow-breakout-minatar", 65_536, 8_192, ["--algo.learning-starts", "0"]),
    "pqn-minatar": ("pqn-breakout-minatar", 655_360, 131_072, []),
    "dqn-pong": ("dqn-pong", 12_288, 2_048, ["--algo.learning-starts", "0"]),
    # the preset's 1M-transition buffer (7.5 GB, twice that while a call copies its state)
    # does not fit beside other jobs on this 24 GB machine; the buffer size does not change the
    # cost of a gradient step
    "rainbow-pong": (
        "rainbow-pong",
        12_288,
        2_048,
        ["--algo.learning-starts", "0", "--algo.buffer-size", "100000"],
    ),
}
GROUPS = {
    "per": [("dqn-cartpole-per", "dqn-cartpole"), ("dqn-minatar-per", "dqn-minatar")],
    "pqn": [("pqn-minatar", "dqn-minatar"), ("rainbow-minatar", "dqn-minatar")],
    "atari": [("rainbow-pong", "dqn-pong")],
}


def steady_sps(name: str) -> float:
    preset, steps, per_call, extra = CASES[name]
    args = ["--train.total-steps", str(steps), "--train.log-every", str(per_call)]
    summary = run_fleetrl(preset, [*args, *NO_EVAL, *extra], cache_dir=None)
    sps = [r["charts/sps"] for r in summary["records"] if "charts/sps" in r][1:]
    value = median(sps)
    print(
        f"{name:18s} {preset:26s} {value:10,.0f} env steps/s (median of {len(sps)} calls)",
        flush=True,
    )
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", choices=sorted(GROUPS))
    args = parser.parse_args()
    names = list(dict.fromkeys(name for pair in GROUPS[args.group] for name in pair))
    sps = {name: steady_sps(name) for name in names}
    ratios = {f"{a}/{b}": sps[a] / sps[b] for a, b in GROUPS[args.group]}
    for label, ratio in ratios.items():
        print(f"ratio {label}: {ratio:.3f}")
    print(json.dumps({"sps": sps, "ratios": ratios}))


if __name__ == "__main__":
    main()
