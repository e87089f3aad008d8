"""Tests for fleetrl.plot: reading metrics.jsonl, extracting curves, plotting runs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleetrl import cli, plot
from fleetrl.config import RunConfig, dump_yaml, load_preset
from tests.conftest import with_log


def write_run(run_dir: Path, records: list[dict], config: RunConfig | None = None) -> Path:
    """A fake run dir: ``metrics.jsonl`` of ``records`` and, given ``config``, its config.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    if config is not None:
        (run_dir / "config.yaml").write_text(dump_yaml(with_log(config, run_dir=str(run_dir))))
    return run_dir


def cartpole(seed: int = 0, num_seeds: int = 1, **algo) -> RunConfig:
    """The ppo-cartpole preset with another seed, seed count or algo settings."""
    run = load_preset("ppo-cartpole")
    return dataclasses.replace(
        run,
        train=dataclasses.replace(run.train, seed=seed, num_seeds=num_seeds),
        algo=dataclasses.replace(run.algo, **algo),
    )


def returns(offset: float, steps=(1000, 2000, 3000)) -> list[dict]:
    """One-seed eval records: return ``step / 100 + offset`` at each step."""
    return [{"step": s, "time": 0.1, "eval/episodic_return": s / 100 + offset} for s in steps]


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


def test_seed_dirs_of_one_config_make_one_curve_with_a_band(tmp_path):
    a = write_run(tmp_path / "ppo-cartpole__s0", returns(0.0), cartpole(seed=0))
    b = write_run(tmp_path / "ppo-cartpole__s1", returns(2.0), cartpole(seed=1))
    (only,) = plot.load_curves([a, b])
    assert only.label == "ppo-cartpole" and only.run_dirs == (a, b)
    np.testing.assert_array_equal(only.steps, [1000, 2000, 3000])
    np.testing.assert_array_equal(only.values, [[10, 12], [20, 22], [30, 32]])
    mean, half = plot._mean_ci(only.values)
    np.testing.assert_allclose(mean, [11, 21, 31])
    np.testing.assert_allclose(half, 1.96 * np.sqrt(2.0) / np.sqrt(2))
    assert only.summary() == "ppo-cartpole: mean of 2 seeds from 2 run dirs, env steps 1,000..3,000"


def test_cadence_and_log_changes_still_group(tmp_path):
    other = cartpole(seed=1)
    other = dataclasses.replace(other, train=dataclasses.replace(other.train, eval_every=1500))
    a = write_run(tmp_path / "s0", returns(0.0), with_log(cartpole(seed=0), tensorboard=False))
    b = write_run(tmp_path / "s1", returns(0.0, steps=(1500, 3000, 4500)), other)
    (only,) = plot.load_curves([a, b])
    np.testing.assert_array_equal(only.steps, [1000, 1500, 2000, 3000, 4500])
    # each seed is interpolated between its own evaluations, NaN outside them
    np.testing.assert_array_equal(only.values[:, 0], [10, 15, 20, 30, np.nan])
    np.testing.assert_array_equal(only.values[:, 1], [np.nan, 15, 20, 30, 45])
    assert only.summary().endswith("env steps 1,000..4,500 (fewer seeds after 3,000)")


def test_runs_from_when_gymnax_was_the_default_backend_still_group(tmp_path):
    old = cartpole(seed=1)
    old = dataclasses.replace(old, env=dataclasses.replace(old.env, backend="gymnax"))
    a = write_run(tmp_path / "s0", returns(0.0), cartpole(seed=0))  # backend: auto
    b = write_run(tmp_path / "s1", returns(2.0), old)
    (only,) = plot.load_curves([a, b])
    assert only.run_dirs == (a, b)


def test_a_relative_dir_without_config_is_labelled_by_its_name(tmp_path, monkeypatch):
    run = write_run(tmp_path / "myrun", returns(0.0))
    monkeypatch.chdir(run)
    (only,) = plot.load_curves(["."])
    assert only.label == "myrun"


def test_align_interpolates_within_each_seed_and_keeps_null_gaps():
    a = (np.array([0.0, 10.0, 20.0]), np.array([[0.0], [np.nan], [20.0]]))
    b = (np.array([5.0, 15.0]), np.array([[1.0], [3.0]]))
    steps, values = plot._align([a, b])
    np.testing.assert_array_equal(steps, [0, 5, 10, 15, 20])
    np.testing.assert_array_equal(values[:, 0], [0, 5, np.nan, 15, 20])
    np.testing.assert_array_equal(values[:, 1], [np.nan, 1, 2, 3, np.nan])


def test_multi_seed_dir_pools_with_single_seed_dirs(tmp_path):
    three = [{"step": s, "eval/episodic_return": [s, s + 1, s + 2]} for s in (1000, 2000)]
    a = write_run(tmp_path / "s0-2", three, cartpole(seed=0, num_seeds=3))
    b = write_run(tmp_path / "s3", returns(0.0, steps=(1000, 2000)), cartpole(seed=3))
    (only,) = plot.load_curves([a, b])
    assert only.values.shape == (2, 4)
    np.testing.assert_array_equal(only.values[0], [1000, 1001, 1002, 10])


def test_different_configs_stay_separate_labelled_by_difference(tmp_path):
    dqn = load_preset("dqn-cartpole")
    dirs = [
        write_run(tmp_path / "lr3e-4_s0", returns(0.0), cartpole(0, learning_rate=3e-4)),
        write_run(tmp_path / "lr1e-3_s0", returns(5.0), cartpole(0, learning_rate=1e-3)),
        write_run(tmp_path / "lr3e-4_s1", returns(1.0), cartpole(1, learning_rate=3e-4)),
        write_run(tmp_path / "dqn", returns(9.0), dqn),
    ]
    curves = plot.load_curves(dirs)
    assert [c.label for c in curves] == [
        "ppo-cartpole algo.learning_rate=0.0003",
        "ppo-cartpole algo.learning_rate=0.001",
        "dqn-cartpole",
    ]
    assert [c.values.shape[1] for c in curves] == [2, 1, 1]
    assert curves[0].run_dirs == (dirs[0], dirs[2])


def test_no_group_and_dirs_without_config_stay_separate(tmp_path):
    a = write_run(tmp_path / "s0", returns(0.0), cartpole(seed=0))
    b = write_run(tmp_path / "s1", returns(1.0), cartpole(seed=1))
    bare = write_run(tmp_path / "bare", returns(2.0))
    curves = plot.load_curves([a, b], group=False)
    assert [(c.label, c.values.shape[1]) for c in curves] == [("s0", 1), ("s1", 1)]
    curves = plot.load_curves([a, bare, b])
    assert [(c.label, c.values.shape[1]) for c in curves] == [("ppo-cartpole", 2), ("bare", 1)]


def test_cli_plot_prints_one_line_per_curve(tmp_path, capsys):
    a = write_run(tmp_path / "s0", returns(0.0), cartpole(seed=0))
    b = write_run(tmp_path / "s1", returns(1.0), cartpole(seed=1))
    out = tmp_path / "new" / "folder" / "curves.png"  # a missing folder is created
    assert cli.main(["plot", str(a), str(b), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ppo-cartpole: mean of 2 seeds from 2 run dirs, env steps 1,000..3,000",
        f"wrote {out}",
    ]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["plot", str(a), str(b), "--out", str(out), "--no-group"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "s0: mean of 1 seed from 1 run dir, env steps 1,000..3,000",
        "s1: mean of 1 seed from 1 run dir, env steps 1,000..3,000",
    ]


def _bad_run(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """Arguments of `fleetrl plot` that are wrong in one way, and what the error must name."""
    good = write_run(tmp_path / "good", returns(0.0))
    out = str(tmp_path / "x.png")
    if case == "no such dir":
        return [str(tmp_path / "nonexistent"), "--out", out], "nonexistent: no such directory"
    if case == "no metrics file":
        (tmp_path / "fresh").mkdir()
        return [str(tmp_path / "fresh"), "--out", out], "fresh: no metrics.jsonl"
    if case == "empty metrics file":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "metrics.jsonl").write_text("")
        return [str(tmp_path / "empty"), "--out", out], "empty: metrics.jsonl has no records"
    if case == "unknown metric":
        args = [str(good), "--out", out, "--metric", "eval/episodic_retrun"]
        return args, "'eval/episodic_retrun'. Did you mean 'eval/episodic_return'?"
    if case == "corrupt middle line":
        (good / "metrics.jsonl").write_text('{"step": 1, "m": 1}\n{"step": 2, "m\n{"step": 3}\n')
        return [str(good), "--out", out, "--metric", "m"], "metrics.jsonl:2: malformed JSON"
    if case == "out folder is a file":  # a missing folder is created (test above)
        (tmp_path / "file").write_text("")
        named = f"folder {tmp_path / 'file'}: not a directory"
        return [str(good), "--out", str(tmp_path / "file" / "x.png")], named
    assert case == "out without format"
    return [str(good), "--out", str(tmp_path / "curves")], "suffix names the image format"


@pytest.mark.parametrize(
    "case",
    [
        "no such dir",
        "no metrics file",
        "empty metrics file",
        "unknown metric",
        "corrupt middle line",
        "out folder is a file",
        "out without format",
    ],
)
def test_cli_plot_usage_errors_exit_2_naming_the_problem(tmp_path, capsys, case):
    args, named = _bad_run(tmp_path, case)
    assert cli.main(["plot", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fleetrl: error: ") and err.count("\n") == 1
    assert named in err
    if case == "unknown metric":
        assert "Metrics present: eval/episodic_return" in err
    assert not (tmp_path / "x.png").exists()


def test_cli_plot_tolerates_a_cut_off_last_line(tmp_path, capsys):
    run = write_run(tmp_path / "killed", returns(0.0))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4000, "time": 0.1, "eval/epi')
    assert cli.main(["plot", str(run), "--out", str(tmp_path / "x.png")]) == 0
    captured = capsys.readouterr()
    assert "killed: mean of 1 seed from 1 run dir, env steps 1,000..3,000" in captured.out
    assert "metrics.jsonl:4: skipping incomplete last line" in captured.err
