"""Seconds per PPO iteration on Atari (ppo-breakout: 8 envs x 128 steps, Nature CNN) on the CPU.

Times the compiled train call of one iteration (rollout, then 4 epochs x 4 minibatches of 256
frames), as the driver runs it, with the envs stepped in-process. Variants:

- ``shared``: the preset (one CNN torso for actor and critic, the update's loops unrolled, no
  loop around the iteration);
- ``separate``: two CNNs (``--algo.shared-torso False``);
- ``looped``: the preset's iteration inside a two-trip ``lax.scan`` (what ``log_every`` > one
  iteration gives), to show what a loop around the CNN's backward pass costs on XLA:CPU.

    python benchmarks/atari_iteration.py [--variants shared separate looped] [--reps 2]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", nargs="+", default=["shared", "separate", "looped"],
        choices=["shared", "separate", "looped"],
    )  # fmt: skip
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()

    import jax
    import numpy as np

    from fleetrl import programs, train
    from fleetrl.cli import parse_run_config

    for variant in args.variants:
        overrides = ["--env.num-workers", "0"]
        if variant == "separate":
            overrides += ["--algo.shared-torso", "False"]
        run = parse_run_config("ppo-breakout", overrides, "atari_iteration")
        env, eval_env, algo = train.build(run)
        carry = programs.make_init(algo, env)(programs.seed_keys(run))
        iterations = 2 if variant == "looped" else 1
        call = programs.make_train_call(algo, env, run.train.num_steps, iterations)
        start = time.perf_counter()
        compiled = call.lower(carry).compile()
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(1 if variant == "looped" else args.reps):  # looped: ~2 min a call
            start = time.perf_counter()
            carry, _ = jax.block_until_ready(compiled(carry))
            times.append((time.perf_counter() - start) / iterations)
        train.close_envs(env, eval_env)
        per_iteration = float(np.median(times))
        print(
            f"{variant:9s} compile {compile_s:5.1f} s | {per_iteration:6.2f} s per iteration of "
            f"{run.steps_per_iteration} steps = {run.steps_per_iteration / per_iteration:6.1f} "
            "steps/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
