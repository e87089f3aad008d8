"""REINFORCE (Williams 1992): Monte-Carlo returns of whole episodes, optionally with a learned
value baseline, one policy-gradient step per rollout (as TF-Agents and JORLDY ship it)."""

from fleetrl.algos.actor_critic.config import Reinforce as Config
from fleetrl.algos.actor_critic.config import check_config, check_spec
from fleetrl.algos.actor_critic.learner import ActorCriticState, make

TEST_CONFIG: dict = {}
"""Overrides of ``algo`` that make a preset of this algorithm tiny for tests: none needed."""

__all__ = ["ActorCriticState", "Config", "TEST_CONFIG", "check_config", "check_spec", "make"]
