"""The run directory: creation, the lock that keeps two runs out of it, config and metadata."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetrl.config import ConfigError, RunConfig, dump_yaml
from fleetrl.safeio import UnsafeInputError, read_json


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsynced then renamed."""
    # a fresh name (O_EXCL), never a path a received run directory could hold a link at
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk: no half-written temporary left behind
        tmp.unlink(missing_ok=True)
        raise


def new_run_dir(run: RunConfig) -> Path:
    """``<root>/<preset>__s<seed>__<timestamp>`` (or ``log.run_dir``), created, not yet in use."""
    if run.log.run_dir:
        path = Path(run.log.run_dir)
        if (path / "config.yaml").exists():
            raise ConfigError(
                f"log.run_dir: {path} already holds a run; continue it with "
                f"`fleetrl train --resume {path}` or choose another directory"
            )
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(run.log.root) / f"{run.preset}__s{run.train.seed}__{stamp}"
        path, n = base, 1
        while path.exists():
            path, n = base.with_name(f"{base.name}-{n}"), n + 1
    try:
        path.mkdir(parents=True, exist_ok=True)
        check_writable(path)
    except OSError as error:
        field = "log.run_dir" if run.log.run_dir else "log.root"
        raise ConfigError(f"{field}: cannot write the run directory {path}: {error}") from None
    return path


def check_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``: OSError when it cannot be written. The file is
    new (O_EXCL), so a link planted in a received run directory is never written through."""
    fd, name = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    os.close(fd)
    os.unlink(name)


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock``, held while a process trains there."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        try:  # O_NOFOLLOW: a `.lock` link in a received run directory is not written through
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise ConfigError(f"{self.path}: cannot open the run's lock file: {error}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(self._fd, 64).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise ConfigError(
                f"run directory {run_dir} is in use by process {owner}; wait for it to finish"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_config_and_metadata(run_dir: Path, run: RunConfig, command: list[str]) -> None:
    import jax

    import fleetrl

    atomic_write_text(run_dir / "config.yaml", dump_yaml(run))
    metadata_path = run_dir / "metadata.json"
    history = []
    if metadata_path.exists():
        try:  # bounded: the run directory may come from elsewhere
            previous = read_json(metadata_path, 16 << 20, "metadata")
        except (UnsafeInputError, OSError) as error:
            previous = {"unreadable": str(error)[:500]}  # the run goes on; say what was there
        if not isinstance(previous, dict):
            previous = {"unreadable": f"a JSON {type(previous).__name__}, not an object"}
        earlier = previous.pop("previous", [])
        history = (earlier if isinstance(earlier, list) else []) + [previous]
    metadata = {
        "fleetrl_version": fleetrl.__version__,
        "jax_version": jax.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
        "git_sha": _git_sha(),
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "previous": history,
    }
    atomic_write_text(metadata_path, json.dumps(metadata, indent=2) + "\n")
