"""Tests for fleetrl.plot: reading metrics.jsonl, extracting curves, plotting runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleetrl import plot


def write_run(run_dir: Path, records: list[dict]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return run_dir


def one_seed_records() -> list[dict]:
    recs = []
    for i in range(1, 6):
        recs.append({"step": i * 1000, "time": i * 0.5, "train/loss": 1.0 / i})
        if i % 2 == 0:
            recs.append({"step": i * 1000, "time": i * 0.5, "eval/episodic_return": 10.0 * i})
    return recs


def three_seed_records() -> list[dict]:
    recs = []
    for i in range(1, 6):
        recs.append({"step": i * 1000, "time": 1.0, "train/loss": [1.0, 2.0, 3.0]})
        recs.append({"step": i * 1000, "time": 1.0, "eval/episodic_return": [i, i + 1, i + 2]})
    return recs


def test_read_and_curve_one_seed(tmp_path):
    run = write_run(tmp_path / "run_a", one_seed_records())
    records = plot.read_metrics(run)
    assert len(records) == 7
    steps, values = plot.curve(records, "eval/episodic_return")
    np.testing.assert_array_equal(steps, [2000, 4000])
    assert values.shape == (2, 1)
    np.testing.assert_array_equal(values[:, 0], [20.0, 40.0])
    steps, values = plot.curve(records, "train/loss")
    assert steps.shape == (5,) and values.shape == (5, 1)


def test_curve_three_seeds_nulls_and_nan():
    recs = three_seed_records()
    recs.append({"step": 6000, "eval/episodic_return": [None, float("nan"), 4.0]})
    recs.append({"step": 7000, "eval/episodic_return": None})
    steps, values = plot.curve(recs, "eval/episodic_return")
    np.testing.assert_array_equal(steps, [1000, 2000, 3000, 4000, 5000, 6000, 7000])
    assert values.shape == (7, 3)
    np.testing.assert_array_equal(values[0], [1, 2, 3])
    assert np.isnan(values[5, :2]).all() and values[5, 2] == 4.0
    assert np.isnan(values[6]).all()
    steps, values = plot.curve(recs, "missing/metric")
    assert steps.shape == (0,) and values.shape == (0, 1)


def test_curve_sorts_and_later_duplicate_wins():
    recs = [
        {"step": 300, "m": 3.0},
        {"step": 100, "m": 1.0},
        {"step": 200, "m": 2.0},
        {"step": 200, "m": 20.0},  # re-logged after a resume
    ]
    steps, values = plot.curve(recs, "m")
    np.testing.assert_array_equal(steps, [100, 200, 300])
    np.testing.assert_array_equal(values[:, 0], [1.0, 20.0, 3.0])


def test_curve_inconsistent_seed_count():
    with pytest.raises(ValueError, match="number of seeds"):
        plot.curve([{"step": 1, "m": [1, 2]}, {"step": 2, "m": [1, 2, 3]}], "m")


def test_plot_runs_writes_png(tmp_path):
    a = write_run(tmp_path / "ppo_1seed", one_seed_records())
    b = write_run(tmp_path / "ppo_3seeds", three_seed_records())
    out = plot.plot_runs([a, b], tmp_path / "figs" / "curve.png", title="CartPole")
    assert out == tmp_path / "figs" / "curve.png"
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    out2 = plot.plot_runs([str(b)], tmp_path / "loss.png", metric="train/loss")
    assert out2.stat().st_size > 0


def test_mean_ci():
    values = np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0], [np.nan] * 3])
    mean, half = plot._mean_ci(values)
    np.testing.assert_allclose(mean[:2], [2.0, 2.0])
    assert np.isnan(mean[2])
    np.testing.assert_allclose(half[0], 1.96 * 1.0 / np.sqrt(3))
    np.testing.assert_allclose(half[1], 1.96 * np.sqrt(2.0) / np.sqrt(2))
    mean, half = plot._mean_ci(np.array([[1.0], [2.0]]))
    assert half is None


def test_missing_metrics_file(tmp_path):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ValueError, match="no metrics.jsonl") as e:
        plot.plot_runs([tmp_path / "empty_run"], tmp_path / "x.png")
    assert "empty_run" in str(e.value)


def test_metric_absent_lists_available(tmp_path):
    run = write_run(tmp_path / "train_only", [{"step": 1, "time": 0.1, "train/loss": 0.5}])
    with pytest.raises(ValueError) as e:
        plot.plot_runs([run], tmp_path / "x.png")
    msg = str(e.value)
    assert "train_only" in msg and "eval/episodic_return" in msg and "train/loss" in msg
    assert not (tmp_path / "x.png").exists()


def test_malformed_line_names_file_and_line(tmp_path):
    run = tmp_path / "bad"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "m": 1}\n\n{"step": 2, "m": \n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:3: malformed JSON") as e:
        plot.read_metrics(run)
    assert str(run / "metrics.jsonl") in str(e.value)
    (run / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: expected a JSON object"):
        plot.read_metrics(run)
    (run / "metrics.jsonl").write_text('{"time": 1.0, "m": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:1: missing or non-numeric 'step'"):
        plot.read_metrics(run)


def test_cut_off_last_line_skipped(tmp_path):
    run = tmp_path / "crashed"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "m": 1}\n{"step": 2, "m": 2}\n{"step": 3, "m')
    with pytest.warns(UserWarning, match="incomplete last line"):
        records = plot.read_metrics(run)
    assert [r["step"] for r in records] == [1, 2]


def test_import_does_not_load_matplotlib():
    code = "import sys, fleetrl.plot; assert 'matplotlib' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
