"""What one Ray actor runs: its share of a run's envs and the policy that acts in them.

Plain Python (ray is imported only to wait on the replay, Ape-X): `fleetrl.distributed.pool`
wraps `SegmentActor` as a Ray actor.
An actor receives only ``ActorParams`` (DESIGN.md, contract v2) and returns each segment as a
plain dict of NumPy arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import numpy as np

ADD_TIMEOUT = 60.0
"""Seconds an Ape-X actor waits for the replay to take its previous windows."""


def share_of(run, num_actors: int):
    """The env config of one actor: ``env.num_envs / actors`` envs, and its share of the worker
    processes (at least one where the run has any, at most one per env)."""
    envs = run.env.num_envs // num_actors
    workers = run.env.num_workers
    if workers:
        workers = min(max(1, -(-workers // num_actors)), envs)
    return dataclasses.replace(run.env, num_envs=envs, num_workers=workers)


ACTOR_STREAM = 7919
"""Offset of the actors' key streams (a prime, far from the small integers other folds use)."""


def episode_sums(done, episode_return, episode_length) -> dict[str, float]:
    """The episodes that ended in a segment, summed (what the learner logs)."""
    done = np.asarray(done, bool)
    return {
        "episodes/count": float(done.sum()),
        "episodes/return_sum": float(np.where(done, episode_return, 0.0).sum()),
        "episodes/length_sum": float(np.where(done, episode_length, 0).sum()),
    }


class SegmentActor:
    """``env.num_envs / actors`` envs and the policy: `sample` runs one segment of
    ``train.num_steps`` steps with the parameters it is given.

    ``config_yaml``: the run's config as YAML text (parsed with ``yaml.safe_load``, never
    unpickled). ``index``/``incarnation`` seed the actor's envs and exploration apart from every
    other actor's and from its own earlier lives. ``epsilon``: an Ape-X actor's own exploration
    rate (None: the learner's schedule); ``replay``: an Ape-X replay actor's handle, to which
    the actor sends its transitions with their initial priorities instead of returning them.
    """

    def __init__(
        self,
        config_yaml: str,
        index: int,
        num_actors: int,
        incarnation: int,
        epsilon: float | None = None,
        replay: Any = None,
        trusted: tuple[str, ...] = (),
    ):
        from fleetrl import envs, xla_cpu
        from fleetrl.config import config_from_dict, load_yaml
        from fleetrl.envs.trust import trust_modules

        trust_modules(*trusted)  # the modules the learner's user trusted, for `module:Class` ids

        run = config_from_dict(load_yaml(config_yaml, "the learner's config"), "dist actor")
        if getattr(run.algo, "network", "mlp") == "mlp":
            xla_cpu.use_one_xla_thread()  # tiny kernels: one thread (BENCHMARKS section 1)
        from fleetrl.programs import enable_compilation_cache

        enable_compilation_cache()
        import jax

        from fleetrl.algos import get_algorithm
        from fleetrl.rollout import reset, simulate_with

        self.run, self.index, self.epsilon, self.replay = run, index, epsilon, replay
        self.env = envs.make(share_of(run, num_actors))
        self.algo = get_algorithm(run.algorithm).make(run, self.env.spec)
        self._sample = jax.jit(
            functools.partial(simulate_with, self.algo, self.env, num_steps=run.train.num_steps)
        )
        # an actor's streams: apart from the learner's (which uses PRNGKey(seed) split 3 ways),
        # from every other actor's (index), and from its own earlier lives (incarnation)
        key = jax.random.PRNGKey(run.train.seed or 0)
        key = jax.random.fold_in(jax.random.fold_in(key, ACTOR_STREAM + index), incarnation)
        self.carry = reset(self.env, key, self.algo)
        self.apex, self.adding = None, None
        if replay is not None:
            from fleetrl.distributed.replay import ActorSide

            self.apex = ActorSide(run, self.env.spec, key)

    def sample(self, actor_params: dict, version: int) -> dict[str, Any]:
        """One segment acted with ``actor_params`` (policy version ``version``)."""
        import jax

        start = time.perf_counter()
        if self.epsilon is not None:
            actor_params = {**actor_params, "epsilon": np.float32(self.epsilon)}
        self.carry, rollout = self._sample(actor_params, self.carry)
        rollout = jax.device_get(rollout)
        out: dict[str, Any] = {"version": version, "index": self.index}
        if hasattr(self.env, "raise_if_failed"):
            self.env.raise_if_failed()  # an env error, with the env index and its traceback
            out["host"] = {k: float(v) for k, v in self.env.host_metrics().items()}
        out.update(episode_sums(rollout.done, rollout.episode_return, rollout.episode_length))
        out["env_steps"] = int(np.asarray(rollout.reward).size)
        if self.apex is not None:
            self._send(*self.apex.transitions(actor_params, rollout))
        else:
            out["rollout"] = rollout._asdict()
        out["sample_s"] = time.perf_counter() - start
        return out

    def _send(self, windows: dict, priorities: np.ndarray) -> None:
        """Windows to the replay, one batch in flight: the previous one taken first, so a slow
        replay slows its actors instead of queueing without bound (and its errors surface)."""
        import ray

        if self.adding is not None:
            ray.get(self.adding, timeout=ADD_TIMEOUT)
        self.adding = self.replay.add.remote(windows, priorities)

    def close(self) -> None:
        """Close the envs (worker processes, a simulator, a video)."""
        if hasattr(self.env, "close"):
            self.env.close()
