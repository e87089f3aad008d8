"""Configurations of the continuous-control off-policy family: one frozen dataclass per member.

DDPG, TD3 and SAC share `Shared` (replay, networks, optimizer, Polyak targets, the update to
data ratio) and differ in a few flags and their defaults: the number of critics, the actor's
update delay, target policy smoothing, exploration noise, and SAC's stochastic actor with its
entropy temperature. The learner reads the flags through `Family.of`. Defaults are
Stable-Baselines3's (and so RL-Zoo's where a zoo entry does not set them), which follow the
papers: Fujimoto et al. 2018 for TD3 (and its "our DDPG"), Haarnoja et al. 2018 for SAC; but
DDPG and TD3 explore with Gaussian noise 0.1 as the TD3 paper and RL-Zoo do (SB3's default has
no action noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

from fleetrl.config import ConfigError, require, require_replay_rows
from fleetrl.types import EnvSpec


@dataclass(frozen=True)
class Shared:
    """What DDPG, TD3 and SAC have in common."""

    learning_rate: float = 1e-3
    """Adam step size of the actor, the critics (and SAC's temperature)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak weight of the target networks: target <- tau * online + (1 - tau) * target."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions (split evenly over the envs)."""
    batch_size: int = 256
    """Transitions per gradient step."""
    learning_starts: int = 100
    """Env steps taken with uniformly random actions, and stored, before the first gradient
    step (Stable-Baselines3's learning_starts)."""
    utd: float = 1.0
    """Update-to-data ratio: gradient steps per env step (above 1 is allowed: REDQ, DroQ).
    An iteration of num_envs x num_steps env steps takes round(utd x num_envs x num_steps)
    gradient steps after its env steps."""
    n_step: int = 1
    """Steps of real reward before bootstrapping (1 in the papers)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layers of the actor and of each critic."""
    activation: Literal["tanh", "relu", "elu", "gelu"] = "relu"
    """Hidden activation."""
    max_grad_norm: float = 0.0
    """Global gradient norm clip of each network; 0: none, as in the papers (a non-finite
    gradient still skips its update)."""


@dataclass(frozen=True)
class DDPG(Shared):
    """DDPG (Lillicrap et al. 2016) as TD3's paper re-tuned it and Stable-Baselines3 ships it:
    one critic, no target smoothing, an actor update and target update every gradient step,
    Gaussian exploration noise. Batch 256 as Stable-Baselines3 (the TD3 paper: 100)."""

    hidden_sizes: tuple[int, ...] = (400, 300)
    """Hidden layers of the actor and of each critic (the TD3 paper's, and SB3's)."""
    n_critics: int = 1
    """Critics (Q-networks): the target takes the minimum over them."""
    policy_delay: int = 1
    """Critic updates per actor and target update."""
    exploration_noise: float = 0.1
    """Standard deviation of the Gaussian noise added to the actor's action while training,
    as a fraction of half the action range (actions live in [-1, 1] inside the learner)."""
    target_policy_noise: float = 0.0
    """Standard deviation of the smoothing noise on the target action (TD3; 0 = none)."""
    target_noise_clip: float = 0.5
    """Clip of the smoothing noise (TD3)."""


@dataclass(frozen=True)
class TD3(DDPG):
    """TD3 (Fujimoto et al. 2018): twin critics with a min target, target policy smoothing,
    an actor and target update every second critic update."""

    n_critics: int = 2
    policy_delay: int = 2
    target_policy_noise: float = 0.2


@dataclass(frozen=True)
class SAC(Shared):
    """SAC (Haarnoja et al. 2018, the version with a learned temperature): a tanh-squashed
    Gaussian actor, twin critics with a soft min target, entropy temperature tuned toward a
    target entropy."""

    learning_rate: float = 3e-4
    n_critics: int = 2
    """Critics (Q-networks): the target takes the minimum over them."""
    policy_delay: int = 1
    """Critic updates per actor update, temperature update and target update (1 in the paper
    and in Stable-Baselines3, which updates all of them every gradient step)."""
    ent_coef: float = 1.0
    """The entropy temperature alpha: its initial value with ``autotune``, else fixed."""
    autotune: bool = True
    """Learn alpha by gradient descent on -alpha (log pi + target_entropy)."""
    target_entropy: float | None = None
    """The entropy alpha steers the policy toward; None: -dim(action), the paper's heuristic."""
    log_std_min: float = -20.0
    """Lower clip of the actor's log standard deviation (Stable-Baselines3's)."""
    log_std_max: float = 2.0
    """Upper clip of the actor's log standard deviation."""


class Family(NamedTuple):
    """The flags every member defines, however its config spells them."""

    stochastic: bool
    """SAC's squashed Gaussian actor (else a deterministic tanh actor with added noise)."""
    n_critics: int
    policy_delay: int
    exploration_noise: float
    target_policy_noise: float
    target_noise_clip: float

    @classmethod
    def of(cls, cfg) -> Family:
        if isinstance(cfg, SAC):
            return cls(True, cfg.n_critics, cfg.policy_delay, 0.0, 0.0, 0.0)
        return cls(
            False,
            cfg.n_critics,
            cfg.policy_delay,
            cfg.exploration_noise,
            cfg.target_policy_noise,
            cfg.target_noise_clip,
        )


def gradient_steps(run) -> int:
    """Gradient steps per iteration: ``utd`` times its env steps, rounded."""
    return round(run.algo.utd * run.env.num_envs * run.train.num_steps)


def check_config(run) -> None:
    cfg = run.algo
    require(cfg.max_grad_norm >= 0, "algo.max_grad_norm", f"must be >= 0, got {cfg.max_grad_norm}")
    for name in ("learning_rate", "batch_size", "buffer_size"):
        value = getattr(cfg, name)
        require(value > 0, f"algo.{name}", f"must be > 0, got {value}")
    require(0 <= cfg.gamma <= 1, "algo.gamma", f"must be in [0, 1], got {cfg.gamma}")
    require(0 < cfg.tau <= 1, "algo.tau", f"must be in (0, 1], got {cfg.tau}")
    require(cfg.utd > 0, "algo.utd", f"must be > 0, got {cfg.utd}")
    require(cfg.n_step >= 1, "algo.n_step", f"must be >= 1, got {cfg.n_step}")
    require(
        cfg.learning_starts >= 0, "algo.learning_starts", f"must be >= 0, got {cfg.learning_starts}"
    )
    require(  # tyro takes `--algo.hidden-sizes` with nothing after it as ()
        len(cfg.hidden_sizes) > 0 and all(s >= 1 for s in cfg.hidden_sizes),
        "algo.hidden_sizes",
        f"needs at least one layer, each of size >= 1, got {cfg.hidden_sizes}",
    )
    family = Family.of(cfg)
    require(family.n_critics >= 1, "algo.n_critics", f"must be >= 1, got {family.n_critics}")
    require(  # the learner unrolls the critic steps of one actor step (learner.block)
        1 <= family.policy_delay <= 16,
        "algo.policy_delay",
        f"must be in [1, 16], got {family.policy_delay}",
    )
    for name in ("exploration_noise", "target_policy_noise", "target_noise_clip"):
        value = getattr(cfg, name, 0.0)
        require(value >= 0, f"algo.{name}", f"must be >= 0, got {value}")
    if isinstance(cfg, SAC):
        require(cfg.ent_coef > 0, "algo.ent_coef", f"must be > 0, got {cfg.ent_coef}")
        require(
            cfg.log_std_min < cfg.log_std_max,
            "algo.log_std_min",
            f"must be below algo.log_std_max, got {cfg.log_std_min} >= {cfg.log_std_max}",
        )
    steps = gradient_steps(run)
    require(
        steps >= 1,
        "algo.utd",
        f"utd={cfg.utd} x env.num_envs={run.env.num_envs} x train.num_steps="
        f"{run.train.num_steps} rounds to {steps} gradient steps per iteration; it needs one",
    )
    require(
        steps % family.policy_delay == 0,
        "algo.utd",
        f"utd={cfg.utd} x env.num_envs={run.env.num_envs} x train.num_steps="
        f"{run.train.num_steps} gives {steps} gradient steps per iteration, not a multiple of "
        f"algo.policy_delay={family.policy_delay}: the actor's delayed updates would drift "
        "against the iterations",
    )
    need = max(run.train.num_steps, cfg.n_step + 1)
    require_replay_rows(run, need, "an n-step window")


def check_spec(spec: EnvSpec) -> None:
    if spec.action_kind != "continuous":
        raise ConfigError(
            f"env.id: DDPG, TD3 and SAC need a continuous (Box) action space, and {spec.env_id} "
            "has discrete actions; use DQN, PQN or PPO for this env"
        )
    bounds = spec.action_low + spec.action_high
    if not all(math.isfinite(b) for b in bounds):
        raise ConfigError(
            f"env.id: {spec.env_id}'s action bounds are not finite (low {spec.action_low}, high "
            f"{spec.action_high}); DDPG, TD3 and SAC squash actions into the bounds, so wrap the "
            "env in gymnasium.wrappers.RescaleAction or ClipAction with finite bounds"
        )
    if not all(hi > lo for lo, hi in zip(spec.action_low, spec.action_high, strict=True)):
        raise ConfigError(
            f"env.id: {spec.env_id}'s action bounds leave no room (low {spec.action_low}, high "
            f"{spec.action_high}); every action dimension needs low < high"
        )
    if spec.frame_stack or spec.observation_dtype != "float32":
        raise ConfigError(
            f"env.id: {spec.env_id} has {spec.observation_dtype} observations of shape "
            f"{spec.observation_shape}; DDPG, TD3 and SAC here have MLP networks for float32 "
            "vector observations (images: use PPO or DQN)"
        )
