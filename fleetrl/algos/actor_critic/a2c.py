"""A2C (Mnih et al. 2016, the synchronous form): one policy-gradient step per rollout on
n-step or GAE advantages, RMSProp or Adam; feed-forward or recurrent (LSTM/GRU)."""

from fleetrl.algos.actor_critic.config import A2C as Config
from fleetrl.algos.actor_critic.config import check_config, check_spec
from fleetrl.algos.actor_critic.learner import ActorCriticState, make

TEST_CONFIG: dict = {}
"""Overrides of ``algo`` that make a preset of this algorithm tiny for tests: none needed."""

__all__ = ["ActorCriticState", "Config", "TEST_CONFIG", "check_config", "check_spec", "make"]
