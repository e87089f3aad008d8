"""End to end: seconds from process start until the evaluation return first reaches 475, A2C.

fleetrl's a2c-cartpole (RL-Zoo's A2C settings: 8 envs x 5 steps, RMSProp 7e-4, n-step returns,
on gymnax CartPole inside the compiled program) against Stable-Baselines3's A2C with the same
RL-Zoo settings (peers/sb3_a2c_cartpole.py). Both evaluate every 2,048 env steps on 10
deterministic episodes and stop at the threshold. fleetrl cold: an empty compilation cache per
run; warm: a cache filled by one earlier run. SB3 cold: from the start of its process (torch
imports included); warm: a second run in the same process. Medians over seeds.

    python benchmarks/a2c_time_to_threshold.py [--seeds 5] [--peer-python PY]
"""

from __future__ import annotations

import argparse
import tempfile

from common import DEFAULT_PEER_PYTHON, median, run_peer
from ppo_time_to_threshold import THRESHOLD, fleetrl_time

PRESET = "a2c-cartpole"


def peer_times(python: str, seed: int) -> tuple[float, float, int]:
    """SB3's (cold seconds, warm seconds, env steps of the cold run); inf where not reached."""
    sb3 = run_peer(python, "sb3_a2c_cartpole.py", ["--seed", str(seed)])
    cold = sb3["time_to_threshold_s"] if sb3["reached"] else float("inf")
    warm = sb3["warm_time_to_threshold_s"] if sb3["warm_reached"] else float("inf")
    return cold, warm, sb3["steps_to_threshold"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    warm_cache = tempfile.mkdtemp(prefix="fleetrl-warm-cache-")
    fleetrl_time(0, warm_cache, PRESET)  # fills the warm cache
    rows = {"cold": [], "warm": [], "sb3_cold": [], "sb3_warm": []}
    for seed in range(args.seeds):
        cold = fleetrl_time(seed, tempfile.mkdtemp(prefix="fleetrl-cold-cache-"), PRESET)
        warm = fleetrl_time(seed, warm_cache, PRESET)
        rows["cold"].append(cold[0])
        rows["warm"].append(warm[0])
        line = f"seed {seed}: fleetrl cold {cold[0]:.2f} s ({cold[1]} steps), warm {warm[0]:.2f} s"
        if not args.skip_peer:
            sb3_cold, sb3_warm, steps = peer_times(args.peer_python, seed)
            rows["sb3_cold"].append(sb3_cold)
            rows["sb3_warm"].append(sb3_warm)
            line += f" | SB3 cold {sb3_cold:.2f} s ({steps} steps), warm {sb3_warm:.2f} s"
        print(line, flush=True)
    cold, warm = median(rows["cold"]), median(rows["warm"])
    print(f"\nmedian seconds from process start to eval return >= {THRESHOLD:.0f}:")
    print(f"  fleetrl a2c-cartpole: cold cache {cold:.2f} s, warm cache {warm:.2f} s")
    if rows["sb3_cold"]:
        sb3_cold, sb3_warm = median(rows["sb3_cold"]), median(rows["sb3_warm"])
        print(f"  SB3 A2C (RL-Zoo settings): cold {sb3_cold:.2f} s, warm {sb3_warm:.2f} s")
        print(f"ratio SB3 / fleetrl: cold {sb3_cold / cold:.1f}x, warm {sb3_warm / warm:.1f}x")


if __name__ == "__main__":
    main()
