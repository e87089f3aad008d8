"""The learner's train calls of a distributed run (sync and async; Ape-X's extends them in
`fleetrl.distributed.apex`): ``call(carry[1]) -> (carry[1], metrics[1, iterations])``, what
`fleetrl.loop.Loop` expects of a compiled call. See `fleetrl.distributed.driver` for the modes.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import numpy as np

from fleetrl.config import RunConfig
from fleetrl.programs import Carry, health_metrics, over_seeds
from fleetrl.types import Rollout


def learner_update(algo):
    """``update(carry[1], rollout[1, T, N]) -> (carry, metrics)``: one learner update, with
    the health metrics the loop reads (as `fleetrl.programs.make_train_call` adds them)."""

    def update(carry: Carry, rollout: Rollout):
        key, learn_key = jax.random.split(carry.key)
        state, metrics = algo.learn(carry.algo_state, rollout, learn_key)
        metrics.update(health_metrics(algo.health(carry.algo_state), algo.health(state)))
        return Carry(state, (), key), metrics

    return jax.jit(over_seeds(update))


def publishable(algo):
    """``actor_params(carry[1])`` on the host: what the actors receive."""
    params = jax.jit(over_seeds(lambda state: algo.actor_params(state)))
    return lambda carry: jax.tree.map(lambda x: np.asarray(x)[0], params(carry.algo_state))


REPLAY_LEARNERS = ("dqn", "sac", "td3", "ddpg")
"""Learners whose replay reads the row after a step as its next observation: the segments
they get are cut (`concat_segments`), since the actor behind a column may change between
iterations (async arrival order, a replaced or lost actor)."""


def concat_segments(segments: list[dict], cut: bool = False) -> Rollout:
    """The actors' ``[T, n]`` segments side by side: one ``[1, T, N]`` rollout (recurrent
    ``actor_state`` leaves ``[n, ...]`` side by side on their env axis). ``cut``: each
    segment's last step is marked truncated where it did not terminate, so that a replay
    bootstraps it from its own ``next_obs`` (exact: the obs that step reached) instead of the
    next row, which may belong to another actor's envs."""
    first = segments[0]

    def join(name: str, axis: int):
        values = [s[name] for s in segments]
        if first[name] is None:
            return None
        return jax.tree.map(lambda *xs: np.concatenate(xs, axis=axis)[None], *values)

    fields = {name: join(name, 1) for name in Rollout._fields if name != "actor_state"}
    fields["actor_state"] = join("actor_state", 0)
    if cut:
        truncated = fields["truncated"].copy()
        truncated[:, -1] |= ~np.asarray(fields["terminated"][:, -1], bool)
        fields["truncated"] = truncated
    return Rollout(**fields)


def flat(segment: dict) -> dict:
    """An actor's segment with its rollout's fields at the top (an Ape-X actor's report has
    none: its transitions went to the replay)."""
    rest = {name: value for name, value in segment.items() if name != "rollout"}
    return {**segment.get("rollout", {}), **rest}


def stack_rows(rows: list[dict]) -> dict[str, np.ndarray]:
    """Per-iteration metrics ``[1]`` into ``[1, iterations]``; a metric some iterations lack
    (an Ape-X learner before its replay is warm) is NaN there."""
    names = dict.fromkeys(name for row in rows for name in row)
    missing = np.array([np.nan], np.float32)
    return {name: np.stack([row.get(name, missing) for row in rows], 1) for name in names}


class Gathered(NamedTuple):
    """One iteration's worth of segments and how they came."""

    segments: list[dict]
    """Flat segments (`flat`), ``dist.actors`` of them."""
    lags: list[int]
    """Policy lag of each: learner version now minus the version it was acted with."""
    dropped: int
    """Segments dropped as older than ``dist.max_policy_lag`` on the way."""
    wait_s: float
    """Seconds the learner waited for them."""


class TrainCall:
    """The train call of a sync or async run (see `fleetrl.distributed.driver`):
    ``call(carry[1]) -> (carry[1], metrics[1, iterations])``, what the loop expects of a
    compiled call. ``learn`` is the update on one iteration's segments (Ape-X's differs)."""

    def __init__(self, run: RunConfig, pool, algo):
        self.run, self.pool = run, pool
        self.update = learner_update(algo) if algo.learn is not None else None
        self.actor_params = publishable(algo)
        self.cut = run.algorithm in REPLAY_LEARNERS
        self.limit = run.dist.max_policy_lag
        self.dropped = 0
        self.host: dict[int, dict[str, float]] = {}  # the latest host-env counters per actor

    def __call__(self, carry: Carry, *frozen):  # frozen: no seed axis to freeze (one seed)
        pool, rows = self.pool, []
        if pool.params_ref is None:
            pool.publish(self.actor_params(carry))
        for _ in range(self.run.iterations_per_call):
            gathered = self.gather()
            start = time.perf_counter()
            carry, metrics = self.learn(carry, gathered)
            pool.publish(self.actor_params(carry))  # a new version; waits for the update
            rows.append(self.row(metrics, gathered, time.perf_counter() - start))
        return carry, stack_rows(rows)

    def learn(self, carry: Carry, gathered: Gathered) -> tuple[Carry, dict]:
        carry, metrics = self.update(carry, concat_segments(gathered.segments, self.cut))
        return carry, jax.device_get(metrics)

    def row(self, metrics: dict, gathered: Gathered, learn_s: float) -> dict[str, np.ndarray]:
        """One iteration's metrics, ``[1]`` each."""
        segments = gathered.segments
        row = {name: np.asarray(value) for name, value in metrics.items()}
        for name in ("episodes/count", "episodes/return_sum", "episodes/length_sum"):
            row[name] = np.array([sum(s[name] for s in segments)])
        self.dropped += gathered.dropped
        self.host.update({s["index"]: s["host"] for s in segments if "host" in s})
        host = {}
        for counters in self.host.values():  # the actors' host-env pools, summed
            for name, value in counters.items():
                host[name] = host.get(name, 0.0) + value
        extra = {
            "dist/policy_lag": float(np.mean(gathered.lags)),
            "dist/policy_lag_max": float(np.max(gathered.lags)),
            "dist/dropped_segments": float(self.dropped),
            "dist/wait_s": gathered.wait_s,
            "dist/learn_s": learn_s,
            "dist/actor_sample_s": float(np.mean([s["sample_s"] for s in segments])),
            **host,
            **{name: float(count) for name, count in self.pool.counts.items()},
        }
        row.update({name: np.array([value]) for name, value in extra.items()})
        return row

    def gather(self) -> Gathered:
        """One iteration's segments: sync, all of the current version; async, the first ready
        within the lag bound."""
        start = time.perf_counter()
        if self.run.dist.mode == "sync":
            segments = self._gather_sync()
            return Gathered(segments, [0] * len(segments), 0, time.perf_counter() - start)
        return self._gather_async(start)

    def _gather_sync(self) -> list[dict]:
        """``actors`` segments, all acted with the current parameters: one from each actor
        (more from some when actors were lost with their node: they share the lost ones' work),
        side by side in actor order."""
        pool, want = self.pool, len(self.pool.actors)
        got: dict[tuple[int, int], dict] = {}  # (round, actor index) -> segment
        rounds = [0] * want
        while len(got) < want:
            for index in pool.idle():  # (again: an actor may have been lost meanwhile)
                if len(got) + len(pool.pending) < want:
                    pool.submit(index)
            for index, segment in pool.wait():
                got[rounds[index], index] = flat(segment)
                rounds[index] += 1
        return [got[key] for key in sorted(got)]

    def _gather_async(self, start: float) -> Gathered:
        """The first ``actors`` segments ready within the lag bound; each actor is asked again
        the moment it returns one."""
        pool = self.pool
        for index in pool.idle():
            pool.submit(index)
        segments, lags, dropped = [], [], 0
        while len(segments) < len(pool.actors):
            for index, segment in pool.wait():
                pool.submit(index)
                lag = pool.version - segment["version"]
                if lag > self.limit:
                    dropped += 1
                    continue
                segments.append(flat(segment))
                lags.append(lag)
        return Gathered(segments, lags, dropped, time.perf_counter() - start)
