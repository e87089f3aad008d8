"""Spaces `EnvPool` adapts before batching, and action masks.

- A ``Discrete(n)`` observation becomes a one-hot float32 vector of shape ``(n,)`` (Taxi,
  FrozenLake), so that an MLP can take it.
- A ``Dict`` observation of exactly ``{"observation", "action_mask"}`` (PettingZoo's and many
  board games' convention) becomes its ``"observation"`` entry, its mask moving to
  ``info["action_mask"]``.
- An action mask is ``info["action_mask"]`` of ``reset`` and ``step`` (gymnasium's Taxi gives an
  int8 array of length 6): a ``(num_actions,)`` array, nonzero where an action is legal in the
  observation returned with it. The pool finds it in its startup probe's reset
  (`fleetrl.envs.checks.probe_env`); an env that opts out of the probe declares it with
  ``metadata["fleetrl_action_mask"] = True``.

Imported by worker processes: numpy, gymnasium and `fleetrl.envs.errors` only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from fleetrl.envs.errors import UnsupportedSpaceError

MASK_KEY = "action_mask"
"""Where an env puts its action mask: ``info[MASK_KEY]``, or the Dict observation's entry."""

DECLARE_KEY = "fleetrl_action_mask"
"""``env.metadata[DECLARE_KEY] = True``: the env has an action mask although the pool does not
probe it at startup (``metadata["fleetrl_startup_probe"] = False``)."""

DICT_KEYS = ("action_mask", "observation")


def adapt(env: Any, index: int) -> Any:
    """``env`` itself, or an `AdaptedEnv` when its observation space is Discrete or a Dict with
    an action mask. Other Dict observations are left for `checks.check_spaces` to refuse."""
    space = env.observation_space
    if isinstance(space, spaces.Dict) and MASK_KEY in space.spaces:
        if tuple(sorted(space.spaces)) != DICT_KEYS:
            raise UnsupportedSpaceError(
                f"env {index}: Dict observation space {space} has an 'action_mask' entry, so "
                "it must have exactly the keys 'observation' and 'action_mask' (other entries "
                "would be dropped); fold them into 'observation'",
                index,
            )
        check_mask_space(space[MASK_KEY], env.action_space, index)
        return AdaptedEnv(env, space["observation"], from_dict=True)
    if isinstance(space, spaces.Discrete):
        return AdaptedEnv(env, space, from_dict=False)
    return env


def check_mask_space(mask_space: Any, action_space: Any, index: int) -> None:
    """A Dict observation's mask must be one entry per Discrete action."""
    if not isinstance(action_space, spaces.Discrete):
        raise no_continuous_masks(action_space, index)
    shape = getattr(mask_space, "shape", None)
    if shape != (action_space.n,):
        raise UnsupportedSpaceError(
            f"env {index}: its action_mask space {mask_space} has shape {shape}, but its "
            f"action space {action_space} needs ({action_space.n},): one entry per action",
            index,
        )


def no_continuous_masks(action_space: Any, index: int) -> UnsupportedSpaceError:
    return UnsupportedSpaceError(
        f"env {index} returns an action mask (info['action_mask'] or a Dict observation), but "
        f"its action space {action_space} is continuous: fleetrl masks Discrete actions only. "
        "Drop the mask, or bound the actions in the env.",
        index,
    )


class AdaptedEnv:
    """An env whose observations the pool cannot store as they come: ``from_dict`` takes the
    ``"observation"`` entry and moves the mask into ``info``; a Discrete ``inner`` space
    (the observation's) is one-hot encoded. Forwards what the pool uses of an env."""

    def __init__(self, env: Any, inner: Any, from_dict: bool):
        self.env = env
        self.action_space = env.action_space
        self.from_dict = from_dict
        self.one_hot = isinstance(inner, spaces.Discrete)
        if self.one_hot:
            self.size, self.start = int(inner.n), int(inner.start)
            self.observation_space = spaces.Box(0.0, 1.0, (self.size,), np.float32)
        else:
            self.observation_space = inner

    @property
    def metadata(self) -> Any:
        return getattr(self.env, "metadata", {})

    @property
    def spec(self) -> Any:
        return getattr(self.env, "spec", None)

    @property
    def unwrapped(self) -> Any:
        return getattr(self.env, "unwrapped", self.env)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        result = self.env.reset(seed=seed, options=options)
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
            return result  # the old gym API: checks.check_reset_result says so
        return self._convert(*result)

    def step(self, action: Any):
        result = self.env.step(action)
        if not (isinstance(result, tuple) and len(result) == 5):
            return result  # checks.check_step_result says what is wrong
        obs, info = self._convert(result[0], result[4])
        return obs, result[1], result[2], result[3], info

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()

    def _convert(self, obs: Any, info: dict) -> tuple[Any, dict]:
        if self.from_dict:
            info = {**info, MASK_KEY: obs[MASK_KEY]}
            obs = obs["observation"]
        if self.one_hot:
            vector = np.zeros(self.size, np.float32)
            vector[int(obs) - self.start] = 1.0
            obs = vector
        return obs, info


# ---- masks ------------------------------------------------------------------------------------


def has_mask(env: Any, probe_info: dict | None, index: int) -> bool:
    """Whether ``env`` gives action masks: its probe reset's ``info`` had one (None: it was not
    probed), its observation carries one, or its metadata declares one."""
    if isinstance(env, AdaptedEnv) and env.from_dict:
        return True
    if probe_info is not None:
        found = MASK_KEY in probe_info
    else:
        metadata = getattr(env, "metadata", None)
        found = isinstance(metadata, dict) and metadata.get(DECLARE_KEY, False) is True
    if found and not isinstance(env.action_space, spaces.Discrete):
        raise no_continuous_masks(env.action_space, index)
    return found


def read_mask(info: Any, num_actions: int) -> np.ndarray:
    """``info["action_mask"]`` as an array of shape ``(num_actions,)``; ValueError if it is
    missing or of another shape (numpy would broadcast a mask of shape () or (1,))."""
    mask = info.get(MASK_KEY) if isinstance(info, dict) else None
    if mask is None:
        raise ValueError(
            "returned no info['action_mask'], but the env has action masks (its startup "
            "probe or metadata said so): every reset and step must return one"
        )
    mask = np.asarray(mask)
    if mask.shape != (num_actions,):
        raise ValueError(
            f"returned info['action_mask'] of shape {mask.shape}, expected ({num_actions},): "
            f"one entry per action of Discrete({num_actions})"
        )
    return mask


def legal_sample(action_space: Any, info: dict) -> Any:
    """A random action, legal under ``info``'s mask if it has one (the probe's step: an env
    may raise on a masked action). ValueError for a mask that is malformed or allows nothing."""
    if MASK_KEY not in info or not isinstance(action_space, spaces.Discrete):
        return action_space.sample()
    mask = read_mask(info, int(action_space.n)) != 0
    if not mask.any():
        raise ValueError("returned an action mask with no legal action")
    return action_space.sample(mask=mask.astype(np.int8))


def check_undeclared(info: Any, index: int) -> None:
    """ValueError for an env whose first reset returns a mask the pool did not expect (it was
    not probed and declares none): its masks would be dropped without a word."""
    if isinstance(info, dict) and MASK_KEY in info:
        raise ValueError(
            f"env {index} returned info['action_mask'], but the pool saw no action mask at "
            "startup (the env opts out of the startup probe): declare it with "
            f"metadata['{DECLARE_KEY}'] = True"
        )
