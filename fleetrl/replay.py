"""Device-resident replay buffer, held in the algorithm state: one that fits Atari.

Steps are stored time-major per env, ``[capacity_rows, N, ...]``, in the order the envs
produced them, so n-step windows are read at sampling time from consecutive rows of one env (no
episode bookkeeping at insertion, and n can change without refilling the buffer).

Each observation is stored once, in its own dtype (uint8 frames stay uint8), and there is no
``next_obs`` array: a window's bootstrap observation is the observation of the row after it.
Only where an episode was truncated does the observation the step reached differ from the next
row's and still matter (terminated steps never bootstrap); those go to a small side ring
``final`` of K slots per env, each slot stamped with the step that wrote it, so a window whose
final observation was overwritten is detected (``Window.valid`` False), never read wrong.

With ``frame_stack = S`` (``EnvSpec.frame_stack``) a row stores only the newest frame of its
stacked observation and sampling rebuilds the stack from the rows before it, repeating an
episode's first frame as gymnasium's ``FrameStackObservation`` pads after a reset: 1M Atari
transitions take 7.5 GB (7,520 bytes each: a 7,056-byte frame, 441 of side ring, 8 of sum tree)
instead of 226 GB for float32 ``obs`` and ``next_obs`` (``benchmarks/replay_memory.py``).

Validity: a window of ``n`` steps starting ``o`` rows after the oldest (``0 <= o < size``) is
sampleable iff ``o >= S - 1`` (its stack's history is stored) and ``o + n <= size - 1`` (its
bootstrap row is stored); S = max(frame_stack, 1). `changed_leaves` lists the window starts
whose validity an `add` may have changed, for prioritized replay (`fleetrl.prioritized`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from fleetrl.types import Array


@struct.dataclass
class ReplayBuffer:
    """Steps of ``N`` envs in a ring of ``C = capacity_rows`` rows; ``frame`` is the stored
    observation: the newest frame ``obs[S - 1]`` with frame stacking, else the whole obs."""

    obs: Array
    """``[C, N, *frame]`` in the env's dtype."""
    action: Array
    """``[C, N, *action_shape]``."""
    reward: Array
    """``[C, N]`` float32."""
    terminated: Array
    """``[C, N]`` bool."""
    truncated: Array
    """``[C, N]`` bool."""
    final_slot: Array
    """``[C, N]`` int32: the side-ring slot of the row's final observation (truncated rows)."""
    final: Array
    """``[K, N, *frame]``: final frames (observations the step reached) of truncated steps."""
    final_step: Array
    """``[K, N]`` int32: the step (counted from the first add) whose final frame a slot holds;
    -1 for none."""
    final_count: Array
    """``[N]`` int32: final frames stored per env so far (slot of the next: count % K)."""
    steps: Array
    """Rows added so far (int32 scalar); the next row written is ``steps % C``."""
    action_mask: Array | None = None
    """``[C, N, A]`` bool: the legal actions in each row's observation (envs with action masks,
    ``create(num_actions=A)``); None otherwise."""
    frame_stack: int = struct.field(pytree_node=False, default=0)

    @property
    def capacity(self) -> int:
        return self.obs.shape[0]

    @property
    def num_envs(self) -> int:
        return self.obs.shape[1]

    @property
    def num_leaves(self) -> int:
        """Window starts, one per (row, env): the leaves of a `fleetrl.prioritized` tree."""
        return self.capacity * self.num_envs

    @property
    def stack(self) -> int:
        """S: frames in an observation, 1 without stacking."""
        return max(self.frame_stack, 1)

    @property
    def size(self) -> Array:
        """Rows holding data (<= capacity)."""
        return jnp.minimum(self.steps, self.capacity)

    @property
    def position(self) -> Array:
        """Next row to write."""
        return self.steps % self.capacity

    @property
    def oldest(self) -> Array:
        """Row of the oldest stored step."""
        return (self.steps - self.size) % self.capacity


class Window(NamedTuple):
    """``B`` windows of ``n`` steps of one env each, as `read_windows` returns them."""

    obs: Array
    """``[B, *obs_shape]``: the observation of the window's first step (stack rebuilt)."""
    action: Array
    """``[B, *action_shape]``: the action taken in ``obs``."""
    reward: Array
    """``[n, B]``."""
    terminated: Array
    """``[n, B]``."""
    truncated: Array
    """``[n, B]``."""
    next_obs: Array
    """``[B, *obs_shape]``: the bootstrap observation, reached by step k* (the first step that
    ended an episode, else the last): its final observation if it was truncated, the next row's
    if the episode goes on; something finite if it terminated (never bootstrapped)."""
    valid: Array
    """``[B]`` bool: the window is sampleable and its bootstrap observation is stored (False
    where the side ring overwrote it: give such windows zero weight)."""
    next_action_mask: Array | None = None
    """``[B, A]`` bool: the legal actions in ``next_obs`` (buffers with action masks; else
    None). All True at a truncated step's final observation, whose mask no env reports."""
    action_mask: Array | None = None
    """``[B, A]`` bool: the legal actions in ``obs`` (buffers with action masks; else None)."""


def create(
    obs_shape: tuple[int, ...],
    obs_dtype: Any,
    num_envs: int,
    capacity_rows: int,
    action_shape: tuple[int, ...] = (),
    action_dtype: Any = jnp.int32,
    frame_stack: int = 0,
    final_slots: int | None = None,
    num_actions: int = 0,
) -> ReplayBuffer:
    """An empty buffer of ``capacity_rows x num_envs`` steps of observations ``obs_shape``.

    ``frame_stack``: `EnvSpec.frame_stack` (``obs_shape[0]`` when > 0). ``final_slots``: side
    ring slots per env for truncated steps' final observations; default ``capacity_rows // 16
    + 1``, enough while episodes average more than 16 steps. ``num_actions``: store action masks
    of that many actions (envs whose `EnvSpec.action_mask` is set); 0: none.
    """
    if frame_stack and obs_shape[0] != frame_stack:
        raise ValueError(f"obs_shape: {obs_shape} does not stack frame_stack={frame_stack} frames")
    frame = tuple(obs_shape[1:]) if frame_stack else tuple(obs_shape)
    slots = capacity_rows // 16 + 1 if final_slots is None else final_slots
    c, n = capacity_rows, num_envs
    return ReplayBuffer(
        obs=jnp.zeros((c, n, *frame), obs_dtype),
        action=jnp.zeros((c, n, *action_shape), action_dtype),
        reward=jnp.zeros((c, n), jnp.float32),
        terminated=jnp.zeros((c, n), bool),
        truncated=jnp.zeros((c, n), bool),
        final_slot=jnp.zeros((c, n), jnp.int32),
        final=jnp.zeros((slots, n, *frame), obs_dtype),
        final_step=jnp.full((slots, n), -1, jnp.int32),
        final_count=jnp.zeros((n,), jnp.int32),
        steps=jnp.int32(0),
        action_mask=jnp.ones((c, n, num_actions), bool) if num_actions else None,
        frame_stack=frame_stack,
    )


def _newest_frame(buffer: ReplayBuffer, obs: Array) -> Array:
    """``[T, N, *obs_shape] -> [T, N, *frame]``: what a row stores."""
    return (obs[:, :, -1] if buffer.frame_stack else obs).astype(buffer.obs.dtype)


def add(
    buffer: ReplayBuffer,
    obs: Array,
    next_obs: Array,
    action: Array,
    reward: Array,
    terminated: Array,
    truncated: Array,
    action_mask: Array | None = None,
) -> ReplayBuffer:
    """Append ``T <= capacity_rows`` rows, overwriting the oldest when full. Every argument is
    ``[T, N, ...]``, as a `fleetrl.types.Rollout` holds it; ``next_obs`` is read only where a
    step was truncated (and not terminated). ``action_mask [T, N, A]``: the legal actions in
    ``obs`` (buffers made with ``num_actions``; None: all legal)."""
    num_rows, capacity = obs.shape[0], buffer.capacity
    if num_rows > capacity:
        raise ValueError(f"add: {num_rows} rows do not fit a buffer of {capacity} rows")
    if action_mask is not None and buffer.action_mask is None:
        raise ValueError("add: action_mask given to a buffer made without num_actions")
    rows = (buffer.steps + jnp.arange(num_rows)) % capacity
    buffer = _add_final(buffer, _newest_frame(buffer, next_obs), truncated & ~terminated)
    if buffer.action_mask is not None:
        legal = True if action_mask is None else action_mask
        buffer = buffer.replace(action_mask=buffer.action_mask.at[rows].set(legal))
    return buffer.replace(
        obs=buffer.obs.at[rows].set(_newest_frame(buffer, obs)),
        action=buffer.action.at[rows].set(action.astype(buffer.action.dtype)),
        reward=buffer.reward.at[rows].set(reward.astype(jnp.float32)),
        terminated=buffer.terminated.at[rows].set(terminated),
        truncated=buffer.truncated.at[rows].set(truncated),
        steps=buffer.steps + num_rows,
    )


def _add_final(buffer: ReplayBuffer, final: Array, needed: Array) -> ReplayBuffer:
    """Store ``final [T, N, *frame]`` where ``needed [T, N]`` in each env's side ring and write
    each row's slot (``final_slot``; rows start at ``buffer.steps``)."""
    num_rows, num_slots = needed.shape[0], buffer.final.shape[0]
    rows = (buffer.steps + jnp.arange(num_rows)) % buffer.capacity
    # the index of each final among its env's, counted from the first add
    index = buffer.final_count + jnp.cumsum(needed, axis=0, dtype=jnp.int32) - needed
    count = buffer.final_count + needed.sum(axis=0, dtype=jnp.int32)
    # only the last K of one env in this add survive it: writing the others would put two
    # values into one slot, and a scatter's winner among duplicates is unspecified
    keep = needed & (index >= count - num_slots)
    slot = jnp.where(keep, index % num_slots, num_slots)  # num_slots: dropped
    env = jnp.broadcast_to(jnp.arange(buffer.num_envs), needed.shape)
    step = jnp.broadcast_to(buffer.steps + jnp.arange(num_rows)[:, None], needed.shape)
    return buffer.replace(
        final=buffer.final.at[slot, env].set(final, mode="drop"),
        final_step=buffer.final_step.at[slot, env].set(step, mode="drop"),
        final_count=count,
        final_slot=buffer.final_slot.at[rows].set(index % num_slots),
    )


# ---- validity and leaves ------------------------------------------------------------------------


def valid_start(buffer: ReplayBuffer, rows: Array, n: int) -> Array:
    """``[...] bool``: an ``n``-step window may start at ``rows`` (any env): its stack history
    and its bootstrap row are stored (module docstring)."""
    offset = (rows - buffer.oldest) % buffer.capacity
    return (offset >= buffer.stack - 1) & (offset + n <= buffer.size - 1)


def num_valid(buffer: ReplayBuffer, n: int) -> Array:
    """Valid ``n``-step window starts over all envs (int32 scalar)."""
    return jnp.maximum(buffer.size - n - buffer.stack + 1, 0) * buffer.num_envs


def leaf(buffer: ReplayBuffer, rows: Array, envs: Array) -> Array:
    """Flat index ``row * N + env`` of window starts (a `fleetrl.prioritized` leaf)."""
    return rows * buffer.num_envs + envs


def unleaf(buffer: ReplayBuffer, leaves: Array) -> tuple[Array, Array]:
    """``(rows, envs)`` of flat leaf indices: the inverse of `leaf`."""
    return leaves // buffer.num_envs, leaves % buffer.num_envs


def changed_leaves(buffer: ReplayBuffer, num_rows: int, n: int) -> tuple[Array, Array]:
    """``(leaves [M], valid [M])``, ``M = (num_rows + n + S - 1) * N``: every window start whose
    validity or content the last `add` (of ``num_rows`` rows, ``buffer`` after it) may have
    changed, and whether it is valid now.

    They are the rows just written, the ``n`` rows before them (their windows now reach a
    stored bootstrap row) and the new oldest ``S - 1`` rows (their stack history was
    overwritten). Every other start kept its validity, so a prioritized tree stays exact by
    setting these to max priority where valid and 0 elsewhere (`fleetrl.prioritized.refresh`).
    A leaf may repeat (small buffers); its ``valid`` is the same each time.
    """
    first = buffer.steps - num_rows - n  # count of the first affected step
    recent = first + jnp.arange(num_rows + n)
    history = buffer.steps - buffer.size + jnp.arange(buffer.stack - 1)
    rows = jnp.concatenate([recent, history]) % buffer.capacity  # a step before 0: unwritten
    leaves = leaf(buffer, rows[:, None], jnp.arange(buffer.num_envs)).reshape(-1)
    valid = jnp.repeat(valid_start(buffer, rows, n), buffer.num_envs)
    return leaves, valid


# ---- sampling -----------------------------------------------------------------------------------


def sample_uniform(buffer: ReplayBuffer, key: Array, batch_size: int, n: int):
    """``(rows [B], envs [B])`` int32: ``n``-step window starts drawn uniformly (with
    replacement) among the valid ones of all envs. Needs ``num_valid(buffer, n) > 0``; without
    any, the windows read back ``valid=False``."""
    per_env = jnp.maximum(buffer.size - n - buffer.stack + 1, 0)
    index = jax.random.randint(key, (batch_size,), 0, jnp.maximum(per_env * buffer.num_envs, 1))
    offset = buffer.stack - 1 + index // buffer.num_envs
    rows = (buffer.oldest + offset) % buffer.capacity
    return rows.astype(jnp.int32), (index % buffer.num_envs).astype(jnp.int32)


def _step_count(buffer: ReplayBuffer, rows: Array) -> Array:
    """The step (counted from the first add) that wrote ``rows``; negative: never written."""
    newest = buffer.steps - 1
    return newest - (newest - rows) % buffer.capacity


def _frame_rows(buffer: ReplayBuffer, rows: Array, envs: Array) -> Array:
    """``[S, B]``: the rows whose stored frames make up the observation of ``rows [B]``. Frame
    k is row ``u - S + 1 + k`` clamped to the first row of ``u``'s episode: a reset pads the
    stack with the first frame (``FrameStackObservation``'s default, "reset")."""
    back = jnp.arange(1, buffer.stack)[:, None]  # [S - 1, 1]
    earlier = (rows - back) % buffer.capacity  # rows u - 1, ..., u - S + 1
    ended = buffer.terminated[earlier, envs] | buffer.truncated[earlier, envs]
    # how far back frame j steps back may go: j, or less where an episode ended in between
    in_episode = jnp.cumsum(ended, axis=0) == 0
    reach = jnp.cumsum(in_episode, axis=0)  # [S - 1, B], for j = 1 .. S - 1
    reach = jnp.concatenate([jnp.zeros_like(rows)[None], reach])[::-1]  # frame k: j = S - 1 - k
    return (rows - reach) % buffer.capacity


def _frames(buffer: ReplayBuffer, frame_rows: Array, envs: Array) -> Array:
    """``[S, B, *frame] -> [B, *obs_shape]`` (the stacking axis only with frame stacking)."""
    frames = buffer.obs[frame_rows, envs]
    return jnp.moveaxis(frames, 0, 1) if buffer.frame_stack else frames[0]


def read_windows(buffer: ReplayBuffer, rows: Array, envs: Array, n: int) -> Window:
    """The ``n``-step windows starting at ``rows [B]`` of ``envs [B]`` (`sample_uniform` or a
    `fleetrl.prioritized` draw through `unleaf`), observations rebuilt (see `Window`)."""
    steps = (rows + jnp.arange(n)[:, None]) % buffer.capacity  # [n, B]
    terminated, truncated = buffer.terminated[steps, envs], buffer.truncated[steps, envs]
    done = terminated | truncated
    first_done = jnp.where(done.any(axis=0), jnp.argmax(done, axis=0), n - 1)
    last = (rows + first_done) % buffer.capacity  # the bootstrap step's row
    cut = buffer.truncated[last, envs] & ~buffer.terminated[last, envs]
    slot = buffer.final_slot[last, envs]
    stored = buffer.final_step[slot, envs] == _step_count(buffer, last)
    # the next observation shares S - 1 frames with the bootstrap step's own; the newest is
    # the next row's, or the side ring's where the step was truncated
    history = _frame_rows(buffer, last, envs)
    next_rows = jnp.concatenate([history[1:], ((last + 1) % buffer.capacity)[None]])
    next_obs = buffer.obs[next_rows, envs]
    next_obs = next_obs.at[-1].set(
        jnp.where(_expand(cut, next_obs[-1]), buffer.final[slot, envs], next_obs[-1])
    )
    next_mask = None
    if buffer.action_mask is not None:
        next_mask = buffer.action_mask[next_rows[-1], envs] | cut[:, None]
    return Window(
        obs=_frames(buffer, _frame_rows(buffer, rows, envs), envs),
        action=buffer.action[rows, envs],
        reward=buffer.reward[steps, envs],
        terminated=terminated,
        truncated=truncated,
        next_obs=jnp.moveaxis(next_obs, 0, 1) if buffer.frame_stack else next_obs[0],
        valid=valid_start(buffer, rows, n) & (~cut | stored),
        next_action_mask=next_mask,
        action_mask=None if buffer.action_mask is None else buffer.action_mask[rows, envs],
    )


def _expand(mask: Array, like: Array) -> Array:
    """``[B] -> [B, 1, ...]`` broadcastable against ``like [B, ...]``."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))
