"""Algorithms, each a module with ``Config``, ``check_config``, ``check_spec``, ``make`` and
``TEST_CONFIG`` (the ``algo`` overrides that make one of its presets tiny for tests).

Modules are imported on first use so that ``fleetrl presets`` and config errors stay fast.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ALGORITHMS = {
    "ppo": "fleetrl.algos.actor_critic.ppo",
    "a2c": "fleetrl.algos.actor_critic.a2c",
    "reinforce": "fleetrl.algos.actor_critic.reinforce",
    "impala": "fleetrl.algos.actor_critic.impala",
    "dqn": "fleetrl.algos.dqn",
    "pqn": "fleetrl.algos.dqn.pqn",
    "ddpg": "fleetrl.algos.continuous.ddpg",
    "td3": "fleetrl.algos.continuous.td3",
    "sac": "fleetrl.algos.continuous.sac",
}


def get_algorithm(name: str) -> ModuleType:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm: must be one of {sorted(ALGORITHMS)}, got {name!r}")
    return importlib.import_module(ALGORITHMS[name])
