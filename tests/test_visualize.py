"""Videos: episodes into MP4s, gymnax runs rendered through their gymnasium twins, the CLI."""

import json
import sys
import warnings
from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest

from fleetrl import checkpoint, envs, visualize
from fleetrl.cli import main
from fleetrl.config import ConfigError, load_preset, preset_names
from fleetrl.train import train
from fleetrl.visualize import VideoError, record_episodes, visualize_run
from tests.conftest import tiny_run, with_log

imageio = pytest.importorskip("imageio.v2")
pytest.importorskip("imageio_ffmpeg")
pytest.importorskip("pygame")


def lean_by_angle(obs):
    """CartPole: push towards the side the pole leans to (episodes of a few dozen steps)."""
    return (obs[:, 2] > 0).astype(np.int64)


def plain_rollout(env_id, policy, seed, max_steps=None):
    """Return and length of one episode in a bare gymnasium env, no rendering."""
    env = gymnasium.make(env_id)
    obs, _ = env.reset(seed=seed)
    total, length, done = 0.0, 0, False
    while not done and (max_steps is None or length < max_steps):
        action = policy(np.asarray(obs, np.float32)[None])[0]
        if isinstance(env.action_space, gymnasium.spaces.Box):
            action = np.clip(action, env.action_space.low, env.action_space.high)
        obs, reward, terminated, truncated, _ = env.step(action)
        total, length, done = total + float(reward), length + 1, terminated or truncated
    env.close()
    return total, length


def frames_of(path):
    reader = imageio.get_reader(path)
    frames = [frame for frame in reader]  # not list(reader): its len() is inf
    reader.close()
    return frames


@pytest.mark.timeout(60)
def test_record_episodes_one_mp4_per_episode_matching_a_plain_rollout(tmp_path):
    results = record_episodes(lean_by_angle, "CartPole-v1", episodes=2, outdir=tmp_path, seed=3)
    assert [r["file"] for r in results] == ["episode_0.mp4", "episode_1.mp4"]
    for i, result in enumerate(results):
        frames = frames_of(tmp_path / result["file"])
        assert len(frames) == result["length"] + 1  # the reset frame, then one per step
        assert frames[0].shape == (400, 600, 3)  # CartPole's own size, not padded to 16
        assert (result["return"], result["length"]) == plain_rollout(
            "CartPole-v1", lean_by_angle, seed=3 + i
        )
        assert result["finished"] and result["length"] > 5


@pytest.mark.timeout(60)
def test_continuous_actions_are_clipped_and_max_steps_cuts_the_episode(tmp_path):
    push = lambda obs: np.full((1, 1), 10.0)  # outside Pendulum's [-2, 2]
    (result,) = record_episodes(
        push, "Pendulum-v1", episodes=1, outdir=tmp_path, seed=1, max_steps=5, prefix="p"
    )
    assert result["file"] == "p_0.mp4" and result["length"] == 5 and not result["finished"]
    clipped = lambda obs: np.full((1, 1), 2.0)
    assert result["return"] == pytest.approx(plain_rollout("Pendulum-v1", clipped, 1, 5)[0])
    assert len(frames_of(tmp_path / "p_0.mp4")) == 6


@pytest.mark.timeout(30)
def test_missing_imageio_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio", None)
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    with pytest.raises(VideoError, match=r'pip install "fleetrl\[video\]"'):
        record_episodes(lean_by_angle, "CartPole-v1", episodes=1, outdir=tmp_path)


@pytest.mark.timeout(30)
def test_missing_pygame_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pygame", None)
    with pytest.raises(VideoError, match="pip install pygame"):
        record_episodes(lean_by_angle, "CartPole-v1", episodes=1, outdir=tmp_path)
    assert not list(tmp_path.iterdir())  # no empty video left behind


def test_mujoco_render_failure_says_how_to_get_egl():
    # gymnasium registers the MuJoCo envs without mujoco installed, so no mujoco is needed here
    error = visualize._render_error("HalfCheetah-v5", RuntimeError("eglInitialize failed"))
    assert isinstance(error, VideoError)
    assert "apt-get install libegl1 libgl1-mesa-dri" in str(error) and "MUJOCO_GL=egl" in str(error)


def _egl_missing() -> bool:
    import ctypes.util

    return not (sys.platform.startswith("linux") and ctypes.util.find_library("EGL"))


@pytest.mark.timeout(120)
@pytest.mark.skipif(_egl_missing(), reason="needs libegl1 and libgl1-mesa-dri (.ci/run installs)")
def test_mujoco_renders_headless(tmp_path, monkeypatch):
    """A real MuJoCo frame on a machine without a display: MUJOCO_GL=egl set by fleetrl."""
    pytest.importorskip("mujoco")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    still = lambda obs: np.zeros((1, 6), np.float32)
    (result,) = record_episodes(still, "HalfCheetah-v5", episodes=1, outdir=tmp_path, max_steps=3)
    frames = frames_of(tmp_path / result["file"])
    assert len(frames) == 4 and frames[0].shape == (480, 480, 3)
    assert frames[0].std() > 0  # a picture, not a blank buffer


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="EGL defaults are Linux-only")
def test_headless_rendering_defaults_keep_what_the_user_set(monkeypatch):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL", "SDL_VIDEODRIVER", "SDL_AUDIODRIVER"):
        monkeypatch.setenv(name, "")  # so that teardown restores what was there before
        monkeypatch.delenv(name)
    monkeypatch.setenv("SDL_VIDEODRIVER", "x11")
    visualize.use_headless_rendering()
    assert visualize.os.environ["MUJOCO_GL"] == "egl"
    assert visualize.os.environ["SDL_VIDEODRIVER"] == "x11"
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("MUJOCO_GL")
    visualize.use_headless_rendering()
    assert "MUJOCO_GL" not in visualize.os.environ


@pytest.mark.parametrize(
    "preset",
    [
        name
        for name in preset_names()
        if envs.resolve_backend(load_preset(name).env) == "gymnax"
        and load_preset(name).env.id in visualize.GYMNASIUM_TWINS  # bsuite's have none
    ],
)
def test_every_gymnax_preset_has_a_gymnasium_twin_with_the_same_spaces(preset):
    run = load_preset(preset)
    spec = envs.make(run.env, num_envs=1).spec
    twin = gymnasium.make(visualize.gymnasium_id(run.env.id, envs.resolve_backend(run.env)))
    shape = (len(run.env.observe),) if run.env.observe else twin.observation_space.shape
    assert shape == spec.observation_shape  # env.observe: what the policy sees of the twin's
    if spec.action_kind == "discrete":
        assert twin.action_space.n == spec.num_actions
    else:
        assert twin.action_space.shape == spec.action_shape
        assert tuple(twin.action_space.low) == spec.action_low
        assert tuple(twin.action_space.high) == spec.action_high
    assert twin.spec.max_episode_steps == spec.max_episode_steps
    twin.close()


def test_gymnax_env_without_a_twin_is_a_config_error():
    with pytest.raises(ConfigError, match="no gymnasium twin"):
        visualize.gymnasium_id("SpaceInvaders-MinAtar")
    assert visualize.gymnasium_id("Ant-v5", backend="gymnasium") == "Ant-v5"


@pytest.mark.parametrize(
    "kwargs", [{"g": 9.0}, lambda: {"g": 9.0}], ids=["kwargs-field", "kwargs-method"]
)
def test_gymnasium_runs_render_in_their_own_env_with_their_kwargs(kwargs):
    env = SimpleNamespace(id="Pendulum-v1", backend="gymnasium", env_kwargs=kwargs)
    assert visualize._render_target(SimpleNamespace(env=env)) == ("Pendulum-v1", {"g": 9.0})


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    """A trained tiny run; the program of test_train's smoke run, cached in a full session."""
    return train(tiny_run("ppo-cartpole", tmp_path_factory.mktemp("cartpole"))).run_dir


@pytest.mark.timeout(120)
def test_visualize_run_writes_videos_and_episodes_json(cartpole_run, tmp_path):
    results = visualize_run(cartpole_run, tmp_path / "out", episodes=2, seed=7)
    summary = json.loads((tmp_path / "out" / "episodes.json").read_text())
    assert summary["episodes"] == results and len(results) == 2
    assert summary["env_id"] == "CartPole-v1" and summary["run_dir"] == str(cartpole_run)
    assert f"step_{summary['checkpoint_step']}" == checkpoint.latest(cartpole_run).name
    for result in results:
        frames = frames_of(tmp_path / "out" / result["file"])
        assert len(frames) == result["length"] + 1 and result["return"] == result["length"]
    # the same deterministic policy, played by hand in a bare env, gives the same episode
    policy, env_id, env_kwargs = visualize.make_policy(cartpole_run)
    assert (env_id, env_kwargs) == ("CartPole-v1", {})
    plain = plain_rollout(env_id, policy, seed=7 + 1)
    assert plain == (results[1]["return"], results[1]["length"])


@pytest.mark.timeout(120)
def test_cli_visualize_and_its_usage_errors(cartpole_run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["visualize", str(cartpole_run), "--outdir", str(out), "--episodes", "1"]) == 0
    printed = capsys.readouterr().out
    assert "episode 0: return" in printed and str(out) in printed
    assert (out / "episode_0.mp4").stat().st_size > 0 and (out / "episodes.json").is_file()

    missing = tmp_path / "not-a-run"
    assert main(["visualize", str(missing), "--outdir", str(out)]) == 2
    assert f"fleetrl: error: {missing / 'config.yaml'}" in capsys.readouterr().err
    no_checkpoint = tmp_path / "no-checkpoint"
    no_checkpoint.mkdir()
    (no_checkpoint / "config.yaml").write_text((cartpole_run / "config.yaml").read_text())
    assert main(["visualize", str(no_checkpoint), "--outdir", str(out)]) == 2
    assert "no committed checkpoint" in capsys.readouterr().err
    assert main(["visualize", str(cartpole_run), "--outdir", str(out), "--episodes", "0"]) == 2
    assert main(["visualize", str(cartpole_run)]) == 2  # --outdir is required


@pytest.mark.timeout(120)
def test_training_recorder_writes_videos_per_step(cartpole_run):
    run, algo, spec, algo_state, step = visualize._load_run(cartpole_run)
    record = visualize.make_training_recorder(run, algo, spec)
    for at in (step, step + 1):
        with warnings.catch_warnings():
            # ffmpeg starts without a Python preexec_fn, which JAX warns about and which can
            # hang a multithreaded process (imageio/imageio-ffmpeg#58)
            warnings.filterwarnings("error", "os.fork", RuntimeWarning)
            (result,) = record(algo_state, at, cartpole_run)
        folder = cartpole_run / "videos" / f"step_{at}"
        assert (folder / result["file"]).is_file()
        assert json.loads((folder / "episodes.json").read_text())["step"] == at


@pytest.mark.timeout(120)
def test_training_records_evaluation_videos_on_its_schedule(tmp_path):
    run = tiny_run("ppo-cartpole", tmp_path, iterations=2)
    run = with_log(run, video_every=run.steps_per_iteration)
    run_dir = train(run).run_dir
    spi = run.steps_per_iteration
    folders = {p.name for p in (run_dir / "videos").iterdir()}
    assert folders == {f"step_{spi}", f"step_{2 * spi}"}
    for folder in folders:
        summary = json.loads((run_dir / "videos" / folder / "episodes.json").read_text())
        (episode,) = summary["episodes"]
        assert (run_dir / "videos" / folder / episode["file"]).stat().st_size > 0


@pytest.mark.timeout(120)
def test_pendulum_run_renders_through_its_twin(tmp_path):
    # the program of test_train's smoke run, so in a full session its compilation is cached
    run = tiny_run("ppo-pendulum", tmp_path)
    run_dir = train(run).run_dir
    (result,) = visualize_run(run_dir, tmp_path / "out", episodes=1)
    assert result["length"] == 200 and result["finished"] and result["return"] < 0
    frames = frames_of(tmp_path / "out" / result["file"])
    assert len(frames) == 201 and frames[0].shape == (500, 500, 3)
