"""PPO on gymnasium CartPole-v1 (host envs) with SB3's RL-Zoo hyperparameters: fleetrl against
Stable-Baselines3, and against the pool's own random-action stepping rate (the limit).

Both sides: 8 envs x 32 steps, 20 epochs of one 256-sample minibatch, lr 1e-3 annealed, gamma
0.98, GAE 0.8, clip 0.2, no entropy bonus, separate 64-64 tanh actor and critic; no evaluation.
fleetrl steps its envs in-process (``env.num_workers 0``: CartPole costs ~5 us a step, less than
any inter-process round trip). Each run is a fresh process; medians over seeds.

    python benchmarks/host_ppo_cartpole.py [--seeds 5] [--steps 100000] [--peer-python PY]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from common import DEFAULT_PEER_PYTHON, median, run_fleetrl, run_peer

ZOO = [
    "--env.num-envs", "8",
    "--env.num-workers", "0",
    "--train.num-steps", "32",
    "--algo.num-epochs", "20",
    "--algo.num-minibatches", "1",
    "--algo.learning-rate", "1e-3",
    "--algo.anneal-lr", "True",
    "--algo.gamma", "0.98",
    "--algo.gae-lambda", "0.8",
    "--algo.clip-eps", "0.2",
    "--algo.ent-coef", "0.0",
    "--train.eval-every", "0",
    "--train.checkpoint-every", "0",
    "--train.stop-at-return", "None",
]  # fmt: skip

RANDOM_RATE = """
import time, numpy as np
from fleetrl.envs.pool import EnvPool
pool = EnvPool.from_id("CartPole-v1", {n}, {w}, seed=0)
pool.reset()
rng = np.random.default_rng(0)
actions = rng.integers(0, 2, size=(1000, {n}))
rates = []
for _ in range(5):
    start = time.perf_counter()
    for a in actions:
        pool.step(a)
    rates.append(1000 * {n} / (time.perf_counter() - start))
pool.close()
print(sorted(rates)[2])
"""


def random_rate(num_envs: int, num_workers: int) -> float:
    code = RANDOM_RATE.format(n=num_envs, w=num_workers)
    return float(subprocess.check_output([sys.executable, "-c", code], text=True).split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    args = parser.parse_args()
    ours, ours_all, peer, limit = [], [], [], []
    train = ["--train.total-steps", str(args.steps), "--train.log-every", "25600"]
    for seed in range(args.seeds):
        limit.append(random_rate(8, 0))
        common = [*ZOO, *train, "--train.seed", str(seed)]
        ours.append(run_fleetrl("ppo-cartpole-gym", common, None))
        ours_all.append(
            run_fleetrl("ppo-cartpole-gym", [*common, "--train.xla-threads", "all"], None)
        )
        peer.append(
            run_peer(
                args.peer_python,
                "sb3_cartpole.py",
                ["--mode", "zoo", "--steps", str(args.steps), "--seed", str(seed)],
            )
        )
        print(
            f"seed {seed}: fleetrl {ours[-1]['steps_per_second']:,.0f} steps/s "
            f"(compile {ours[-1]['compile_time']:.2f} s; one XLA thread per core: "
            f"{ours_all[-1]['steps_per_second']:,.0f}) | SB3 {peer[-1]['sps']:,.0f} | "
            f"pool random actions {limit[-1]:,.0f}",
            flush=True,
        )
    our_sps = median([r["steps_per_second"] for r in ours])
    peer_sps = median([r["sps"] for r in peer])
    limit_sps = median(limit)
    all_sps = median([r["steps_per_second"] for r in ours_all])
    print(f"\nfleetrl PPO, gymnasium CartPole-v1, RL-Zoo settings: median {our_sps:,.0f} steps/s")
    print(f"  same, --train.xla-threads all:                   median {all_sps:,.0f} steps/s")
    print(f"SB3     PPO, same settings:                        median {peer_sps:,.0f} steps/s")
    print(f"pool, 8 envs in-process, random actions:            median {limit_sps:,.0f} steps/s")
    print(
        f"ratio fleetrl / SB3: {our_sps / peer_sps:.1f}x; fleetrl / pool limit: "
        f"{our_sps / limit_sps:.0%}"
    )


if __name__ == "__main__":
    main()
