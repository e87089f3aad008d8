"""DQN configuration and its checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fleetrl.config import ConfigError, require
from fleetrl.types import EnvSpec


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
