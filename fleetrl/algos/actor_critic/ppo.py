"""PPO (Schulman et al. 2017) as in BatchPPO: clipped objective or adaptive KL penalty, GAE,
epochs of minibatches; feed-forward or recurrent (LSTM/GRU)."""

from fleetrl.algos.actor_critic.config import PPO as Config
from fleetrl.algos.actor_critic.config import check_config, check_spec
from fleetrl.algos.actor_critic.learner import ActorCriticState, PPOState, make

TEST_CONFIG: dict = {}
"""Overrides of ``algo`` that make a preset of this algorithm tiny for tests: none needed."""

__all__ = [
    "ActorCriticState",
    "Config",
    "PPOState",
    "TEST_CONFIG",
    "check_config",
    "check_spec",
    "make",
]
