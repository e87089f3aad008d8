"""The driver: smoke runs of every preset, run directory, exact resume, no recompiles."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from fleetrl import checkpoint
from fleetrl.cli import main
from fleetrl.train import train
from tests.conftest import with_log
from tests.test_config import HOST_PRESETS, PRESETS


def checkpointing(run):
    """``run`` with a checkpoint after every iteration."""
    return dataclasses.replace(
        run, train=dataclasses.replace(run.train, checkpoint_every=run.steps_per_iteration)
    )


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# Presets whose algorithm, network and env kind another default smoke run already covers (the
# other MinAtar games, the host twins of the value family's CartPole presets, a second Atari
# game) smoke-run with -m slow, to keep the default suite within its time.
SLOW_SMOKE = {
    f"{algo}-{game}-minatar"
    for algo in ("dqn", "rainbow", "pqn")
    for game in ("space-invaders", "asterix", "freeway")
} | {
    "rainbow-cartpole-gym",
    "qr-dqn-cartpole-gym",
    "iqn-cartpole-gym",
    "m-dqn-cartpole-gym",
    "dqn-breakout",
    "rainbow-breakout",
    # combinations the contract test runs by default (tests/test_contract.py)
    "qr-dqn-cartpole",
    "rainbow-breakout-minatar",
    # the continuous family: one MuJoCo preset per algorithm runs by default
    "sac-hopper",
    "sac-walker2d",
    "sac-ant",
    "sac-humanoid",
    "td3-halfcheetah",
    "td3-walker2d",
    # distributed presets smoke-run in one process here; tests/test_distributed.py runs them
    # on Ray (their algorithms smoke-run through impala-cartpole and dqn-cartpole)
    "apex-cartpole",
    "impala-cartpole-gym",
    "ppo-vtrace-cartpole-gym",
}


def _smoke_cases():
    for preset in PRESETS + HOST_PRESETS:
        marks = [pytest.mark.slow] if preset in SLOW_SMOKE else []
        yield pytest.param(preset, marks=marks, id=preset)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("preset", list(_smoke_cases()))
def test_every_preset_smoke_runs(tiny, preset):
    run = tiny(preset)
    result = train(run)
    assert result.status in ("completed", "threshold")  # the memory task: solved at once
    assert result.eval_returns.shape == (1,)
    if run.train.eval_max_steps == 0:  # Atari's are cut at 50 steps: no episode ends (NaN)
        assert np.isfinite(result.eval_returns).all()
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


@pytest.mark.parametrize("preset", ["ppo-pendulum", "dqn-cartpole", "sac-pendulum"])
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
    # the deterministic policy on envs seeded by ``seed``: the same seed, the same episodes
    from fleetrl.restore import evaluate_run

    first, again = evaluate_run(result.run_dir, 3), evaluate_run(result.run_dir, 3)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


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


def test_resume_refuses_changed_settings_naming_them(tiny, capsys):
    run = tiny("ppo-cartpole", iterations=2)
    result = train(run)
    run_dir = str(result.run_dir)
    before = (result.run_dir / "config.yaml").read_text()
    code = main(
        ["train", "--resume", run_dir, "--algo.learning-rate", "0.5", "--algo.gamma", "0.9"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "algo.learning_rate: 0.0005 -> 0.5" in err and "algo.gamma: 0.99 -> 0.9" in err
    assert "--allow-config-changes" in err
    assert (result.run_dir / "config.yaml").read_text() == before  # nothing rewritten
    # length and cadences may change; with the flag, anything may
    spi = run.steps_per_iteration
    assert main(["train", "--resume", run_dir, "--train.total-steps", str(3 * spi)]) == 0
    code = main(
        ["train", "--resume", run_dir, "--allow-config-changes", "--algo.gamma", "0.9",
         "--train.total-steps", str(4 * spi)]
    )  # fmt: skip
    assert code == 0
    assert "gamma: 0.9" in (result.run_dir / "config.yaml").read_text()


def test_resume_falls_back_past_a_damaged_checkpoint(tiny, capsys):
    run = tiny("ppo-cartpole", iterations=3)
    run = checkpointing(run)
    result = train(run)
    saved = checkpoint.committed(result.run_dir)
    assert [p.name for p in saved[:2]] == [
        f"step_{result.env_steps}",
        "step_" + str(2 * run.steps_per_iteration),
    ]
    state = saved[0] / checkpoint.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])  # truncated
    total = str(4 * run.steps_per_iteration)
    assert main(["train", "--resume", str(result.run_dir), "--train.total-steps", total]) == 0
    err = capsys.readouterr().err
    assert str(state) in err and f"resuming from {saved[1].name}" in err
    assert list(result.run_dir.glob(f"checkpoints/{saved[0].name}.damaged-*"))
    assert checkpoint.latest(result.run_dir).name == f"step_{total}"


def test_resume_auto_starts_then_continues(tiny, tmp_path):
    run_dir = tmp_path / "auto"
    spi = 8 * 64  # ppo-cartpole: 8 envs x 64 steps
    args = [
        "train", "ppo-cartpole", "--log.run-dir", str(run_dir), "--resume", "auto",
        "--log.progress", "False", "--log.tensorboard", "False", "--train.eval-every", "0",
        "--train.log-every", str(spi), "--train.checkpoint-every", str(spi),
    ]  # fmt: skip
    assert main([*args, "--train.total-steps", str(spi)]) == 0  # starts
    assert checkpoint.latest(run_dir).name == f"step_{spi}"
    assert main([*args, "--train.total-steps", str(2 * spi)]) == 0  # continues
    assert checkpoint.latest(run_dir).name == f"step_{2 * spi}"
    steps = [r["step"] for r in records(run_dir) if "losses/policy_loss" in r]
    assert steps == [spi, 2 * spi]
    assert main(["train", "ppo-cartpole", "--resume", "auto"]) == 2  # needs --log.run-dir


def test_a_checkpoint_that_cannot_be_written_is_a_warning_then_an_error_at_the_end(
    tiny, monkeypatch, capsys
):
    run = tiny("ppo-cartpole", iterations=3)
    spi = run.steps_per_iteration
    run = checkpointing(run)
    real = checkpoint._write_file

    def disk_full_on(failing):
        def write(path, data):  # a real save, whose writes fail for the failing steps
            if failing(int(path.parent.name.split(".")[0].removeprefix("step_"))):
                raise OSError(28, "No space left on device", str(path))
            return real(path, data)

        return write

    monkeypatch.setattr(checkpoint, "_write_file", disk_full_on(lambda step: step == 2 * spi))
    result = train(run)
    assert result.status == "completed"  # the periodic failure: a warning, training went on
    err = capsys.readouterr().err
    assert "No space left on device" in err and f"step_{spi} is intact" in err  # named
    assert "bytes on disk" in err  # what it needed
    assert checkpoint.latest(result.run_dir).name == f"step_{3 * spi}"
    assert not list(result.run_dir.glob("checkpoints/*.tmp-*"))  # nothing half-written left
    monkeypatch.setattr(checkpoint, "_write_file", disk_full_on(lambda step: True))
    other_dir = str(result.run_dir.parent / "second")
    rerun = dataclasses.replace(run, log=dataclasses.replace(run.log, run_dir=other_dir))
    result = train(rerun)
    assert result.status == "unsaved" and "No space left on device" in result.detail


def test_checkpoints_from_before_the_update_guard_still_resume(tiny):
    from flax import serialization

    run = tiny("ppo-cartpole", iterations=2)
    result = train(run)
    latest = checkpoint.latest(result.run_dir)
    state = serialization.msgpack_restore((latest / checkpoint.STATE_FILE).read_bytes())
    meta = json.loads((latest / checkpoint.META_FILE).read_text())
    opt = state["carry"]["algo_state"]["opt_state"]
    # the layout before clip_or_skip: (clip_by_global_norm's empty state, adam's state)
    state["carry"]["algo_state"]["opt_state"] = {"0": {}, "1": opt["inner"]}
    checkpoint.save(result.run_dir, result.env_steps, state, meta)
    total = str(3 * run.steps_per_iteration)
    assert main(["train", "--resume", str(result.run_dir), "--train.total-steps", total]) == 0
    assert checkpoint.latest(result.run_dir).name == f"step_{total}"


def test_a_checkpoint_from_a_newer_format_is_refused_not_set_aside(tiny, capsys):
    run = tiny("ppo-cartpole", iterations=2)
    run = checkpointing(run)
    result = train(run)
    latest = checkpoint.latest(result.run_dir)
    manifest = latest / checkpoint.MANIFEST_FILE
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "format_version": 99}))
    assert main(["train", "--resume", str(result.run_dir)]) == 2
    assert "upgrade fleetrl" in capsys.readouterr().err
    assert checkpoint.latest(result.run_dir) == latest  # not set aside, not skipped


def test_a_frozen_seed_keeps_its_state_while_the_others_learn(tiny):
    """With several seeds, a seed that reached train.stop_at_return is frozen: the train call
    leaves its algorithm state as it was and updates the others."""
    from fleetrl.programs import make_init, make_train_call, seed_keys
    from fleetrl.train import build

    run = tiny("ppo-cartpole", num_seeds=2)
    env, _, algo = build(run)
    carry = make_init(algo, env)(seed_keys(run))
    call = make_train_call(algo, env, run.train.num_steps, 2, freezable=True)
    after, _ = call(carry, np.array([True, False]))
    before, later = jax.tree.leaves(carry.algo_state), jax.tree.leaves(after.algo_state)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(before, later, strict=True))
    old, new = (jax.tree.leaves(c.algo_state.params) for c in (carry, after))
    assert all(not np.array_equal(a[1], b[1]) for a, b in zip(old, new, strict=True))
    assert not np.array_equal(carry.env.key[0], after.env.key[0])  # its envs still step


def test_solved_seeds_are_recorded_once_and_dropped_below_a_new_threshold():
    from fleetrl.loop import note_solved, solved_returns

    solved, reported = note_solved([None, None, None], np.array([30.0, 10.0, 20.0]), 20.0)
    assert solved == [30.0, None, 20.0] and reported.tolist() == [30.0, 10.0, 20.0]
    solved, reported = note_solved(solved, np.array([5.0, 25.0, 8.0]), 20.0)
    assert solved == [30.0, 25.0, 20.0] and reported.tolist() == [30.0, 25.0, 20.0]
    assert note_solved([None], np.array([99.0]), None)[0] == [None]  # no threshold
    assert solved_returns([30.0, 25.0, None], 3, 26.0) == [30.0, None, None]  # raised
    assert solved_returns([30.0, None], 2, None) == [None, None]  # removed: they learn again
    assert solved_returns(None, 2, 26.0) == [None, None]  # a checkpoint from before


def test_a_seed_that_reaches_the_threshold_stops_learning_across_a_resume(tiny, tmp_path):
    """Seeds solve at different evaluations; the solved one's parameters stay as they were
    when it solved, its reported return is that evaluation's, and a run stopped and resumed
    in between ends bit for bit as the one that was not."""
    from fleetrl.programs import make_init, seed_keys
    from fleetrl.train import build

    def two_seeds(threshold: float):
        run = tiny("ppo-cartpole", num_seeds=2, iterations=4, stop_at_return=threshold)
        return dataclasses.replace(
            run, train=dataclasses.replace(run.train, checkpoint_every=run.steps_per_iteration)
        )

    spi = two_seeds(0.0).steps_per_iteration
    probe = train(with_log(two_seeds(1e9), run_dir=str(tmp_path / "p")), stop_after_steps=spi)
    low, high = sorted(probe.eval_returns.tolist())
    assert low < high, "the two seeds' first evaluations must differ for this test"
    first = int(np.argmax(probe.eval_returns))
    straight = two_seeds((low + high) / 2)
    a = train(with_log(straight, run_dir=str(tmp_path / "a")))
    assert a.eval_returns[first] == pytest.approx(high)
    env, _, algo = build(straight)
    template = {"carry": make_init(algo, env)(seed_keys(straight))}
    steps = sorted(int(p.name.split("_")[1]) for p in checkpoint.committed(a.run_dir))
    states = [checkpoint.load(a.run_dir / "checkpoints" / f"step_{n}", template)[0] for n in steps]
    solved_params = [jax.tree.leaves(st["carry"].algo_state.params) for st in states]
    for later in solved_params[1:]:
        assert all(
            np.array_equal(x[first], y[first]) for x, y in zip(solved_params[0], later, strict=True)
        )

    halves = with_log(straight, run_dir=str(tmp_path / "b"))
    stopped = train(halves, stop_after_steps=2 * spi)
    b = train(halves, resume=stopped.run_dir)
    assert b.status == a.status and b.env_steps == a.env_steps
    np.testing.assert_array_equal(a.eval_returns, b.eval_returns)
    assert final_state_bytes(a.run_dir) == final_state_bytes(b.run_dir)
    again = train(halves, resume=b.run_dir)  # a resumed run that had stopped there: no training
    assert again.env_steps == b.env_steps
    np.testing.assert_array_equal(again.eval_returns, b.eval_returns)


def test_several_seeds_without_a_threshold_train_without_the_frozen_mask(tiny):
    run = tiny("dqn-cartpole", num_seeds=2)  # no stop_at_return: the train call takes no mask
    assert run.train.stop_at_return is None
    assert train(run).status == "completed"
