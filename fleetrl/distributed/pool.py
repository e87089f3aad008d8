"""The actors of a distributed run and their faults.

Each actor has at most one segment outstanding. A dead actor (killed, its process gone, its
node removed) or a hung one (no segment within ``dist.sample_timeout``) is replaced by a new
one that samples with the latest parameters, up to ``dist.max_restarts`` times over the run;
then, or with restarts off, the run stops with an error naming the actor. When no node has
room for a replacement, the actors left share the lost one's work; with none left, the run
stops. The learner never waits for good: every wait is bounded.
"""

from __future__ import annotations

import time
from typing import Any

from fleetrl.config import RunConfig, dump_yaml
from fleetrl.distributed import DistributedError
from fleetrl.distributed.actor import SegmentActor

WAIT_SLICE = 0.5
"""Seconds of one ``ray.wait``: deadlines are checked at least this often."""

CLOSE_SECONDS = 5.0
"""How long closing waits for actors to close their envs before killing them."""


class ActorPool:
    """``dist.actors`` `SegmentActor`s as Ray actors, and the segments they owe.

    ``options(index) -> dict``: an actor's own ``epsilon``/``replay`` (Ape-X). `publish` sets
    the parameters (a new version) that every later submission, and a replacement, samples
    with.
    """

    def __init__(self, ray, run: RunConfig, options=None):
        self.ray, self.run, self.dist = ray, run, run.dist
        self.config_yaml = dump_yaml(run)
        self.options = options or (lambda index: {})
        # SPREAD: actors over the nodes, so a lost node takes few of them. max_restarts=0: Ray
        # does not restart them; we do (`_replace`), so that a new actor samples with fresh
        # parameters and is counted
        self.remote_class = ray.remote(SegmentActor).options(
            num_cpus=self.dist.actor_cpus, scheduling_strategy="SPREAD", max_restarts=0
        )
        self.actors: list[Any] = []
        self.incarnation: list[int] = []
        self.pending: dict[Any, tuple[int, float]] = {}  # ref -> (actor index, deadline)
        self.fresh: set[int] = set()  # actors whose first segment also waits for their start
        self.lost: set[int] = set()  # actors no node had room to replace: the rest go on
        self.params_ref, self.version = None, -1
        self.counts = {
            "faults/actor_restarts": 0,
            "faults/actor_timeouts": 0,
            "faults/actors_lost": 0,
        }
        for index in range(self.dist.actors):
            self.actors.append(self._create(index, 0))
            self.incarnation.append(0)

    def _create(self, index: int, incarnation: int):
        self.fresh.add(index)
        from fleetrl.envs.trust import trusted_modules

        return self.remote_class.remote(
            self.config_yaml,
            index,
            self.dist.actors,
            incarnation,
            trusted=sorted(trusted_modules()),  # `--trust-module`, `--env.id module:Class`
            **self.options(index),
        )

    def publish(self, actor_params) -> None:
        """Put new parameters (the next version: 0 first) in the object store, once for all."""
        self.params_ref, self.version = self.ray.put(actor_params), self.version + 1

    @property
    def live(self) -> list[int]:
        return [index for index in range(len(self.actors)) if index not in self.lost]

    def idle(self) -> list[int]:
        """The live actors that owe no segment."""
        busy = {index for index, _ in self.pending.values()}
        return [index for index in self.live if index not in busy]

    def submit(self, index: int) -> None:
        """Ask actor ``index`` for a segment with the latest parameters."""
        timeout = self.dist.sample_timeout
        if index in self.fresh:
            timeout += self.dist.start_timeout
            self.fresh.discard(index)
        ref = self.actors[index].sample.remote(self.params_ref, self.version)
        self.pending[ref] = (index, time.monotonic() + timeout)

    def wait(self) -> list[tuple[int, dict]]:
        """The segments that are ready (at least one), as ``(actor index, segment)``; dead and
        hung actors are replaced (and asked again) on the way."""
        ray = self.ray
        while True:
            if not self.pending:  # a caller bug, or every actor lost: never spin on nothing
                raise DistributedError("no actor owes a segment: nothing to wait for")
            refs = list(self.pending)
            ready, _ = ray.wait(refs, num_returns=1, timeout=WAIT_SLICE)
            if ready:  # and whatever else finished meanwhile
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            results = []
            for ref in ready:
                index, _ = self.pending.pop(ref)
                segment = self._get(ref, index)
                if segment is not None:
                    results.append((index, segment))
            self._replace_hung()
            if results:
                return results

    def _get(self, ref, index: int) -> dict | None:
        """The segment, or None after replacing an actor that died; an actor's own error (its
        envs failed, it could not start) stops the run with that error."""
        errors = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except errors.RayTaskError as error:  # the actor lives; its envs failed
            raise DistributedError(f"actor {index} failed while sampling:\n{error}") from None
        except errors.RayActorError as error:
            if getattr(error, "actor_init_failed", False):  # fails again if restarted
                raise DistributedError(f"actor {index} could not start:\n{error}") from None
            self._replace(index, f"died while sampling ({_first_line(error)})")
        except errors.ObjectLostError as error:
            self._replace(index, f"lost its segment ({_first_line(error)})")
        except errors.RayError as error:  # unschedulable, a runtime env that failed, ...
            raise DistributedError(f"actor {index}: {type(error).__name__}: {error}") from None
        return None

    def _replace_hung(self) -> None:
        now = time.monotonic()
        for ref, (index, deadline) in list(self.pending.items()):
            if now > deadline:
                del self.pending[ref]
                self.counts["faults/actor_timeouts"] += 1
                self._replace(
                    index,
                    f"returned no segment within {self.dist.sample_timeout:g} s "
                    "(dist.sample_timeout; dist.start_timeout more for a new actor)",
                )

    def _replace(self, index: int, why: str) -> None:
        """Kill actor ``index`` and start another in its place, which samples at once."""
        restarts = self.counts["faults/actor_restarts"]
        if restarts >= self.dist.max_restarts:
            limit = (
                "dist.max_restarts is 0: a lost actor stops the run"
                if self.dist.max_restarts == 0
                else f"its {self.dist.max_restarts} restarts (dist.max_restarts) are used up"
            )
            raise DistributedError(f"actor {index} {why}; {limit}")
        try:
            self.ray.kill(self.actors[index], no_restart=True)
        except Exception:  # noqa: BLE001 (already gone with its node)
            pass
        if not self._room_for_one_more():
            self._lose(index, why)
            return
        self.counts["faults/actor_restarts"] = restarts + 1
        self.incarnation[index] += 1
        self.actors[index] = self._create(index, self.incarnation[index])
        self.submit(index)

    def _room_for_one_more(self) -> bool:
        """Whether the cluster's live nodes have CPUs for the other live actors and one more
        (after a node is removed, they may not: the actors left then share its envs' work)."""
        others = len(self.live) - 1
        cpus = self.ray.cluster_resources().get("CPU", 0.0)
        return cpus >= (others + 1) * self.dist.actor_cpus

    def _lose(self, index: int, why: str) -> None:
        """Go on without actor ``index``; stop, rather than wait for ever, if none is left."""
        self.lost.add(index)
        self.counts["faults/actors_lost"] += 1
        if not self.live:
            cpus = self.ray.cluster_resources().get("CPU", 0.0)
            raise DistributedError(
                f"all actors are lost: actor {index} {why}, and the cluster's {cpus:g} CPUs "
                f"leave no room for a new one (dist.actor_cpus {self.dist.actor_cpus:g})"
            )

    def close(self) -> None:
        """Let every actor close its envs (a simulator, a video), then kill it, and the rest
        (``extra``: the replay) with it."""
        closing = []
        for index in self.live:
            try:
                closing.append(self.actors[index].close.remote())
            except Exception:  # noqa: BLE001 (already gone)
                pass
        if closing:
            self.ray.wait(closing, num_returns=len(closing), timeout=CLOSE_SECONDS)
        for actor in [*self.actors, *self.extra]:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.actors, self.pending = [], {}

    extra: tuple = ()
    """Other actors of the run that close with the pool (Ape-X's replay)."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
