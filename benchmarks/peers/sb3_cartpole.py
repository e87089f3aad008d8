"""Stable-Baselines3 PPO on gymnasium CartPole-v1 (peer benchmark for fleetrl).

--mode ttt (default): time-to-threshold. Hyperparameters are RL-Zoo's tuned CartPole-v1 entry
  (rl-baselines3-zoo hyperparams/ppo.yml): n_envs 8, MlpPolicy, n_timesteps 1e5, n_steps 32,
  batch_size 256, gae_lambda 0.8, gamma 0.98, n_epochs 20, ent_coef 0.0, learning_rate lin_0.001,
  clip_range lin_0.2 (lin_x = x * progress_remaining, as the Zoo's linear_schedule).
  A separate eval env is evaluated every 2,048 env steps on 10 deterministic episodes; training stops
  the first time the mean eval return is >= 475. Prints one JSON line:
  {"peer","seed","time_to_threshold_s" (wall since process start, imports included),
   "steps_to_threshold","reached","train_sps" (env steps/s after the first rollout, eval time excluded),
   "torch_threads"}

--mode steady: raw throughput at CleanRL ppo.py settings: 4 envs x 128 steps, 4 epochs x 4 minibatches,
  lr 2.5e-4 (linearly annealed, as CleanRL), gamma 0.99, gae_lambda 0.95, clip 0.2, ent 0.01, vf 0.5,
  max_grad_norm 0.5, separate 64-64 tanh actor/critic. Runs --steps env steps, no evaluation; sps is
  measured from the end of the first rollout to the end of training.

--mode zoo: raw throughput at RL-Zoo's settings (as ttt) for --steps env steps, no evaluation.

Torch threads are left at SB3's/torch's default unless --torch-threads is given (recorded as torch_threads);
device is CPU.
"""

import time

T0 = time.time()  # reference for time_to_threshold_s: taken before every other import

import argparse
import json

import torch
from sb3_callbacks import FirstRollout, StopAtThreshold, TimedEval
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

THRESHOLD = 475.0
EVAL_EVERY = 2048  # env steps


def linear(x):
    return lambda progress_remaining: progress_remaining * x


def zoo_model(seed):
    """PPO with RL-Zoo's CartPole-v1 settings on 8 envs."""
    return PPO(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=8, seed=seed),
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=linear(1e-3),
        clip_range=linear(0.2),
        seed=seed,
        verbose=0,
    )


def run_ttt(seed, max_steps):
    model = zoo_model(seed)
    env = model.get_env()
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=seed + 10_000)
    stop = StopAtThreshold(reward_threshold=THRESHOLD, verbose=0)
    evalcb = TimedEval(
        eval_env,
        callback_on_new_best=stop,
        eval_freq=EVAL_EVERY // env.num_envs,
        n_eval_episodes=10,
        deterministic=True,
        verbose=0,
    )
    first = FirstRollout()
    model.learn(total_timesteps=int(max_steps), callback=[first, evalcb])
    t_end, n_end = time.perf_counter(), model.num_timesteps
    t1, n1 = first.mark
    train_sps = (n_end - n1) / (t_end - t1 - evalcb.eval_s)
    reached = stop.hit is not None
    return {
        "peer": "sb3",
        "seed": seed,
        "time_to_threshold_s": round(stop.hit[0] - T0, 3) if reached else None,
        "steps_to_threshold": stop.hit[1] if reached else None,
        "reached": reached,
        "train_sps": round(train_sps, 1),
        "torch_threads": torch.get_num_threads(),
    }


def run_steady(seed, steps):
    env = make_vec_env("CartPole-v1", n_envs=4, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=128,
        batch_size=128,
        n_epochs=4,
        learning_rate=linear(2.5e-4),
        gamma=0.99,
        gae_lambda=0.95,
        clip_range=0.2,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
        policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh),
        seed=seed,
        verbose=0,
    )
    return throughput(model, steps, seed, "steady")


def run_zoo_steady(seed, steps):
    """RL-Zoo's CartPole settings (as run_ttt) without evaluation: raw training throughput."""
    model = zoo_model(seed)
    return throughput(model, steps, seed, "zoo")


def throughput(model, steps, seed, mode):
    """Train ``model`` for ``steps`` env steps; steps/s after the first rollout, as JSON fields."""
    first = FirstRollout()
    model.learn(total_timesteps=int(steps), callback=first)
    return {
        "peer": "sb3",
        "mode": mode,
        "sps": round(first.steps_per_second(), 1),
        "steps": model.num_timesteps,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["ttt", "steady", "zoo"], default="ttt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=float, default=1e5, help="ttt budget (RL-Zoo n_timesteps)")
    p.add_argument("--steps", type=int, default=100_000, help="steady-mode env steps")
    p.add_argument(
        "--torch-threads", type=int, default=None, help="torch.set_num_threads (default: untouched)"
    )
    a = p.parse_args()
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    if a.mode == "ttt":
        out = run_ttt(a.seed, a.max_steps)
    elif a.mode == "zoo":
        out = run_zoo_steady(a.seed, a.steps)
    else:
        out = run_steady(a.seed, a.steps)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
