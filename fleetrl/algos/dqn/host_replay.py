"""A prioritized replay of n-step windows in host memory (NumPy), for one process that actors
add to and a learner samples from (Ape-X's replay, `fleetrl.algos.dqn.apex`).

Hand-written rather than `fleetrl.replay` with `fleetrl.prioritized`, or flashbax: those hold
JAX arrays on a device inside a learner's jitted state and update them functionally. A replay
actor lives on a CPU host, takes windows from many actors as they arrive, and hands batches to
a learner in another process: it wants NumPy arrays written in place, no device, no compile.
Its sum tree has `fleetrl.prioritized`'s layout, descent and float edge, in float64;
tests/test_apex.py checks the two sample with the same probabilities.

Unlike the device replay, a window is stored whole (its ``obs`` and ``next_obs``): no frame
deduplication, so stacked Atari frames take 56 KB a window; size ``capacity`` accordingly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fleetrl.replay import Window

_TIME_MAJOR = ("reward", "terminated", "truncated")
"""Window fields laid out ``[n, B]``; stored ``[capacity, n]``."""


class SumTree:
    """Proportional sampling over ``num_leaves`` priorities, in place: a flat ``[2P]`` float64
    array laid out as `fleetrl.prioritized.Priorities.tree` (node 1 the root, node i's children
    2i and 2i + 1, leaf j at node P + j, P the next power of two >= num_leaves). Updating or
    sampling B leaves visits B nodes per level, one NumPy operation per level: O(B log P)."""

    def __init__(self, num_leaves: int):
        self.capacity = 1 << max(num_leaves - 1, 0).bit_length()
        self.depth = self.capacity.bit_length() - 1
        self.tree = np.zeros(2 * self.capacity, np.float64)

    @property
    def total(self) -> float:
        """Sum of all priorities (the root)."""
        return float(self.tree[1])

    def get(self, leaves: np.ndarray) -> np.ndarray:
        """``[B]`` priorities of ``leaves [B]``."""
        return self.tree[self.capacity + leaves]

    def update(self, leaves: np.ndarray, priorities: np.ndarray) -> None:
        """Set ``leaves [B]`` to ``priorities [B]`` and recompute their ancestors from their
        children (never adjusted by differences: the sums cannot drift). A leaf repeated in the
        batch takes one of its values and its ancestors agree with it."""
        nodes = self.capacity + np.asarray(leaves, np.int64)
        self.tree[nodes] = priorities
        for level in range(1, self.depth + 1):
            parents = nodes >> level
            self.tree[parents] = self.tree[2 * parents] + self.tree[2 * parents + 1]

    def descend(self, mass: np.ndarray) -> np.ndarray:
        """``[B]`` leaves holding the cumulative priorities ``mass [B]`` (in ``[0, total]``), as
        `fleetrl.prioritized.descend`: right only into a subtree with a positive sum, so a
        zero-priority leaf is never reached while the total is positive."""
        node = np.ones(np.shape(mass), np.int64)
        for _ in range(self.depth):
            left, right = self.tree[2 * node], self.tree[2 * node + 1]
            go_right = (mass >= left) & (right > 0)
            node = 2 * node + go_right
            mass = np.where(go_right, mass - left, mass)
        return node - self.capacity


class ReplaySample(NamedTuple):
    """A batch `HostReplay.sample` draws."""

    window: Window
    """``B`` windows (NumPy arrays, shaped as `fleetrl.replay.Window`)."""
    indices: np.ndarray
    """``[B]`` int64 slots, for `HostReplay.update`."""
    weights: np.ndarray
    """``[B]`` float32 importance weights, the largest 1."""
    generations: np.ndarray
    """``[B]`` int64: which window each slot held when sampled, for `HostReplay.update`."""


class HostReplay:
    """A ring of ``capacity`` n-step windows with proportional priorities (Schaul et al. 2016,
    sec. 3.3), in NumPy, mutated in place (one process owns it; not thread-safe).

    Priorities are used as given: exponentiate them by ``priority_alpha`` first (the actor's
    `apex.make_priority_fn` and the learner's step do). Field arrays are allocated at the
    first `add`, each in the window's own dtype (uint8 frames stay uint8); later adds must
    match their shapes and dtypes.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity: need at least one window, got {capacity}")
        self.capacity = capacity
        self.tree = SumTree(capacity)
        self.max_priority = 1.0
        """The largest priority given so far (starts at 1): `add` without priorities uses it,
        so a new window is sampled soon (Schaul et al., Algorithm 1)."""
        self.added = 0
        """Windows added so far; window ``k`` went to slot ``k % capacity``."""
        self._generation = np.full(capacity, -1, np.int64)  # the k of the window in each slot
        self._fields: dict[str, np.ndarray | None] | None = None

    @property
    def size(self) -> int:
        """Windows held (<= capacity)."""
        return min(self.added, self.capacity)

    def __len__(self) -> int:
        return self.size

    def add(self, window: Window, priorities: np.ndarray | None = None) -> np.ndarray:
        """Store ``B`` windows (`apex.segment_windows`) with ``priorities [B]`` (>= 0; None:
        `max_priority` each), overwriting the oldest when full; a window that is not ``valid``
        gets priority 0 (never sampled). Returns the ``[B]`` slots written (of the last
        ``capacity`` windows when ``B`` exceeds it: only they fit)."""
        count = len(window.valid)
        if priorities is None:
            priorities = np.full(count, self.max_priority)
        priorities = _checked(priorities, count, "add")
        priorities = np.where(np.asarray(window.valid, bool), priorities, 0.0)
        keep = slice(max(count - self.capacity, 0), count)
        serial = self.added + np.arange(count, dtype=np.int64)[keep]
        slots = serial % self.capacity
        self._write(slots, window, keep)
        self._generation[slots] = serial
        self.tree.update(slots, priorities[keep])
        self.added += count
        self.max_priority = max(self.max_priority, float(priorities.max(initial=0.0)))
        return slots

    def sample(self, batch_size: int, beta: float, rng: np.random.Generator) -> ReplaySample:
        """``batch_size`` windows drawn i.i.d. with probability ``P(i) = priority_i / total``
        and their importance weights ``(size * P(i)) ** -beta`` over the batch's largest, as
        `fleetrl.prioritized.importance_weights` (Schaul et al., sec. 3.4)."""
        total = self.tree.total
        if not total > 0:
            raise ValueError(
                "sample: the replay holds no window with a positive priority; add some first"
            )
        slots = self.tree.descend(rng.random(batch_size) * total)
        probabilities = self.tree.get(slots) / total
        weights = (self.size * probabilities) ** -beta
        window = Window(**{name: self._read(name, slots) for name in Window._fields})
        return ReplaySample(
            window,
            slots,
            (weights / weights.max()).astype(np.float32),
            self._generation[slots].copy(),
        )

    def update(self, indices: np.ndarray, priorities: np.ndarray, generations: np.ndarray) -> int:
        """Set the priorities of sampled slots (``indices``, ``generations`` from `sample`),
        skipping slots overwritten since they were sampled (the learner's priority belongs to
        a window no longer held). Returns how many were set."""
        indices = np.asarray(indices, np.int64)
        priorities = _checked(priorities, len(indices), "update")
        fresh = self._generation[indices] == np.asarray(generations)
        self.tree.update(indices[fresh], priorities[fresh])
        self.max_priority = max(self.max_priority, float(priorities[fresh].max(initial=0.0)))
        return int(fresh.sum())

    def _write(self, slots: np.ndarray, window: Window, keep: slice) -> None:
        if self._fields is None:
            self._fields = {name: _allocate(self.capacity, window, name) for name in Window._fields}
        rows = {name: _rows(window, name) for name in Window._fields}
        for name, store in self._fields.items():  # all checked before any slot is written
            if (store is None) != (rows[name] is None):
                given = "None" if rows[name] is None else "set"
                raise ValueError(f"add: window.{name} is {given}, unlike the windows stored before")
            if store is not None and (
                rows[name].shape[1:] != store.shape[1:] or rows[name].dtype != store.dtype
            ):
                raise ValueError(
                    f"add: window.{name} rows are {rows[name].dtype}{list(rows[name].shape[1:])}, "
                    f"the replay stores {store.dtype}{list(store.shape[1:])}"
                )
        for name, store in self._fields.items():
            if store is not None:
                store[slots] = rows[name][keep]

    def _read(self, name: str, slots: np.ndarray) -> np.ndarray | None:
        store = self._fields[name]
        if store is None:
            return None
        return np.ascontiguousarray(store[slots].T) if name in _TIME_MAJOR else store[slots]


def _rows(window: Window, name: str) -> np.ndarray | None:
    """``window.name`` with the windows first (``[B, ...]``; None where the window has none)."""
    value = getattr(window, name)
    if value is None:
        return None
    return np.asarray(value).T if name in _TIME_MAJOR else np.asarray(value)


def _allocate(capacity: int, window: Window, name: str) -> np.ndarray | None:
    """Zeros for ``capacity`` rows of ``window.name`` (None where the window has none)."""
    rows = _rows(window, name)
    return None if rows is None else np.zeros((capacity,) + rows.shape[1:], rows.dtype)


def _checked(priorities, count: int, where: str) -> np.ndarray:
    """``priorities`` as float64 ``[count]``, finite and >= 0 (a NaN would poison every sum)."""
    priorities = np.asarray(priorities, np.float64)
    if priorities.shape != (count,):
        raise ValueError(f"{where}: priorities of shape {priorities.shape}, expected ({count},)")
    if not (np.isfinite(priorities).all() and (priorities >= 0).all()):
        raise ValueError(f"{where}: priorities must be finite and >= 0, got {priorities}")
    return priorities
