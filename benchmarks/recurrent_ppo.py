"""Recurrent PPO's steady speed: fleetrl's LSTM PPO against its feed-forward PPO at the same
settings, and against sb3-contrib's RecurrentPPO, on CartPole-v1 with the velocities hidden.

Settings are RL-Zoo's ppo_lstm CartPoleNoVel-v1 entry for all three: 8 envs x 32 steps, 20
epochs over the whole batch of 256 (fleetrl: 1 minibatch of 8 whole sequences), LSTM of 64
after a 64-unit encoder, gamma 0.98, GAE 0.8, lr 1e-3 annealed. fleetrl steps gymnax CartPole
inside the compiled program (steps/s of the compiled calls, compile time apart); SB3 steps
gymnasium CartPole (steps/s after its first rollout). Medians over seeds, one process each.

    python benchmarks/recurrent_ppo.py [--seeds 3] [--steps 204800] [--peer-python PY]
"""

from __future__ import annotations

import argparse

from common import DEFAULT_PEER_PYTHON, median, run_fleetrl, run_peer

ZOO = [
    "--env.num-envs", "8", "--train.num-steps", "32", "--algo.num-epochs", "20",
    "--algo.num-minibatches", "1", "--algo.gamma", "0.98", "--algo.gae-lambda", "0.8",
    "--algo.learning-rate", "1e-3", "--algo.ent-coef", "0.0", "--algo.core-size", "64",
    "--algo.hidden-sizes", "64", "--train.eval-every", "0", "--train.checkpoint-every", "0",
    "--train.log-every", "25600", "--train.stop-at-return", "None",
]  # fmt: skip


def fleetrl_sps(core: str, steps: int, seed: int) -> tuple[float, float]:
    """(steps/s of the compiled calls, compile seconds) of one fresh process, cold cache."""
    args = [*ZOO, "--algo.core", core, "--train.total-steps", str(steps), "--train.seed", str(seed)]
    result = run_fleetrl("ppo-lstm-cartpole-novel", args, cache_dir=None)
    return result["steps_per_second"], result["compile_time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=204_800)
    parser.add_argument("--peer-steps", type=int, default=20_000)
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    rows = {"lstm": [], "none": [], "sb3": []}
    for seed in range(args.seeds):
        for core in ("lstm", "none"):
            rows[core].append(fleetrl_sps(core, args.steps, seed)[0])
        line = f"seed {seed}: fleetrl LSTM {rows['lstm'][-1]:,.0f} steps/s, "
        line += f"feed-forward {rows['none'][-1]:,.0f} steps/s"
        if not args.skip_peer:
            peer = ["--steps", str(args.peer_steps), "--seed", str(seed)]
            rows["sb3"].append(run_peer(args.peer_python, "sb3_recurrent_ppo.py", peer)["sps"])
            line += f" | sb3-contrib RecurrentPPO {rows['sb3'][-1]:,.0f} steps/s"
        print(line, flush=True)
    lstm, ff = median(rows["lstm"]), median(rows["none"])
    print(f"\nmedian steps/s: fleetrl LSTM {lstm:,.0f}, feed-forward {ff:,.0f}")
    print(f"LSTM / feed-forward: {lstm / ff:.2f}")
    if rows["sb3"]:
        sb3 = median(rows["sb3"])
        print(f"sb3-contrib RecurrentPPO {sb3:,.0f}: fleetrl LSTM / SB3 {lstm / sb3:.1f}x")


if __name__ == "__main__":
    main()
