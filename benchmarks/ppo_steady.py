"""Steady-state PPO speed on CartPole at CleanRL's settings: fleetrl against rejax.

Same hyperparameters for both (4 envs x 128 steps, 4 epochs x 4 minibatches, separate 64-64 tanh
actor and critic, 500k steps). Each run is a fresh process; medians over seeds; compile time
reported apart from steps/s.

    python benchmarks/ppo_steady.py [--seeds 5] [--steps 500000] [--peer-python PY]
"""

from __future__ import annotations

import argparse
import tempfile

from common import DEFAULT_PEER_PYTHON, median, run_fleetrl, run_peer, steady_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    ours, all_, warm, peer = [], [], [], []
    # a warm compilation cache: the configuration compiled once before, as for a second seed
    warm_cache = tempfile.mkdtemp(prefix="fleetrl-warm-cache-")
    run_fleetrl("ppo-cartpole", steady_args(args.steps, seed=99), warm_cache)
    for seed in range(args.seeds):
        ours.append(run_fleetrl("ppo-cartpole", steady_args(args.steps, seed=seed), cache_dir=None))
        warm.append(run_fleetrl("ppo-cartpole", steady_args(args.steps, seed=seed), warm_cache))
        all_threads = [*steady_args(args.steps, seed=seed), "--train.xla-threads", "all"]
        all_.append(run_fleetrl("ppo-cartpole", all_threads, cache_dir=None))
        if not args.skip_peer:
            peer.append(
                run_peer(
                    args.peer_python,
                    "rejax_cartpole.py",
                    ["--steps", str(args.steps), "--seed", str(seed)],
                )
            )
        print(
            f"seed {seed}: fleetrl {ours[-1]['steps_per_second']:,.0f} steps/s "
            f"(compile {ours[-1]['compile_time']:.2f} s, eval {ours[-1]['eval_returns']}); "
            f"all XLA threads {all_[-1]['steps_per_second']:,.0f} (compile "
            f"{all_[-1]['compile_time']:.2f} s); defaults, warm cache "
            f"{warm[-1]['steps_per_second']:,.0f} (compile {warm[-1]['compile_time']:.2f} s)"
            + (
                f" | rejax {peer[-1]['sps']:,.0f} steps/s (compile {peer[-1]['compile_s']:.2f} s)"
                if peer
                else ""
            ),
            flush=True,
        )
    our_sps = median([r["steps_per_second"] for r in ours])
    our_compile = median([r["compile_time"] for r in ours])
    all_sps = median([r["steps_per_second"] for r in all_])
    all_compile = median([r["compile_time"] for r in all_])
    print(
        f"\nfleetrl PPO CartPole, CleanRL settings: median {our_sps:,.0f} steps/s, "
        f"compile {our_compile:.2f} s ({args.seeds} seeds)"
    )
    warm_sps = median([r["steps_per_second"] for r in warm])
    warm_compile = median([r["compile_time"] for r in warm])
    print(
        f"  with --train.xla-threads all: median {all_sps:,.0f} steps/s, "
        f"compile {all_compile:.2f} s"
    )
    print(
        f"  defaults, warm compilation cache: median "
        f"{warm_sps:,.0f} steps/s, compile {warm_compile:.2f} s"
    )
    if peer:
        peer_sps = median([r["sps"] for r in peer])
        peer_compile = median([r["compile_s"] for r in peer])
        print(
            f"rejax  PPO CartPole, CleanRL settings: median {peer_sps:,.0f} steps/s, "
            f"compile {peer_compile:.2f} s"
        )
        print(
            f"ratio fleetrl / rejax: steps/s {our_sps / peer_sps:.2f}x, "
            f"compile time {our_compile / peer_compile:.2f}x; with all XLA threads: steps/s "
            f"{all_sps / peer_sps:.2f}x, compile time {all_compile / peer_compile:.2f}x; "
            f"defaults with a warm cache: steps/s {warm_sps / peer_sps:.2f}x"
        )


if __name__ == "__main__":
    main()
