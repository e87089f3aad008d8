"""Programs kept on disk (fleetrl.aot): a repeated run loads them instead of tracing."""

import dataclasses

import jax
import numpy as np
import pytest

from fleetrl import aot
from fleetrl.train import train


def test_a_repeated_run_loads_its_programs_and_matches(tiny, tmp_path, monkeypatch):
    run = tiny("ppo-cartpole")
    first = train(run)
    programs = sorted(p.name for p in aot.cache_folder().iterdir())
    assert any(name.startswith("train-") for name in programs)

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced a program that is on disk")

    monkeypatch.setattr(jax.export, "export", no_tracing)
    again = dataclasses.replace(run, log=dataclasses.replace(run.log, run_dir=str(tmp_path / "b")))
    second = train(again)
    np.testing.assert_array_equal(first.eval_returns, second.eval_returns)


def test_a_damaged_program_file_is_ignored_and_rewritten(tiny, tmp_path):
    run = tiny("ppo-cartpole")
    train(run)
    for path in aot.cache_folder().iterdir():
        path.write_bytes(aot.FORMAT + b"\x05\x00\x00\x00\x00\x00\x00\x00garbage")
    again = dataclasses.replace(run, log=dataclasses.replace(run.log, run_dir=str(tmp_path / "b")))
    with pytest.warns(RuntimeWarning, match="ignoring cached program"):
        result = train(again)
    assert result.status == "completed"
    assert all(p.read_bytes()[-7:] != b"garbage" for p in aot.cache_folder().iterdir())
