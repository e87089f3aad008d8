"""Stable-Baselines3 SAC and sbx SAC (SB3's JAX port) on Pendulum-v1 and MuJoCo (peer benchmark).

One script for both libraries: --lib sb3 (stable_baselines3.SAC, torch) or --lib sbx
(sbx.SAC, JAX/flax/optax; sbx-rl 0.28.0). sbx subclasses SB3's OffPolicyAlgorithm, so env
stepping, the Monitor/DummyVecEnv wrappers, the warm-up with uniform random actions, the
ReplayBuffer (numpy storage, numpy RNG) and the callbacks are the same code in both; only the
networks, the losses and the optimizer steps differ.

Settings, Pendulum-v1 (time to threshold and --runs): RL-Zoo's SAC entry (rl-baselines3-zoo
hyperparams/sac.yml, commit c94924e5): n_timesteps 20000, policy MlpPolicy, learning_rate 1e-3.
Nothing else is set there, so the rest is SB3's SAC default (stable_baselines3 2.9.2,
sac/sac.py and sac/policies.py): one env, no normalization, buffer_size 1e6, learning_starts 100,
batch_size 256, tau 0.005, gamma 0.99, train_freq 1, gradient_steps 1 (UTD 1),
target_update_interval 1, ent_coef "auto" (log alpha learned from alpha = 1.0 with Adam at the same
learning rate), target_entropy "auto" = -dim(A) = -1, no action noise, 2 critics, separate actor and
critic networks net_arch [256, 256] with ReLU, a Gaussian head (mean and log std, log std clipped
to [-20, 2]) squashed by tanh, Adam (eps 1e-8) for actor and critics, deterministic evaluation =
tanh(mean). Every one of these is passed explicitly to both libraries, so neither library's own
defaults decide.

Settings, --steps-per-second: SAC at UTD 1 with SB3's defaults (learning_rate 3e-4, the rest as
above: net_arch [256, 256], batch 256, buffer 1e6, tau 0.005, gamma 0.99, ent_coef auto), which are
RL-Zoo's MuJoCo settings (its HalfCheetah/Ant/Hopper/Walker2d entries set only n_timesteps 1e6 and
learning_starts 10000), learning_starts --learning-starts (default 10000, the Zoo's).

How sbx takes the same settings (sbx/sac/sac.py, sbx/sac/policies.py, sbx-rl 0.28.0):
  * policy_kwargs net_arch: a list is used for both the actor ("pi") and the critics ("qf"); a dict
    takes the keys "pi" and "qf" (as SB3's SAC). Its default is also [256, 256], activation relu,
    n_critics 2 (vmapped critics), log std clipped to [-20, 2], optax.adam (eps 1e-8).
  * ent_coef "auto": a learned log-alpha parameter starting at alpha = 1.0 ("auto_0.1" would start
    at 0.1, as in SB3), optimized with optax.adam at lr_schedule(1), loss
    log(alpha) * (entropy - target_entropy) = SB3's -log_alpha * (log_prob + target_entropy).
    target_entropy "auto" = -prod(action shape), as SB3.
  * qf_learning_rate (sbx only) is left None, so the critics use learning_rate, as SB3.
  * Update order: SB3 does alpha step, critic step, actor step (on the updated critics), target
    update; sbx does critic step, target update, actor step (on the updated critics), alpha step.
    Both use alpha_t in the critic and actor losses and take the alpha step from log-probs of the
    actor before its step, so the sequence of updates is the same; only the random draws differ.
What cannot be made equal:
  * initialisation: torch Linear (weights and biases U(+-1/sqrt(fan_in))) against flax Dense
    (lecun_normal weights, zero biases);
  * random streams: torch's generator (actions, SB3's policy noise) against JAX PRNG keys (sbx
    derives its key from the seed); the env seeds, the warm-up random actions and the replay
    sampling are the same numpy streams, but they diverge once the policies act differently;
  * the tanh log-prob correction: SB3 uses log(1 - tanh(u)^2 + 1e-6), sbx the exact tfp Tanh
    bijector; sbx draws a fresh action sample for the actor loss after the critic step, SB3 reuses
    the one drawn before it (same distribution, different draws);
  * the cost model: sbx jit-compiles its update (one fused XLA program per gradient step call),
    action sampling and deterministic action selection, so its cold time includes tracing and
    compiling, and every env step crosses torch tensors (replay sample) -> numpy -> jax arrays.

Stop rule (mode a, as fleetrl's time-to-threshold benchmarks): a separate eval env (seed + 10,000)
is evaluated every --eval-every env steps (default 1,000) on 10 deterministic episodes; training
stops the first time the mean eval return is >= -200 (--threshold), or at --max-steps (default: the
Zoo's 20,000).

Modes:
  a. default, time to threshold on Pendulum-v1. Two timings, one process (as sb3_dqn_cartpole.py):
       cold: the first run, timed from the top of this script (interpreter start excluded; imports
             of torch, SB3, and for sbx jax/flax/sbx, model construction, compilation and all
             evaluation time included) to the eval that hit the threshold.
       warm: a second run with the same seed in the same, now warm, process, timed from just before
             its model is built. Skipped with --no-warm.
     train_sps = env steps/s after the first env step, evaluation time excluded (the 100 warm-up
     steps and, for sbx, compile time are included).
  b. --steps-per-second N [--env HalfCheetah-v5] [--learning-starts L]: training throughput. Trains
     L env steps with random actions, then --skip more (default 200) with a gradient step each, so
     that sbx's compilation and torch's first calls fall outside the window, then N more;
     sps = N / wall seconds of those N env steps (acting, env step, replay insert and sample, and one
     gradient step per env step all included; no evaluation); us_per_step = 1e6 / sps. skip_s is the
     wall time of the --skip steps (sbx: includes the compile). Works for --env Pendulum-v1 too.
  c. --runs K: K full --max-steps Pendulum-v1 runs (seeds 0..K-1, settings of mode a) back to back
     in one process, no early stop, evaluating every --eval-every steps as mode a (0: only once at
     the end). Reports the total wall time (from just before the first model is built; cold_wall_s
     from the top of the script), the evaluation time within it, each run's final eval return and
     each run's first step with eval mean >= threshold (null if never). For comparison against K
     seeds compiled into one program.

On a shared machine pin the process (taskset -c 1) and pass --torch-threads 1 (both libs: sbx still
samples the replay buffer through torch). XLA's CPU thread pool follows the CPU affinity.

Prints one JSON line:
  ttt:  {"peer","algo","mode":"ttt","env","seed","eval_every","threshold","reached",
         "time_to_threshold_s" (cold),"steps_to_threshold","steps","train_sps",
         "last_eval" (mean return of the run's last eval),"warm_reached",
         "warm_time_to_threshold_s","warm_steps_to_threshold","warm_steps","warm_train_sps",
         "warm_last_eval","versions","torch_threads"}
  sps:  {"peer","algo","mode":"sps","env","seed","learning_starts","skip","skip_s","steps","sps",
         "us_per_step","gradient_steps_per_env_step","batch_size","net_arch","versions",
         "torch_threads"}
  runs: {"peer","algo","mode":"runs","env","runs","max_steps","eval_every","threshold","wall_s",
         "cold_wall_s","eval_s","final_eval_returns","steps_to_threshold","versions","torch_threads"}

    taskset -c 1 /tmp/peers-venv/bin/python benchmarks/peers/sb3_sac.py --lib sb3 --torch-threads 1
    taskset -c 1 /tmp/peers-venv/bin/python benchmarks/peers/sb3_sac.py --lib sbx --torch-threads 1
    ... sb3_sac.py --lib sbx --steps-per-second 20000 --env HalfCheetah-v5 --torch-threads 1
    ... sb3_sac.py --lib sb3 --runs 8 --torch-threads 1
"""

import time

T0 = time.time()  # reference for the cold time: taken before every other import

import argparse
import json
from importlib.metadata import version

import torch
from sb3_callbacks import FirstRollout, StopAtThreshold, TimedEval
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

PENDULUM = "Pendulum-v1"
THRESHOLD = -200.0
ZOO_PENDULUM_STEPS = 20_000
ZOO_MUJOCO_LEARNING_STARTS = 10_000
NET_ARCH = [256, 256]
BATCH_SIZE = 256


def sac_class(lib):
    """The SAC class of the chosen library (imported here, so the cold time counts the import)."""
    if lib == "sbx":
        from sbx import SAC
    else:
        from stable_baselines3 import SAC
    return SAC


def make_sac(SAC, lib, env_id, seed, learning_rate, learning_starts):
    """SAC with every setting passed explicitly (SB3 2.9.2's SAC defaults unless given)."""
    kwargs = dict(
        learning_rate=learning_rate,
        buffer_size=1_000_000,
        learning_starts=learning_starts,
        batch_size=BATCH_SIZE,
        tau=0.005,
        gamma=0.99,
        train_freq=1,
        gradient_steps=1,
        action_noise=None,
        ent_coef="auto",
        target_entropy="auto",
        use_sde=False,
        policy_kwargs=dict(net_arch=list(NET_ARCH)),
        seed=seed,
        verbose=0,
    )
    if lib == "sb3":
        kwargs.update(target_update_interval=1, device="cpu")
    else:
        kwargs.update(qf_learning_rate=None, policy_delay=1)
    return SAC("MlpPolicy", make_vec_env(env_id, n_envs=1, seed=seed), **kwargs)


def zoo_pendulum(SAC, lib, seed):
    """RL-Zoo's Pendulum-v1 SAC: learning_rate 1e-3, SB3 defaults otherwise."""
    return make_sac(SAC, lib, PENDULUM, seed, learning_rate=1e-3, learning_starts=100)


class EvalLog(TimedEval):
    """TimedEval that also keeps (env steps, mean eval return) of every evaluation."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.history = []

    def _on_step(self):
        cont = super()._on_step()
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            self.history.append((self.num_timesteps, float(self.last_mean_reward)))
        return cont


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


def eval_env_for(seed):
    return make_vec_env(PENDULUM, n_envs=1, seed=seed + 10_000)


def run_ttt(SAC, lib, seed, max_steps, eval_every, threshold, t_ref):
    """Train until the eval mean is >= ``threshold``; times are measured from ``t_ref``."""
    model = zoo_pendulum(SAC, lib, seed)
    stop = StopAtThreshold(reward_threshold=threshold, verbose=0)
    evalcb = EvalLog(
        eval_env_for(seed),
        callback_on_new_best=stop,
        eval_freq=eval_every,
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
        "last_eval": round(evalcb.history[-1][1], 2) if evalcb.history else None,
    }


def run_many(SAC, lib, runs, max_steps, eval_every, threshold):
    """``runs`` full runs (seeds 0..runs-1) back to back, no early stop."""
    t_start = time.perf_counter()
    eval_s = 0.0
    finals, reach = [], []
    for seed in range(runs):
        model = zoo_pendulum(SAC, lib, seed)
        eval_env = eval_env_for(seed)
        evalcb = EvalLog(
            eval_env, eval_freq=eval_every, n_eval_episodes=10, deterministic=True, verbose=0
        )
        model.learn(total_timesteps=int(max_steps), callback=evalcb)
        eval_s += evalcb.eval_s
        if evalcb.history and evalcb.history[-1][0] == model.num_timesteps:
            final = evalcb.history[-1][1]
        else:  # the last periodic eval was not at the end (or there were none): one more
            t = time.perf_counter()
            final, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
            eval_s += time.perf_counter() - t
        finals.append(round(float(final), 2))
        hits = [n for n, r in evalcb.history if r >= threshold]
        reach.append(hits[0] if hits else None)
    t_end = time.perf_counter()
    return {
        "wall_s": round(t_end - t_start, 3),
        "cold_wall_s": round(time.time() - T0, 3),
        "eval_s": round(eval_s, 3),
        "final_eval_returns": finals,
        "steps_to_threshold": reach,
    }


def run_sps(SAC, lib, env_id, seed, steps, learning_starts, skip):
    """Env steps/s of training (one gradient step per env step), measured after learning started."""
    model = make_sac(SAC, lib, env_id, seed, learning_rate=3e-4, learning_starts=learning_starts)
    start = MarkAtRolloutStart(after=learning_starts)
    mark = MarkAtRolloutStart(after=learning_starts + skip)
    model.learn(total_timesteps=learning_starts + skip + steps, callback=[start, mark])
    t_end, n_end = time.perf_counter(), model.num_timesteps
    t0, _ = start.mark
    t1, n1 = mark.mark
    sps = (n_end - n1) / (t_end - t1)
    return {
        "learning_starts": learning_starts,
        "skip": n1 - learning_starts,
        "skip_s": round(t1 - t0, 3),
        "steps": n_end - n1,
        "sps": round(sps, 1),
        "us_per_step": round(1e6 / sps, 1),
        "gradient_steps_per_env_step": 1,
        "batch_size": BATCH_SIZE,
        "net_arch": NET_ARCH,
    }


def versions(lib):
    names = ["stable_baselines3", "torch", "gymnasium"]
    if lib == "sbx":
        names += ["sbx-rl", "jax", "flax", "optax"]
    return {n: version(n) for n in names}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lib", choices=["sb3", "sbx"], default="sb3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=1000, help="env steps between evaluations")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help="mean eval return to reach")
    p.add_argument(
        "--max-steps", type=float, default=ZOO_PENDULUM_STEPS, help="budget (RL-Zoo n_timesteps)"
    )
    p.add_argument("--no-warm", action="store_true", help="skip the second (warm) run")
    p.add_argument(
        "--steps-per-second",
        type=int,
        default=None,
        metavar="N",
        help="measure training steps/s over N env steps instead of the time to threshold",
    )
    p.add_argument("--env", default=None, help="--steps-per-second env (default HalfCheetah-v5)")
    p.add_argument(
        "--learning-starts",
        type=int,
        default=ZOO_MUJOCO_LEARNING_STARTS,
        help="--steps-per-second: random-action steps before training (RL-Zoo MuJoCo: 10000)",
    )
    p.add_argument(
        "--skip",
        type=int,
        default=200,
        help="--steps-per-second: trained steps left out of the window (compile, first calls)",
    )
    p.add_argument("--runs", type=int, default=None, metavar="K", help="K full runs, seeds 0..K-1")
    p.add_argument(
        "--torch-threads", type=int, default=None, help="torch.set_num_threads (default: untouched)"
    )
    a = p.parse_args()
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    if a.env not in (None, PENDULUM) and not a.steps_per_second:
        raise SystemExit("--env is for --steps-per-second; modes a and c run Pendulum-v1")
    SAC = sac_class(a.lib)
    out = {"peer": a.lib, "algo": "sac"}
    if a.steps_per_second:
        env_id = a.env or "HalfCheetah-v5"
        out.update(mode="sps", env=env_id, seed=a.seed)
        out.update(
            run_sps(SAC, a.lib, env_id, a.seed, a.steps_per_second, a.learning_starts, a.skip)
        )
    elif a.runs:
        out.update(
            mode="runs",
            env=PENDULUM,
            runs=a.runs,
            max_steps=int(a.max_steps),
            eval_every=a.eval_every,
            threshold=a.threshold,
        )
        out.update(run_many(SAC, a.lib, a.runs, a.max_steps, a.eval_every, a.threshold))
    else:
        out.update(
            mode="ttt", env=PENDULUM, seed=a.seed, eval_every=a.eval_every, threshold=a.threshold
        )
        out.update(run_ttt(SAC, a.lib, a.seed, a.max_steps, a.eval_every, a.threshold, T0))
        if not a.no_warm:
            warm = run_ttt(SAC, a.lib, a.seed, a.max_steps, a.eval_every, a.threshold, time.time())
            out.update({f"warm_{k}": v for k, v in warm.items()})
    out["versions"] = versions(a.lib)
    out["torch_threads"] = torch.get_num_threads()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
