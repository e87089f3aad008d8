"""Stable-Baselines3 PPO on a MuJoCo env (peer benchmark for fleetrl's ppo-halfcheetah preset).

``--settings zoo`` (default): the preset's, which are RL-Zoo's tuned HalfCheetah settings: one env
x 512 steps, 20 epochs of 64-sample minibatches, constant lr 2.0633e-5, gamma 0.98, GAE 0.92, clip
0.1, separate 256-256 ReLU networks, log std starting at -2, VecNormalize (gamma 0.98).
``--settings cleanrl``: CleanRL's ppo_continuous_action: 8 envs (DummyVecEnv) x 256 steps, 10
epochs of 64-sample minibatches, lr 3e-4 linearly annealed, gamma 0.99, GAE 0.95, clip 0.2, no
entropy bonus, separate 64-64 tanh networks, VecNormalize on observations and rewards.
Runs --steps env steps without evaluation and prints one JSON line with the steps/s measured from
the end of the first rollout and the wall time from process start (imports included).
"""

import time

T0 = time.time()

import argparse
import json

import torch
from sb3_callbacks import FirstRollout
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--steps", type=int, default=40_960)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", choices=["zoo", "cleanrl"], default="zoo")
    a = p.parse_args()
    if a.settings == "zoo":
        n_envs, gamma = 1, 0.98
        settings = dict(
            n_steps=512,
            batch_size=64,
            n_epochs=20,
            learning_rate=2.0633e-05,
            gae_lambda=0.92,
            clip_range=0.1,
            ent_coef=0.000401762,
            vf_coef=0.58096,
            max_grad_norm=0.8,
            policy_kwargs=dict(
                log_std_init=-2,
                ortho_init=False,
                activation_fn=torch.nn.ReLU,
                net_arch=dict(pi=[256, 256], vf=[256, 256]),
            ),
        )
    else:
        n_envs, gamma = 8, 0.99
        settings = dict(
            n_steps=256,
            batch_size=64,
            n_epochs=10,
            learning_rate=lambda remaining: remaining * 3e-4,
            gae_lambda=0.95,
            clip_range=0.2,
            ent_coef=0.0,
            vf_coef=0.5,
            max_grad_norm=0.5,
            policy_kwargs=dict(
                net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh
            ),
        )
    env = VecNormalize(make_vec_env(a.env, n_envs=n_envs, seed=a.seed), gamma=gamma)
    model = PPO("MlpPolicy", env, gamma=gamma, seed=a.seed, verbose=0, **settings)
    first = FirstRollout()
    model.learn(total_timesteps=a.steps, callback=first)
    sps = first.steps_per_second()
    print(
        json.dumps(
            {
                "peer": "sb3",
                "env": a.env,
                "sps": round(sps, 1),
                "steps": model.num_timesteps,
                "seed": a.seed,
                "settings": a.settings,
                "torch_threads": torch.get_num_threads(),
                "process_wall": round(time.time() - T0, 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
