"""Bytes per stored transition of an Atari-shaped replay buffer (obs 4x84x84 uint8, 4 stacked
frames), in fleetrl's layout (`fleetrl.replay`: each frame stored once, plus the prioritized
sum tree) and in the earlier one (float32 ``obs`` and ``next_obs``); then, on the CPU, the cost
of a prioritized draw and update, of reading a batch of windows, and of an add with the buffer
donated or copied (a program that returns the buffer without donating it copies all of it).

    python benchmarks/replay_memory.py [--transitions 50000] [--num-envs 8]

The new layout is allocated at ``--transitions`` and measured as the sum of its arrays'
``nbytes``; 1M transitions, and the earlier layout (11 GB at 50k), are sized from the arrays'
shapes (``jax.eval_shape``: the same ``nbytes``, nothing allocated).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp

from fleetrl import prioritized, replay

OBS_SHAPE, FRAME_STACK, N_STEP = (4, 84, 84), 4, 3


def new_layout(rows: int, num_envs: int):
    """The buffer and its priorities for ``rows x num_envs`` transitions."""
    buffer = replay.create(OBS_SHAPE, jnp.uint8, num_envs, rows, frame_stack=FRAME_STACK)
    return buffer, prioritized.create(rows * num_envs)


def old_layout(rows: int, num_envs: int) -> dict:
    """The layout before issue 13: float32 ``obs`` and ``next_obs`` per transition (shapes
    only)."""
    n = num_envs
    shape = lambda *s, dtype=jnp.float32: jax.ShapeDtypeStruct((rows, n, *s), dtype)
    return {
        "obs": shape(*OBS_SHAPE),
        "action": shape(dtype=jnp.int32),
        "reward": shape(),
        "terminated": shape(dtype=jnp.bool_),
        "truncated": shape(dtype=jnp.bool_),
        "next_obs": shape(*OBS_SHAPE),
    }


def nbytes(tree) -> int:
    """Bytes of a pytree's arrays (or of their shapes: ``jax.ShapeDtypeStruct``)."""
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def per_transition(make, rows: int, num_envs: int) -> float:
    """Bytes per transition of ``make(rows, num_envs)``, from its shapes (nothing allocated)."""
    return nbytes(jax.eval_shape(functools.partial(make, rows, num_envs))) / (rows * num_envs)


def memory_table(transitions: int, num_envs: int) -> None:
    rows, big = transitions // num_envs, 1_000_000 // num_envs
    buffer, priorities = new_layout(rows, num_envs)  # allocated
    measured = (nbytes(buffer) + nbytes(priorities)) / (rows * num_envs)
    del buffer, priorities
    table = [
        (f"fleetrl, allocated, {rows * num_envs} transitions", measured),
        ("fleetrl, 1M transitions (shapes)", per_transition(new_layout, big, num_envs)),
        (
            "  of which the frames",
            per_transition(lambda r, n: new_layout(r, n)[0].obs, big, num_envs),
        ),
        (
            "  of which the side ring",
            per_transition(lambda r, n: new_layout(r, n)[0].final, big, num_envs),
        ),
        (
            "  of which the sum tree",
            per_transition(lambda r, n: new_layout(r, n)[1], big, num_envs),
        ),
        ("earlier: float32 obs + next_obs, 1M (shapes)", per_transition(old_layout, big, num_envs)),
    ]
    print(f"{'layout':<46} {'B/transition':>12} {'1M transitions':>15}")
    for name, per in table:
        print(f"{name:<46} {per:>12.1f} {per * 1e6 / 1e9:>12.2f} GB")


def time_batches(num_leaves: int, batch_size: int, repeats: int = 200) -> float:
    """Seconds per prioritized draw + priority update of ``batch_size`` leaves in a jitted scan
    (the tree in the carry, as in a learner's scan over gradient steps)."""

    def step(p, key):
        leaves, _ = prioritized.sample(p, key, batch_size)
        return prioritized.update(p, leaves, jax.random.uniform(key, (batch_size,))), None

    p = prioritized.update(
        prioritized.create(num_leaves), jnp.arange(num_leaves), jnp.ones(num_leaves)
    )
    keys = jax.random.split(jax.random.PRNGKey(0), repeats)
    run = jax.jit(lambda p: jax.lax.scan(step, p, keys)[0], donate_argnums=0)
    p = jax.block_until_ready(run(p))  # compile
    start = time.perf_counter()
    jax.block_until_ready(run(p))
    return (time.perf_counter() - start) / repeats


def time_reads(transitions: int, num_envs: int, batch_size: int, repeats: int = 200) -> float:
    """Seconds per `replay.read_windows` of ``batch_size`` Atari windows (stacks rebuilt)."""
    buffer, _ = new_layout(transitions // num_envs, num_envs)
    buffer = buffer.replace(steps=jnp.int32(buffer.capacity))  # full (of zeros)

    def step(buffer, total, key):
        rows, envs = replay.sample_uniform(buffer, key, batch_size, N_STEP)
        window = replay.read_windows(buffer, rows, envs, N_STEP)
        return total + window.obs.max() + window.next_obs.max(), None  # max: cheaper than a sum

    keys = jax.random.split(jax.random.PRNGKey(0), repeats)
    run = jax.jit(
        lambda buffer: jax.lax.scan(functools.partial(step, buffer), jnp.uint8(0), keys)[0]
    )
    jax.block_until_ready(run(buffer))  # compile
    start = time.perf_counter()
    jax.block_until_ready(run(buffer))
    return (time.perf_counter() - start) / repeats


def time_adds(transitions: int, num_envs: int, num_rows: int, donate: bool, repeats=10) -> float:
    """Seconds per jitted `replay.add` of ``num_rows`` steps into the Atari buffer, with the
    buffer donated (updated in place) or not (XLA copies all of it into the new state)."""
    buffer, _ = new_layout(transitions // num_envs, num_envs)
    shape = (num_rows, num_envs)
    obs = jnp.zeros(shape + OBS_SHAPE, jnp.uint8)
    flags = jnp.zeros(shape, bool)
    steps = (obs, obs, jnp.zeros(shape, jnp.int32), jnp.zeros(shape), flags, flags)
    add = jax.jit(replay.add, donate_argnums=0 if donate else ())
    buffer = jax.block_until_ready(add(buffer, *steps))  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        buffer = add(buffer, *steps)
    jax.block_until_ready(buffer)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=50_000)
    parser.add_argument("--num-envs", type=int, default=8)
    args = parser.parse_args()
    memory_table(args.transitions, args.num_envs)
    print(f"\n{'CPU, per batch':<44} {'B=32':>10} {'B=64':>10}")
    times = [time_batches(1_000_000, b) for b in (32, 64)]
    print(
        f"{'sum tree 1M leaves: sample + update':<44}"
        + "".join(f"{t * 1e6:>8.1f} us" for t in times)
    )
    times = [time_reads(args.transitions, args.num_envs, b) for b in (32, 64)]
    name = f"read_windows, n={N_STEP}, Atari stacks"
    print(f"{name:<44}" + "".join(f"{t * 1e6:>8.1f} us" for t in times))
    print(f"\n{'CPU, add of 4 steps x N envs':<44} {'donated':>10} {'copied':>10}")
    times = [time_adds(args.transitions, args.num_envs, 4, donate) for donate in (True, False)]
    name = f"{args.transitions} transitions ({args.transitions * 7.5e-6:.2f} GB)"
    print(f"{name:<44}" + "".join(f"{t * 1e3:>8.2f} ms" for t in times))


if __name__ == "__main__":
    main()
