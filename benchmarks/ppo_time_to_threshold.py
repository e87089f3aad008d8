"""End to end: seconds from process start until the evaluation return first reaches 475.

fleetrl's flagship preset (ppo-cartpole) against Stable-Baselines3 PPO with RL-Zoo's CartPole
settings. Both evaluate every 2,048 env steps on 10 deterministic episodes and stop at the
threshold. fleetrl is measured with a cold JAX compilation cache (a new empty folder per run)
and a warm one (filled by one earlier run of the same command). Medians over seeds.

    python benchmarks/ppo_time_to_threshold.py [--seeds 5] [--peer-python PY]
"""

from __future__ import annotations

import argparse
import tempfile

from common import DEFAULT_PEER_PYTHON, first_time_reaching, median, run_fleetrl, run_peer

THRESHOLD = 475.0
ARGS = [
    "--train.eval-every",
    "2048",
    "--train.log-every",
    "2048",
    "--train.eval-episodes",
    "10",
    "--train.stop-at-return",
    str(THRESHOLD),
    "--train.checkpoint-every",
    "0",
]


def fleetrl_time(
    seed: int, cache_dir: str, preset: str = "ppo-cartpole"
) -> tuple[float, int, float]:
    """(seconds from process start to the threshold, env steps then, process wall time)."""
    result = run_fleetrl(preset, [*ARGS, "--train.seed", str(seed)], cache_dir)
    reached = first_time_reaching(result["records"], THRESHOLD)
    if reached is None:
        return float("inf"), result["env_steps"], result["process_wall"]
    return reached[0], reached[1], result["process_wall"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    warm_cache = tempfile.mkdtemp(prefix="fleetrl-warm-cache-")
    fleetrl_time(0, warm_cache)  # fills the warm cache
    rows = {"cold": [], "warm": [], "sb3": []}
    for seed in range(args.seeds):
        rows["cold"].append(fleetrl_time(seed, tempfile.mkdtemp(prefix="fleetrl-cold-cache-")))
        rows["warm"].append(fleetrl_time(seed, warm_cache))
        line = (
            f"seed {seed}: fleetrl cold {rows['cold'][-1][0]:.2f} s ({rows['cold'][-1][1]} steps),"
            f" warm {rows['warm'][-1][0]:.2f} s"
        )
        if not args.skip_peer:
            sb3 = run_peer(args.peer_python, "sb3_cartpole.py", ["--seed", str(seed)])
            t = sb3["time_to_threshold_s"] if sb3["reached"] else float("inf")
            rows["sb3"].append((t, sb3["steps_to_threshold"], t))
            line += f" | SB3 {t:.2f} s ({sb3['steps_to_threshold']} steps)"
        print(line, flush=True)
    cold = median([r[0] for r in rows["cold"]])
    warm = median([r[0] for r in rows["warm"]])
    print(f"\nmedian seconds from process start to eval return >= {THRESHOLD:.0f}:")
    print(
        f"  fleetrl, cold compilation cache: {cold:.2f} s "
        f"(process exit {median([r[2] for r in rows['cold']]):.2f} s)"
    )
    print(
        f"  fleetrl, warm compilation cache: {warm:.2f} s "
        f"(process exit {median([r[2] for r in rows['warm']]):.2f} s)"
    )
    if rows["sb3"]:
        sb3 = median([r[0] for r in rows["sb3"]])
        print(f"  Stable-Baselines3 (RL-Zoo settings): {sb3:.2f} s")
        print(f"ratio SB3 / fleetrl: cold {sb3 / cold:.1f}x, warm {sb3 / warm:.1f}x")


if __name__ == "__main__":
    main()
