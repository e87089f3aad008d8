"""Startup and per-step checks of `EnvPool`: env API, spaces, actions; the pool's `PoolSpec`.

Imported by worker processes: numpy, gymnasium and `fleetrl.envs.errors` only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from fleetrl.envs.adapt import legal_sample
from fleetrl.envs.errors import (
    MismatchedSpacesError,
    ObservationShapeError,
    OldGymApiError,
    UnsupportedSpaceError,
)

SUPPORTED_ACTION_SPACES = "Discrete, Box (float dtype)"
SUPPORTED_OBSERVATION_SPACES = (
    "Box (float, integer or bool dtype), Discrete (one-hot encoded), Dict of exactly "
    "'observation' and 'action_mask' (other Dict observations: not yet)"
)

SHIMMY_HINT = (
    "fleetrl needs the gymnasium API: reset(seed=..., options=...) -> (obs, info) and "
    "step(action) -> (obs, reward, terminated, truncated, info). Wrap old gym envs with shimmy's "
    "compatibility wrappers (pip install 'shimmy[gym-v21]' or 'shimmy[gym-v26]', then "
    "shimmy.GymV21CompatibilityV0(env=env) or shimmy.GymV26CompatibilityV0(env=env)); "
    "gymnasium 1.x removed its own EnvCompatibility wrapper."
)

WRAP_HINT = (
    "From the command line, give a gymnasium.Wrapper subclass whose constructor builds the "
    "wrapped env as --env.id module.path:ClassName."
)


@dataclass(frozen=True)
class PoolSpec:
    """Static description of an `EnvPool`: the fields of ``fleetrl.types.EnvSpec`` plus dtypes.

    Observations come out as float32, except Box observations of dtype uint8 (images), which stay
    uint8; Discrete observations as one-hot float32 vectors of shape ``(n,)``
    (`fleetrl.envs.adapt`). Discrete actions are indices ``0..num_actions-1`` (the pool adds the
    space's ``start``); continuous actions are float arrays of ``action_shape``.
    ``observation_space`` is the space after that adaptation.
    """

    env_id: str
    num_envs: int
    observation_shape: tuple[int, ...]
    observation_dtype: np.dtype
    action_kind: Literal["discrete", "continuous"]
    num_actions: int = 0
    action_shape: tuple[int, ...] = ()
    action_low: tuple[float, ...] = ()
    """Lower bounds of a continuous action, flattened (empty for discrete)."""
    action_high: tuple[float, ...] = ()
    max_episode_steps: int = 0
    """Time limit of one episode (truncation), 0 if unknown."""
    action_mask: bool = False
    """The envs give action masks (`fleetrl.envs.adapt`): ``HostTimeStep.action_mask``."""
    frame_stack: int = 0
    """Observations stack the last ``frame_stack`` frames (``EnvSpec.frame_stack``); 0: not."""
    observation_space: Any = field(default=None, compare=False, repr=False)
    action_space: Any = field(default=None, compare=False, repr=False)

    @property
    def action_dtype(self) -> np.dtype:
        """dtype of the pool's action buffer: int64 for discrete, the Box's float dtype."""
        return np.dtype(np.int64) if self.action_kind == "discrete" else self.action_space.dtype

    def as_env_spec(self):
        """The same description as a ``fleetrl.types.EnvSpec`` (imports JAX)."""
        from fleetrl.types import EnvSpec

        return EnvSpec(
            env_id=self.env_id,
            num_envs=self.num_envs,
            observation_shape=self.observation_shape,
            action_kind=self.action_kind,
            num_actions=self.num_actions,
            action_shape=self.action_shape,
            action_low=self.action_low,
            action_high=self.action_high,
            max_episode_steps=self.max_episode_steps,
            observation_dtype=np.dtype(self.observation_dtype).name,
            action_mask=self.action_mask,
            frame_stack=self.frame_stack,
        )


# ---- pool arguments ---------------------------------------------------------------------------


def check_pool_arguments(num_envs, num_workers, parent_steps, timeouts, on_error, max_restarts):
    """``ValueError`` naming the bad argument, before any process starts."""
    if num_envs < 1:
        raise ValueError(f"num_envs: must be >= 1, got {num_envs}")
    if not 0 <= num_workers <= num_envs - bool(parent_steps and num_workers):
        raise ValueError(
            f"num_workers: must be in 0..num_envs={num_envs} (one less with parent_steps, "
            f"which keeps a share of the envs), got {num_workers}"
        )
    if min(timeouts) <= 0:
        raise ValueError(f"step_timeout, start_timeout: must be > 0, got {timeouts}")
    if on_error not in ("raise", "restart"):
        raise ValueError(f"on_error: must be 'raise' or 'restart', got {on_error!r}")
    if max_restarts < 0:
        raise ValueError(f"max_restarts: must be >= 0, got {max_restarts}")


def check_picklable(make_env: Any) -> None:
    """Worker processes receive ``make_env`` pickled: say so before spawning anything."""
    import pickle

    try:
        pickle.dumps(make_env)
    except Exception as error:
        raise TypeError(
            f"make_env={make_env!r} does not pickle, so it cannot reach worker processes "
            "(num_workers > 0): use a module-level function or class, a functools.partial of "
            f"one, or EnvPool.from_id ({type(error).__name__}: {error})"
        ) from error


# ---- env API and spaces (at construction) -------------------------------------------------------


def check_env_api(env: Any, index: int) -> None:
    """Reject old-gym envs (``reset`` without ``seed``) before they fail in an odd place."""
    for name in ("reset", "step", "observation_space", "action_space"):
        if not hasattr(env, name):
            raise OldGymApiError(
                f"env {index}: {type(env).__name__} has no `{name}`. {SHIMMY_HINT}", index
            )
    try:
        parameters = inspect.signature(env.reset).parameters
    except (TypeError, ValueError):
        return
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    if "seed" not in parameters and not takes_kwargs:
        raise OldGymApiError(
            f"env {index}: {type(env).__name__}.reset() takes no `seed`: this is the old gym "
            f"API. {SHIMMY_HINT}",
            index,
        )


def check_spaces(observation_space: Any, action_space: Any, index: int) -> None:
    """`UnsupportedSpaceError` (a ``NotImplementedError``) for spaces the pool cannot batch,
    listing the supported ones."""
    if not isinstance(action_space, (spaces.Discrete, spaces.Box)) or (
        isinstance(action_space, spaces.Box) and action_space.dtype.kind != "f"
    ):
        raise UnsupportedSpaceError(
            f"env {index}: action space {action_space} is not supported by EnvPool; supported: "
            f"{SUPPORTED_ACTION_SPACES}. Wrap the env so that it takes one of these (a "
            f"gymnasium.ActionWrapper). {WRAP_HINT}",
            index,
        )
    if not isinstance(observation_space, spaces.Box) or observation_space.dtype.kind not in "fiub":
        raise UnsupportedSpaceError(
            f"env {index}: observation space {observation_space} is not supported by EnvPool; "
            f"supported: {SUPPORTED_OBSERVATION_SPACES}. Flatten it with "
            f"gymnasium.wrappers.FlattenObservation first. {WRAP_HINT}",
            index,
        )


def check_same_spaces(env_spaces: list[tuple[Any, Any]]) -> None:
    """All sub-envs must share env 0's spaces; `MismatchedSpacesError` (a ``ValueError``) names
    the index and both spaces."""
    observation_space, action_space = env_spaces[0]
    for index, (obs_space, act_space) in enumerate(env_spaces):
        for what, space, first in (
            ("observation", obs_space, observation_space),
            ("action", act_space, action_space),
        ):
            if space != first:
                raise MismatchedSpacesError(
                    f"env {index} has {what} space {space}, env 0 has {first}: all envs of a "
                    "pool must have the same spaces (make_env must build the same env for "
                    "every index)",
                    index,
                )


def check_same_masks(masked: list[bool]) -> None:
    """All sub-envs give action masks, or none does (`MismatchedSpacesError`)."""
    for index, has in enumerate(masked):
        if has != masked[0]:
            which = "gives action masks" if has else "gives no action mask"
            raise MismatchedSpacesError(
                f"env {index} {which}, env 0 {'does not' if has else 'does'}: all envs of a "
                "pool must agree (make_env must build the same env for every index)",
                index,
            )


def make_spec(
    env_id: str, num_envs: int, obs_space, act_space, max_steps: int, action_mask: bool = False
) -> PoolSpec:
    """The `PoolSpec` of checked spaces."""
    obs_dtype = np.dtype(np.uint8) if obs_space.dtype == np.uint8 else np.dtype(np.float32)
    common = dict(
        env_id=env_id,
        num_envs=num_envs,
        observation_shape=tuple(obs_space.shape),
        observation_dtype=obs_dtype,
        max_episode_steps=int(max_steps or 0),
        observation_space=obs_space,
        action_space=act_space,
        action_mask=action_mask,
    )
    if isinstance(act_space, spaces.Discrete):
        return PoolSpec(action_kind="discrete", num_actions=int(act_space.n), **common)
    return PoolSpec(
        action_kind="continuous",
        action_shape=tuple(act_space.shape),
        action_low=tuple(float(x) for x in act_space.low.ravel()),
        action_high=tuple(float(x) for x in act_space.high.ravel()),
        **common,
    )


# ---- first reset / step of each env (in the worker) ---------------------------------------------


def check_reset_result(result: Any, obs_space, index: int) -> None:
    """The first ``reset`` must return ``(obs, info)`` with an obs of the declared shape."""
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
        raise OldGymApiError(
            f"env {index}: reset() returned {type(result).__name__}, not (obs, info): this is the "
            f"old gym API. {SHIMMY_HINT}",
            index,
        )
    check_observation_shape(result[0], obs_space, "reset")


def check_step_result(result: Any, obs_space, index: int) -> None:
    """The first ``step`` must return a 5-tuple with bool flags and an obs of the right shape."""
    if isinstance(result, tuple) and len(result) == 4:
        raise OldGymApiError(
            f"env {index}: step() returned 4 values (obs, reward, done, info): this is the old "
            f"gym API. {SHIMMY_HINT}",
            index,
        )
    if not (isinstance(result, tuple) and len(result) == 5):
        raise TypeError(f"env {index}: step() must return 5 values, got {result!r:.200}")
    for name, flag in zip(("terminated", "truncated"), result[2:4], strict=True):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(
                f"env {index}: step() returned {name}={flag!r} of type {type(flag).__name__}; "
                "it must be a bool"
            )
    check_observation_shape(result[0], obs_space, "step")


PROBE_KEY = "fleetrl_startup_probe"
"""``env.metadata[PROBE_KEY] = False`` opts an env out of `probe_env`."""


class ProbeError(Exception):
    """`probe_env`'s ``call`` ("reset" or "step") of env ``index`` raised ``error``."""

    def __init__(self, call: str, index: int, error: BaseException):
        super().__init__(call, index)
        self.call, self.index, self.error = call, index, error

    @property
    def note(self) -> str:
        return (
            f"(fleetrl's startup check of env {self.index}: one reset() and one step() of a "
            f"random action; an env that cannot take them sets metadata['{PROBE_KEY}'] = False)"
        )


def probe_env(env: Any, index: int) -> dict | None:
    """One ``reset()`` and one ``step(action_space.sample())`` of a freshly built env, checked
    like the pool's first ones: an old-gym env (obs-only reset, 4-tuple step) is rejected while
    the pool starts, not at its first step, after a trainer compiled its program and made its
    run directory. Any other failure is a `ProbeError` saying which call failed. Returns the
    reset's ``info`` (where the pool finds an action mask: the step's action is then a legal
    one, `fleetrl.envs.adapt`), or None for an env that opts out.

    The reset is unseeded and the env is left as the step left it: the pool's first reset with
    ``seed=s`` re-seeds it fully (gymnasium's contract for a seeded reset; the pool's parity
    tests check it), and an unseeded pool goes on with the env's own entropy-seeded RNG, as
    without the probe (a fixed probe seed would give every env of an unseeded pool the same
    episodes). Costs one reset and one step per env, once: until the pool's first step, 16
    CartPoles took 0.6 ms more CPU time and one Atari Pong no measurable more (its seeded reset,
    which reloads the ROM, dominates).

    Envs that must opt out (``metadata["fleetrl_startup_probe"] = False``; their first reset and
    step are then checked at the pool's first ones, as before): envs whose reset or step act on
    the world (a robot, a server, a file), wrappers that count episodes or record videos (the
    probe is a one-step episode), envs whose seeded reset keeps state from before, envs for
    which a random action can be invalid beyond what their action mask says (an env with an
    action mask then declares it: `fleetrl.envs.adapt.DECLARE_KEY`), and fault injectors that
    count calls (`fleetrl.envs.fake.FaultyEnv`). Envs whose step before reset is an error are
    fine: the probe resets first.
    """
    metadata = getattr(env, "metadata", None)
    if isinstance(metadata, dict) and metadata.get(PROBE_KEY, True) is False:
        return None
    obs_space = env.observation_space
    call = "reset"
    try:
        result = env.reset()
        check_reset_result(result, obs_space, index)
        action = legal_sample(env.action_space, result[1])
        call = "step"
        check_step_result(env.step(action), obs_space, index)
    except OldGymApiError:
        raise
    except Exception as error:
        raise ProbeError(call, index, error) from error
    return result[1]


def check_observation_shape(obs: Any, obs_space, where: str) -> None:
    """`ObservationShapeError` unless ``obs`` has exactly the shape of ``obs_space``: numpy would
    store an obs of shape () or (1,) into a row of shape (4,) without a word (broadcasting)."""
    shape = np.shape(obs)
    if shape != obs_space.shape:
        raise ObservationShapeError(
            f"{where}() returned an observation of shape {shape}, but its observation space "
            f"{obs_space} declares shape {obs_space.shape}"
        )


def dtype_note(obs: Any, obs_space, pool_dtype: np.dtype, index: int, where: str) -> str | None:
    """A warning for an observation of another dtype than its space declares (a float64 obs
    from a float32 Box), or None. The pool stores it as ``pool_dtype`` either way."""
    dtype = getattr(obs, "dtype", None)
    if dtype is None or dtype == obs_space.dtype:
        return None
    return (
        f"env {index} returned a {dtype} observation from {where}(), but its observation space "
        f"{obs_space} declares {obs_space.dtype}: fleetrl casts to {np.dtype(pool_dtype)}"
    )


# ---- actions (in the parent, before anything is sent) -------------------------------------------


def check_actions(actions: Any, spec: PoolSpec, out: np.ndarray) -> float:
    """Validate ``actions [N, ...]`` against the spec and write them into ``out``.

    Discrete: integer dtype, values in ``[0, n)``. Continuous: float dtype, finite; values
    outside the Box are clipped to it. Returns the fraction of action elements clipped.
    """
    actions = np.asarray(actions)
    expected = (spec.num_envs, *spec.action_shape)
    if spec.action_kind == "discrete":
        if actions.shape != expected or actions.dtype.kind not in "iu":
            raise ValueError(
                f"actions: expected shape {expected} int for Discrete({spec.num_actions}), got "
                f"{actions.shape} {actions.dtype}"
            )
        if actions.min() < 0 or actions.max() >= spec.num_actions:
            index = int(np.flatnonzero((actions < 0) | (actions >= spec.num_actions))[0])
            raise ValueError(
                f"actions: env {index} got {actions[index]}, outside Discrete("
                f"{spec.num_actions}) (valid: 0..{spec.num_actions - 1})"
            )
        out[...] = actions
        return 0.0
    if actions.shape != expected or actions.dtype.kind != "f":
        raise ValueError(
            f"actions: expected shape {expected} float for {spec.action_space}, got "
            f"{actions.shape} {actions.dtype}"
        )
    if not np.isfinite(actions).all():
        flat = actions.reshape(spec.num_envs, -1)
        index = int(np.flatnonzero(~np.isfinite(flat).all(axis=1))[0])
        raise ValueError(f"actions: env {index} has a non-finite action {flat[index].tolist()}")
    space = spec.action_space
    clipped = np.count_nonzero((actions < space.low) | (actions > space.high))
    np.clip(actions, space.low, space.high, out=out, casting="unsafe")
    return clipped / actions.size


# ---- what the envs returned (in the parent, after each round trip) ------------------------------


def find_nonfinite(arrays: dict, float_block: np.ndarray, obs_is_float: bool) -> list:
    """``[(env_index, what)]`` for NaN/Inf in rewards or float observations.

    Fast path: one float64 sum over ``float_block``, the contiguous float32 outputs (see
    `fleetrl.envs.worker.Layout`): finite float32 values cannot overflow a float64 sum, so the
    sum is finite exactly when every element is (~2 us for CartPole x 16, against ~9 us for
    three ``isfinite().all()``).
    """
    if np.isfinite(float_block.sum(dtype=np.float64)):
        return []
    checked = [("reward", arrays["reward"])]
    if obs_is_float:
        checked += [("observation", arrays["final_obs"]), ("reset observation", arrays["obs"])]
    found = []
    for what, values in checked:
        flat = values.reshape(len(values), -1)
        found += [(int(i), what) for i in np.flatnonzero(~np.isfinite(flat).all(axis=1))]
    return found


def find_no_legal_action(mask: np.ndarray) -> list[int]:
    """Indices of the envs whose ``mask [N, A]`` allows no action (one vectorized check per
    batched step, ~2 us for 16 envs: cheaper than one per env in the workers)."""
    legal = mask.any(axis=1)
    return [] if legal.all() else [int(i) for i in np.flatnonzero(~legal)]


BOUNDS_EVERY = 1000
"""`EnvPool` checks observations against finite Box bounds after every batched step up to this
one, then after every `BOUNDS_EVERY`-th: an env that leaves its bounds usually does so early or
often, and a check costs 6-12 us for 16 CartPoles (`find_out_of_bounds`), a few percent of a
batched step if it ran on every one."""


def next_bounds_check(step: int) -> int:
    """The pool step after ``step`` whose observations `EnvPool` checks against the bounds."""
    return step + 1 if step < BOUNDS_EVERY else (step // BOUNDS_EVERY + 1) * BOUNDS_EVERY


def observation_bounds(obs_space, pool_dtype) -> tuple[np.ndarray, np.ndarray] | None:
    """``(low, high)`` of a Box as arrays of the pool's dtype, or None when there is nothing to
    check: no finite bound, or integer observations whose dtype the bounds cover (uint8 images
    in [0, 255]). Rounding bounds and values alike to float32 keeps their order: no false
    alarms."""
    dtype = np.dtype(pool_dtype)
    low = np.broadcast_to(obs_space.low, obs_space.shape)
    high = np.broadcast_to(obs_space.high, obs_space.shape)
    if dtype.kind == "f":
        if not (np.isfinite(low).any() or np.isfinite(high).any()):
            return None
        with np.errstate(over="ignore"):  # beyond float32's range: +-inf, still in order
            return low.astype(dtype), high.astype(dtype)
    info = np.iinfo(dtype)
    if (low <= info.min).all() and (high >= info.max).all():
        return None
    low, high = (np.clip(bound, info.min, info.max).astype(dtype) for bound in (low, high))
    return low, high


def find_out_of_bounds(arrays: dict, bounds: tuple[np.ndarray, np.ndarray]):
    """``(env_index, element, value, low, high)`` for the first observation (reached, then
    reset) outside ``bounds``, or None. Vectorized over the batch: 6-12 us for 16 CartPoles."""
    low, high = bounds
    for name in ("final_obs", "obs"):
        values = arrays[name]
        # count_nonzero: ~2x faster than .any() on a small bool array
        if np.count_nonzero(values < low) or np.count_nonzero(values > high):
            outside = ((values < low) | (values > high)).reshape(len(values), -1)
            index = int(np.flatnonzero(outside.any(axis=1))[0])
            element = int(np.flatnonzero(outside[index])[0])
            flat = (values[index].reshape(-1), low.reshape(-1), high.reshape(-1))
            return (index, element, *(x[element].item() for x in flat))
    return None
