"""`GymnasiumFactory`: how a host env of an ``EnvConfig`` is built, in a worker process or here.

Workers unpickle the factory, so this module imports numpy and gymnasium only (no JAX: a
worker that imported JAX through its factory took ~0.7 s longer to start).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium
import numpy as np

from fleetrl.envs.observe import check_observe
from fleetrl.envs.worker import EnvFactory, register_atari

ATARI_FRAME_STACK = 4
"""Frames `_atari` stacks (``FrameStackObservation``, default reset padding)."""


@dataclasses.dataclass(frozen=True)
class GymnasiumFactory:
    """Picklable ``make_env(index)``: `EnvFactory` plus fleetrl's standard preprocessing and
    ``observe`` (`ObserveWrapper`; empty: the whole observation)."""

    env_id: str
    env_kwargs: tuple[tuple[str, Any], ...] = ()
    preprocess: str = "none"
    observe: tuple[int, ...] = ()

    @property
    def frame_stack(self) -> int:
        """Frames stacked in each observation (``EnvSpec.frame_stack``): Atari's, else 0."""
        return ATARI_FRAME_STACK if self.preprocess == "atari" else 0

    def __call__(self, index: int) -> Any:
        kwargs = dict(self.env_kwargs)
        if self.preprocess == "atari":
            env = _atari(self.env_id, kwargs)
        else:
            env = EnvFactory(self.env_id, tuple(kwargs.items()))(index)
        return ObserveWrapper(env, self.observe) if self.observe else env


def _atari(env_id: str, kwargs: dict[str, Any]) -> Any:
    """Standard Atari preprocessing (Machado et al. 2018 / CleanRL): no-op starts, frame skip 4
    with max-pooling, 84x84 grayscale, 4 stacked frames; ``ale-py`` ships the ROMs."""
    if not register_atari(env_id):
        raise ImportError(
            f"env.id: {env_id} needs the Atari emulator: pip install 'fleetrl[atari]' (ale-py)"
        )
    kwargs.setdefault("frameskip", 1)  # AtariPreprocessing skips frames itself
    env = gymnasium.make(env_id, **kwargs)
    env = gymnasium.wrappers.AtariPreprocessing(
        env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True, scale_obs=False
    )
    return gymnasium.wrappers.FrameStackObservation(env, ATARI_FRAME_STACK)


class ObserveWrapper(gymnasium.ObservationWrapper):
    """Keep the elements ``indices`` of a 1-D Box observation (``env.observe``): CartPole with
    ``(0, 2)`` sees cart position and pole angle, not the velocities. A ``ConfigError`` naming
    env.observe for an index out of range or an observation that is not a 1-D Box."""

    def __init__(self, env: gymnasium.Env, indices: tuple[int, ...]):
        super().__init__(env)
        space = env.observation_space
        shape = getattr(space, "shape", None) if isinstance(space, gymnasium.spaces.Box) else None
        env_id = str(getattr(env.spec, "id", None) or type(env).__name__)
        check_observe(indices, shape, env_id, space)
        self.indices = np.asarray(indices, np.intp)
        self.observation_space = gymnasium.spaces.Box(
            space.low[self.indices], space.high[self.indices], (len(indices),), space.dtype
        )

    def observation(self, observation: Any) -> np.ndarray:
        return np.asarray(observation)[self.indices]
