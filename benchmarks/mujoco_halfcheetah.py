"""PPO on MuJoCo HalfCheetah-v5: fleetrl's ppo-halfcheetah preset against Stable-Baselines3 PPO
at the same settings (VecNormalize).

``--settings zoo`` (default): the preset as shipped, RL-Zoo's tuned settings (one env in-process,
256-256 ReLU networks, 20 epochs of 64-sample minibatches). ``--settings cleanrl``: the preset
with CleanRL's settings as overrides (8 envs in 2 worker processes, 64-64 tanh, 10 epochs), the
preset of the earlier sessions; SB3 runs its 8 envs in-process.

Each side trains --steps env steps in a fresh process (no evaluation); prints steps/s, the ratio,
the wall time of each process (start to exit, imports and compilation included) and the wall
time to 1M steps projected from the steps/s. ``--steps 1000000`` measures the 1M-step wall time.

    python benchmarks/mujoco_halfcheetah.py [--seeds 3] [--steps 40960] [--settings zoo|cleanrl]
"""

from __future__ import annotations

import argparse

from common import DEFAULT_PEER_PYTHON, median, run_fleetrl, run_peer

CLEANRL = [
    "--env.num-envs", "8", "--env.num-workers", "2",
    "--train.num-steps", "256",
    "--algo.learning-rate", "3e-4", "--algo.anneal-lr", "True",
    "--algo.gamma", "0.99", "--algo.gae-lambda", "0.95",
    "--algo.num-epochs", "10", "--algo.num-minibatches", "32",
    "--algo.clip-eps", "0.2", "--algo.ent-coef", "0.0", "--algo.vf-coef", "0.5",
    "--algo.max-grad-norm", "0.5",
    "--algo.hidden-sizes", "64", "64", "--algo.activation", "tanh", "--algo.init-log-std", "0.0",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40_960)
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--settings", choices=["zoo", "cleanrl"], default="zoo")
    args = parser.parse_args()
    print(f"settings: {args.settings}")
    ours, peer = [], []
    for seed in range(args.seeds):
        train = [
            "--train.total-steps", str(args.steps),
            "--train.log-every", "10240",
            "--train.eval-every", "0",
            "--train.checkpoint-every", "0",
            "--train.seed", str(seed),
            *(CLEANRL if args.settings == "cleanrl" else []),
        ]  # fmt: skip
        ours.append(run_fleetrl("ppo-halfcheetah", train, None))
        peer.append(
            run_peer(
                args.peer_python,
                "sb3_mujoco.py",
                ["--steps", str(args.steps), "--seed", str(seed), "--settings", args.settings],
            )
        )
        print(
            f"seed {seed}: fleetrl {ours[-1]['steps_per_second']:,.0f} steps/s "
            f"(compile {ours[-1]['compile_time']:.1f} s, process {ours[-1]['process_wall']:.1f} s)"
            f" | SB3 {peer[-1]['sps']:,.0f} steps/s (process {peer[-1]['process_wall']:.1f} s)",
            flush=True,
        )
    our_sps = median([r["steps_per_second"] for r in ours])
    peer_sps = median([r["sps"] for r in peer])
    print(
        f"\nfleetrl ppo-halfcheetah: median {our_sps:,.0f} steps/s -> 1M steps in "
        f"{1e6 / our_sps / 60:.1f} min (projected)"
    )
    print(
        f"SB3 PPO, same settings: median {peer_sps:,.0f} steps/s -> 1M steps in "
        f"{1e6 / peer_sps / 60:.1f} min (projected)"
    )
    our_wall = median([r["process_wall"] for r in ours])
    peer_wall = median([r["process_wall"] for r in peer])
    print(
        f"ratio fleetrl / SB3: {our_sps / peer_sps:.1f}x in steps/s; measured wall time for "
        f"{args.steps:,} steps: fleetrl {our_wall:.1f} s, SB3 {peer_wall:.1f} s "
        f"({peer_wall / our_wall:.1f}x)"
    )


if __name__ == "__main__":
    main()
