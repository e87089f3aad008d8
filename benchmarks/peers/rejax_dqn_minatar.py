"""rejax DQN on gymnax Breakout-MinAtar: compile time and steps/s (peer benchmark for fleetrl).

Settings are rejax's own MinAtar DQN configuration, the `dqn` entry of benchmark/breakout_1m.yaml
in github.com/keraJLi/rejax (commit beb96407; the installed package ships no configs):
  num_envs 1, buffer_size 100_000, fill_buffer 20_000 (env steps before the first update),
  batch_size 100, learning_rate 5e-4, max_grad_norm 10, gradient_steps 1 per iteration of
  num_envs env steps (so 1 gradient step per env step), target_update_freq 1000 env steps (a
  copy), eps 1.0 -> 0.05 over 50% of total_timesteps, gamma 1.0, ddqn false,
  agent ConvQNetwork with tanh.
ConvQNetwork is MinAtar's DQN network (Young & Tian 2019) as purerl, rejax's predecessor, wrote
it: conv 16 x 3x3 stride 1 (flax's default SAME padding: 10x10x16 = 1,600 features; MinAtar's
own is VALID, 8x8x16 = 1,024, --conv-padding VALID), dense 128, linear to the 3 actions.
rejax 0.1.3 no longer has it (its DQN takes "QNetwork", an MLP over the flattened observation,
or "DuelingQNetwork"), so it is defined here and swapped into the algorithm (as rejax's
examples/custom_network.py does). --network mlp runs rejax 0.1.3's own QNetwork instead: the
10x10x4 observation flattened to 400, dense 64, 64 (tanh, the config's activation), linear.
How rejax 0.1.3 differs from the version the config was written for (the work per step is the
same): the gradient_steps field is now num_epochs; the target update is Polyak averaging every
target_update_freq steps, so polyak 0.0 here makes it the copy; max_grad_norm is optax.clip
(element-wise), not clip-by-global-norm; Adam's epsilon is optax's 1e-8 (was 1e-5); the TD loss
is optax.l2_loss (half the squared error), no Huber.

Evaluation is disabled while timing (eval_freq = total_timesteps, no initial evaluation, a no-op
eval_callback), as in peers/rejax_cartpole.py. The whole `algo.train` is jitted (jax.vmap'ed
over --num-seeds K > 1 keys first). compile_s = lower + compile; run_s = executing it.
sps = steps per seed / run_s: the run includes the fill_buffer steps without updates.
steady_sps: a second compiled program continues the trained state for --steady-steps env steps
(every one with its gradient step: the buffer is past fill_buffer), timed the same way
(--steady-steps 0 skips it). final_return: mean over seeds of rejax's own 128-episode evaluation
after training (epsilon 0.005), untimed.

Prints one JSON line: {"peer","algo","env","settings","compile_s","run_s","sps","total_sps",
"steady_steps","steady_compile_s","steady_run_s","steady_sps","num_seeds","steps",
"final_return","jax","backend"}.

    /tmp/peers-venv/bin/python benchmarks/peers/rejax_dqn_minatar.py [--steps 100000]
"""

import argparse
import json
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from rejax import DQN
from rejax.networks import EpsilonGreedyPolicy

ENV = "Breakout-MinAtar"
# rejax benchmark/breakout_1m.yaml, dqn entry, in rejax 0.1.3's field names
SETTINGS = {
    "num_envs": 1,
    "buffer_size": 100_000,
    "fill_buffer": 20_000,
    "batch_size": 100,
    "learning_rate": 5e-4,
    "max_grad_norm": 10.0,
    "num_epochs": 1,  # gradient steps per iteration (the config's gradient_steps)
    "target_update_freq": 1000,
    "polyak": 0.0,  # 0.1.3 averages the target; 0 is the config's copy
    "eps_start": 1.0,
    "eps_end": 0.05,
    "exploration_fraction": 0.5,
    "gamma": 1.0,
    "ddqn": False,
}


class ConvQNetwork(nn.Module):
    """MinAtar's DQN: conv 16x3x3/1, dense 128, linear; ``[B, 10, 10, C]`` -> ``[B, actions]``."""

    action_dim: int
    activation: Callable = nn.tanh
    padding: str = "SAME"

    @nn.compact
    def __call__(self, obs):
        x = self.activation(nn.Conv(16, (3, 3), padding=self.padding)(obs.astype(jnp.float32)))
        x = self.activation(nn.Dense(128)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.action_dim)(x)

    def take(self, obs, action):
        q_values = self(obs)
        return jnp.take_along_axis(q_values, action[:, None], axis=1).squeeze(1)


def make_algo(network, padding, steps):
    """rejax's DQN at SETTINGS for ``steps`` env steps per seed, with no evaluation."""
    algo = DQN.create(
        env=ENV,
        total_timesteps=steps,
        eval_freq=steps,
        skip_initial_evaluation=True,
        agent="QNetwork",
        agent_kwargs={"activation": "tanh"},
        **SETTINGS,
    )
    if network == "cnn":
        action_dim = algo.env.action_space(algo.env_params).n
        agent = EpsilonGreedyPolicy(ConvQNetwork)(action_dim=action_dim, padding=padding)
        algo = algo.replace(agent=agent)
    return algo


def timed(train, arg):
    """(compile seconds, run seconds, output) of ``jax.jit(train)`` on ``arg``."""
    t = time.perf_counter()
    compiled = jax.jit(train).lower(arg).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    out = jax.block_until_ready(compiled(arg))
    return compile_s, time.perf_counter() - t, out


def steps_per_seed(algo):
    """Env steps one seed takes: whole eval rounds of whole iterations (rejax's loop)."""
    iterations = math.ceil(algo.eval_freq / algo.num_envs)
    return math.ceil(algo.total_timesteps / algo.eval_freq) * iterations * algo.num_envs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100_000, help="env steps per seed, timed")
    p.add_argument("--steady-steps", type=int, default=10_000, help="continuation, 0: none")
    p.add_argument("--network", choices=["cnn", "mlp"], default="cnn")
    p.add_argument("--conv-padding", choices=["SAME", "VALID"], default="SAME")
    p.add_argument("--num-seeds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    algo = make_algo(a.network, a.conv_padding, a.steps)
    real_eval = algo.eval_callback
    algo = algo.replace(eval_callback=lambda algo, ts, rng: jnp.zeros(()))  # nothing but training

    def batched(f):  # one seed: plain jit, no batch axis
        return f if a.num_seeds == 1 else jax.vmap(f)

    key = jax.random.PRNGKey(a.seed)
    keys = key if a.num_seeds == 1 else jax.random.split(key, a.num_seeds)
    compile_s, run_s, (ts, _) = timed(batched(lambda k: algo.train(rng=k)), keys)
    per_seed = steps_per_seed(algo)
    steps = ts.global_step if a.num_seeds > 1 else ts.global_step[None]
    assert int(steps[0]) == per_seed, (int(steps[0]), per_seed)

    out = {"peer": "rejax", "algo": "dqn", "env": ENV}
    out["settings"] = {
        **SETTINGS,
        "network": a.network,
        "conv_padding": a.conv_padding if a.network == "cnn" else None,
        "activation": "tanh",
        "gradient_steps_per_env_step": SETTINGS["num_epochs"] / SETTINGS["num_envs"],
    }
    out.update(
        compile_s=round(compile_s, 3),
        run_s=round(run_s, 3),
        sps=round(per_seed / run_s, 1),
        total_sps=round(a.num_seeds * per_seed / run_s, 1),
    )
    if a.steady_steps:
        # global_step goes on from the first run, so epsilon is at eps_end: acting costs the same
        more = algo.replace(total_timesteps=a.steady_steps, eval_freq=a.steady_steps)
        steady = timed(batched(lambda s: more.train(train_state=s)), ts)
        steady_steps = steps_per_seed(more)
        ts = steady[2][0]
        out.update(
            steady_steps=steady_steps,
            steady_compile_s=round(steady[0], 3),
            steady_run_s=round(steady[1], 3),
            steady_sps=round(steady_steps / steady[1], 1),
        )

    # Untimed sanity check: how good are the trained policies?
    returns = jax.jit(batched(lambda s: real_eval(algo, s, s.rng)[1].mean()))(ts)
    out.update(
        num_seeds=a.num_seeds,
        steps=per_seed,
        final_return=round(float(jnp.mean(returns)), 2),
        jax=jax.__version__,
        backend=jax.default_backend(),
    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
