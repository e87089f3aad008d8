"""The value-based family (DESIGN.md: config, networks, losses, learner): DQN (Mnih et al.
2015) with a device replay buffer and target network, and as flags that compose: Double DQN,
dueling heads, n-step returns, noisy nets, C51, QR-DQN, IQN, Munchausen and prioritized replay.
Rainbow, Rainbow-IQN, M-DQN and M-IQN are presets of these flags."""

from fleetrl.algos.dqn.config import Config, check_config, check_spec
from fleetrl.algos.dqn.learner import DQNState, make
from fleetrl.algos.dqn.losses import (
    categorical_loss,
    categorical_projection,
    epsilon_schedule,
    munchausen_target,
    n_step_bootstrap,
    quantile_huber_loss,
    scalar_loss,
)

TEST_CONFIG = {"learning_starts": 0, "gradient_steps": 4, "buffer_size": 512, "batch_size": 16}
"""Overrides of ``algo`` that make a preset of this algorithm tiny for tests: learn at once,
few gradient steps, a small buffer (image observations too)."""

__all__ = [
    "TEST_CONFIG",
    "Config",
    "DQNState",
    "categorical_loss",
    "categorical_projection",
    "check_config",
    "check_spec",
    "epsilon_schedule",
    "make",
    "munchausen_target",
    "n_step_bootstrap",
    "quantile_huber_loss",
    "scalar_loss",
]
