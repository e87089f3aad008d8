"""Reliability and security cases of the driver and CLI (reference/reliability_cases.md, B5):
received files that must not run code, bad input, seeds, resume rules, evaluations that do not
end, logged action clipping. Faults inside the env pool are in test_pool.py, signals in
test_signals.py, checkpoint bytes in test_checkpoint.py, full disks in test_full_disk.py."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from fleetrl import checkpoint
from fleetrl.cli import main
from fleetrl.config import ConfigError, load_preset
from fleetrl.train import train

# ---- S5: a received preset or run directory must not run code ---------------------------------


def hostile_config(tmp_path, env_id="os:system"):
    """A ppo-cartpole-gym config whose env id is a function and whose kwargs are its arguments:
    calling it would create ``owned``."""
    sentinel = tmp_path / "owned"
    text = (
        "algorithm: ppo\n"
        f"env: {{id: '{env_id}', backend: gymnasium, kwargs: '{{command: touch {sentinel}}}'}}\n"
        f"train: {{total_steps: 64, num_steps: 16, seed: 0}}\n"
        f"log: {{run_dir: {tmp_path / 'run'}, progress: false, tensorboard: false}}\n"
    )
    path = tmp_path / "received.yaml"
    path.write_text(text)
    return path, sentinel


def received_run_dir(tmp_path, env_id="os:system"):
    """A run directory as someone could send it: a config.yaml naming ``env_id``, and a
    checkpoint (an empty one: nothing may be read before the env id is refused)."""
    path, sentinel = hostile_config(tmp_path, env_id)
    run_dir = tmp_path / "received_run"
    (run_dir / "checkpoints" / "step_64").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(path.read_text())
    return run_dir, sentinel


@pytest.mark.parametrize("trusted", [False, True])
def test_a_received_preset_or_run_dir_cannot_call_a_function(tmp_path, capsys, trusted):
    """``env.id: os:system`` with the command in ``env.kwargs``: refused by every command that
    reads a config, before anything is called, even when the module is trusted."""
    preset, sentinel = hostile_config(tmp_path)
    run_dir, _ = received_run_dir(tmp_path)
    trust = ["--trust-module", "os"] if trusted else []
    commands = [
        ["train", str(preset), *trust],
        ["train", "--resume", str(run_dir), *trust],
        ["eval", str(run_dir), *trust],
        ["visualize", str(run_dir), "--outdir", str(tmp_path / "videos"), *trust],
    ]
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("fleetrl: error: env.id: os:system"), (command, err)
        expected = "not a gymnasium.Env subclass" if trusted else "--trust-module os"
        assert expected in err and "old gym" not in err, err
    assert not sentinel.exists()


def test_a_custom_env_module_needs_consent_unless_typed_on_the_command_line(tmp_path):
    """The module of a ``module:Class`` id from a file is imported only when trusted; typing
    the id on the command line is consent. A fresh process: the test session trusts the
    fault-injection envs for its own runs."""
    env = {**os.environ, "FLEETRL_TRUST_MODULES": ""}
    fake = "fleetrl.envs.fake:FaultyEnv"
    base = [sys.executable, "-m", "fleetrl", "train", "ppo-cartpole-gym", "--log.progress", "False"]
    base += ["--train.total-steps", "64", "--train.num-steps", "16", "--train.eval-episodes", "1"]
    run_dir = tmp_path / "run"
    typed = subprocess.run(
        [*base, "--env.id", fake, "--log.run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert typed.returncode == 0, typed.stderr
    again = [sys.executable, "-m", "fleetrl", "eval", str(run_dir), "--episodes", "1"]
    refused = subprocess.run(again, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 2 and "--trust-module fleetrl.envs.fake" in refused.stderr
    allowed = subprocess.run(
        [*again, "--trust-module", "fleetrl.envs.fake"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.parametrize(
    "env_id, says",
    [
        ("fleetrl.envs.fake:NoSuchEnv", "has no NoSuchEnv; its env classes: FaultyEnv"),
        ("fleetrl.envs.nosuchmodule:Env", "cannot import fleetrl.envs.nosuchmodule"),
        ("fleetrl.envs.fake:fault_count", "the callable fault_count (function)"),
        ("fleetrl.envs.fake:OldGymEnv", "old gym API"),
    ],
)
def test_a_bad_module_class_id_is_one_line(capsys, tmp_path, env_id, says):
    code = main(["train", "ppo-cartpole-gym", "--env.id", env_id, "--log.root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())


# ---- S4 / I13: bad or hostile config files -----------------------------------------------------

BOMB = """\
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
algorithm: ppo
description: *g
"""


@pytest.mark.timeout(30)
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.time()
    assert main(["train", str(path), "--log.root", str(tmp_path)]) == 2
    assert time.time() - start < 5
    assert "do not take YAML aliases" in capsys.readouterr().err


def test_an_oversized_preset_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB that take no disk
    with pytest.raises(ConfigError, match="exceeds the limit of 1,048,576 bytes"):
        load_preset(str(path))


@pytest.mark.parametrize(
    "text, says",
    [
        ("algorithm: ppo\ntrain: 5\n", "train: expected a mapping of train settings, got 5"),
        ("algorithm: ppo\nalgo: [1, 2]\n", "algo: expected a mapping of algo settings"),
        ("algorithm: [ppo]\n", "algorithm: must be one of"),
        ("algorithm: ppo\ndescription: {a: 1}\n", "description: expected a string"),
    ],
)
def test_a_preset_of_the_wrong_shape_names_the_field(tmp_path, capsys, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "args, says",
    [
        (["--algo.learning-rate", "inf"], "algo.learning_rate: must be finite, got inf"),
        (["--algo.gamma", "nan"], "algo.gamma"),
        (["--algo.hidden-sizes"], "algo.hidden_sizes: an mlp network needs at least one"),
        (["--train.seed", "-1"], "train.seed"),
        (["--env.start-timeout", "0"], "env.start_timeout"),
    ],
)
def test_bad_values_from_the_command_line_name_the_field(capsys, args, says):
    assert main(["train", "ppo-cartpole", *args]) == 2
    assert says in capsys.readouterr().err


# ---- I14: a run without a seed draws one ---------------------------------------------------------


def test_a_seedless_run_draws_a_seed_records_and_prints_it(tiny, tmp_path, capsys):
    run = tiny("ppo-cartpole", iterations=1, seed=None)
    assert load_preset("ppo-cartpole").train.seed is None
    seeds = []
    for name in ("a", "b"):
        log = dataclasses.replace(run.log, run_dir=str(tmp_path / name), progress=True)
        train(dataclasses.replace(run, log=log), console=_console())
        saved = load_preset(str(tmp_path / name / "config.yaml")).train.seed
        assert f"train.seed {saved} (drawn" in capsys.readouterr().out
        seeds.append(saved)
    assert None not in seeds and seeds[0] != seeds[1]


def _console():
    from rich.console import Console

    return Console(force_terminal=False)


# ---- C6, C11: checkpoints folder and resume rules ----------------------------------------------


def test_a_checkpoints_folder_that_cannot_be_written_fails_at_startup(tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the folder should be")
    args = ["train", "ppo-cartpole", "--log.run-dir", str(run_dir), "--resume", "auto"]
    assert main([*args, "--log.progress", "False"]) == 2
    err = capsys.readouterr().err
    assert "checkpoints: cannot write in" in err
    assert not (run_dir / "metrics.jsonl").exists()  # refused before training


def test_a_hand_edited_config_is_refused_on_resume(tiny, capsys):
    result = train(tiny("ppo-cartpole", iterations=1))
    config = result.run_dir / "config.yaml"
    config.write_text(config.read_text().replace("learning_rate: 0.0005", "learning_rate: 0.1"))
    assert main(["train", "--resume", str(result.run_dir)]) == 2
    err = capsys.readouterr().err
    assert "algo.learning_rate: 0.0005 -> 0.1" in err and "--allow-config-changes" in err
    resumed = ["train", "--resume", str(result.run_dir), "--allow-config-changes"]
    assert main([*resumed, "--train.total-steps", str(2 * result.env_steps)]) == 0


def test_a_hand_edited_config_is_refused_against_an_older_checkpoint(tiny, capsys):
    """Checkpoints from before the whole config was recorded hold config.yaml's sha256."""
    import hashlib

    from flax import serialization

    result = train(tiny("ppo-cartpole", iterations=1))
    latest = checkpoint.latest(result.run_dir)
    state = serialization.msgpack_restore((latest / checkpoint.STATE_FILE).read_bytes())
    meta = checkpoint.read_meta(latest)
    config = result.run_dir / "config.yaml"
    legacy = {k: v for k, v in meta.items() if k != "config"}
    legacy["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    checkpoint.save(result.run_dir, result.env_steps, state, legacy)
    config.write_text(config.read_text().replace("learning_rate: 0.0005", "learning_rate: 0.1"))
    assert main(["train", "--resume", str(result.run_dir)]) == 2
    assert "its sha256 is not the one the newest checkpoint recorded" in capsys.readouterr().err


def test_a_resume_from_a_periodic_checkpoint_writes_no_extra_checkpoint(tiny, monkeypatch):
    """The periodic checkpoint records the next checkpoint's step: resumed from it, the run
    does not write one again at its first call."""
    run = tiny("ppo-cartpole", iterations=3)
    spi = run.steps_per_iteration
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, checkpoint_every=2 * spi))
    result = train(run)
    final = checkpoint.latest(result.run_dir)
    assert final.name == f"step_{3 * spi}"
    checkpoint._remove_dir(final)  # resume from the periodic one, at 2 x spi
    saved, real = [], checkpoint.save
    monkeypatch.setattr(
        checkpoint, "save", lambda d, step, *a, **k: saved.append(step) or real(d, step, *a, **k)
    )
    total = str(4 * spi)
    assert main(["train", "--resume", str(result.run_dir), "--train.total-steps", total]) == 0
    assert saved == [4 * spi]  # before: 3 x spi too; and the final one once, not twice


# ---- F12: evaluations whose episodes do not end -------------------------------------------


def test_an_evaluation_that_never_ends_is_nan_with_a_warning(tiny, capsys):
    run = tiny("ppo-cartpole", iterations=2, eval_max_steps=5)  # CartPole lasts >= 8 steps
    result = train(run)
    assert result.status == "completed" and np.isnan(result.eval_returns).all()
    err = capsys.readouterr().err
    assert err.count("evaluation episodes did not end within 5 steps") == 1, err  # once
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    evals = [r for r in records if "eval/episodic_return" in r]
    assert evals and all(r["eval/episodic_return"] is None for r in evals)
    assert all(r["eval/finished_fraction"] == 0 for r in evals)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["eval_returns"] == [None]


def test_a_nan_evaluation_does_not_count_as_solved():
    from fleetrl.loop import note_solved

    solved, reported = note_solved([None], np.array([np.nan]), 500.0)
    assert solved == [None] and np.isnan(reported).all()


# ---- I4, I7 -------------------------------------------------------------------------------------


def test_device_envs_log_the_fraction_of_clipped_actions(tiny):
    result = train(tiny("ppo-pendulum", iterations=1))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    fractions = [r["train/action_clip_fraction"] for r in records if "losses/policy_loss" in r]
    assert fractions and all(0.0 <= f <= 1.0 for f in fractions)


def test_the_numpy_policy_takes_one_observation_or_a_batch_and_names_both(tiny):
    from fleetrl.visualize import _load_run, make_numpy_policy

    result = train(tiny("ppo-cartpole", iterations=1))
    _, algo, spec, state, _ = _load_run(result.run_dir)
    policy = make_numpy_policy(algo, spec, state)
    obs = np.zeros(4, np.float32)
    assert np.shape(policy(obs)) == () and policy(obs[None]).shape == (1,)
    with pytest.raises(ConfigError, match=r"shape \(3,\).*\(4,\) or a batch as \(N, 4\)"):
        policy(np.zeros(3, np.float32))


# ---- eval and visualize use the checkpoint before a damaged newest one -------------------------


def test_eval_falls_back_past_a_damaged_newest_checkpoint(tiny, capsys):
    run = tiny("ppo-cartpole", iterations=2)
    run = dataclasses.replace(
        run, train=dataclasses.replace(run.train, checkpoint_every=run.steps_per_iteration)
    )
    result = train(run)
    newest, previous = checkpoint.committed(result.run_dir)[:2]
    state = newest / checkpoint.STATE_FILE
    state.write_bytes(state.read_bytes()[:-10])
    assert main(["eval", str(result.run_dir), "--episodes", "1"]) == 0
    err = capsys.readouterr().err
    assert str(state) in err and f"evaluating {previous.name}" in err
    assert newest.exists()  # eval only reads the run: nothing renamed


# ---- env faults as the command line reports them ------------------------------------------------

FAULTY = ["train", "ppo-cartpole-gym", "--env.id", "fleetrl.envs.fake:FaultyEnv"]
SHORT = ["--train.num-steps", "16", "--train.total-steps", "256", "--log.progress", "False"]


def test_a_used_up_restart_budget_is_said_on_the_command_line(tmp_path, capsys):
    """Every rebuilt env crashes at its second step: one restart is allowed, the second crash
    ends the run (exit 1) with a message that says so (it was a note the CLI did not print)."""
    args = [*FAULTY, "--env.kwargs", "{crash_at_step: 2}", "--env.on-error", "restart"]
    args += ["--env.max-restarts", "1", "--env.num-workers", "1", "--log.root", str(tmp_path)]
    assert main([*args, *SHORT]) == 1
    err = capsys.readouterr().err
    assert "gave up after 1 worker restarts" in err and "injected crash in step 2" in err, err


@pytest.mark.timeout(60)
def test_an_env_constructor_that_hangs_in_process_hits_the_start_timeout(tmp_path, capsys):
    args = [*FAULTY, "--env.kwargs", "{init_delay: 600}", "--env.start-timeout", "1"]
    start = time.time()
    assert main([*args, *SHORT, "--log.root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--env.start-timeout" in err and time.time() - start < 30, err
    assert not any(tmp_path.iterdir())  # before a run directory


def test_a_link_in_a_received_run_dir_is_not_written_through(tiny, tmp_path, capsys):
    result = train(tiny("ppo-cartpole", iterations=1))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = result.run_dir / ".lock"
    lock.unlink()
    lock.symlink_to(victim)
    assert main(["train", "--resume", str(result.run_dir)]) == 2
    assert "lock file" in capsys.readouterr().err
    assert victim.read_text() == "precious"


def test_an_env_whose_kwargs_name_a_module_needs_consent_too():
    from fleetrl.envs import trust

    with pytest.raises(ConfigError, match="env.kwargs: env_id evil:X-v0 names the Python module"):
        trust.check_kwargs("GymV26Environment-v0", {"env_id": "evil:X-v0"})
    trust.check_kwargs("GymV26Environment-v0", {"env_id": "CartPole-v1"})  # a registered id
    trust.check_kwargs("CartPole-v1", {"env_id": "evil:X-v0"})  # a keyword of another meaning


def test_host_evaluation_envs_step_in_a_worker_and_raise_on_faults(tiny):
    """A hung evaluation step times out (a worker process), and an episode a restart cut is
    not reported as one of the policy's (faults raise: the evaluation is NaN)."""
    from fleetrl.build import _eval_env_config

    run = tiny("ppo-cartpole-gym")
    run = dataclasses.replace(run, env=dataclasses.replace(run.env, on_error="restart"))
    config = _eval_env_config(run)
    assert (config.num_workers, config.parent_steps, config.on_error) == (1, False, "raise")
