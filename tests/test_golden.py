"""Golden checkpoints (reliability case C7): tiny real run directories written by the fleetrl of
each checkpoint format still load into what today's code builds from their config.yaml, with
the parameters they were made with, and still evaluate.

The goldens and the script that made them are in ``tests/data/golden/`` (``make_golden.py``).
A format bump adds ``v<N>/`` there and a migration in ``fleetrl.checkpoint.MIGRATIONS``; the
goldens of older versions are never remade.
"""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from fleetrl import checkpoint

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"


def _make_golden() -> types.ModuleType:
    # Executed from source rather than imported: an import would write __pycache__ into
    # tests/data, and nothing under it is written by the tests.
    path = GOLDEN / "make_golden.py"
    module = types.ModuleType("make_golden")
    module.__file__ = str(path)
    exec(compile(path.read_text(), path, "exec"), module.__dict__)
    return module


make_golden = _make_golden()
GOLDENS = sorted(
    (version.name, run.name)
    for version in GOLDEN.glob("v*")
    if version.is_dir()
    for run in version.iterdir()
    if (run / "config.yaml").is_file()
)


def test_every_readable_format_has_goldens():
    versions = {version for version, _ in GOLDENS}
    readable = range(checkpoint.MIN_FORMAT_VERSION, checkpoint.FORMAT_VERSION + 1)
    assert versions == {f"v{v}" for v in readable}
    assert {name for _, name in GOLDENS} >= {"ppo-cartpole", "dqn-cartpole"}


@pytest.mark.parametrize("version, name", GOLDENS)
def test_golden_loads_with_recorded_parameters(version, name):
    run_dir = GOLDEN / version / name
    record = json.loads((GOLDEN / version / f"{name}.json").read_text())
    manifest = json.loads((checkpoint.latest(run_dir) / checkpoint.MANIFEST_FILE).read_text())
    assert f"v{manifest['format_version']}" == version == f"v{record['format_version']}"
    algo_state, meta, path = make_golden.restore(run_dir)
    assert path.name == record["checkpoint"]
    assert meta["counters"]["env_steps"] == record["env_steps"]
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(algo_state)]
    assert leaves and all(np.isfinite(leaf).all() for leaf in leaves if leaf.dtype.kind == "f")
    assert make_golden.param_checksums(algo_state) == record["params"]


@pytest.mark.parametrize("version, name", GOLDENS)
def test_golden_evaluates(version, name, tmp_path):
    from fleetrl.restore import evaluate_run

    run_dir = tmp_path / name  # never write into tests/data
    shutil.copytree(GOLDEN / version / name, run_dir)
    returns, lengths = evaluate_run(run_dir, episodes=2)[:2]
    assert returns.shape == lengths.shape == (1, 2)
    assert np.isfinite(returns).all() and (lengths >= 1).all()
