"""rejax PPO on gymnax CartPole-v1: compile time and steady throughput (peer benchmark for fleetrl).

Settings are CleanRL ppo.py's CartPole defaults: num_envs 4, num_steps 128, num_epochs 4, num_minibatches 4,
lr 2.5e-4, gamma 0.99, gae_lambda 0.95, clip 0.2, ent 0.01, vf 0.5, max_grad_norm 0.5, 64-64 tanh actor and
critic. Differences that rejax 0.1.3 imposes (they do not change the amount of work per step):
  * no LR annealing (CleanRL anneals linearly); rejax's learning_rate is a scalar;
  * max_grad_norm is optax.clip, i.e. element-wise gradient clipping, not clip-by-global-norm;
  * actor and critic have separate Adam optimisers; default (lecun-normal) init, not orthogonal;
  * the loop runs ceil(steps / 512) iterations, so 500_000 requested -> 500_224 steps per seed.
Evaluation is disabled: one eval "round" at the very end (eval_freq = total_timesteps, no initial eval)
with a no-op eval_callback, so nothing but training is timed.

The whole `algo.train` is jitted (for --num-seeds K > 1 it is jax.vmap'ed over K PRNG keys first, as the
rejax README shows). compile_s = lower + compile; run_s = executing the compiled function to completion.
Prints one JSON line: {"peer":"rejax","compile_s","run_s","sps" (= per-seed steps / run_s),
"total_sps" (= K * steps / run_s),"num_seeds","steps","final_return" (mean over seeds of a 128-episode
eval after training, untimed)}.
"""

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
from rejax import PPO


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=500_000)
    p.add_argument("--num-seeds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    algo = PPO.create(
        env="CartPole-v1",
        total_timesteps=a.steps,
        eval_freq=a.steps,
        skip_initial_evaluation=True,
        num_envs=4,
        num_steps=128,
        num_epochs=4,
        num_minibatches=4,
        learning_rate=2.5e-4,
        gamma=0.99,
        gae_lambda=0.95,
        clip_eps=0.2,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
        agent_kwargs={"activation": "tanh", "hidden_layer_sizes": (64, 64)},
    )
    real_eval = algo.eval_callback
    algo = algo.replace(
        eval_callback=lambda algo, ts, rng: jnp.zeros(())
    )  # no evaluation while timing

    if a.num_seeds == 1:  # plain jit, no batch axis
        keys, train = jax.random.PRNGKey(a.seed), jax.jit(algo.train)
    else:
        keys, train = (
            jax.random.split(jax.random.PRNGKey(a.seed), a.num_seeds),
            jax.jit(jax.vmap(algo.train)),
        )

    t = time.perf_counter()
    compiled = train.lower(keys).compile()
    compile_s = time.perf_counter() - t

    t = time.perf_counter()
    ts, _ = jax.block_until_ready(compiled(keys))
    run_s = time.perf_counter() - t

    per_seed = (
        math.ceil(a.steps / (algo.num_envs * algo.num_steps)) * algo.num_envs * algo.num_steps
    )
    if a.num_seeds == 1:
        ts = jax.tree.map(lambda x: x[None], ts)
    assert int(ts.global_step[0]) == per_seed, (int(ts.global_step[0]), per_seed)

    # Untimed sanity check: how good are the trained policies?
    rets = jax.jit(jax.vmap(lambda s: real_eval(algo, s, s.rng)[1].mean()))(ts)

    print(
        json.dumps(
            {
                "peer": "rejax",
                "compile_s": round(compile_s, 3),
                "run_s": round(run_s, 3),
                "sps": round(per_seed / run_s, 1),
                "total_sps": round(a.num_seeds * per_seed / run_s, 1),
                "num_seeds": a.num_seeds,
                "steps": per_seed,
                "final_return": round(float(rets.mean()), 1),
                "jax": jax.__version__,
                "backend": jax.default_backend(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
