"""Stable-Baselines3 DQN on gymnasium CartPole-v1: time to threshold and steps/s (peer benchmark).

Hyperparameters are RL-Zoo's CartPole-v1 entry for DQN (rl-baselines3-zoo hyperparams/dqn.yml,
"Almost Tuned", as of commit ce95481b):
  n_timesteps 5e4, policy MlpPolicy, learning_rate 2.3e-3, batch_size 64, buffer_size 100000,
  learning_starts 1000, gamma 0.99, target_update_interval 10, train_freq 256,
  gradient_steps 128, exploration_fraction 0.16, exploration_final_eps 0.04,
  policy_kwargs dict(net_arch=[256, 256]).
The entry sets no n_envs, so the Zoo runs one env (its default). Everything else is SB3's DQN
default: Adam (eps 1e-8, no annealing), Huber (smooth L1) loss, max_grad_norm 10, tau 1.0 (the
target is copied), exploration_initial_eps 1.0, ReLU, no Double DQN, 1-step targets. These are
fleetrl's dqn-cartpole settings (its 8 envs x 32 steps are 256 env steps per 128 gradient steps,
and its target_update_interval counts env steps as SB3 does). SB3 updates the target in
collect_rollouts, between training phases, so with train_freq 256 the copy every 10 env steps
changes the target once per 128 gradient steps.

--n-envs N (default 1, the Zoo's) steps N envs and sets train_freq to 256 // N vec-env steps, so
that every mode keeps 128 gradient steps per 256 env steps (0.5 per env step).

Stop rule (as fleetrl's dqn-cartpole preset and benchmarks/dqn_time_to_threshold.py): a separate
eval env is evaluated every --eval-every env steps (default 4,096) on 10 deterministic (greedy)
episodes; training stops the first time the mean eval return is >= 475 (--threshold), or after
--max-steps (default: the Zoo's 5e4).

Two timings, one process (as peers/sb3_a2c_cartpole.py):
  cold: the first run, timed from the top of this script (interpreter start excluded, imports of
        torch and SB3, model construction and all evaluation time included) to the eval that hit
        the threshold.
  warm: a second run with the same seed in the same, now warm, process, timed from just before
        its model is built. Skipped with --no-warm.

--steps-per-second N: training throughput instead. Trains env steps until learning has started
  (the first multiple of 256 env steps >= learning_starts), then N more (rounded up to whole
  256-step rollouts), no evaluation; sps = the N env steps / wall seconds from the start of the
  first rollout after learning started to the end of training (env stepping, acting, replay and
  the 128 gradient steps per 256 env steps all included). The exploration schedule decays over
  the run's own length instead of the Zoo's 5e4 steps; that changes the actions, not the cost.

On a shared machine pass --torch-threads 1: with one of 2 cores busy elsewhere, torch's default
of 2 threads ran 42 env steps/s here, 1 thread 547.

Prints one JSON line:
  time to threshold: {"peer","algo","mode":"ttt","seed","n_envs","eval_every","threshold",
    "reached","time_to_threshold_s" (cold),"steps_to_threshold","steps" (trained in all),
    "train_sps" (cold run, env steps/s after the first rollout, eval time excluded),
    "warm_reached","warm_time_to_threshold_s","warm_steps_to_threshold","warm_steps",
    "warm_train_sps","torch_threads"}
  steps per second: {"peer","algo","mode":"sps","seed","n_envs","warmup_steps","steps","sps",
    "gradient_steps_per_env_step","torch_threads"}

    /tmp/peers-venv/bin/python benchmarks/peers/sb3_dqn_cartpole.py --seed 0
    /tmp/peers-venv/bin/python benchmarks/peers/sb3_dqn_cartpole.py --steps-per-second 20480
"""

import time

T0 = time.time()  # reference for the cold time: taken before every other import

import argparse
import json
import math

import torch
from sb3_callbacks import FirstRollout, StopAtThreshold, TimedEval
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

THRESHOLD = 475.0
ROLLOUT = 256  # env steps between training phases (RL-Zoo train_freq 256 with one env)
GRADIENT_STEPS = 128
LEARNING_STARTS = 1000


def zoo_model(seed, n_envs):
    """DQN with RL-Zoo's CartPole-v1 settings; train_freq keeps 256 env steps per phase."""
    if ROLLOUT % n_envs:
        raise SystemExit(f"--n-envs must divide {ROLLOUT}, got {n_envs}")
    return DQN(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=n_envs, seed=seed),
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=100_000,
        learning_starts=LEARNING_STARTS,
        gamma=0.99,
        target_update_interval=10,
        train_freq=ROLLOUT // n_envs,
        gradient_steps=GRADIENT_STEPS,
        exploration_fraction=0.16,
        exploration_final_eps=0.04,
        policy_kwargs=dict(net_arch=[256, 256]),
        seed=seed,
        verbose=0,
    )


class MarkAtRolloutStart(BaseCallback):
    """Records (wall, steps) at the start of the first rollout with num_timesteps >= ``after``."""

    def __init__(self, after):
        super().__init__()
        self.after = after
        self.mark = None

    def _on_step(self):
        return True

    def _on_rollout_start(self):
        if self.mark is None and self.model.num_timesteps >= self.after:
            self.mark = (time.perf_counter(), self.model.num_timesteps)


def run_ttt(seed, n_envs, max_steps, eval_every, threshold, t_ref):
    """Train until the eval mean is >= ``threshold``; times are measured from ``t_ref``."""
    model = zoo_model(seed, n_envs)
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=seed + 10_000)
    stop = StopAtThreshold(reward_threshold=threshold, verbose=0)
    evalcb = TimedEval(
        eval_env,
        callback_on_new_best=stop,
        eval_freq=max(eval_every // n_envs, 1),  # callback calls are vec-env steps
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


def run_sps(seed, n_envs, steps):
    """Env steps/s of training once gradient steps have started (no evaluation)."""
    warmup = math.ceil(LEARNING_STARTS / ROLLOUT) * ROLLOUT  # first phase that trains ends here
    steps = math.ceil(steps / ROLLOUT) * ROLLOUT
    model = zoo_model(seed, n_envs)
    mark = MarkAtRolloutStart(after=warmup)
    model.learn(total_timesteps=warmup + steps, callback=mark)
    t_end, n_end = time.perf_counter(), model.num_timesteps
    t1, n1 = mark.mark
    return {
        "warmup_steps": n1,
        "steps": n_end - n1,
        "sps": round((n_end - n1) / (t_end - t1), 1),
        "gradient_steps_per_env_step": GRADIENT_STEPS / ROLLOUT,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-envs", type=int, default=1, help="training envs (RL-Zoo: 1)")
    p.add_argument("--eval-every", type=int, default=4096, help="env steps between evaluations")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help="mean eval return to reach")
    p.add_argument("--max-steps", type=float, default=5e4, help="budget (RL-Zoo n_timesteps)")
    p.add_argument("--no-warm", action="store_true", help="skip the second (warm) run")
    p.add_argument(
        "--steps-per-second",
        type=int,
        default=None,
        metavar="N",
        help="measure training steps/s over N env steps instead of the time to threshold",
    )
    p.add_argument(
        "--torch-threads", type=int, default=None, help="torch.set_num_threads (default: untouched)"
    )
    a = p.parse_args()
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    out = {"peer": "sb3", "algo": "dqn", "seed": a.seed, "n_envs": a.n_envs}
    if a.steps_per_second:
        out.update(mode="sps", **run_sps(a.seed, a.n_envs, a.steps_per_second))
    else:
        cold = run_ttt(a.seed, a.n_envs, a.max_steps, a.eval_every, a.threshold, T0)
        out.update(mode="ttt", eval_every=a.eval_every, threshold=a.threshold, **cold)
        if not a.no_warm:
            warm = run_ttt(a.seed, a.n_envs, a.max_steps, a.eval_every, a.threshold, time.time())
            out.update({f"warm_{k}": v for k, v in warm.items()})
    out["torch_threads"] = torch.get_num_threads()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
