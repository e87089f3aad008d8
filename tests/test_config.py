"""Presets, overrides and the errors users see for bad input."""

import subprocess
import sys

import pytest

from fleetrl.cli import main
from fleetrl.config import ConfigError, config_from_dict, load_preset, preset_names

PRESETS = [
    "ppo-cartpole",
    "ppo-acrobot",
    "ppo-pendulum",
    "ppo-mountaincar-continuous",
    "dqn-cartpole",
    "pqn-cartpole",
    "pqn-breakout-minatar",
    "pqn-space-invaders-minatar",
    "pqn-asterix-minatar",
    "pqn-freeway-minatar",
    "rainbow-cartpole",
    "qr-dqn-cartpole",
    "iqn-cartpole",
    "m-dqn-cartpole",
    "dqn-breakout-minatar",
    "dqn-space-invaders-minatar",
    "dqn-asterix-minatar",
    "dqn-freeway-minatar",
    "rainbow-breakout-minatar",
    "rainbow-space-invaders-minatar",
    "rainbow-asterix-minatar",
    "rainbow-freeway-minatar",
    "a2c-cartpole",
    "reinforce-cartpole",
    "impala-cartpole",
    "apex-cartpole",
    "ppo-gru-memorychain",
    "ppo-lstm-cartpole-novel",
    "sac-pendulum",
    "td3-pendulum",
    "ddpg-pendulum",
]
HOST_PRESETS = [  # gymnasium envs on the host (issue 3)
    "impala-cartpole-gym",
    "ppo-vtrace-cartpole-gym",
    "ppo-cartpole-gym",
    "dqn-cartpole-gym",
    "pqn-cartpole-gym",
    "rainbow-cartpole-gym",
    "qr-dqn-cartpole-gym",
    "iqn-cartpole-gym",
    "m-dqn-cartpole-gym",
    "dqn-pong",
    "dqn-breakout",
    "rainbow-pong",
    "rainbow-breakout",
    "ppo-lunarlander",
    "ppo-halfcheetah",
    "ppo-hopper",
    "ppo-walker2d",
    "ppo-ant",
    "ppo-humanoid",
    "ppo-pong",
    "ppo-breakout",
    "ppo-taxi-masked",
    "sac-halfcheetah",
    "sac-hopper",
    "sac-walker2d",
    "sac-ant",
    "sac-humanoid",
    "td3-halfcheetah",
    "td3-hopper",
    "td3-walker2d",
]


def test_required_presets_exist_and_state_what_they_reach():
    names = preset_names()
    assert sorted(PRESETS + HOST_PRESETS) == sorted(names)  # every shipped preset smoke-runs
    for name in PRESETS + HOST_PRESETS:
        assert name in names
        run = load_preset(name)
        assert run.description and run.reaches


def test_unknown_key_names_key_and_suggests(capsys):
    assert main(["train", "ppo-cartpole", "--algo.learnin-rate", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--algo.learnin-rate" in err and "--algo.learning-rate" in err


@pytest.mark.parametrize(
    "args, field",
    [
        (["--algo.learning-rate", "-0.1"], "algo.learning_rate"),
        (["--algo.num-minibatches", "3"], "algo.num_minibatches"),
        (["--env.num-envs", "0"], "env.num_envs"),
        (["--env.num-workers", "9"], "env.num_workers"),
        (["--env.kwargs", "[1, 2]"], "env.kwargs"),
        (["--env.kwargs", "{a: [1"], "env.kwargs"),
        (["--env.step-timeout", "0"], "env.step_timeout"),
        (["--train.total-steps", "0"], "train.total_steps"),
    ],
)
def test_bad_values_name_the_field(capsys, args, field):
    assert main(["train", "ppo-cartpole", *args]) == 2
    assert field in capsys.readouterr().err


def test_action_space_the_algorithm_cannot_handle(capsys, tmp_path):
    code = main(["train", "dqn-cartpole", "--env.id", "Pendulum-v1", "--log.root", str(tmp_path)])
    assert code == 2
    assert "env.id: value-based methods need a discrete action space" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before a run directory was made


@pytest.mark.parametrize(
    "args, says",
    [
        (["--env.id", "LunarLander-v3", "--env.backend", "gymnax"], "add --env.backend gymnas"),
        (["--env.id", "CartPol-v1"], "Did you mean CartPole-v1"),
        (["--env.id", "LunarLandr-v3", "--env.backend", "auto"], "Did you mean LunarLander-v3"),
        (["--env.id", "LunarLandr-v3", "--env.backend", "gymnasium"], "Did you mean LunarLander"),
    ],
)
def test_env_id_the_backend_lacks_is_a_one_line_usage_error(capsys, tmp_path, args, says):
    assert main(["train", "ppo-cartpole", *args, "--log.root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fleetrl: error: env.id: ") and says in err
    assert len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before a run directory was made


def test_a_device_preset_given_a_gymnasium_id_runs_it_on_the_host():
    """The user changes the env id, nothing else (env.backend defaults to auto)."""
    from fleetrl import envs
    from fleetrl.cli import parse_run_config

    run = parse_run_config("ppo-cartpole", ["--env.id", "LunarLander-v3"], "fleetrl train")
    assert envs.resolve_backend(run.env) == "gymnasium"
    assert envs.resolve_backend(load_preset("ppo-cartpole").env) == "gymnax"


def test_env_the_pool_cannot_run_is_a_one_line_error(capsys, tmp_path):
    args = ["--env.backend", "gymnasium", "--env.id", "Blackjack-v1", "--log.root", str(tmp_path)]
    assert main(["train", "ppo-cartpole", *args]) == 2  # a usage error: rerunning cannot help
    err = capsys.readouterr().err
    assert "observation space Tuple" in err and "FlattenObservation" in err
    assert len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_unknown_preset_and_command(capsys):
    assert main(["train", "ppo-cartpol"]) == 2
    assert "ppo-cartpole" in capsys.readouterr().err
    assert main(["trian"]) == 2
    assert "train" in capsys.readouterr().err


def test_yaml_unknown_keys_and_types():
    base = {"algorithm": "ppo", "algo": {}, "env": {}, "train": {}}
    with pytest.raises(ConfigError, match=r"train.num_seed: unknown key. Did you mean num_seeds"):
        config_from_dict({**base, "train": {"num_seed": 2}}, "x")
    with pytest.raises(ConfigError, match=r"algo.num_epochs: expected an integer"):
        config_from_dict({**base, "algo": {"num_epochs": "four"}}, "x")
    with pytest.raises(ConfigError, match=r"algorithm: must be one of"):
        config_from_dict({**base, "algorithm": "a3c"}, "x")


def test_yaml_python_tags_are_rejected(tmp_path):
    sentinel = tmp_path / "owned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"algorithm: !!python/object/apply:os.system ['touch {sentinel}']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_preset(str(path))
    assert not sentinel.exists()


def test_presets_command_lists_one_line_each():
    out = subprocess.run(
        [sys.executable, "-m", "fleetrl", "presets"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for name in PRESETS:
        assert any(line.startswith(name + " ") for line in out.splitlines())


@pytest.mark.parametrize(
    "preset, args, field",
    [
        ("ppo-lstm-cartpole-novel", ["--algo.num-minibatches", "3"], "algo.num_minibatches"),
        ("ppo-lstm-cartpole-novel", ["--algo.burn-in", "32"], "algo.burn_in"),
        ("ppo-lstm-cartpole-novel", ["--algo.shared-torso", "True"], "algo.shared_torso"),
        ("ppo-lstm-cartpole-novel", ["--algo.core-size", "0"], "algo.core_size"),
        ("a2c-cartpole", ["--algo.gae-lambda", "1.5"], "algo.gae_lambda"),
        ("reinforce-cartpole", ["--algo.core", "lstm"], "algo.core"),
        ("reinforce-cartpole", ["--train.num-steps", "100"], "train.num_steps"),
    ],
)
def test_bad_family_settings_name_the_field(capsys, tmp_path, preset, args, field):
    """Recurrent minibatches split envs (16 is not divisible by 3); burn-in shorter than a
    rollout; REINFORCE needs rollouts as long as an episode (CartPole's 500): refused before
    any run directory exists."""
    assert main(["train", preset, *args, "--log.root", str(tmp_path)]) == 2
    assert field in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
