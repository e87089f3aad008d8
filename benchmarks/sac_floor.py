"""One SAC (or TD3) gradient step against its arithmetic floor on this CPU.

A SAC gradient step of batch B (`fleetrl.algos.continuous.learner`: a critic step, then an
actor and temperature step, then the Polyak update) does these matrix products, per sample:
  critic step: the actor forward at the next observations (A), the n target critics forward
    (nC), the n critics forward and backward (weight and input gradients: 3 nC);
  actor step: the actor forward (A), the n critics forward at the actor's actions (nC), their
    input gradients back to the actions (nC), the actor's backward (2 A).
  In all 4 A + 6 nC multiply-adds per sample, with C = (obs + act) h1 + h1 h2 + h2 for a
  critic and A = obs h1 + h1 h2 + h2 * 2 act for the actor (mean and log-std heads). TD3's
  actor has one head and runs every policy_delay critic steps: (A + 4nC) + (3A + 2C) / delay
  (its actor loss reads the first critic only).
The script counts those, measures the CPU's float32 matrix-multiply rate on the same shapes
(one jitted loop of the products), and prints the floor in microseconds per gradient step next
to fleetrl's measured cost of one: ``learn`` on a filled replay buffer, sampling, Adam, the
targets and the temperature included, env stepping excluded. Run pinned to one core.

    taskset -c 0 python benchmarks/sac_floor.py [--obs 17 --act 6 --hidden 256 256 --batch 256]
        [--algo sac|td3]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np
from dqn_floor import matmul_rate

from fleetrl.algos import get_algorithm
from fleetrl.config import load_preset
from fleetrl.types import EnvSpec, Rollout


def layer_shapes(inputs: int, hidden: list[int], out: int) -> list[tuple[int, int]]:
    sizes = [inputs, *hidden, out]
    return list(zip(sizes[:-1], sizes[1:], strict=True))


def macs_per_sample(obs: int, act: int, hidden: list[int], algo: str) -> float:
    critic = sum(i * o for i, o in layer_shapes(obs + act, hidden, 1))
    if algo == "sac":
        actor = sum(i * o for i, o in layer_shapes(obs, hidden, 2 * act))
        return 4 * actor + 6 * 2 * critic
    actor = sum(i * o for i, o in layer_shapes(obs, hidden, act))
    return actor + 4 * 2 * critic + (3 * actor + 2 * critic) / 2


def measured_us(args) -> float:
    """fleetrl's microseconds per gradient step: ``learn`` calls of 64 env steps (64 gradient
    steps at utd 1) on a buffer already holding 5,000 random transitions."""
    preset = "sac-pendulum" if args.algo == "sac" else "td3-pendulum"
    run = load_preset(preset)
    run = dataclasses.replace(
        run,
        train=dataclasses.replace(run.train, num_steps=64),
        algo=dataclasses.replace(
            run.algo,
            hidden_sizes=tuple(args.hidden),
            batch_size=args.batch,
            learning_starts=0,
            buffer_size=100_000,
        ),
    )
    spec = EnvSpec(
        "synthetic", 1, (args.obs,), "continuous", action_shape=(args.act,),
        action_low=(-1.0,) * args.act, action_high=(1.0,) * args.act, max_episode_steps=1000,
    )  # fmt: skip
    algo = get_algorithm(args.algo).make(run, spec)
    state = algo.init(jax.random.PRNGKey(0))
    learn = jax.jit(algo.learn)

    def rollout(steps: int, seed: int) -> Rollout:
        rng = np.random.default_rng(seed)
        obs = rng.normal(size=(steps, 1, args.obs)).astype(np.float32)
        done = np.zeros((steps, 1), bool)
        return Rollout(
            obs, rng.uniform(-1, 1, (steps, 1, args.act)).astype(np.float32),
            rng.normal(size=(steps, 1)).astype(np.float32), done, done, obs, {}, done, done,
        )  # fmt: skip

    key = jax.random.PRNGKey(1)
    # fill the buffer in calls of 64 steps (every call then also takes its gradient steps)
    for i in range(5000 // 64):
        state, _ = learn(state, rollout(64, i), key)
    jax.block_until_ready(state)
    batches = [rollout(64, 10_000 + i) for i in range(20)]
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        state, metrics = learn(state, batch, jax.random.fold_in(key, i))
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / (20 * 64) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--obs", type=int, default=17, help="HalfCheetah: 17")
    parser.add_argument("--act", type=int, default=6, help="HalfCheetah: 6")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--algo", choices=("sac", "td3"), default="sac")
    args = parser.parse_args()
    macs = macs_per_sample(args.obs, args.act, args.hidden, args.algo) * args.batch
    rate = matmul_rate(args.batch, layer_shapes(args.obs + args.act, args.hidden, 1), calls=5)
    floor = macs / rate * 1e6
    ours = measured_us(args)
    shape = f"obs {args.obs}, act {args.act}, hidden {args.hidden}, batch {args.batch}"
    print(f"{args.algo} gradient step ({shape}): {macs / 1e6:.1f} M multiply-adds")
    print(f"measured matmul rate on these shapes: {rate / 1e9:.1f} G multiply-adds/s")
    print(f"floor {floor:,.0f} us; fleetrl {ours:,.0f} us per gradient step: {ours / floor:.2f}x")


if __name__ == "__main__":
    main()
