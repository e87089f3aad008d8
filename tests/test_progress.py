"""The console: the progress bar's fields and the end-of-run summary."""

import io
import re
from types import SimpleNamespace

import numpy as np
from rich.console import Console

from fleetrl.progress import Progress, print_summary


def terminal():
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=160, color_system=None), out


def test_progress_bar_shows_steps_speed_returns_and_eta():
    console, out = terminal()
    run = SimpleNamespace(preset="ppo-cartpole", num_iterations=4, steps_per_iteration=512)
    bar = Progress(console, run, start_steps=0)
    metrics = {"charts/sps": np.float64(123456.7), "charts/episodic_return": np.array([20.0, 23.0])}
    bar.update(1024, metrics, eval_returns=np.array([480.0, 500.0]))
    bar.stop()
    text = out.getvalue()
    assert "ppo-cartpole" in text and "1,024/2,048 steps" in text
    assert "123,457 steps/s" in text and "return 21.5 (eval 490.0)" in text
    assert re.search(r"\d+:\d\d:\d\d|-:--:--", text)  # the ETA column


def test_progress_bar_is_off_without_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    run = SimpleNamespace(preset="p", num_iterations=1, steps_per_iteration=8)
    bar = Progress(console, run, start_steps=0)
    bar.update(8, {"charts/sps": 1.0, "charts/episodic_return": None}, eval_returns=None)
    bar.stop()
    assert out.getvalue() == ""  # logs and CI output stay clean


def test_summary_lists_each_seed_wall_time_speed_and_run_directory():
    console, out = terminal()
    result = SimpleNamespace(status="completed", env_steps=40960, wall_time=12.34,
                             compile_time=3.21, steps_per_second=98765.4,
                             eval_returns=np.array([500.0, 487.5]), run_dir="runs/x")  # fmt: skip
    print_summary(console, result)
    text = out.getvalue()
    assert "completed" in text and "40,960 steps" in text  # the title wraps to the table
    assert re.search(r"0\s+.*500\.0", text) and re.search(r"1\s+.*487\.5", text)
    assert "wall time 12.3 s (compile 3.2 s), 98,765 steps/s" in text
    assert "run directory: runs/x" in text
