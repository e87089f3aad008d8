"""Stepping a host env inside the compiled rollout, or from a Python loop: us per batched step.

8 gymnasium CartPole-v1 envs in-process (``env.num_workers 0``), all variants in one process and
alternated, medians over repetitions:

- the pool alone, fixed actions (the limit);
- ``simulate()`` with a trivial policy, the env step through fleetrl's ``host_call``;
- the same through ``jax.experimental.io_callback`` (JAX's own callback);
- ``simulate()`` with the PPO policy and ``host_call`` (what training runs);
- a Python loop: the jitted PPO policy, then ``EnvPool.step``.

    python benchmarks/host_loop.py [--steps 500] [--reps 7] [--xla-threads one|all]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--xla-threads", choices=["one", "all"], default="one")
    args = parser.parse_args()
    if args.xla_threads == "one":
        from fleetrl.xla_cpu import use_one_xla_thread

        use_one_xla_thread()

    import jax
    import jax.numpy as jnp
    from jax.experimental import io_callback

    from fleetrl import train
    from fleetrl.cli import parse_run_config
    from fleetrl.envs import host
    from fleetrl.rollout import reset, simulate

    run = parse_run_config("ppo-cartpole-gym", ["--env.num-envs", "8"], "host_loop")
    env, eval_env, algo = train.build(run)
    key = jax.random.PRNGKey(0)
    state = algo.init(key)
    carry = jax.jit(lambda k: reset(env, k))(key)
    n, T = env.spec.num_envs, args.steps

    from fleetrl.types import Algorithm

    def act_trivially(actor_params, actor_state, obs, key, explore, mask):
        return jnp.zeros(obs.shape[0], jnp.int32), actor_state, {}

    trivial = Algorithm(None, lambda s: None, lambda k, n: (), act_trivially, None, None)

    class IoCallbackEnv:  # the same env, stepped through JAX's io_callback
        spec = env.spec

        def step(self, env_state, action):
            packed = io_callback(env._host_step, env._result_shape, action, ordered=True)
            return env_state + 1, host._unpack(packed)

    scan_host = jax.jit(lambda s, c: simulate(trivial, env, s, c, T))
    scan_io = jax.jit(lambda s, c: simulate(trivial, IoCallbackEnv(), s, c, T))
    scan_ppo = jax.jit(lambda s, c: simulate(algo, env, s, c, T))
    policy = jax.jit(lambda s, obs, k: algo.act(algo.actor_params(s), (), obs, k, True, None))
    actions = np.zeros((T, n), np.int64)
    keys = list(jax.random.split(key, T))

    def pool_alone():
        for a in actions:
            env.pool.step(a)

    def python_loop():
        obs = np.asarray(carry.obs)
        for k in keys:
            action, _, _ = policy(state, obs, k)
            obs = env.pool.step(np.asarray(action)).obs

    variants = {
        "EnvPool.step alone": pool_alone,
        "scan, trivial policy, host_call": lambda: jax.block_until_ready(scan_host(state, carry)),
        "scan, trivial policy, io_callback": lambda: jax.block_until_ready(scan_io(state, carry)),
        "scan, PPO policy, host_call": lambda: jax.block_until_ready(scan_ppo(state, carry)),
        "Python loop: jitted PPO policy + EnvPool.step": python_loop,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # compile and warm up
        fn()
    for _ in range(args.reps):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / T * 1e6)
    train.close_envs(env, eval_env)
    limit = statistics.median(times["EnvPool.step alone"])
    print(f"8 CartPole-v1 in-process, XLA threads: {args.xla_threads}; us per batched step")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:48s} {med:7.1f}  (min {min(values):.1f}; pool / this = {limit / med:.0%})")


if __name__ == "__main__":
    main()
