"""Training on a full disk (reliability cases C5 and L4): a metrics sink that meets ENOSPC is
reported once and switched off, training goes on to its end, and nothing hangs (tensorboardX's
writer thread used to die and leave the trainer blocked in its queue forever).

The disks are real tmpfs mounts made in a child mount namespace (``unshare -m``, private
propagation), so nothing stays mounted whatever happens to the test; the run's files on them
are copied out before the namespace goes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    *("ppo-cartpole", "--train.total-steps", "60000", "--train.log-every", "2000"),
    *("--train.eval-every", "20000", "--train.checkpoint-every", "20000", "--train.seed", "0"),
    *("--log.progress", "False"),
]
TIMEOUT = 240  # s: a run takes 5-30 s; a hang (the bug) never ends

# $1 size, $2 mount point, $3 filler bytes, $4 where to copy the mount's files, then the command.
# The filler stands for the rest of a shared disk: this run writes ~450 KiB in all.
IN_NAMESPACE = """
mount -t tmpfs -o "size=$1" tmpfs "$2" || exit 97
[ "$3" = 0 ] || head -c "$3" /dev/zero > "$2/.filler"
mount_point=$2 saved=$4
shift 4
"$@"
rc=$?
rm -f "$mount_point/.filler"
cp -a "$mount_point/." "$saved"
exit $rc
"""


@pytest.fixture(scope="module")
def unshare(tmp_path_factory) -> list[str]:
    """The command that runs another in a mount namespace of its own: as root, or as a user
    mapped to root in a user namespace where those are allowed; else the test is skipped."""
    if not sys.platform.startswith("linux") or not shutil.which("unshare"):
        pytest.skip("needs Linux and unshare")
    mount = ["mount", "-t", "tmpfs", "tmpfs", str(tmp_path_factory.mktemp("probe"))]
    for prefix in (["unshare", "-m"], ["unshare", "-r", "-m"]):
        probe = subprocess.run(prefix + mount, capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    pytest.skip(f"unshare -m and mount not permitted: {probe.stderr.decode().strip()}")


def train_on_tmpfs(unshare, mount: Path, size: str, filler: int, run_dir: Path, saved: Path):
    """``fleetrl train`` into ``run_dir`` with a tmpfs of ``size`` on ``mount``; the tmpfs's
    files end up in ``saved``. Fails the test if the run does not end within `TIMEOUT`."""
    saved.mkdir()
    command = [sys.executable, "-m", "fleetrl", "train", *TRAIN, "--log.run-dir", str(run_dir)]
    proc = subprocess.Popen(
        [*unshare, "sh", "-c", IN_NAMESPACE, "sh", size, str(mount), str(filler)]
        + [str(saved), *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # one process group to kill on a hang
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"training on a full disk hung for {TIMEOUT} s:\n{out[-2000:]}{err[-4000:]}")
    assert proc.returncode != 97, f"mount failed: {err}"
    return proc.returncode, " ".join(out.split()), err  # rich wraps the summary's title


def assert_tensorboard_warned_once(err: str) -> None:
    warnings = [line for line in err.splitlines() if line.startswith("fleetrl: warning: ")]
    tensorboard = [line for line in warnings if line.startswith("fleetrl: warning: TensorBoard:")]
    assert len(tensorboard) == 1, err
    assert "No space left on device (ENOSPC)" in tensorboard[0]
    assert "training goes on without it" in tensorboard[0]
    assert "Traceback" not in err, err


def last_step(out: str, err: str, metrics: Path) -> int:
    """The last env step the run reports: its summary, its last metrics record, or (on a disk
    too full for both) a message about a step, such as a checkpoint that did not fit."""
    steps = [int(s.replace(",", "")) for s in re.findall(r"after ([\d,]+) steps per seed", out)]
    steps += [int(s.replace(",", "")) for s in re.findall(r"step ([\d,]+)", err)]
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    records = [json.loads(line) for line in lines if line.endswith("}")]
    return max(steps + [r["step"] for r in records], default=0)


def test_a_run_dir_on_a_full_disk_ends_without_hanging(unshare, tmp_path):
    """Case A: everything on a 1 MiB disk with 40 KiB free: both metrics sinks and the
    checkpoints meet ENOSPC."""
    run_dir, saved = tmp_path / "run", tmp_path / "saved"
    run_dir.mkdir()
    code, out, err = train_on_tmpfs(unshare, run_dir, "1m", 984 * 1024, run_dir, saved)
    # the final checkpoint may not fit: the run then fails (1), saying what it needed
    assert code in (0, 1), err
    assert_tensorboard_warned_once(err)
    assert err.count("warning: metrics.jsonl:") <= 1, err
    assert last_step(out, err, saved / "metrics.jsonl") >= 60000, out + err
    for checkpoint in (saved / "checkpoints").glob("step_*"):
        if re.fullmatch(r"step_\d+", checkpoint.name):  # committed: complete
            assert (checkpoint / "manifest.json").is_file()


def test_a_full_tensorboard_disk_leaves_the_rest_of_the_run_alone(unshare, tmp_path):
    """Case B: only ``tb/`` on a 16 KiB disk: the run's events outgrow it."""
    run_dir, saved = tmp_path / "run", tmp_path / "saved"
    (run_dir / "tb").mkdir(parents=True)
    # 8 KiB left: one event per call of ~15 scalars, ~14 KiB in all, outgrows it
    code, out, err = train_on_tmpfs(unshare, run_dir / "tb", "16k", 8192, run_dir, saved)
    assert code == 0, err
    assert_tensorboard_warned_once(err)
    assert err.count("fleetrl: warning:") == 1, err
    assert re.search(r"fleetrl: (completed|threshold) after", out), out
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
    assert checkpoints and all((c / "manifest.json").is_file() for c in checkpoints)
    assert last_step(out, "", run_dir / "metrics.jsonl") >= 60000
    (events,) = saved.glob("events.out.tfevents.*")
    assert 0 < events.stat().st_size <= 16 * 1024
