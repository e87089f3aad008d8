"""End to end: seconds from process start until the evaluation return first reaches 475, DQN;
then training steps/s at the same 0.5 gradient steps per env step.

fleetrl's dqn-cartpole (RL-Zoo's DQN CartPole settings: 8 envs x 32 steps = 256 env steps per
128 gradient steps of batch 64, Adam 2.3e-3, 256-256 ReLU, target copied every 10 env steps as
SB3 counts them, epsilon 1 -> 0.04 over 16%, gymnax CartPole inside the compiled program; with
--preset dqn-cartpole-gym, gymnasium CartPole stepped on the host) against Stable-Baselines3's
DQN with the same RL-Zoo settings (peers/sb3_dqn_cartpole.py: one env, as the Zoo, training 128
gradient steps every 256 env steps). Both evaluate every 4,096 env steps on 10 deterministic
episodes and stop at a mean of 475, within a budget of 50k env steps (the Zoo's n_timesteps;
the preset's 50k, rounded up to whole compiled calls). fleetrl cold: an empty compilation cache
per run; warm: a cache filled by one earlier run. SB3 cold: from the start of its process (torch
imports included); warm: a second run in the same process. Medians over seeds; a seed that does
not reach the threshold within the budget counts as infinitely slow.

Steps/s (--sps-steps N, 0 skips): training without evaluation, learning started. fleetrl: N env
steps (eval only at the end, not timed, no checkpoints); steps/s of its compiled calls after the
first (the first holds the learning_starts steps without gradient steps), compile time apart.
SB3: N env steps after learning started (peers/sb3_dqn_cartpole.py --steps-per-second). Both do
0.5 gradient steps per env step; the preset's ratio is printed.

On a shared machine, pass --peer-torch-threads 1: torch's default of one thread per core
collapses when another process holds a core (SB3 DQN, 2 cores, one busy: 42 steps/s with 2
threads against 547 with 1), while fleetrl's MLP device presets execute on one XLA thread.
--log-every N sets fleetrl's train.log_every, the env steps of one compiled call (the preset's
2,048 fuse 8 iterations into a call; 256 makes each iteration a call of its own).

    python benchmarks/dqn_time_to_threshold.py [--preset dqn-cartpole] [--seeds 5]
        [--sps-steps 51200] [--peer-sps-steps 20480] [--peer-python PY] [--skip-peer]
        [--peer-torch-threads 1] [--skip-ttt] [--log-every N] [--threshold 475]
"""

from __future__ import annotations

import argparse
import tempfile

from common import DEFAULT_PEER_PYTHON, first_time_reaching, median, run_fleetrl, run_peer

from fleetrl.config import load_preset

THRESHOLD = 475.0
ARGS = [  # the preset's evaluation cadence, stated so that both runs are sure to use it
    "--train.eval-every",
    "4096",
    "--train.eval-episodes",
    "10",
    "--train.checkpoint-every",
    "0",
]
SPS_ARGS = [
    "--train.eval-every",
    "0",
    "--train.stop-at-return",
    "None",
    "--train.checkpoint-every",
    "0",
]


def fleetrl_time(seed: int, cache_dir: str, args) -> tuple[float, int]:
    """(seconds from process start to the threshold, env steps then); inf if not reached."""
    stop = ["--train.stop-at-return", str(args.threshold), "--train.seed", str(seed)]
    result = run_fleetrl(args.preset, [*ARGS, *stop, *fleetrl_extra(args)], cache_dir)
    reached = first_time_reaching(result["records"], args.threshold)
    if reached is None:
        return float("inf"), result["env_steps"]
    return reached[0], reached[1]


def fleetrl_extra(args) -> list[str]:
    return ["--train.log-every", str(args.log_every)] if args.log_every else []


def fleetrl_sps(seed: int, args) -> tuple[float, float, float]:
    """(steps/s of the compiled calls after the first, of all calls, compile seconds) of one
    fresh process with a cold compilation cache."""
    steps = ["--train.total-steps", str(args.sps_steps), "--train.seed", str(seed)]
    result = run_fleetrl(args.preset, [*SPS_ARGS, *steps, *fleetrl_extra(args)], cache_dir=None)
    calls, last = [], 0  # (env steps, seconds) of each compiled call
    for record in result["records"]:
        if "charts/sps" in record:
            calls.append((record["step"] - last, (record["step"] - last) / record["charts/sps"]))
            last = record["step"]
    later = calls[1:] or calls
    steady = sum(n for n, _ in later) / sum(t for _, t in later)
    return steady, result["steps_per_second"], result["compile_time"]


def peer_extra(args) -> list[str]:
    return ["--torch-threads", str(args.peer_torch_threads)] if args.peer_torch_threads else []


def peer_times(seed: int, args) -> tuple[float, float, int]:
    """SB3's (cold seconds, warm seconds, env steps of the cold run); inf where not reached."""
    peer_args = ["--seed", str(seed), "--threshold", str(args.threshold), *peer_extra(args)]
    sb3 = run_peer(args.peer_python, "sb3_dqn_cartpole.py", peer_args)
    cold = sb3["time_to_threshold_s"] if sb3["reached"] else float("inf")
    warm = sb3["warm_time_to_threshold_s"] if sb3["warm_reached"] else float("inf")
    return cold, warm, sb3["steps_to_threshold"]


def gradient_steps_per_env_step(preset: str) -> float:
    run = load_preset(preset)
    return run.algo.gradient_steps / (run.env.num_envs * run.train.num_steps)


def time_to_threshold(args) -> None:
    warm_cache = tempfile.mkdtemp(prefix="fleetrl-warm-cache-")
    fleetrl_time(0, warm_cache, args)  # fills the warm cache
    rows = {"cold": [], "warm": [], "sb3_cold": [], "sb3_warm": []}
    for seed in range(args.seeds):
        cold = fleetrl_time(seed, tempfile.mkdtemp(prefix="fleetrl-cold-cache-"), args)
        warm = fleetrl_time(seed, warm_cache, args)
        rows["cold"].append(cold[0])
        rows["warm"].append(warm[0])
        line = f"seed {seed}: fleetrl cold {cold[0]:.2f} s ({cold[1]} steps), warm {warm[0]:.2f} s"
        if not args.skip_peer:
            sb3_cold, sb3_warm, steps = peer_times(seed, args)
            rows["sb3_cold"].append(sb3_cold)
            rows["sb3_warm"].append(sb3_warm)
            line += f" | SB3 cold {sb3_cold:.2f} s ({steps} steps), warm {sb3_warm:.2f} s"
        print(line, flush=True)
    cold, warm = median(rows["cold"]), median(rows["warm"])
    print(f"\nmedian seconds from process start to eval return >= {args.threshold:g}:")
    print(f"  fleetrl {args.preset}: cold cache {cold:.2f} s, warm cache {warm:.2f} s")
    if rows["sb3_cold"]:
        sb3_cold, sb3_warm = median(rows["sb3_cold"]), median(rows["sb3_warm"])
        print(f"  SB3 DQN (RL-Zoo settings): cold {sb3_cold:.2f} s, warm {sb3_warm:.2f} s")
        print(f"ratio SB3 / fleetrl: cold {sb3_cold / cold:.1f}x, warm {sb3_warm / warm:.1f}x")


def steps_per_second(args) -> None:
    ratio = gradient_steps_per_env_step(args.preset)
    print(f"\ntraining steps/s, {ratio:g} gradient steps per env step (SB3: 128 per 256):")
    ours, peer = [], []
    for seed in range(args.seeds):
        steady, overall, compile_s = fleetrl_sps(seed, args)
        ours.append(steady)
        line = (
            f"seed {seed}: fleetrl {steady:,.0f} steps/s after the first call "
            f"({overall:,.0f} over all calls, compile {compile_s:.1f} s)"
        )
        if not args.skip_peer:
            sps_args = ["--seed", str(seed), "--steps-per-second", str(args.peer_sps_steps)]
            sps_args += peer_extra(args)
            peer.append(run_peer(args.peer_python, "sb3_dqn_cartpole.py", sps_args)["sps"])
            line += f" | SB3 {peer[-1]:,.0f} steps/s"
        print(line, flush=True)
    line = f"median: fleetrl {args.preset} {median(ours):,.0f} steps/s"
    if peer:
        sb3 = median(peer)
        line += f", SB3 DQN {sb3:,.0f} steps/s: fleetrl / SB3 {median(ours) / sb3:.1f}x"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dqn-cartpole", help="or dqn-cartpole-gym")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="mean eval return")
    parser.add_argument("--sps-steps", type=int, default=51_200, help="fleetrl; 0: no steps/s")
    parser.add_argument("--peer-sps-steps", type=int, default=20_480, help="SB3's steps/s run")
    parser.add_argument("--skip-ttt", action="store_true", help="steps/s only")
    parser.add_argument(
        "--log-every", type=int, default=None, help="fleetrl's train.log_every (default: preset's)"
    )
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument(
        "--peer-torch-threads",
        type=int,
        default=None,
        help="SB3's torch threads (default: torch's)",
    )
    args = parser.parse_args()
    if not args.skip_ttt:
        time_to_threshold(args)
    if args.sps_steps:
        steps_per_second(args)


if __name__ == "__main__":
    main()
