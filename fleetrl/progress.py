"""Console output: a rich progress bar while training and a summary at the end."""

from __future__ import annotations

import numpy as np
from rich import progress as rp
from rich.table import Table


def _fmt(values) -> str:
    if values is None:
        return "-"
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.all(np.isnan(values)):
        return "-"
    return f"{np.nanmean(values):.1f}"


class Progress:
    """Env steps, steps/s, latest episodic return (train and eval) and ETA."""

    def __init__(self, console, run, start_steps: int):
        self.console = console
        total = run.num_iterations * run.steps_per_iteration
        self._bar = rp.Progress(
            rp.TextColumn(f"[bold]{run.preset}[/]"),
            rp.BarColumn(),
            rp.TextColumn("{task.completed:,}/{task.total:,} steps"),
            rp.TextColumn("{task.fields[sps]} steps/s"),
            rp.TextColumn("return {task.fields[ret]} (eval {task.fields[eval]})"),
            rp.TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self._task = self._bar.add_task(
            "train", total=total, completed=start_steps, sps="-", ret="-", eval="-"
        )
        self._bar.start()

    def update(self, steps: int, metrics: dict, eval_returns) -> None:
        self._bar.update(
            self._task,
            completed=steps,
            sps=f"{float(metrics['charts/sps']):,.0f}",
            ret=_fmt(metrics["charts/episodic_return"]),
            eval=_fmt(eval_returns),
        )

    def on_signal(self, signum: int) -> None:
        self.console.print(
            "[yellow]Stopping: writing a checkpoint after this call. "
            "Press Ctrl+C again to exit at once.[/]"
        )

    def stop(self) -> None:
        self._bar.stop()


def print_summary(console, result) -> None:
    """Final evaluation return per seed, wall time, steps/s and the run directory."""
    table = Table(title=f"fleetrl: {result.status} after {result.env_steps:,} steps per seed")
    table.add_column("seed")
    table.add_column("eval return", justify="right")
    returns = [] if result.eval_returns is None else np.asarray(result.eval_returns).tolist()
    seeds = list(getattr(result, "seeds", ())) or list(range(len(returns)))
    for seed, value in zip(seeds, returns, strict=False):
        table.add_row(str(seed), f"{value:.1f}")
    console.print(table)
    console.print(
        f"wall time {result.wall_time:.1f} s (compile {result.compile_time:.1f} s), "
        f"{result.steps_per_second:,.0f} steps/s\nrun directory: {result.run_dir}"
    )
