"""Videos of a trained policy: episodes played in a gymnasium env, one MP4 each, and their returns.

As BatchPPO's ``visualize`` script: load a run's last checkpoint, play the deterministic policy
and write ``<outdir>/episode_<i>.mp4`` plus ``episodes.json``. A policy trained on a gymnax env
is rendered through its gymnasium twin (same dynamics, same observation layout), since gymnax
envs do not render; a run on the host gymnasium backend is rendered in its own env.

Videos are written with imageio + imageio-ffmpeg (``pip install "fleetrl[video]"``; ffmpeg
comes as a binary inside imageio-ffmpeg). Classic-control envs draw with pygame. On a Linux
machine without a display, MuJoCo renders through EGL: we set ``MUJOCO_GL=egl`` (unless set)
and SDL's dummy drivers for pygame; EGL needs Debian's ``libegl1`` and ``libgl1-mesa-dri``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fleetrl.config import ConfigError

Policy = Callable[..., np.ndarray]
"""``policy(obs[1, ...], mask=None) -> action[1, ...]``: NumPy in, NumPy out, deterministic
(`NumpyPolicy`; a policy with a ``reset()`` method is reset at each episode's start)."""

# gymnax id -> the gymnasium id with the same dynamics, observation and action layout. Checked:
# observation shapes, action spaces and time limits agree (gymnax obs are float32, as ours).
GYMNASIUM_TWINS = {
    "CartPole-v1": "CartPole-v1",
    "Acrobot-v1": "Acrobot-v1",
    "Pendulum-v1": "Pendulum-v1",
    "MountainCar-v0": "MountainCar-v0",
    "MountainCarContinuous-v0": "MountainCarContinuous-v0",
}

VIDEO_INSTALL_HINT = 'pip install "fleetrl[video]"  (imageio and imageio-ffmpeg)'


class VideoError(RuntimeError):
    """A video cannot be made: a missing package or system library; the message says the fix."""


# ---------------------------------------------------------------- environments and frames


def use_headless_rendering() -> None:
    """On Linux without a display, render off-screen: MuJoCo through EGL, pygame with SDL's
    dummy drivers (which also silence ALSA's and XDG_RUNTIME_DIR's complaints). Values already
    set win. Call it before mujoco is imported (gymnasium reads MUJOCO_GL when it creates its
    renderer, but mujoco and PyOpenGL choose their GL platform at import)."""
    if not sys.platform.startswith("linux"):
        return  # macOS and Windows render off-screen without help; EGL would not exist there
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


def gymnasium_id(env_id: str, backend: str = "gymnax") -> str:
    """The gymnasium id that renders an env of ``backend``; ConfigError if there is none."""
    if backend == "gymnasium":
        return env_id
    if backend == "gymnax":
        if env_id not in GYMNASIUM_TWINS:
            raise ConfigError(
                f"env.id: gymnax env {env_id!r} has no gymnasium twin to render it; "
                f"videos exist for {', '.join(sorted(GYMNASIUM_TWINS))}"
            )
        return GYMNASIUM_TWINS[env_id]
    raise ConfigError(f"env.backend: cannot render envs of backend {backend!r}")


def _entry_point(env_id: str) -> str:
    import gymnasium

    try:
        entry = gymnasium.spec(env_id).entry_point
    except Exception:
        return ""
    return entry if isinstance(entry, str) else f"{entry.__module__}:{entry.__qualname__}"


def make_render_env(env_id: str, env_kwargs: dict | None = None, observe: tuple[int, ...] = ()):
    """``gymnasium.make(env_id, render_mode="rgb_array", **env_kwargs)`` set up for no display.

    ``env_kwargs`` may hold ``preprocess`` (fleetrl's ``env.preprocess``, e.g. "atari"), and
    ``env_id`` may be ``module.path:ClassName``: the env is then built as the training pool
    builds it (`fleetrl.envs.host.GymnasiumFactory`). ``observe``: the observation elements
    the policy sees (``env.observe``), kept by the pool's own wrapper.
    """
    import gymnasium

    use_headless_rendering()
    kwargs = dict(env_kwargs or {})
    preprocess = kwargs.pop("preprocess", "none")
    if preprocess != "none" or ":" in env_id:
        from fleetrl.envs.host import GymnasiumFactory

        kwargs["render_mode"] = "rgb_array"
        env = GymnasiumFactory(env_id, tuple(kwargs.items()), preprocess)(0)
    else:
        env = gymnasium.make(env_id, render_mode="rgb_array", **kwargs)
    from fleetrl.envs.adapt import adapt
    from fleetrl.envs.factory import ObserveWrapper

    # as the training pool sees it: Discrete observations one-hot, a Dict's mask in info
    env = adapt(env, 0)
    return ObserveWrapper(env, observe) if observe else env


def _render(env, env_id: str) -> np.ndarray:
    """One ``[H, W, 3]`` uint8 frame; missing packages and GL libraries become VideoErrors."""
    try:
        frame = env.render()
    except Exception as error:
        raise _render_error(env_id, error) from error
    if frame is None:
        raise VideoError(f"{env_id} rendered no frame; does it support render_mode='rgb_array'?")
    return np.asarray(frame)


def _render_error(env_id: str, error: Exception) -> Exception:
    if "pygame" in str(error) or getattr(error, "name", None) == "pygame":
        return VideoError(
            f"rendering {env_id} needs pygame, which is not installed: pip install pygame ({error})"
        )
    if "mujoco" in _entry_point(env_id):
        gl = os.environ.get("MUJOCO_GL", "<unset>")
        return VideoError(
            f"MuJoCo could not render {env_id} (MUJOCO_GL={gl}): {type(error).__name__}: "
            f"{error}. Without a display, install EGL (`apt-get install libegl1 "
            f"libgl1-mesa-dri` on Debian/Ubuntu) and set MUJOCO_GL=egl."
        )
    return error


def _action_adapter(space) -> Callable[[np.ndarray], Any]:
    """Turn the policy's ``action[1, ...]`` into one gymnasium action: an int for Discrete,
    an array clipped to the box for Box (as our device envs clip)."""
    import gymnasium

    if isinstance(space, gymnasium.spaces.Discrete):
        return lambda action: int(np.asarray(action).reshape(-1)[0])
    if isinstance(space, gymnasium.spaces.Box):
        low, high = space.low, space.high

        def to_box(action):
            action = np.asarray(action, dtype=space.dtype)[0].reshape(space.shape)
            return np.clip(action, low, high)

        return to_box
    raise ConfigError(
        f"cannot play a {type(space).__name__} action space; fleetrl acts in "
        "Discrete and Box spaces"
    )


def _imageio():
    """``imageio.v2``, once imageio and its ffmpeg plugin are known to be installed."""
    # imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp (to keep Ctrl+C from it), which
    # runs Python in the forked child: in a multithreaded process (JAX's thread pools) that can
    # hang (imageio/imageio-ffmpeg#58) and makes JAX warn about os.fork(). Without preexec_fn,
    # subprocess uses vfork + exec. The cost: Ctrl+C also stops ffmpeg, so the video being
    # written at that moment is lost.
    os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the FFMPEG format needs it; fail here, clearly)
    except ImportError as error:
        raise VideoError(
            f"writing videos needs imageio and imageio-ffmpeg: {VIDEO_INSTALL_HINT} ({error})"
        ) from error
    return imageio


def _open_writer(path: Path, fps: float):
    """A streaming MP4 writer: frames go to ffmpeg as they come, none are kept."""
    # macro_block_size=2 keeps the frame size: libx264's yuv420p needs even sides only, and the
    # default of 16 would resize CartPole's 600x400 frames, with a warning.
    return _imageio().get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=2,
        ffmpeg_log_level="error",
    )


# ---------------------------------------------------------------- recording episodes


def record_episodes(
    policy: Policy,
    env_id: str,
    *,
    episodes: int,
    outdir: str | Path,
    seed: int = 0,
    prefix: str = "episode",
    env_kwargs: dict | None = None,
    max_steps: int | None = None,
    fps: float | None = None,
    observe: tuple[int, ...] = (),
) -> list[dict]:
    """Play ``episodes`` episodes of ``policy`` in gymnasium's ``env_id``, one MP4 each.

    ``policy(obs[1, *obs_shape] float32) -> action[1, ...]``. Episode ``i`` is reset with seed
    ``seed + i`` and written to ``outdir/<prefix>_<i>.mp4`` at ``fps`` (default: the env's
    ``render_fps``). A video holds ``length + 1`` frames: the reset frame, then one per step.
    An episode ends at termination, truncation (the env's time limit) or after ``max_steps``
    steps (default: the time limit, else 1000; ``finished`` is then False). ``observe``: the
    indices of the observation the policy was trained on (``env.observe``); empty for all.

    Returns ``[{"episode", "return", "length", "finished", "file"}]``, ``file`` relative to
    ``outdir``. Raises VideoError, saying what to install, when imageio, pygame or MuJoCo's GL
    libraries are missing.
    """
    _imageio()  # before any work
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    env = make_render_env(env_id, env_kwargs, observe)
    try:
        fps = fps or env.metadata.get("render_fps") or 30
        limit = max_steps or (env.spec.max_episode_steps if env.spec else None) or 1000
        to_action = _action_adapter(env.action_space)
        results = []
        for i in range(episodes):
            name = f"{prefix}_{i}.mp4"
            total, length, finished = _play(
                env, env_id, policy, to_action, seed + i, outdir / name, fps, limit
            )
            result = {"episode": i, "return": total, "length": length, "finished": finished}
            results.append(result | {"file": name})
    finally:
        env.close()
    return results


def _play(env, env_id, policy, to_action, seed, path, fps, limit) -> tuple[float, int, bool]:
    """One episode into the MP4 at ``path``: ``(return, length, finished)``."""
    obs, info = env.reset(seed=seed)
    first = _render(env, env_id)  # fails before a file exists if rendering cannot work
    total, length, finished = 0.0, 0, False
    if hasattr(policy, "reset"):  # a recurrent policy starts the episode from a fresh state
        policy.reset()
    with _open_writer(path, fps) as writer:
        writer.append_data(first)
        while not finished and length < limit:
            obs = np.asarray(obs, dtype=np.float32)
            mask = info.get("action_mask")
            if mask is None:
                action = policy(obs[None])
            else:  # an env that masks actions: the policy picks a legal one
                action = policy(obs[None], np.asarray(mask, bool)[None])
            obs, reward, terminated, truncated, info = env.step(to_action(action))
            total += float(reward)
            length += 1
            finished = bool(terminated or truncated)
            writer.append_data(_render(env, env_id))
    return total, length, finished


# ---------------------------------------------------------------- policies from run directories


def _load_run(run_dir: str | Path):
    """``(run, algo, spec, algo_state, step)`` of ``run_dir``'s newest loadable checkpoint
    (`fleetrl.restore`); ``algo_state`` keeps its leading seed axis."""
    from fleetrl.build import close_envs
    from fleetrl.restore import load_run, read_config

    run = read_config(run_dir)
    _render_target(run)  # fail before building anything
    loaded = load_run(run_dir, run, purpose="rendering", evaluation=False)
    close_envs(loaded.env, loaded.eval_env)
    return run, loaded.algo, loaded.env.spec, loaded.algo_state, loaded.step


class NumpyPolicy:
    """One seed's deterministic policy, jitted, NumPy in and out; keeps its actor state (a
    recurrent core's) from call to call: `reset` it where an episode begins.

    ``policy(obs, mask=None)`` takes a batch ``[N, *observation_shape]`` or one observation
    (then it returns one action); ``mask``: the legal actions (``[N, A]`` or ``[A]``), for envs
    that mask them. Other shapes are a ConfigError naming both forms.
    """

    def __init__(self, algo, spec, actor_params, act):
        self.algo, self.spec, self.actor_params, self.act = algo, spec, actor_params, act
        self.shape = tuple(spec.observation_shape)
        self.actor_state, self.batch = None, None

    def reset(self) -> None:
        """Start new episodes: the next call begins from a fresh actor state."""
        self.actor_state = None

    def __call__(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        obs = np.asarray(obs)
        single = obs.shape == self.shape
        if single:  # one observation: its action, without a batch axis
            obs = obs[None]
            mask = None if mask is None else np.asarray(mask, bool)[None]
        elif obs.ndim != len(self.shape) + 1 or obs.shape[1:] != self.shape:
            shape = self.shape
            raise ConfigError(
                f"{self.spec.env_id}: observation of shape {obs.shape}; the policy was trained "
                f"on observations of shape {shape}: give one as {shape} or a batch as (N, "
                f"{', '.join(map(str, shape))})"
            )
        if self.actor_state is None or self.batch != obs.shape[0]:
            import jax

            key = jax.random.PRNGKey(0)
            self.actor_state, self.batch = self.algo.init_actor(key, obs.shape[0]), obs.shape[0]
        mask = None if mask is None else np.asarray(mask, bool)
        action, self.actor_state = self.act(self.actor_params, self.actor_state, obs, mask)
        action = np.asarray(action)
        return action[0] if single else action


def make_numpy_policy(algo, spec, algo_state, seed_index: int = 0, jitted=None) -> NumpyPolicy:
    """`NumpyPolicy` of seed ``seed_index`` of ``algo_state`` (which has a leading seed axis,
    ``[num_seeds, ...]``, as in the training carry). ``jitted``: a ``jit_policy(algo)`` to
    reuse its compilation."""
    import jax

    state = jax.tree.map(lambda x: x[seed_index], algo_state)
    act = jitted or jit_policy(algo)
    return NumpyPolicy(algo, spec, algo.actor_params(state), act)


def jit_policy(algo):
    """``jax.jit((actor_params, actor_state, obs[N], mask) -> (action[N], actor_state))``:
    ``algo``'s deterministic policy."""
    import jax

    key = np.zeros((2,), np.uint32)  # unused when explore=False, but part of the contract

    def act(actor_params, actor_state, obs, mask):
        action, actor_state, _ = algo.act(actor_params, actor_state, obs, key, False, mask)
        return action, actor_state

    return jax.jit(act)


def _backend(env_config) -> str:
    """The env's backend, "auto" resolved where fleetrl.envs knows how."""
    from fleetrl import envs

    resolve = getattr(envs, "resolve_backend", None)
    return resolve(env_config) if resolve else env_config.backend


def _render_target(run) -> tuple[str, dict]:
    """``(gymnasium_id, env_kwargs)`` to play ``run``'s policy in; ConfigError if none fits."""
    backend = _backend(run.env)
    env_id = gymnasium_id(run.env.id, backend)
    kwargs = getattr(run.env, "env_kwargs", None)  # a field or a method, by version
    kwargs = dict((kwargs() if callable(kwargs) else kwargs) or {})
    if backend == "gymnax":  # a gymnax env's kwargs are its parameters, not its twin's
        kwargs = {}
    preprocess = getattr(run.env, "preprocess", "none")
    return env_id, kwargs | ({"preprocess": preprocess} if preprocess != "none" else {})


def make_policy(run_dir: str | Path) -> tuple[Policy, str, dict]:
    """``(policy, gymnasium_id, env_kwargs)`` for the last checkpoint of ``run_dir``.

    ``policy(obs[1, ...]) -> action[1, ...]`` is seed 0's deterministic policy (NumPy in and
    out); ``gymnasium_id`` is the env to play it in (the gymnax env's twin, or the run's own
    gymnasium env) and ``env_kwargs`` the keyword arguments of its ``gymnasium.make``.
    """
    run, algo, spec, algo_state, _ = _load_run(run_dir)
    return (make_numpy_policy(algo, spec, algo_state), *_render_target(run))


def visualize_run(
    run_dir: str | Path, outdir: str | Path, episodes: int | None = None, seed: int = 0
) -> list[dict]:
    """Record ``episodes`` episodes (default: the run's ``eval_episodes``, at most 5) of the last
    checkpoint of ``run_dir`` into ``outdir``: ``episode_<i>.mp4`` and ``episodes.json``
    (env id, run dir, checkpoint step and the list returned by ``record_episodes``)."""
    if episodes is not None and episodes < 1:
        raise ConfigError(f"episodes: must be >= 1, got {episodes}")
    run, algo, spec, algo_state, step = _load_run(run_dir)
    env_id, env_kwargs = _render_target(run)
    episodes = episodes or min(run.train.eval_episodes, 5)
    results = record_episodes(
        make_numpy_policy(algo, spec, algo_state),
        env_id,
        episodes=episodes,
        outdir=outdir,
        seed=seed,
        env_kwargs=env_kwargs,
        observe=tuple(getattr(run.env, "observe", ())),
    )
    summary = {
        "env_id": env_id,
        "trained_on": {"id": run.env.id, "backend": _backend(run.env)},
        "run_dir": str(run_dir),
        "checkpoint_step": step,
        "seed": seed,
        "episodes": results,
    }
    (Path(outdir) / "episodes.json").write_text(json.dumps(summary, indent=2) + "\n")
    return results


def make_training_recorder(run, algo, spec, *, episodes: int = 1, seed: int = 0):
    """``record(algo_state, step, run_dir) -> list[dict]`` for videos during training.

    Build it once per run (``run``: the RunConfig; ``algo``, ``spec``: from ``train.build``),
    then call it with the carry's ``algo_state`` (``[num_seeds, ...]``; seed 0 acts) and the
    env step count: it writes ``run_dir/videos/step_<step>/episode_<i>.mp4`` and
    ``episodes.json`` there and returns ``record_episodes``' list. The policy is jitted once for
    all calls. Raises ConfigError at build time when the env cannot be rendered, VideoError when
    a package is missing; a video that ffmpeg could not finish (Ctrl+C reaches ffmpeg too)
    only warns and returns ``[]``, so that an interrupted run still checkpoints.
    """
    env_id, env_kwargs = _render_target(run)
    jitted = jit_policy(algo)

    def record(algo_state, step: int, run_dir: str | Path) -> list[dict]:
        outdir = Path(run_dir) / "videos" / f"step_{step}"
        try:
            results = record_episodes(
                make_numpy_policy(algo, spec, algo_state, jitted=jitted),
                env_id,
                episodes=episodes,
                outdir=outdir,
                seed=seed,
                env_kwargs=env_kwargs,
                observe=tuple(getattr(run.env, "observe", ())),
            )
        except OSError as error:  # ffmpeg stopped by Ctrl+C (see _imageio), a full disk, ...
            warnings.warn(f"no video at step {step}: {error}", RuntimeWarning, stacklevel=2)
            return []
        summary = {"env_id": env_id, "step": step, "seed": seed, "episodes": results}
        (outdir / "episodes.json").write_text(json.dumps(summary, indent=2) + "\n")
        return results

    return record
