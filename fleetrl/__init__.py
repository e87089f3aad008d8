"""fleetrl: fast reinforcement learning with batched environments and pure-JAX agents."""

__version__ = "0.1.0"
