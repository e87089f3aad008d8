"""The arithmetic floor of one DQN gradient step at RL-Zoo's CartPole settings on this CPU.

A gradient step of batch 64 through the 4-256-256-2 ReLU Q-network is: the online forward and
backward pass on the batch (3 matrix products per layer: forward, input gradient, weight
gradient) and the target network's forward pass on the next observations. This script counts
those multiply-adds, measures the CPU's float32 matrix-multiply rate on matrices of the same
shapes (jax.jit, one XLA call doing them all, repeated), and prints the floor in microseconds per
gradient step, to set against the measured cost of a whole gradient step (Adam, sampling,
clipping included). Run pinned to one core (taskset -c 1) to measure one core.

    python benchmarks/dqn_floor.py [--batch 64] [--hidden 256]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp


def layer_shapes(obs: int, hidden: int, actions: int) -> list[tuple[int, int]]:
    return [(obs, hidden), (hidden, hidden), (hidden, actions)]


def matmul_rate(batch: int, shapes: list[tuple[int, int]], calls: int) -> float:
    """Multiply-adds per second of the forward, input-gradient and weight-gradient products of
    an MLP of ``shapes`` (``[(in, out)]``) on ``batch`` samples: one jitted loop of 100 passes,
    timed over ``calls`` calls. Also used by sac_floor.py."""
    weights = [jnp.ones((i, o), jnp.float32) for i, o in shapes]
    x = jnp.ones((batch, shapes[0][0]), jnp.float32)

    @jax.jit
    def products(x, weights):
        def one_pass(_, x):  # the products of one gradient step's online backward pass
            a, total = x, 0.0
            for w in weights:
                out = a @ w  # forward [b, o]
                total = total + (out @ w.T).sum() + (a.T @ out).sum()  # input, weight gradient
                a = jnp.maximum(out, 0.0)
            return x + 1e-7 * total

        return jax.lax.fori_loop(0, 100, one_pass, x).sum()

    products(x, weights).block_until_ready()
    start = time.perf_counter()
    for _ in range(calls):
        products(x, weights).block_until_ready()
    per_pass = (time.perf_counter() - start) / (100 * calls)
    return 3 * sum(batch * i * o for i, o in shapes) / per_pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    b, shapes = args.batch, layer_shapes(4, args.hidden, 2)
    # online: forward + input gradient + weight gradient; target: forward only
    macs = sum(4 * b * i * o for i, o in shapes)
    rate = matmul_rate(b, shapes, calls=10)
    floor_us = macs / rate * 1e6
    print(f"multiply-adds per gradient step: {macs / 1e6:.2f} M")
    print(f"measured rate on these shapes: {rate / 1e9:.1f} G multiply-adds/s")
    print(f"floor: {floor_us:.0f} us per gradient step")


if __name__ == "__main__":
    main()
