"""Training on Ray: ``--dist.mode sync|async`` (`fleetrl.config.DistConfig`).

The only package that imports ray, and only when a distributed run starts: without Ray
installed the rest of fleetrl works unchanged (``pip install "fleetrl[ray]"``).

- `cluster`: starting or joining a cluster, safely (token authentication, no dashboard).
- `actor`: what a Ray actor runs: its share of the envs and the policy (no ray import).
- `pool`: the actors, their segments, and their faults (dead, hung, lost with a node).
- `driver`: the learner side, the train call `fleetrl.loop.Loop` runs in every mode.
- `apex`: the value-based family's asynchronous mode (a replay actor, priorities).
"""

from __future__ import annotations

from fleetrl.config import ConfigError


class DistributedError(RuntimeError):
    """A distributed run cannot go on: an actor died with restarts off or used up, an actor's
    envs failed, or no actor is left."""


def require_ray():
    """The ray module, or a usage error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "dist.mode: sync and async run on Ray, which is not installed: "
            'pip install "fleetrl[ray]"'
        ) from None
    return ray
