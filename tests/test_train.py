"""The driver: smoke runs of every preset, run directory, exact resume, no recompiles."""

import json

import jax
import numpy as np
import pytest

from fleetrl import checkpoint
from fleetrl.cli import main
from fleetrl.train import train
from tests.conftest import with_log
from tests.test_config import HOST_PRESETS, PRESETS


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("preset", PRESETS + HOST_PRESETS)
def test_every_preset_smoke_runs(tiny, preset):
    result = train(tiny(preset))
    assert result.status == "completed"
    assert result.eval_returns.shape == (1,) and np.isfinite(result.eval_returns).all()
    assert checkpoint.latest(result.run_dir).name == f"step_{result.env_steps}"


def test_run_directory_contents_and_metrics_format(tiny):
    run = tiny("ppo-cartpole", num_seeds=2)
    run = with_log(run, tensorboard=True)
    result = train(run)
    run_dir = result.run_dir
    for name in ("config.yaml", "metadata.json", "metrics.jsonl"):
        assert (run_dir / name).is_file()
    assert list((run_dir / "tb").glob("seed_*/events.out.tfevents.*"))
    manifest = json.loads((checkpoint.latest(run_dir) / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and all(
        "sha256" in f for f in manifest["files"].values()
    )
    recs = records(run_dir)
    assert all(isinstance(r["step"], int) and isinstance(r["time"], float) for r in recs)
    train_rec = next(r for r in recs if "losses/policy_loss" in r)
    assert len(train_rec["losses/policy_loss"]) == 2  # one value per seed
    eval_rec = next(r for r in recs if "eval/episodic_return" in r)
    assert len(eval_rec["eval/episodic_return"]) == 2
    assert json.loads((run_dir / "metadata.json").read_text())["fleetrl_version"]


def final_state_bytes(run_dir):
    return (checkpoint.latest(run_dir) / "state.msgpack").read_bytes()


@pytest.mark.parametrize("preset", ["ppo-pendulum", "dqn-cartpole"])
def test_resume_is_bit_exact(tiny, tmp_path, preset):
    straight = tiny(preset, iterations=4)
    straight = with_log(straight, run_dir=str(tmp_path / "straight"))
    a = train(straight)
    halves = with_log(straight, run_dir=str(tmp_path / "halves"))
    first = train(halves, stop_after_steps=a.env_steps // 2)
    assert first.status == "stopped" and first.env_steps == a.env_steps // 2
    b = train(halves, resume=first.run_dir)
    assert b.env_steps == a.env_steps
    assert final_state_bytes(a.run_dir) == final_state_bytes(b.run_dir)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "charts/sps")} for r in rs]
    assert strip(records(a.run_dir)) == strip(records(b.run_dir))


def test_corrupted_checkpoint_is_refused_naming_the_file(tiny, capsys):
    result = train(tiny("ppo-cartpole"))
    state = checkpoint.latest(result.run_dir) / "state.msgpack"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    assert main(["train", "--resume", str(result.run_dir)]) == 2
    assert str(state) in capsys.readouterr().err


def test_second_call_does_not_recompile(tiny):
    compiles = []
    listener = lambda event, duration, **kw: (
        compiles.append(event) if "backend_compile" in event else None
    )
    jax.monitoring.register_event_duration_secs_listener(listener)
    jax.config.update("jax_enable_compilation_cache", False)  # count real compiles
    try:
        counts = []
        for iterations, name in ((2, "warmup"), (2, "short"), (5, "long")):
            compiles.clear()
            run = tiny("ppo-cartpole", iterations=iterations)
            run = with_log(run, run_dir=run.log.run_dir + name)
            train(run)
            counts.append(len(compiles))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        jax.config.update("jax_enable_compilation_cache", True)
    # after one-time helpers (warmup), a run compiles its init, train call and evaluation once:
    # 5 calls compile exactly what 2 calls compile
    assert counts[1] == counts[2] == 3


def test_eval_and_plot_commands(tiny, tmp_path, capsys):
    result = train(tiny("ppo-cartpole", num_seeds=2))
    assert main(["eval", str(result.run_dir), "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "seed 0" in out and "seed 1" in out and "(3 episodes)" in out
    png = tmp_path / "curves.png"
    assert main(["plot", str(result.run_dir), "--out", str(png)]) == 0
    assert png.stat().st_size > 0


def test_run_directory_is_locked(tiny):
    from fleetrl.config import ConfigError
    from fleetrl.rundir import RunLock

    result = train(tiny("ppo-cartpole"))
    lock = RunLock(result.run_dir)
    try:
        with pytest.raises(ConfigError, match="in use by process"):
            train(tiny("ppo-cartpole"), resume=result.run_dir)
    finally:
        lock.release()


def test_ppo_shared_torso_has_one_torso_and_two_output_layers(tiny):
    import dataclasses

    from fleetrl.train import build, close_envs

    run = tiny("ppo-cartpole")
    run = dataclasses.replace(run, algo=dataclasses.replace(run.algo, shared_torso=True))
    env, eval_env, algo = build(run)
    close_envs(env, eval_env)
    params = algo.init(jax.random.PRNGKey(0)).params
    assert set(params) == {"torso", "actor", "critic"}
    assert params["actor"]["params"]["Dense_0"]["kernel"].shape == (64, env.spec.num_actions)
    assert params["critic"]["params"]["Dense_0"]["kernel"].shape == (64, 1)
    assert len(params["actor"]["params"]) == len(params["critic"]["params"]) == 1
    result = train(run)
    assert result.status == "completed"
    assert np.isfinite(result.eval_returns).all()
