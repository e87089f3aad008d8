"""IMPALA (Espeholt et al. 2018): the learner of the importance-weighted actor-learner
architecture, one policy-gradient step per rollout on V-trace advantages and value targets,
RMSProp; feed-forward or recurrent (LSTM/GRU). In one process the actors act with the current
parameters (V-trace is then GAE with lambda 1: A2C); asynchronous actors lag, which V-trace
corrects."""

from fleetrl.algos.actor_critic.config import IMPALA as Config
from fleetrl.algos.actor_critic.config import check_config, check_spec
from fleetrl.algos.actor_critic.learner import ActorCriticState, make

TEST_CONFIG: dict = {}
"""Overrides of ``algo`` that make a preset of this algorithm tiny for tests: none needed."""

__all__ = ["ActorCriticState", "Config", "TEST_CONFIG", "check_config", "check_spec", "make"]
