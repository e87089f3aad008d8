"""PPO configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fleetrl.config import require


@dataclass(frozen=True)
class Config:
    """PPO hyperparameters (defaults: CleanRL's ppo.py for CartPole)."""

    learning_rate: float = 2.5e-4
    """Adam step size."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    num_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch; num_envs x num_steps must be divisible by it."""
    objective: Literal["clip", "kl_penalty"] = "clip"
    """clip: clipped surrogate; kl_penalty: BatchPPO's adaptive KL penalty."""
    clip_eps: float = 0.2
    """Ratio clipping range (objective=clip)."""
    kl_target: float = 0.01
    """Target KL per update (objective=kl_penalty)."""
    kl_init_penalty: float = 1.0
    """Initial KL penalty coefficient (objective=kl_penalty)."""
    kl_cutoff_factor: float = 2.0
    """KL above kl_cutoff_factor x kl_target is penalized quadratically (objective=kl_penalty)."""
    kl_cutoff_coef: float = 1000.0
    """Weight of the quadratic KL cutoff penalty (objective=kl_penalty)."""
    ent_coef: float = 0.01
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient norm clip."""
    normalize_advantages: bool = True
    """Standardize advantages per minibatch."""
    normalize_observations: bool = False
    """Running mean/std observation normalization (statistics live in the state)."""
    normalize_rewards: bool = False
    """Scale rewards by the running std of the discounted return."""
    obs_clip: float = 10.0
    """Clip of normalized observations."""
    reward_clip: float = 10.0
    """Clip of scaled rewards."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layers of the actor and of the (separate) critic."""
    activation: Literal["tanh", "relu", "elu", "gelu"] = "tanh"
    """Activation of the hidden layers."""
    network: Literal["mlp", "nature_cnn"] = "mlp"
    """mlp: for vector observations; nature_cnn: a Nature-DQN conv torso in front of the hidden
    layers, for stacked uint8 frames [C, 84, 84] (Atari)."""
    shared_torso: bool = False
    """Actor and critic share the network's torso (the Nature CNN and the hidden layers) and
    differ only in their output layers, as in CleanRL's and BatchPPO's Atari agents: half the
    compute of two CNNs. False: two separate networks."""
    init_log_std: float = 0.0
    """Initial log standard deviation of Gaussian actions."""

    def __post_init__(self):
        require(
            self.learning_rate > 0, "algo.learning_rate", f"must be > 0, got {self.learning_rate}"
        )
        require(0 <= self.gamma <= 1, "algo.gamma", f"must be in [0, 1], got {self.gamma}")
        require(
            0 <= self.gae_lambda <= 1,
            "algo.gae_lambda",
            f"must be in [0, 1], got {self.gae_lambda}",
        )
        for name in ("num_epochs", "num_minibatches"):
            require(
                getattr(self, name) >= 1, f"algo.{name}", f"must be >= 1, got {getattr(self, name)}"
            )
        for name in ("clip_eps", "kl_target", "max_grad_norm", "obs_clip", "reward_clip"):
            require(
                getattr(self, name) > 0, f"algo.{name}", f"must be > 0, got {getattr(self, name)}"
            )
        for name in ("ent_coef", "vf_coef", "kl_init_penalty", "kl_cutoff_coef"):
            require(
                getattr(self, name) >= 0, f"algo.{name}", f"must be >= 0, got {getattr(self, name)}"
            )
        require(
            all(s >= 1 for s in self.hidden_sizes),
            "algo.hidden_sizes",
            f"sizes must be >= 1, got {self.hidden_sizes}",
        )
        require(  # tyro takes `--algo.hidden-sizes` with nothing after it as ()
            self.network != "mlp" or len(self.hidden_sizes) > 0,
            "algo.hidden_sizes",
            "an mlp network needs at least one hidden layer, got none",
        )


def check_config(run) -> None:
    """Cross-section checks of a ``RunConfig`` using PPO."""
    batch = run.env.num_envs * run.train.num_steps
    require(
        batch % run.algo.num_minibatches == 0,
        "algo.num_minibatches",
        f"the batch of env.num_envs x train.num_steps = {run.env.num_envs} x "
        f"{run.train.num_steps} = {batch} is not divisible by {run.algo.num_minibatches}",
    )


def check_spec(spec) -> None:
    """PPO handles Discrete and Box action spaces: nothing to refuse."""
