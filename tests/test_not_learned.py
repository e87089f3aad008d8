"""One source for the settings that do not change what a run learns (`config.NOT_LEARNED`):
the resume check, the program cache key and plot grouping read it and agree."""

from __future__ import annotations

import dataclasses

import pytest

from fleetrl import plot
from fleetrl.config import NOT_LEARNED, SHAPES_PROGRAMS, load_preset, to_dict
from fleetrl.programs import program_config
from fleetrl.train import resume_changes

CHANGES = {  # a different value for each field of NOT_LEARNED
    "seed": 7,
    "num_seeds": 3,
    "total_steps": 123_456,
    "log_every": 4096,
    "eval_every": 999,
    "eval_episodes": 3,
    "eval_max_steps": 77,
    "checkpoint_every": 555,
    "stop_at_return": 10.0,
    "xla_threads": "one",
    "call_timeout": 5.0,
    "stop_grace": 1.0,
    "step_timeout": 9.0,
    "start_timeout": 9.0,
    "max_restarts": 1,
    "on_error": "restart",
    "address": "127.0.0.1:6379",
    "sample_timeout": 5.0,
    "actor_cpus": 0.5,
}


def _changed(run, key: str):
    section, _, name = key.partition(".")
    if not name:  # a whole section
        value = dataclasses.replace(getattr(run, section), run_dir="elsewhere", progress=False)
    else:
        value = dataclasses.replace(getattr(run, section), **{name: CHANGES[name]})
    return dataclasses.replace(run, **{section: value})


def _flat(run) -> dict:
    data = to_dict(run) | {"dist": dataclasses.asdict(run.dist)}
    flat = {"algorithm": data["algorithm"]}
    for section in ("env", "train", "algo", "log", "dist"):
        flat |= {f"{section}.{k}": v for k, v in data.get(section, {}).items()}
    return flat


@pytest.mark.parametrize("key", sorted(NOT_LEARNED))
def test_every_consumer_agrees(key):
    run = load_preset("ppo-cartpole")
    other = _changed(run, key)
    kind = NOT_LEARNED[key]
    assert (resume_changes(run, other) == []) == (kind != "seed"), key
    same_experiment = plot.experiment(_flat(run)) == plot.experiment(_flat(other))
    assert same_experiment == (kind != "length"), key
    same_program = program_config(run) == program_config(other)
    assert same_program == (key not in SHAPES_PROGRAMS), key


def test_what_is_learned_is_kept_apart():
    run = load_preset("ppo-cartpole")
    other = dataclasses.replace(run, algo=dataclasses.replace(run.algo, learning_rate=1e-3))
    assert resume_changes(run, other)
    assert plot.experiment(_flat(run)) != plot.experiment(_flat(other))
    assert program_config(run) != program_config(other)
