"""Stable-Baselines3 A2C on gymnasium CartPole-v1: time to threshold (peer benchmark for fleetrl).

Hyperparameters are RL-Zoo's CartPole-v1 entry for A2C (rl-baselines3-zoo hyperparams/a2c.yml):
  n_envs 8, policy MlpPolicy, n_timesteps 5e5, ent_coef 0.0. Nothing else is set there, so every
  other value is SB3's A2C default: learning_rate 7e-4 (constant), n_steps 5, gamma 0.99,
  gae_lambda 1.0, vf_coef 0.5, max_grad_norm 0.5, RMSprop (alpha 0.99, eps 1e-5),
  normalize_advantage False, no observation/reward normalization, 64-64 tanh actor and critic.

Stop rule (as sb3_cartpole.py and fleetrl's benchmarks/ppo_time_to_threshold.py): a separate eval env
is evaluated every --eval-every env steps (default 2,048) on 10 deterministic episodes; training stops
the first time the mean eval return is >= 475 (--threshold), or after --max-steps (default: the Zoo's 5e5).

Two timings, one process:
  cold: the first run, timed from the top of this script (interpreter start excluded, imports of torch
        and SB3, model construction and all evaluation time included) to the eval that hit 475.
  warm: a second run with the same seed in the same, now warm, process (modules imported, torch's
        kernels and allocator initialised), timed from just before its model is built to the eval that
        hit 475. Skipped with --no-warm. Seeding is deterministic, so both runs should take the same
        number of env steps.

Prints one JSON line:
  {"peer","algo","seed","eval_every","threshold",
   "reached","time_to_threshold_s" (cold),"steps_to_threshold","steps" (trained in all),
   "train_sps" (cold run, env steps/s after the first rollout, eval time excluded),
   "warm_reached","warm_time_to_threshold_s","warm_steps_to_threshold","warm_steps","warm_train_sps",
   "torch_threads"}

    /tmp/peers-venv/bin/python benchmarks/peers/sb3_a2c_cartpole.py --seed 0 [--eval-every 2048]
"""

import time

T0 = time.time()  # reference for the cold time: taken before every other import

import argparse
import json

import torch
from sb3_callbacks import FirstRollout, StopAtThreshold, TimedEval
from stable_baselines3 import A2C
from stable_baselines3.common.env_util import make_vec_env

THRESHOLD = 475.0
N_ENVS = 8  # RL-Zoo a2c.yml CartPole-v1


def zoo_model(seed):
    """A2C with RL-Zoo's CartPole-v1 settings (n_envs 8, ent_coef 0.0, SB3 defaults otherwise)."""
    return A2C(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=N_ENVS, seed=seed),
        ent_coef=0.0,
        seed=seed,
        verbose=0,
    )


def run_ttt(seed, max_steps, eval_every, threshold, t_ref):
    """Train until the eval mean is >= ``threshold``; times are measured from ``t_ref`` (time.time())."""
    model = zoo_model(seed)
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=seed + 10_000)
    stop = StopAtThreshold(reward_threshold=threshold, verbose=0)
    evalcb = TimedEval(
        eval_env,
        callback_on_new_best=stop,
        eval_freq=max(eval_every // N_ENVS, 1),  # callback calls are vec-env steps (8 env steps)
        n_eval_episodes=10,
        deterministic=True,
        verbose=0,
    )
    first = FirstRollout()
    model.learn(total_timesteps=int(max_steps), callback=[first, evalcb])
    t_end, n_end = time.perf_counter(), model.num_timesteps
    t1, n1 = first.mark
    reached = stop.hit is not None
    return {
        "reached": reached,
        "time_to_threshold_s": round(stop.hit[0] - t_ref, 3) if reached else None,
        "steps_to_threshold": stop.hit[1] if reached else None,
        "steps": n_end,
        "train_sps": round((n_end - n1) / (t_end - t1 - evalcb.eval_s), 1),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=2048, help="env steps between evaluations")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help="mean eval return to reach")
    p.add_argument("--max-steps", type=float, default=5e5, help="budget (RL-Zoo n_timesteps)")
    p.add_argument("--no-warm", action="store_true", help="skip the second (warm) run")
    p.add_argument(
        "--torch-threads", type=int, default=None, help="torch.set_num_threads (default: untouched)"
    )
    a = p.parse_args()
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    cold = run_ttt(a.seed, a.max_steps, a.eval_every, a.threshold, T0)
    out = {"peer": "sb3", "algo": "a2c", "seed": a.seed, "eval_every": a.eval_every}
    out.update(threshold=a.threshold, **cold)
    if not a.no_warm:
        warm = run_ttt(a.seed, a.max_steps, a.eval_every, a.threshold, time.time())
        out.update({f"warm_{k}": v for k, v in warm.items()})
    out["torch_threads"] = torch.get_num_threads()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
