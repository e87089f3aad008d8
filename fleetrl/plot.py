"""Learning curves from ``metrics.jsonl``: read records, extract a metric, plot runs with CIs.

Each line of ``metrics.jsonl`` is a flat JSON object ``{"step": env_steps, "time": seconds,
"<metric>": value, ...}``; with several seeds a value is a list (one entry per seed). matplotlib
is imported inside the functions that draw, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

METRICS_FILE = "metrics.jsonl"
_RESERVED = ("step", "time")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of ``<run_dir>/metrics.jsonl``, in file order.

    Raises ValueError if the file is missing, or naming the file and line number of a malformed
    line. An unterminated last line (a writer killed mid-line) is skipped with a warning.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ValueError(f"run dir {run_dir}: no {METRICS_FILE} found at {path}")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            if lineno == len(lines):  # no trailing newline: the line was cut off by a crash
                warnings.warn(f"{path}:{lineno}: skipping incomplete last line", stacklevel=2)
                break
            raise ValueError(f"{path}:{lineno}: malformed JSON ({e})") from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
            )
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step):
            raise ValueError(f"{path}:{lineno}: missing or non-numeric 'step': {step!r}")
        records.append(record)
    return records


def _as_row(value: object, metric: str, step: object) -> np.ndarray | None:
    """One record's value as a float vector over seeds (None for a null value)."""
    if value is None:
        return None
    seq = value if isinstance(value, list) else [value]
    for v in seq:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ValueError(f"metric {metric!r} at step {step}: non-numeric value {value!r}")
    return np.array([np.nan if v is None else v for v in seq], dtype=np.float64)


def curve(records: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps ``[K]`` and values ``[K, S]`` (S seeds; a scalar value gives S = 1) of ``metric``.

    Only records that have the metric are used; null entries become NaN. Sorted by step; when a
    step occurs more than once (a run resumed from a checkpoint re-logs it) the later record wins.
    """
    by_step: dict[float, np.ndarray | None] = {}
    for r in records:
        if metric in r:
            by_step[r["step"]] = _as_row(r[metric], metric, r["step"])
    widths = {len(row) for row in by_step.values() if row is not None}
    if len(widths) > 1:
        raise ValueError(f"metric {metric!r}: records disagree on the number of seeds {widths}")
    s = widths.pop() if widths else 1
    steps = sorted(by_step)
    values = np.full((len(steps), s), np.nan)
    for i, st in enumerate(steps):
        row = by_step[st]
        if row is not None:
            values[i] = row
    return np.asarray(steps), values


def _metric_names(records: list[dict]) -> list[str]:
    return sorted({k for r in records for k in r} - set(_RESERVED))


def _mean_ci(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean over seeds and the half-width of a 95% CI (None with one seed), ignoring NaNs."""
    n = np.sum(np.isfinite(values), axis=1)
    with warnings.catch_warnings():  # all-NaN rows are dropped by the caller
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=1)
        if values.shape[1] == 1:
            return mean, None
        std = np.nanstd(values, axis=1, ddof=1)
    half = np.where(n > 1, 1.96 * std / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, half


def plot_runs(
    run_dirs: list[str | Path],
    out: str | Path,
    metric: str = "eval/episodic_return",
    title: str | None = None,
) -> Path:
    """Plot ``metric`` against environment steps for each run dir; returns the image path.

    One line per run (labelled with the dir name) is the mean over seeds, with a shaded 95%
    confidence band (mean ± 1.96·std/sqrt(S), sample std) when the run has several seeds. The
    format follows the suffix of ``out`` (e.g. ``.png``, ``.pdf``).
    """
    if not run_dirs:
        raise ValueError("plot_runs: no run dirs given")
    curves = []
    for d in run_dirs:  # read everything first so a bad run fails before any drawing
        records = read_metrics(d)
        steps, values = curve(records, metric)
        if len(steps) == 0:
            raise ValueError(
                f"run dir {d}: no record of metric {metric!r}; "
                f"metrics present: {_metric_names(records)}"
            )
        curves.append((Path(d).resolve().name, steps, values))

    # The object API with an explicit Agg canvas renders headless without switching pyplot's
    # global backend or leaking figures in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, steps, values in curves:
        mean, half = _mean_ci(values)
        keep = np.isfinite(mean)  # steps where every seed is NaN would break the line
        (line,) = ax.plot(steps[keep], mean[keep], label=label)
        if half is not None:
            ax.fill_between(
                steps[keep],
                (mean - half)[keep],
                (mean + half)[keep],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    ax.set_xlabel("environment steps")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
