"""DQN (Mnih et al. 2015) with a device replay buffer, target network, epsilon schedule, and
Double-DQN (van Hasselt et al. 2016) and n-step returns (Sutton 1988; Hessel et al. 2018) as
options. ``learn`` inserts the rollout into the buffer, then takes ``gradient_steps`` steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fleetrl import replay
from fleetrl.algos.guard import clip_or_skip, skip_metrics
from fleetrl.config import ConfigError, require
from fleetrl.nets import MLP
from fleetrl.returns import n_step_target
from fleetrl.types import Algorithm, Array, EnvSpec, Metrics, Rollout


@dataclass(frozen=True)
class Config:
    """DQN hyperparameters (defaults: RL-Zoo's CartPole DQN)."""

    learning_rate: float = 2.3e-3
    """Adam step size."""
    gamma: float = 0.99
    """Discount factor."""
    buffer_size: int = 100_000
    """Replay capacity in transitions (split evenly over the envs)."""
    batch_size: int = 64
    """Transitions per gradient step."""
    learning_starts: int = 1_000
    """Env steps collected before the first gradient step."""
    gradient_steps: int = 128
    """Gradient steps per iteration (one iteration = num_envs x num_steps env steps)."""
    target_update_interval: int = 10
    """Gradient steps between target network updates."""
    tau: float = 1.0
    """Target update weight (1: copy)."""
    epsilon_start: float = 1.0
    """Initial exploration rate."""
    epsilon_end: float = 0.04
    """Final exploration rate."""
    exploration_fraction: float = 0.16
    """Fraction of train.total_steps over which epsilon decays linearly."""
    double_q: bool = False
    """Double DQN: pick the next action with the online network, value it with the target."""
    n_step: int = 1
    """Steps of real reward before bootstrapping."""
    loss: Literal["huber", "mse"] = "huber"
    """TD loss."""
    max_grad_norm: float = 10.0
    """Global gradient norm clip."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layers of the Q-network."""
    activation: Literal["tanh", "relu", "elu", "gelu"] = "relu"
    """Hidden activation."""

    def __post_init__(self):
        require(
            self.learning_rate > 0, "algo.learning_rate", f"must be > 0, got {self.learning_rate}"
        )
        require(0 <= self.gamma <= 1, "algo.gamma", f"must be in [0, 1], got {self.gamma}")
        for name in (
            "buffer_size",
            "batch_size",
            "gradient_steps",
            "target_update_interval",
            "n_step",
        ):
            require(
                getattr(self, name) >= 1, f"algo.{name}", f"must be >= 1, got {getattr(self, name)}"
            )
        require(
            self.learning_starts >= 0,
            "algo.learning_starts",
            f"must be >= 0, got {self.learning_starts}",
        )
        require(0 < self.tau <= 1, "algo.tau", f"must be in (0, 1], got {self.tau}")
        for name in ("epsilon_start", "epsilon_end", "exploration_fraction"):
            value = getattr(self, name)
            require(0 <= value <= 1, f"algo.{name}", f"must be in [0, 1], got {value}")
        require(
            self.max_grad_norm > 0, "algo.max_grad_norm", f"must be > 0, got {self.max_grad_norm}"
        )
        require(  # tyro takes `--algo.hidden-sizes` with nothing after it as ()
            len(self.hidden_sizes) > 0 and all(s >= 1 for s in self.hidden_sizes),
            "algo.hidden_sizes",
            f"needs at least one layer, each of size >= 1, got {self.hidden_sizes}",
        )


def check_config(run) -> None:
    rows = run.algo.buffer_size // run.env.num_envs
    require(
        rows >= max(run.train.num_steps, run.algo.n_step + 1),
        "algo.buffer_size",
        f"{run.algo.buffer_size} transitions over env.num_envs={run.env.num_envs} envs leaves "
        f"{rows} rows per env; it must hold at least one rollout (train.num_steps="
        f"{run.train.num_steps})",
    )


def check_spec(spec: EnvSpec) -> None:
    if spec.action_kind != "discrete":
        raise ConfigError(
            f"env.id: DQN needs a discrete action space, and {spec.env_id} has continuous "
            "actions; use PPO for this env"
        )


@struct.dataclass
class DQNState:
    params: Any
    target_params: Any
    opt_state: Any
    buffer: replay.ReplayBuffer
    env_steps: Array
    gradient_steps: Array


def make(run, spec: EnvSpec) -> Algorithm:
    """Build DQN's ``init``, ``policy`` and ``learn`` for ``run`` (a RunConfig) and ``spec``."""
    cfg = run.algo
    network = MLP(cfg.hidden_sizes, spec.num_actions, cfg.activation, out_gain=1.0)
    # one flat vector for Adam: fewer XLA:CPU kernels per gradient step (see ppo/learner.py)
    # a NaN or Inf gradient skips its update instead of poisoning the parameters (guard.py)
    optimizer = optax.flatten(clip_or_skip(optax.adam(cfg.learning_rate), cfg.max_grad_norm))
    capacity_rows = cfg.buffer_size // spec.num_envs
    # learning_starts in buffer rows, and at least one n-step window
    start_rows = max(-(-cfg.learning_starts // spec.num_envs), cfg.n_step)

    def epsilon(env_steps: Array) -> Array:
        return epsilon_schedule(env_steps, cfg, run.train.total_steps)

    def init(key: Array) -> DQNState:
        dummy = jnp.zeros((1,) + spec.observation_shape, jnp.float32)
        params = network.init(key, dummy)
        n = spec.num_envs
        example = {
            "obs": jnp.zeros((n,) + spec.observation_shape, jnp.float32),
            "action": jnp.zeros((n,), jnp.int32),
            "reward": jnp.zeros((n,), jnp.float32),
            "terminated": jnp.zeros((n,), bool),
            "truncated": jnp.zeros((n,), bool),
            "next_obs": jnp.zeros((n,) + spec.observation_shape, jnp.float32),
        }
        return DQNState(
            params,
            params,
            optimizer.init(params),
            replay.create(example, capacity_rows),
            jnp.int32(0),
            jnp.int32(0),
        )

    def policy(state: DQNState, obs: Array, key: Array, explore: bool = True):
        greedy = jnp.argmax(network.apply(state.params, obs), axis=-1).astype(jnp.int32)
        if not explore:
            return greedy, {}
        explore_key, action_key = jax.random.split(key)
        random_action = jax.random.randint(action_key, greedy.shape, 0, spec.num_actions)
        take_random = jax.random.uniform(explore_key, greedy.shape) < epsilon(state.env_steps)
        return jnp.where(take_random, random_action, greedy), {}

    def loss_fn(params, target_params, batch: dict[str, Array]) -> tuple[Array, Metrics]:
        n, b = batch["reward"].shape
        q = network.apply(params, batch["obs"][0])
        q_taken = jnp.take_along_axis(q, batch["action"][0][:, None], axis=-1)[:, 0]
        next_obs = batch["next_obs"].reshape((n * b,) + spec.observation_shape)
        next_q_target = network.apply(target_params, next_obs).reshape(n, b, -1)
        # plain DQN never reads the online network's next-state values: skip that forward pass
        next_q_online = (
            network.apply(params, next_obs).reshape(n, b, -1) if cfg.double_q else next_q_target
        )
        target = td_target(
            next_q_online,
            next_q_target,
            batch["reward"],
            batch["terminated"],
            batch["truncated"],
            cfg.gamma,
            cfg.double_q,
        )
        loss = td_loss(q_taken - target, cfg.loss)
        return loss, {"losses/td_loss": loss, "losses/q_values": q_taken.mean()}

    def gradient_step(buffer: replay.ReplayBuffer, learner: tuple, key: Array):
        """One Adam step on a sampled batch; ``learner`` = (params, target, opt_state, count).

        The buffer is closed over, not carried, so the scan never copies it.
        """
        params, target_params, opt_state, count = learner
        batch = replay.sample_sequences(buffer, key, cfg.batch_size, cfg.n_step)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, target_params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        count = count + 1
        refresh = count % cfg.target_update_interval == 0
        target_params = jax.tree.map(
            lambda online, target: jnp.where(
                refresh, cfg.tau * online + (1 - cfg.tau) * target, target
            ),
            params,
            target_params,
        )
        return (params, target_params, opt_state, count), metrics

    def learn(state: DQNState, rollout: Rollout, key: Array) -> tuple[DQNState, Metrics]:
        """Insert the ``[T, N]`` rollout, then ``gradient_steps`` updates once warm."""
        steps = {
            "obs": rollout.obs,
            "action": rollout.action.astype(jnp.int32),
            "reward": rollout.reward,
            "terminated": rollout.terminated,
            "truncated": rollout.truncated,
            "next_obs": rollout.next_obs,
        }
        state = state.replace(
            buffer=replay.add(state.buffer, steps), env_steps=state.env_steps + rollout.reward.size
        )

        def train(learner):
            step = lambda carry, k: gradient_step(state.buffer, carry, k)
            learner, metrics = jax.lax.scan(
                step, learner, jax.random.split(key, cfg.gradient_steps)
            )
            return learner, jax.tree.map(jnp.mean, metrics)

        def skip(learner):
            zero = jnp.float32(0.0)
            return learner, {"losses/td_loss": zero, "losses/q_values": zero}

        learner = (state.params, state.target_params, state.opt_state, state.gradient_steps)
        learner, metrics = jax.lax.cond(state.buffer.size >= start_rows, train, skip, learner)
        params, target_params, opt_state, count = learner
        metrics.update(skip_metrics(state.opt_state, opt_state))
        state = state.replace(
            params=params, target_params=target_params, opt_state=opt_state, gradient_steps=count
        )
        metrics["train/epsilon"] = epsilon(state.env_steps)
        metrics["train/replay_size"] = state.buffer.size * spec.num_envs
        return state, metrics

    return Algorithm(init=init, policy=policy, learn=learn)


def epsilon_schedule(env_steps: Array, cfg: Config, total_steps: int) -> Array:
    """Exploration rate after ``env_steps`` (a scalar): linear from ``epsilon_start`` to
    ``epsilon_end`` over the first ``exploration_fraction * total_steps`` env steps (at least
    one), then constant. Returns a scalar."""
    decay_steps = max(1.0, cfg.exploration_fraction * total_steps)
    fraction = jnp.minimum(env_steps / decay_steps, 1.0)
    return cfg.epsilon_start + fraction * (cfg.epsilon_end - cfg.epsilon_start)


def td_target(
    next_q_online: Array,
    next_q_target: Array,
    reward: Array,
    terminated: Array,
    truncated: Array,
    gamma: float,
    double_q: bool,
) -> Array:
    """TD target for Q(obs[t], action[t]) from ``n`` consecutive steps of one env (n = 1: DQN).

    Args: ``next_q_online, next_q_target``: ``[n, B, A]``, Q(next_obs[t + k], .) under the
    online and the target network (``next_q_online`` is read only when ``double_q``);
    ``reward, terminated, truncated``: ``[n, B]``. The bootstrap action is the target network's
    argmax (Mnih et al. 2015) or, with ``double_q``, the online network's (van Hasselt et al.
    2016, eq. 4); its value always comes from the target network. Rewards are summed up to the
    first episode end and bootstrap from the state that step reached unless it was terminal, so
    a truncated step still bootstraps (``returns.n_step_target``). Returns ``[B]``, with the
    gradient stopped.
    """
    next_action = jnp.argmax(next_q_online if double_q else next_q_target, axis=-1)
    next_value = jnp.take_along_axis(next_q_target, next_action[..., None], axis=-1)[..., 0]
    target = n_step_target(reward, terminated, truncated, next_value, gamma)
    return jax.lax.stop_gradient(target)


def td_loss(error: Array, kind: str) -> Array:
    """Mean Huber (delta 1, as in Mnih et al. 2015) or squared TD error over ``error[B]``."""
    if kind == "huber":
        return jnp.mean(optax.huber_loss(error, delta=1.0))
    return jnp.mean(0.5 * error**2)
