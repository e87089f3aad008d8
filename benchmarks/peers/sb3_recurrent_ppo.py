"""sb3-contrib RecurrentPPO (MlpLstmPolicy) on CartPole-v1 with the velocities hidden (peer benchmark).

Environment: gymnasium CartPole-v1 behind an ObservationWrapper that keeps obs[[0, 2]] (cart position,
pole angle) and drops both velocities. RL-Zoo's CartPoleNoVel-v1 (rl_zoo3 MaskVelocityWrapper) zeroes
obs[1] and obs[3] instead and keeps a 4-dim observation; the information the agent gets is the same.

Hyperparameters are RL-Zoo's CartPoleNoVel-v1 entry (rl-baselines3-zoo hyperparams/ppo_lstm.yml):
  normalize True (VecNormalize on observations and rewards, with gamma = the algorithm's 0.98, as the
  Zoo's ExperimentManager sets it), n_envs 8, n_timesteps 1e5, MlpLstmPolicy, n_steps 32,
  batch_size 256, gae_lambda 0.8, gamma 0.98, n_epochs 20, ent_coef 0.0, learning_rate lin_0.001,
  clip_range lin_0.2 (lin_x = x * progress_remaining, as the Zoo's linear_schedule),
  policy_kwargs: ortho_init False, activation_fn ReLU, lstm_hidden_size 64, enable_critic_lstm True,
  net_arch dict(pi=[64], vf=[64]). Everything else is RecurrentPPO's default (vf_coef 0.5,
  max_grad_norm 0.5, one LSTM layer, shared_lstm False).

--mode sps (default): training throughput. Trains --warmup-steps + --steps env steps in one learn()
  call, no evaluation; sps = env steps / wall seconds from the end of the first rollout that reaches
  --warmup-steps to the end of training (rollout collection and gradient updates both included).
  Note the lin_ schedules decay over warmup + steps rather than the Zoo's 1e5; that changes the
  numbers in the updates, not their cost.

--mode ttt: time to threshold. A separate eval env (VecNormalize with training=False, norm_reward=False;
  its statistics are synced from the training env before each evaluation by SB3's EvalCallback) is
  evaluated every --eval-every env steps (default 2,048) on 10 deterministic episodes, the LSTM state
  carried through each episode; training stops the first time the mean eval return is >= --threshold
  (default 475) or after --max-steps (default: the Zoo's 1e5).

Prints one JSON line:
  sps: {"peer","algo","env","mode","seed","warmup_steps","steps" (measured),"sps","torch_threads"}
  ttt: {"peer","algo","env","mode","seed","eval_every","threshold","reached",
        "time_to_threshold_s" (wall since the top of this script, imports included),
        "steps_to_threshold","steps","train_sps" (after the first rollout, eval excluded),
        "torch_threads"}

    /tmp/peers-venv/bin/python benchmarks/peers/sb3_recurrent_ppo.py --steps 20000
    /tmp/peers-venv/bin/python benchmarks/peers/sb3_recurrent_ppo.py --mode ttt --seed 0
"""

import time

T0 = time.time()  # reference for time_to_threshold_s: taken before every other import

import argparse
import json

import gymnasium as gym
import numpy as np
import torch
from sb3_callbacks import StopAtThreshold, TimedEval
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import (
    BaseCallback,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

N_ENVS = 8  # RL-Zoo ppo_lstm.yml CartPoleNoVel-v1
GAMMA = 0.98


class HideVelocity(gym.ObservationWrapper):
    """CartPole with only cart position and pole angle observed (obs[[0, 2]])."""

    KEEP = np.array([0, 2])

    def __init__(self, env):
        super().__init__(env)
        box = env.observation_space
        self.observation_space = gym.spaces.Box(
            low=box.low[self.KEEP], high=box.high[self.KEEP], dtype=box.dtype
        )

    def observation(self, observation):
        return observation[self.KEEP]


def linear(x):
    return lambda progress_remaining: progress_remaining * x


def make_env(n_envs, seed, training):
    venv = make_vec_env("CartPole-v1", n_envs=n_envs, seed=seed, wrapper_class=HideVelocity)
    if training:
        return VecNormalize(venv, gamma=GAMMA)
    return VecNormalize(venv, gamma=GAMMA, training=False, norm_reward=False)


def zoo_model(seed):
    return RecurrentPPO(
        "MlpLstmPolicy",
        make_env(N_ENVS, seed, training=True),
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=GAMMA,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=linear(1e-3),
        clip_range=linear(0.2),
        policy_kwargs=dict(
            ortho_init=False,
            activation_fn=torch.nn.ReLU,
            lstm_hidden_size=64,
            enable_critic_lstm=True,
            net_arch=dict(pi=[64], vf=[64]),
        ),
        seed=seed,
        verbose=0,
    )


class MarkAfter(BaseCallback):
    """Records (wall, steps) at the end of the first rollout with num_timesteps >= ``after``."""

    def __init__(self, after=0):
        super().__init__()
        self.after = after
        self.mark = None

    def _on_step(self):
        return True

    def _on_rollout_end(self):
        if self.mark is None and self.model.num_timesteps >= self.after:
            self.mark = (time.perf_counter(), self.model.num_timesteps)


def run_sps(seed, warmup_steps, steps):
    model = zoo_model(seed)
    mark = MarkAfter(after=warmup_steps)
    model.learn(total_timesteps=int(warmup_steps + steps), callback=mark)
    t_end, n_end = time.perf_counter(), model.num_timesteps
    t1, n1 = mark.mark
    return {
        "mode": "sps",
        "seed": seed,
        "warmup_steps": n1,
        "steps": n_end - n1,
        "sps": round((n_end - n1) / (t_end - t1), 1),
    }


def run_ttt(seed, max_steps, eval_every, threshold):
    model = zoo_model(seed)
    stop = StopAtThreshold(reward_threshold=threshold, verbose=0)
    evalcb = TimedEval(
        make_env(1, seed + 10_000, training=False),
        callback_on_new_best=stop,
        eval_freq=max(eval_every // N_ENVS, 1),  # callback calls are vec-env steps (8 env steps)
        n_eval_episodes=10,
        deterministic=True,
        verbose=0,
    )
    first = MarkAfter()
    model.learn(total_timesteps=int(max_steps), callback=[first, evalcb])
    t_end, n_end = time.perf_counter(), model.num_timesteps
    t1, n1 = first.mark
    reached = stop.hit is not None
    return {
        "mode": "ttt",
        "seed": seed,
        "eval_every": eval_every,
        "threshold": threshold,
        "reached": reached,
        "time_to_threshold_s": round(stop.hit[0] - T0, 3) if reached else None,
        "steps_to_threshold": stop.hit[1] if reached else None,
        "steps": n_end,
        "train_sps": round((n_end - n1) / (t_end - t1 - evalcb.eval_s), 1),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["sps", "ttt"], default="sps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20_000, help="sps: measured env steps")
    p.add_argument("--warmup-steps", type=int, default=2048, help="sps: unmeasured env steps first")
    p.add_argument(
        "--eval-every", type=int, default=2048, help="ttt: env steps between evaluations"
    )
    p.add_argument("--threshold", type=float, default=475.0, help="ttt: mean eval return to reach")
    p.add_argument("--max-steps", type=float, default=1e5, help="ttt: budget (RL-Zoo n_timesteps)")
    p.add_argument(
        "--torch-threads", type=int, default=None, help="torch.set_num_threads (default: untouched)"
    )
    a = p.parse_args()
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    if a.mode == "sps":
        res = run_sps(a.seed, a.warmup_steps, a.steps)
    else:
        res = run_ttt(a.seed, a.max_steps, a.eval_every, a.threshold)
    out = {"peer": "sb3-contrib", "algo": "recurrent_ppo", "env": "CartPole-v1-novel", **res}
    out["torch_threads"] = torch.get_num_threads()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
