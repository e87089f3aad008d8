"""PQN (Gallici et al. 2024, "Simplifying Deep Temporal Difference Learning"): parallel
Q-learning with no replay buffer and no target network. Many envs act epsilon-greedily on one
LayerNorm Q-network; each rollout's Peng's Q(lambda) returns
(`fleetrl.returns.q_lambda_returns`) are computed once with the parameters that collected it,
then learned by a few epochs of shuffled minibatches of 0.5 (Q - G)^2, RAdam (or Adam) with a
linearly annealed step size and gradient-norm clipping (purejaxql's pqn_gymnax.py is the
reference). Truncated steps bootstrap from Q of the final observation (``next_obs[t]``);
terminated ones do not bootstrap; neither carries the lambda-return across the boundary.

The value-based family's member without replay: it shares the family's `QNetwork`
(`networks.py`) and the contract (`fleetrl.types.Algorithm`), and has its own config since
none of the replay, target or distributional flags of `config.Config` apply.

Action masks: acting (exploring or greedy) only picks legal actions, and the returns' max
runs over the legal actions of ``next_obs[t]`` where the rollout records them
(`next_action_mask`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fleetrl import distributions as D
from fleetrl.algos import guard
from fleetrl.algos.dqn import losses
from fleetrl.algos.dqn.networks import QNetwork, q_values
from fleetrl.algos.guard import clip_or_skip
from fleetrl.config import ConfigError, require
from fleetrl.returns import q_lambda_returns
from fleetrl.types import Algorithm, Array, EnvSpec, Health, Metrics, Rollout


@dataclass(frozen=True)
class PQNConfig:
    """PQN hyperparameters (defaults: purejaxql's CartPole settings, pqn_cartpole.yaml)."""

    learning_rate: float = 1e-4
    """Step size."""
    anneal_lr: bool = True
    """Decay the step size linearly to 0 over the run's gradient steps."""
    optimizer: Literal["radam", "adam"] = "radam"
    """radam, as purejaxql (Liu et al. 2020: no warm-up to tune), or adam."""
    adam_epsilon: float = 1e-8
    """Epsilon of RAdam or Adam."""
    max_grad_norm: float = 10.0
    """Global gradient norm clip."""
    gamma: float = 0.99
    """Discount factor."""
    q_lambda: float = 0.95
    """lambda of the Q(lambda) returns (0: one-step Q-learning targets)."""
    num_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 16
    """Minibatches per epoch; env.num_envs x train.num_steps must be divisible by it."""
    epsilon_start: float = 1.0
    """Initial exploration rate."""
    epsilon_end: float = 0.2
    """Final exploration rate."""
    exploration_fraction: float = 0.2
    """Fraction of train.total_steps over which epsilon decays linearly."""
    reward_scale: float = 0.1
    """Rewards are multiplied by it before the returns (purejaxql's REW_SCALE)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layers of the Q-network (after the conv torso, if any)."""
    activation: Literal["tanh", "relu", "elu", "gelu"] = "relu"
    """Hidden activation."""
    network: Literal["mlp", "nature_cnn", "minatar_cnn"] = "mlp"
    """mlp: vector observations; nature_cnn: the Nature-DQN torso for stacked uint8 frames
    [C, 84, 84] (Atari); minatar_cnn: MinAtar's DQN torso, one 16x3x3 conv, for [10, 10, C]."""
    layer_norm: bool = True
    """LayerNorm before each hidden activation: what keeps TD without a target network stable
    (Gallici et al. 2024 prove it for LayerNorm critics); false only to ablate it."""

    def __post_init__(self):
        for name in ("learning_rate", "adam_epsilon", "max_grad_norm", "reward_scale"):
            value = getattr(self, name)
            require(value > 0, f"algo.{name}", f"must be > 0, got {value}")
        for name in ("num_epochs", "num_minibatches"):
            value = getattr(self, name)
            require(value >= 1, f"algo.{name}", f"must be >= 1, got {value}")
        for name in (
            "gamma",
            "q_lambda",
            "epsilon_start",
            "epsilon_end",
            "exploration_fraction",
        ):
            value = getattr(self, name)
            require(0 <= value <= 1, f"algo.{name}", f"must be in [0, 1], got {value}")
        require(  # tyro takes `--algo.hidden-sizes` with nothing after it as ()
            len(self.hidden_sizes) > 0 and all(s >= 1 for s in self.hidden_sizes),
            "algo.hidden_sizes",
            f"needs at least one layer, each of size >= 1, got {self.hidden_sizes}",
        )


Config = PQNConfig

TEST_CONFIG: dict = {"num_epochs": 1, "num_minibatches": 2}
"""Overrides of ``algo`` that make a preset of this algorithm tiny for tests: one epoch of two
minibatches."""


def check_config(run) -> None:
    """Cross-section checks of a ``RunConfig`` using PQN."""
    batch = run.env.num_envs * run.train.num_steps
    require(
        batch % run.algo.num_minibatches == 0,
        "algo.num_minibatches",
        f"the batch of env.num_envs x train.num_steps = {run.env.num_envs} x "
        f"{run.train.num_steps} = {batch} is not divisible by {run.algo.num_minibatches}",
    )


def check_spec(spec: EnvSpec) -> None:
    if spec.action_kind != "discrete":
        raise ConfigError(
            f"env.id: PQN needs a discrete action space, and {spec.env_id} has continuous "
            "actions; use PPO, A2C or REINFORCE for this env"
        )


@struct.dataclass
class PQNState:
    params: Any
    opt_state: Any
    env_steps: Array
    """Env steps learned from so far (the exploration schedule's clock)."""
    iteration: Array
    """Rollouts learned so far (the step-size schedule's clock)."""


class Parts(NamedTuple):
    """What `make` builds once and the pure functions below close over."""

    cfg: PQNConfig
    spec: EnvSpec
    network: QNetwork
    optimizer: Any
    learning_rate: Any
    total_steps: int


def make(run, spec: EnvSpec) -> Algorithm:
    """Build PQN's `Algorithm` for ``run`` (a RunConfig) and ``spec``."""
    cfg = run.algo
    network = QNetwork(
        num_actions=spec.num_actions,
        hidden_sizes=tuple(cfg.hidden_sizes),
        activation=cfg.activation,
        network=cfg.network,
        layer_norm=cfg.layer_norm,
    )
    optimizer, learning_rate = make_optimizer(cfg, run.num_iterations)
    # The epochs and minibatches stay loops even with a CNN on CPU, where the actor-critic
    # learner unrolls them (a conv's backward pass is slow in XLA:CPU loops): PQN takes ~64
    # steps per rollout, and unrolled MinAtar's took 356 s to compile. MinAtar's torso avoids
    # the slow path instead (networks.PatchConv).
    parts = Parts(cfg, spec, network, optimizer, learning_rate, run.train.total_steps)
    return Algorithm(
        init=functools.partial(init, parts),
        actor_params=functools.partial(actor_params, parts),
        init_actor=lambda key, num_envs: (),
        act=functools.partial(act, parts),
        learn=functools.partial(learn, parts),
        health=health,
    )


def make_optimizer(cfg: PQNConfig, num_iterations: int):
    """``(optimizer, step-size schedule)``: RAdam or Adam after `clip_or_skip`, on one flat
    vector (fewer XLA:CPU kernels per step; see actor_critic/learner.py)."""
    steps = num_iterations * cfg.num_epochs * cfg.num_minibatches
    if cfg.anneal_lr:
        learning_rate = optax.linear_schedule(cfg.learning_rate, 0.0, steps)
    else:
        learning_rate = optax.constant_schedule(cfg.learning_rate)
    inner = {"radam": optax.radam, "adam": optax.adam}[cfg.optimizer]
    optimizer = clip_or_skip(inner(learning_rate, eps=cfg.adam_epsilon), cfg.max_grad_norm)
    return optax.flatten(optimizer), learning_rate


def init(parts: Parts, key: Array) -> PQNState:
    spec = parts.spec
    dummy = jnp.zeros((1,) + spec.observation_shape, spec.observation_dtype)
    params = parts.network.init(key, dummy)
    return PQNState(params, parts.optimizer.init(params), jnp.int32(0), jnp.int32(0))


def health(state: PQNState) -> Health:
    return guard.health(state.params, state.opt_state)


def actor_params(parts: Parts, state: PQNState) -> dict[str, Any]:
    """The Q-network's parameters and the exploration rate now."""
    epsilon = losses.epsilon_schedule(state.env_steps, parts.cfg, parts.total_steps)
    return {"params": state.params, "epsilon": epsilon}


def q_of(parts: Parts, params, obs: Array) -> Array:
    """Q-values ``[B, A]`` of observations ``[B, ...]``."""
    return q_values(parts.network.apply(params, obs), "none")


def act(parts: Parts, ap, actor_state, obs: Array, key: Array, explore: bool = True, mask=None):
    """Epsilon-greedy over the legal actions (``mask [N, A]`` or None); greedy without
    ``explore``. Returns ``(action [N], actor_state, {})``."""
    q = D.mask_logits(q_of(parts, ap["params"], obs), mask)
    if not explore:
        return jnp.argmax(q, axis=-1).astype(jnp.int32), actor_state, {}
    explore_key, action_key = jax.random.split(key)
    action = losses.epsilon_greedy(q, ap["epsilon"], explore_key, action_key, mask)
    return action, actor_state, {}


def next_action_mask(rollout: Rollout) -> Array | None:
    """``[T, N, A]``: the legal actions of ``next_obs[t]``, for the returns' max; None where the
    env has no masks.

    Where the episode goes on after ``t`` inside the rollout, ``next_obs[t]`` is ``obs[t + 1]``
    and its mask is ``action_mask[t + 1]``. The rollout does not record the mask of the last
    step's ``next_obs`` (the next rollout's first) nor of a truncated step's final observation
    (the env reports the reset observation's): there every action counts as legal, a max that
    can only overestimate, on the steps that bootstrap there. A terminated step does not
    bootstrap, so its mask is never read.
    """
    mask = rollout.action_mask
    if mask is None:
        return None
    following = jnp.concatenate([mask[1:], jnp.ones_like(mask[:1])])
    return jnp.where(rollout.done[..., None], True, following)


def make_batch(parts: Parts, params, rollout: Rollout) -> dict[str, Array]:
    """The rollout as flat samples ``[T * N, ...]`` with their Q(lambda) targets, computed with
    ``params`` (those that collected it, as purejaxql's acting-time Q-values)."""
    num_steps, num_envs = rollout.reward.shape
    flat = lambda x: x.reshape((num_steps * num_envs,) + x.shape[2:])
    next_q = q_of(parts, params, flat(rollout.next_obs))
    mask = next_action_mask(rollout)
    next_q = D.mask_logits(next_q, None if mask is None else flat(mask))
    next_value = jnp.max(next_q, axis=-1).reshape(num_steps, num_envs)
    targets = q_lambda_returns(
        parts.cfg.reward_scale * rollout.reward,
        rollout.terminated,
        rollout.truncated,
        next_value,
        parts.cfg.gamma,
        parts.cfg.q_lambda,
    )
    return {
        "obs": flat(rollout.obs),
        "action": flat(rollout.action).astype(jnp.int32),
        "target": flat(targets),
    }


def loss_fn(parts: Parts, params, minibatch: dict[str, Array]) -> tuple[Array, Metrics]:
    """0.5 (Q(obs, action) - target)^2, averaged over the minibatch ``[B]``."""
    q = q_of(parts, params, minibatch["obs"])
    q_taken = jnp.take_along_axis(q, minibatch["action"][:, None], axis=-1)[:, 0]
    loss = jnp.mean(0.5 * (q_taken - minibatch["target"]) ** 2)
    return loss, {"losses/td_loss": loss, "losses/q_values": jnp.mean(q_taken)}


def shuffled_minibatches(batch: dict[str, Array], key: Array, count: int) -> dict[str, Array]:
    """``batch`` (``[B, ...]`` leaves) in a random order, split into ``count`` minibatches:
    ``[count, B / count, ...]``."""
    size = batch["target"].shape[0]
    order = jax.random.permutation(key, size)
    return {k: v[order].reshape((count, size // count) + v.shape[1:]) for k, v in batch.items()}


def update(parts: Parts, state: PQNState, batch: dict[str, Array], key: Array):
    """``num_epochs`` passes of ``num_minibatches`` optimizer steps; ``((params, opt_state),
    metrics)`` with the loss terms averaged."""
    cfg = parts.cfg
    grad_fn = jax.grad(functools.partial(loss_fn, parts), has_aux=True)

    def minibatch_step(carry, minibatch):
        params, opt_state = carry
        grads, metrics = grad_fn(params, minibatch)
        updates, opt_state = parts.optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics

    def epoch(carry, epoch_key):
        split = shuffled_minibatches(batch, epoch_key, cfg.num_minibatches)
        return jax.lax.scan(minibatch_step, carry, split)

    start = (state.params, state.opt_state)
    keys = jax.random.split(key, cfg.num_epochs)
    carry, metrics = jax.lax.scan(epoch, start, keys)
    return carry, jax.tree.map(jnp.mean, metrics)


def learn(parts: Parts, state: PQNState, rollout: Rollout, key: Array) -> tuple[PQNState, Metrics]:
    """Q(lambda) targets of the ``[T, N]`` rollout, then epochs of minibatch updates on them."""
    cfg = parts.cfg
    batch = make_batch(parts, state.params, rollout)
    (params, opt_state), metrics = update(parts, state, batch, key)
    steps_per_update = cfg.num_epochs * cfg.num_minibatches
    metrics["losses/target"] = jnp.mean(batch["target"])
    metrics["train/learning_rate"] = parts.learning_rate(state.iteration * steps_per_update)
    metrics["train/epsilon"] = losses.epsilon_schedule(
        state.env_steps, parts.cfg, parts.total_steps
    )
    new_state = PQNState(
        params, opt_state, state.env_steps + rollout.reward.size, state.iteration + 1
    )
    return new_state, metrics


__all__ = [
    "TEST_CONFIG",
    "Config",
    "PQNConfig",
    "PQNState",
    "check_config",
    "check_spec",
    "make",
    "next_action_mask",
]
