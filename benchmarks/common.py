"""Helpers for the benchmark scripts: run fleetrl and peers in fresh processes, read results.

Peers run in their own virtual environment (their dependencies conflict with ours, see
peers/requirements.txt): set FLEETRL_PEER_PYTHON or pass --peer-python.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
DEFAULT_PEER_PYTHON = os.environ.get("FLEETRL_PEER_PYTHON", "/work/benchvenv/bin/python")

# CleanRL ppo.py's CartPole settings (also PureJaxRL's and rejax's in peers/rejax_cartpole.py)
CLEANRL_PPO = [
    "--env.num-envs",
    "4",
    "--train.num-steps",
    "128",
    "--algo.num-epochs",
    "4",
    "--algo.num-minibatches",
    "4",
    "--algo.learning-rate",
    "2.5e-4",
    "--algo.anneal-lr",
    "True",
    "--algo.gamma",
    "0.99",
    "--algo.gae-lambda",
    "0.95",
    "--algo.clip-eps",
    "0.2",
    "--algo.ent-coef",
    "0.01",
    "--algo.vf-coef",
    "0.5",
    "--algo.max-grad-norm",
    "0.5",
    "--algo.hidden-sizes",
    "64",
    "64",
    "--algo.activation",
    "tanh",
]


def steady_args(steps: int, **train: int) -> list[str]:
    """CleanRL's settings for ``steps`` env steps, one compiled call per 100 iterations, no
    evaluation until the end, no checkpoints; ``train`` adds ``--train.<key> value`` pairs."""
    args = [
        *CLEANRL_PPO,
        "--train.total-steps",
        str(steps),
        "--train.log-every",
        "51200",
        "--train.eval-every",
        "0",
        "--train.checkpoint-every",
        "0",
    ]
    for key, value in train.items():
        args += [f"--train.{key.replace('_', '-')}", str(value)]
    return args


def run_fleetrl(preset: str, args: list[str], cache_dir: str | None) -> dict:
    """Train in a fresh process; returns summary.json plus the metrics records and wall time."""
    run_dir = Path(tempfile.mkdtemp(prefix="fleetrl-bench-")) / "run"
    env = {**os.environ, "FLEETRL_CACHE_DIR": cache_dir or "off"}
    cmd = [
        sys.executable,
        "-m",
        "fleetrl",
        "train",
        preset,
        "--log.run-dir",
        str(run_dir),
        "--log.progress",
        "False",
        "--log.tensorboard",
        "False",
        *args,
    ]
    start = time.time()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["process_wall"] = time.time() - start
    summary["records"] = [
        json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    return summary


def run_peer(python: str, script: str, args: list[str]) -> dict:
    """Run a peer script from peers/ and return the JSON object of its last output line."""
    out = subprocess.run(
        [python, str(HERE / "peers" / script), *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def first_time_reaching(records: list[dict], threshold: float) -> tuple[float, int] | None:
    """(seconds since process start, env steps) of the first eval record >= threshold."""
    for record in records:
        value = record.get("eval/episodic_return")
        if value is not None:
            value = min(value) if isinstance(value, list) else value
            if value >= threshold:
                return record["time"], record["step"]
    return None


def median(values) -> float:
    return statistics.median(values)
