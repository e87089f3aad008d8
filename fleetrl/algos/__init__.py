"""Algorithms, each a module with ``Config``, ``check_config``, ``check_spec`` and ``make``.

Modules are imported on first use so that ``fleetrl presets`` and config errors stay fast.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ALGORITHMS = {"ppo": "fleetrl.algos.ppo", "dqn": "fleetrl.algos.dqn"}


def get_algorithm(name: str) -> ModuleType:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm: must be one of {sorted(ALGORITHMS)}, got {name!r}")
    return importlib.import_module(ALGORITHMS[name])
