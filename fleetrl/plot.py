"""Learning curves from ``metrics.jsonl``: read records, group runs of one experiment, plot
the mean over seeds with a 95% confidence band against environment steps.

Each line of ``metrics.jsonl`` is a flat JSON object ``{"step": env_steps, "time": seconds,
"<metric>": value, ...}``; with several seeds a value is a list (one entry per seed). Run dirs
whose ``config.yaml`` differ only in seeds, length-neutral cadences and logging are one
experiment: their seeds are pooled into one curve. matplotlib is imported inside the functions
that draw, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fleetrl.config import MAX_CONFIG_BYTES, ConfigError, DistConfig, load_yaml
from fleetrl.safeio import UnsafeInputError, loads_json, read_bounded

METRICS_FILE = "metrics.jsonl"
MAX_METRICS_BYTES = 256 << 20
"""Largest metrics.jsonl read (256 MiB; a 100M-step run logged every 10k steps writes ~10 MB):
a run directory may come from elsewhere, so its size is checked before reading, and every
record of it is held to be plotted."""
_RESERVED = ("step", "time")


class PlotError(ValueError):
    """A run dir, metrics file, metric or output path that cannot be plotted; names it."""


class Curve(NamedTuple):
    """One line of the plot: ``values[K, S]`` of S seeds at env steps ``steps[K]`` (NaN where a
    seed has no value), pooled from ``run_dirs``."""

    label: str
    steps: np.ndarray
    values: np.ndarray
    run_dirs: tuple[Path, ...]

    def summary(self) -> str:
        """One line: how many seeds and run dirs the curve averages, over which steps."""
        seeds, dirs = self.values.shape[1], len(self.run_dirs)
        ends = [self.steps[np.isfinite(v)].max() for v in self.values.T if np.isfinite(v).any()]
        ragged = f" (fewer seeds after {min(ends):,.0f})" if ends and min(ends) < max(ends) else ""
        return (
            f"{self.label}: mean of {seeds} seed{'s' * (seeds != 1)} from {dirs} run "
            f"dir{'s' * (dirs != 1)}, env steps {self.steps[0]:,.0f}..{self.steps[-1]:,.0f}{ragged}"
        )


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of ``<run_dir>/metrics.jsonl``, in file order.

    Raises PlotError if the file is missing, or naming the file and line number of a malformed
    line. An unterminated last line (a writer killed mid-line) is skipped with a warning.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise PlotError(f"run dir {run_dir}: no {METRICS_FILE} found at {path}")
    try:
        text = read_bounded(path, MAX_METRICS_BYTES, "metrics file").decode(errors="replace")
    except UnsafeInputError as e:
        raise PlotError(str(e)) from None
    lines = text.split("\n")
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = loads_json(line, source=f"{path}:{lineno}")
        except ValueError as e:
            if lineno == len(lines):  # no trailing newline: the line was cut off by a crash
                warnings.warn(f"{path}:{lineno}: skipping incomplete last line", stacklevel=2)
                break
            raise PlotError(f"{path}:{lineno}: malformed JSON ({e})") from None
        if not isinstance(record, dict):
            raise PlotError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step):
            raise PlotError(f"{path}:{lineno}: missing or non-numeric 'step': {step!r}")
        records.append(record)
    return records


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """``<run_dir>/config.yaml`` flattened to ``{"preset", "algorithm", "section.key": value}``
    (None when the dir has no config)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = load_yaml(read_bounded(path, MAX_CONFIG_BYTES, "config").decode(), str(path))
    except (ConfigError, UnsafeInputError, UnicodeDecodeError) as e:
        raise PlotError(str(e)) from None
    if not isinstance(data, dict):
        raise PlotError(f"{path}: expected a mapping, got {type(data).__name__}")
    flat = {"preset": data.get("preset"), "algorithm": data.get("algorithm")}
    dist = data.get("dist") or {}
    if not isinstance(dist, dict):
        raise PlotError(f"{path}: dist: expected a mapping, got {type(dist).__name__}")
    data = {**data, "dist": {**dataclasses.asdict(DistConfig()), **dist}}
    for section in ("env", "train", "algo", "log", "dist"):
        flat |= {f"{section}.{key}": value for key, value in (data.get(section) or {}).items()}
    return flat


def experiment(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a flattened config that change what a run learns: all but the seeds,
    cadences, and runtime settings (`fleetrl.config.NOT_LEARNED`); ``train.total_steps`` is
    kept, as it sets the learning-rate and exploration schedules."""
    from types import SimpleNamespace

    from fleetrl.config import not_learned
    from fleetrl.envs import resolve_backend

    ignored = not_learned("seed", "cadence", "runtime")
    kept = {k: v for k, v in config.items() if not k.startswith(ignored)}
    if "env.backend" in kept:  # where the env ran: runs from when gymnax was the default say so
        env = SimpleNamespace(id=kept.get("env.id"), backend=kept["env.backend"])
        kept["env.backend"] = resolve_backend(env)
    return kept


def _as_row(value: object, metric: str, step: object) -> np.ndarray | None:
    """One record's value as a float vector over seeds (None for a null value)."""
    if value is None:
        return None
    seq = value if isinstance(value, list) else [value]
    for v in seq:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise PlotError(f"metric {metric!r} at step {step}: non-numeric value {value!r}")
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
        raise PlotError(f"metric {metric!r}: records disagree on the number of seeds {widths}")
    s = widths.pop() if widths else 1
    steps = sorted(by_step)
    values = np.full((len(steps), s), np.nan)
    for i, st in enumerate(steps):
        row = by_step[st]
        if row is not None:
            values[i] = row
    return np.asarray(steps), values


def _load_run(run_dir: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if not run_dir.is_dir():
        problem = "not a directory" if run_dir.exists() else "no such directory"
        raise PlotError(f"run dir {run_dir}: {problem}")
    records = read_metrics(run_dir)
    if not records:
        raise PlotError(f"run dir {run_dir}: {METRICS_FILE} has no records yet")
    try:
        steps, values = curve(records, metric)
    except PlotError as e:
        raise PlotError(f"run dir {run_dir}: {e}") from None
    if len(steps) == 0:
        names = sorted({k for r in records for k in r} - set(_RESERVED))
        close = difflib.get_close_matches(metric, names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise PlotError(
            f"run dir {run_dir}: no record of metric {metric!r}.{hint} "
            f"Metrics present: {', '.join(names)}"
        )
    return steps, values


def _align(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The seeds of several runs on one grid, the union of their steps: each seed linearly
    interpolated between its own finite values, NaN outside them and at its own null entries."""
    grid = np.unique(np.concatenate([steps for steps, _ in parts]))
    columns = []
    for steps, values in parts:
        for v in values.T:
            column, ok = np.full(len(grid), np.nan), np.isfinite(v)
            if ok.any():
                inside = (grid >= steps[ok][0]) & (grid <= steps[ok][-1])
                column[inside] = np.interp(grid[inside], steps[ok], v[ok])
                column[np.isin(grid, steps[~ok])] = np.nan
            columns.append(column)
    return grid, np.stack(columns, axis=1)


def _format(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _label(config: dict[str, Any], configs: dict[Path, dict[str, Any]]) -> str:
    """The preset name plus each setting in which this experiment differs from another one of
    the same preset."""
    peers = [c for c in configs.values() if c.get("preset") == config.get("preset")]
    keys = sorted(set().union(*peers))
    differ = [k for k in keys if any(c.get(k) != config.get(k) for c in peers)]
    return " ".join([str(config.get("preset"))] + [f"{k}={_format(config.get(k))}" for k in differ])


def load_curves(
    run_dirs: list[str | Path], metric: str = "eval/episodic_return", group: bool = True
) -> list[Curve]:
    """The curves of ``metric`` to plot, in the order of ``run_dirs``.

    ``group``: run dirs of one experiment (`experiment` of their configs equal) become one curve
    over all their seeds, labelled with the preset and the settings that tell it apart from the
    others; else one curve per run dir, labelled with its name. Seeds logged at different steps
    are interpolated onto the union of their steps. Raises PlotError naming a bad dir or metric.
    """
    if not run_dirs:
        raise PlotError("no run dirs given")
    dirs = list(dict.fromkeys(Path(d) for d in run_dirs))
    parts = {d: _load_run(d, metric) for d in dirs}  # a bad run fails before any grouping
    configs = {d: read_config(d) for d in dirs} if group else {}
    experiments = {d: experiment(c) for d, c in configs.items() if c is not None}
    groups: dict[str, list[Path]] = {}
    for d in dirs:
        key = json.dumps(experiments[d], sort_keys=True, default=str) if d in experiments else d
        groups.setdefault(str(key), []).append(d)
    curves = []
    for members in groups.values():
        first = members[0]
        label = (
            _label(experiments[first], experiments)
            if first in experiments
            else first.resolve().name
        )
        steps, values = _align([parts[d] for d in members])
        curves.append(Curve(label, steps, values, tuple(members)))
    return curves


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


def _output_path(out: str | Path) -> Path:
    """``out`` checked: a format matplotlib writes, in a folder that exists or can be made."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(out)
    formats = sorted(FigureCanvasAgg.get_supported_filetypes())
    if out.suffix[1:].lower() not in formats:
        raise PlotError(
            f"--out {out}: the suffix names the image format; use one of .{', .'.join(formats)}"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # FileExistsError: a file where the folder should be
        problem = "not a directory" if isinstance(e, FileExistsError) else e.strerror
        raise PlotError(f"--out {out}: cannot create the folder {out.parent}: {problem}") from None
    return out


def draw(curves: list[Curve], out: str | Path, metric: str, title: str | None = None) -> Path:
    """Plot each curve's mean over seeds against env steps, with a shaded 95% confidence band
    (mean ± 1.96·std/sqrt(n), sample std over the n seeds with a value) when it has several
    seeds; the format follows the suffix of ``out``. Returns the image path."""
    out = _output_path(out)
    # The object API with an explicit Agg canvas renders headless without switching pyplot's
    # global backend or leaking figures in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for c in curves:
        mean, half = _mean_ci(c.values)
        keep = np.isfinite(mean)  # steps where every seed is NaN would break the line
        (line,) = ax.plot(c.steps[keep], mean[keep], label=c.label)
        if half is not None:
            low, high = (mean - half)[keep], (mean + half)[keep]
            ax.fill_between(c.steps[keep], low, high, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    try:
        fig.savefig(out, dpi=120)
    except OSError as e:
        raise PlotError(f"--out {out}: cannot write it: {e.strerror or e}") from None
    return out


def plot_runs(
    run_dirs: list[str | Path],
    out: str | Path,
    metric: str = "eval/episodic_return",
    title: str | None = None,
    group: bool = True,
) -> Path:
    """Plot ``metric`` of ``run_dirs`` (`load_curves`) into ``out`` (`draw`); returns its path."""
    return draw(load_curves(run_dirs, metric, group), out, metric, title)
