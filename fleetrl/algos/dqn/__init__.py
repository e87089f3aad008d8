"""DQN (Mnih et al. 2015) with a device replay buffer, target network, epsilon schedule, and
Double-DQN (van Hasselt et al. 2016) and n-step returns (Sutton 1988; Hessel et al. 2018) as
options. The value-based family grows here (DESIGN.md: config, losses, learner)."""

from fleetrl.algos.dqn.config import Config, check_config, check_spec
from fleetrl.algos.dqn.learner import DQNState, make
from fleetrl.algos.dqn.losses import epsilon_schedule, td_loss, td_target

TEST_CONFIG = {"learning_starts": 0, "gradient_steps": 4, "buffer_size": 512, "batch_size": 16}
"""Overrides of ``algo`` that make a preset of this algorithm tiny for tests: learn at once,
few gradient steps, a small buffer (image observations too)."""

__all__ = [
    "TEST_CONFIG",
    "Config",
    "DQNState",
    "check_config",
    "check_spec",
    "epsilon_schedule",
    "make",
    "td_loss",
    "td_target",
]
