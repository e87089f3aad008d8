"""Make the golden checkpoints of the current checkpoint format (reliability case C7).

A golden is a tiny real run directory, kept as the code of its day wrote it, that every later
build must still load: ``v<N>/<name>/`` holds ``config.yaml``, ``metadata.json`` and
``checkpoints/``, and ``v<N>/<name>.json`` the checksums of its parameters as loaded when it was
made (`tests/test_golden.py` compares them). Run from the repository root::

    python tests/data/golden/make_golden.py            # makes v<FORMAT_VERSION>/ if absent
    python tests/data/golden/make_golden.py --force    # remakes it

Only make the goldens of a new format version; never remake an old one, which would hide the
very incompatibility it is there to catch. Each is made by ``python -m fleetrl train`` (the
commands are in ``GOLDENS`` and recorded in the checksum file) in a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KEEP = {"config.yaml", "metadata.json", "checkpoints"}  # what loading a run directory reads

COMMON = ("--train.seed", "0", "--log.tensorboard", "False", "--log.progress", "False")
GOLDENS = {
    # 8x8 networks: a 4.5 KB state; two iterations of 8 envs x 64 steps.
    "ppo-cartpole": (
        *("ppo-cartpole", "--algo.hidden-sizes", "8", "8", "--train.total-steps", "1024"),
        *COMMON,
    ),
    # A replay buffer of 256 transitions (the least that holds one rollout of 8 envs x 32
    # steps) and 8x8 networks: a 14 KB state; learning starts at 256 steps, so the parameters
    # and the target network have been trained when the checkpoint is written.
    "dqn-cartpole": (
        *("dqn-cartpole", "--algo.hidden-sizes", "8", "8", "--algo.buffer-size", "256"),
        *("--algo.batch-size", "16", "--algo.learning-starts", "256"),
        *("--algo.gradient-steps", "2", "--algo.target-update-interval", "4"),
        *("--train.eval-episodes", "4", "--train.total-steps", "768"),
        *COMMON,
    ),
}


def restore(run_dir: Path) -> tuple[Any, dict, Path]:
    """``(algo_state, meta, checkpoint)`` of ``run_dir``'s newest checkpoint, loaded into the
    target that today's code builds from its config.yaml (as ``fleetrl eval`` does)."""
    import jax

    from fleetrl import checkpoint
    from fleetrl.algos.guard import upgrade_checkpoint
    from fleetrl.config import load_preset
    from fleetrl.programs import make_init, seed_keys
    from fleetrl.train import build, close_envs

    run = load_preset(str(run_dir / "config.yaml"))
    path = checkpoint.latest(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir}: no committed checkpoint")
    env, eval_env, algo = build(run)
    try:
        target = {"carry": jax.eval_shape(make_init(algo, env), seed_keys(run))}
        restored, meta = checkpoint.load(path, target, upgrade_checkpoint)
    finally:
        close_envs(env, eval_env)
    return restored["carry"].algo_state, meta, path


def param_checksums(algo_state: Any) -> dict[str, dict]:
    """Per parameter leaf (``params`` of the algorithm state): shape, dtype, sum, sha256."""
    import jax
    import numpy as np

    out = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(algo_state.params)[0]:
        array = np.asarray(leaf)
        out[jax.tree_util.keystr(key_path)] = {
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "sum": float(array.astype(np.float64).sum()),
            "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(),
        }
    return out


def make(name: str, folder: Path) -> None:
    """Train ``GOLDENS[name]`` into ``folder/name``, keep what a golden needs, record checksums."""
    from fleetrl import checkpoint

    run_dir = folder / name
    shutil.rmtree(run_dir, ignore_errors=True)
    # A relative run dir, from inside the folder: config.yaml then records no machine's path.
    command = [sys.executable, "-m", "fleetrl", "train", *GOLDENS[name], "--log.run-dir", name]
    subprocess.run(command, cwd=folder, check=True)
    for entry in run_dir.iterdir():
        if entry.name not in KEEP:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    algo_state, meta, path = restore(run_dir)
    record = {
        "command": ["python", "-m", "fleetrl", "train", *command[4:]],
        "format_version": checkpoint.FORMAT_VERSION,
        "checkpoint": path.name,
        "env_steps": meta["counters"]["env_steps"],
        "params": param_checksums(algo_state),
    }
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")


def main() -> None:
    from fleetrl import checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="remake an existing version")
    args = parser.parse_args()
    folder = HERE / f"v{checkpoint.FORMAT_VERSION}"
    if folder.exists() and not args.force:
        sys.exit(f"{folder} exists; goldens of a released format are never remade (--force)")
    folder.mkdir(exist_ok=True)
    for name in GOLDENS:
        make(name, folder)
    print(f"made {', '.join(GOLDENS)} in {folder}")


if __name__ == "__main__":
    main()
