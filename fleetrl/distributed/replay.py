"""Ape-X's Ray-side pieces that actors and the replay process run (no ray import): an actor's
windows with their initial priorities (`ActorSide`), and the prioritized replay (`ReplayActor`).
See `fleetrl.distributed.apex`."""

from __future__ import annotations

import jax
import numpy as np

from fleetrl.algos.dqn import apex, learner
from fleetrl.replay import Window


class ActorSide:
    """What an Ape-X actor adds to a `SegmentActor`: windows and their initial priorities."""

    def __init__(self, run, spec, key):
        self.cfg = run.algo
        self.priority_fn = apex.make_priority_fn(learner.build_parts(run, spec))
        self.key = jax.random.fold_in(key, 3)
        self.count = 0

    def transitions(self, actor_params: dict, rollout) -> tuple[dict, np.ndarray]:
        windows = apex.segment_windows(rollout, self.cfg.n_step, self.cfg.clip_rewards)
        self.count += 1
        key = jax.random.fold_in(self.key, self.count)
        priorities = np.asarray(self.priority_fn(actor_params["params"], windows, key))
        return windows._asdict(), priorities


class ReplayActor:
    """The prioritized replay, in its own process (a Ray actor): a `HostReplay`."""

    def __init__(self, capacity: int, seed: int):
        self.replay = apex.HostReplay(capacity)
        self.rng = np.random.default_rng(seed)

    def add(self, window: dict, priorities: np.ndarray) -> None:
        self.replay.add(Window(**window), priorities)

    def size(self) -> int:
        return self.replay.size

    def sample(self, batch_size: int, count: int, beta: float, least: int) -> dict | None:
        """``count`` batches of ``batch_size`` as one draw (None below ``least`` windows):
        window fields ``[count, B, ...]`` (``[count, n, B]`` for per-step ones)."""
        if self.replay.size < least:
            return None
        drawn = self.replay.sample(batch_size * count, beta, self.rng)

        def split(name, x):
            if x is None:
                return None
            if name in ("reward", "terminated", "truncated"):
                return x.reshape(x.shape[0], count, batch_size).swapaxes(0, 1)
            return x.reshape(count, batch_size, *x.shape[1:])

        window = {name: split(name, x) for name, x in drawn.window._asdict().items()}
        return {
            "window": window,
            "weights": drawn.weights.reshape(count, batch_size),
            "indices": drawn.indices,
            "generations": drawn.generations,
            "size": self.replay.size,
        }

    def update(self, indices: np.ndarray, priorities: np.ndarray, generations: np.ndarray):
        return self.replay.update(indices, np.ravel(priorities), generations)
