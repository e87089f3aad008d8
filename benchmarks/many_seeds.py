"""Many seeds in one program: K seeds of PPO CartPole (CleanRL settings) vmapped in one
compiled program, against one seed, and against Stable-Baselines3 runs one after another.

SB3's 16 sequential runs of 500k steps take about half an hour here, so by default SB3's steady
speed is measured on one run of --sb3-steps and projected to 16 x 500k (printed as projected);
--sb3-runs runs them for real, one process per seed (seeds 0..K-1), and times the whole.

    python benchmarks/many_seeds.py [--seeds 1 8 16] [--steps 500000] [--sb3-runs]
"""

from __future__ import annotations

import argparse
import time

from common import DEFAULT_PEER_PYTHON, run_fleetrl, run_peer, steady_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--sb3-steps", type=int, default=100_000)
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument(
        "--sb3-runs", action="store_true", help="run SB3 K times for real instead of projecting"
    )
    args = parser.parse_args()
    wall = {}
    for k in args.seeds:
        args_k = steady_args(args.steps, num_seeds=k, call_timeout=180, seed=0)
        r = run_fleetrl("ppo-cartpole", args_k, cache_dir=None)
        wall[k] = r["process_wall"]
        solved = sum(x >= 475 for x in r["eval_returns"])
        print(
            f"fleetrl {k:3d} seeds x {args.steps:,} steps: {r['process_wall']:.1f} s wall "
            f"(compile {r['compile_time']:.1f} s), {r['steps_per_second']:,.0f} steps/s total, "
            f"{solved}/{k} seeds with final eval >= 475",
            flush=True,
        )
    base = min(wall)
    for k in wall:
        if k != base:
            print(
                f"  {k} seeds took {wall[k] / wall[base]:.2f}x the wall time of {base} "
                f"(sequential would be {k / base:.0f}x)"
            )
    if args.skip_peer:
        return
    k = max(wall)
    if args.sb3_runs:
        start = time.time()
        for seed in range(k):
            run_peer(
                args.peer_python,
                "sb3_cartpole.py",
                ["--mode", "steady", "--steps", str(args.steps), "--seed", str(seed)],
            )
        sb3_wall, how = time.time() - start, "measured, one process per run"
    else:
        sb3 = run_peer(
            args.peer_python,
            "sb3_cartpole.py",
            ["--mode", "steady", "--steps", str(args.sb3_steps)],
        )
        sb3_wall = k * args.steps / sb3["sps"]
        how = f"projected from {sb3['sps']:,.0f} steps/s over {args.sb3_steps:,} steps"
    print(f"SB3 PPO (CleanRL settings), {k} sequential runs of {args.steps:,} steps: "
          f"{sb3_wall:,.0f} s ({how})")  # fmt: skip
    print(f"ratio SB3 / fleetrl for {k} seeds: {sb3_wall / wall[k]:.1f}x")


if __name__ == "__main__":
    main()
