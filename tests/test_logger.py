"""metrics.jsonl and TensorBoard across a resume: later records dropped, a cut-off or damaged
line survived, TensorBoard told to discard the dropped steps."""

import errno
import json
import os
import re
import socket
import struct
import time

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from fleetrl import logger as logger_module
from fleetrl.logger import EventFile, RunLogger


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_drops_later_records_and_a_cut_off_last_line(tmp_path, capsys):
    logger = RunLogger(tmp_path, num_seeds=1, tensorboard=False)
    for step in (100, 200, 300):
        logger.write(step, {"charts/sps": 1.0})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 400, "ti')  # killed mid-write
    logger = RunLogger(tmp_path, num_seeds=1, tensorboard=False, resume_step=200)
    logger.write(300, {"charts/sps": 2.0})
    logger.close()
    assert [(r["step"], r["charts/sps"]) for r in records(tmp_path / "metrics.jsonl")] == [
        (100, 1.0),
        (200, 1.0),
        (300, 2.0),
    ]
    assert "metrics.jsonl:4: dropping a cut-off record" in capsys.readouterr().err


def test_resume_keeps_a_copy_of_a_damaged_file(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    damaged = '{"step": 100}\nnot json\n7\n{"step": 200}\n'
    path.write_text(damaged)
    RunLogger(tmp_path, num_seeds=1, tensorboard=False, resume_step=200).close()
    assert records(path) == [{"step": 100}, {"step": 200}]
    (copy,) = tmp_path.glob("metrics.jsonl.damaged-*")
    assert copy.read_text() == damaged
    assert "lines [2, 3] are not JSON records" in capsys.readouterr().err


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: independent of the writer's table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_reference_value():
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720, appendix B.4


def events(directory, check_crc=True):
    """Every event in the TFRecord files of ``directory``, oldest file first; each record's
    length and data checked against their masked crc32c."""
    out = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            header = data[at : at + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
            body = data[at + 12 : at + 12 + length]
            (body_crc,) = struct.unpack("<I", data[at + 12 + length : at + 16 + length])
            if check_crc:
                assert (header_crc, body_crc) == (masked(crc32c(header)), masked(crc32c(body)))
            event = event_pb2.Event()
            event.ParseFromString(body)
            out.append(event)
            at += 16 + length
    return out


def scalars(written):
    return [(e.step, v.tag, v.simple_value) for e in written for v in e.summary.value]


def tensorboard_curve(written, tag):
    """The points TensorBoard shows for ``tag``: its EventAccumulator, on a SessionLog.START,
    drops the points seen so far whose step is at or past the START's step."""
    points = []
    for event in written:
        if event.session_log.status == event_pb2.SessionLog.START:
            points = [(step, value) for step, value in points if step < event.step]
        points += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return points


def test_tensorboard_curves_continue_from_the_resumed_step(tmp_path):
    logger = RunLogger(tmp_path, num_seeds=2, tensorboard=True)
    for step in (100, 200, 300):
        logger.write(step, {"charts/sps": [1.0, 2.0]})
    logger.close()
    logger = RunLogger(tmp_path, num_seeds=2, tensorboard=True, resume_step=200)
    logger.write(300, {"charts/sps": [3.0, 4.0]})
    logger.close()
    for seed, value in ((0, 3.0), (1, 4.0)):
        written = events(tmp_path / "tb" / f"seed_{seed}")
        # TensorBoard discards the events after a SessionLog.START at the purge step
        starts = [e.step for e in written if e.session_log.status == event_pb2.SessionLog.START]
        assert starts == [201]  # the point at the resumed step stays: the checkpoint has it
        assert scalars(written)[-1] == (300, "charts/sps", value)
        curve = tensorboard_curve(written, "charts/sps")
        assert curve == [(100, value - 2), (200, value - 2), (300, value)]


def test_event_files_read_back_as_written(tmp_path):
    logger = RunLogger(tmp_path, num_seeds=1, tensorboard=True)
    logger.write(100, {"charts/sps": 5.0, "losses/value": float("nan"), "eval/x y": 2})
    logger.write(200, {"charts/sps": np.float32(6.5)})
    logger.close()
    (path,) = (tmp_path / "tb").iterdir()
    assert re.fullmatch(
        rf"events\.out\.tfevents\.\d{{10}}\.{re.escape(socket.gethostname())}", path.name
    )
    written = events(tmp_path / "tb")
    assert written[0].file_version == "brain.Event:2" and written[0].step == 0
    # a non-finite value stays out of TensorBoard; a tag is cleaned as tensorboardX cleans it
    assert scalars(written) == [
        (100, "charts/sps", 5.0),
        (100, "eval/x_y", 2.0),
        (200, "charts/sps", 6.5),
    ]
    assert all(e.wall_time > 0 for e in written)


def test_event_files_match_tensorboardX(tmp_path):
    """The same events as tensorboardX's SummaryWriter (which TensorBoard reads), wall times
    aside: a file_version first, the purge pair, then the same points (ours: one event per
    step holding its scalars)."""
    from tensorboardX import SummaryWriter

    reference = SummaryWriter(str(tmp_path / "tensorboardX"), purge_step=200)
    ours = EventFile(tmp_path / "ours", purge_step=200)
    for step, value in ((200, 1.5), (300, -2.0)):
        reference.add_scalar("charts/sps", value, step)
        reference.add_scalar("losses/a b", value * 2, step)
        ours.add_scalars(step, {"charts/sps": value, "losses/a b": value * 2})
    reference.close()
    ours.close()
    expected, got = events(tmp_path / "tensorboardX"), events(tmp_path / "ours")
    for event in expected + got:
        event.wall_time = 0
    assert [e.SerializeToString() for e in got[:3]] == [e.SerializeToString() for e in expected[:3]]
    assert scalars(got) == scalars(expected) and len(scalars(got)) == 4
    assert len(got) == 5


def test_a_resume_within_the_same_second_keeps_the_older_event_file(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 1700000000.25)
    EventFile(tmp_path, None).close()
    EventFile(tmp_path, 0).close()
    names = sorted(p.name for p in tmp_path.iterdir())
    stem = f"events.out.tfevents.1700000000.{socket.gethostname()}"
    assert names == [stem, f"{stem}.1"]
    assert [e.session_log.status for e in events(tmp_path)][-1] == event_pb2.SessionLog.START


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("fleetrl: warning:")]


def test_a_full_disk_under_metrics_jsonl_warns_once_and_tensorboard_goes_on(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    logger = RunLogger(tmp_path, num_seeds=1, tensorboard=True)
    for step in (100, 200, 300):
        logger.write(step, {"charts/sps": step / 100})
    logger.close()
    logger.close()
    (line,) = warnings(capsys.readouterr().err)
    assert "metrics.jsonl: cannot write" in line and str(tmp_path / "metrics.jsonl") in line
    assert "No space left on device (ENOSPC)" in line and "training goes on" in line
    assert scalars(events(tmp_path / "tb")) == [(s, "charts/sps", s / 100) for s in (100, 200, 300)]


def fail_with_enospc(event_file):
    event_file._file.close()
    event_file._file = open("/dev/full", "wb")


def fail_in_protobuf(event_file):
    event_file.add_scalars = lambda step, scalars: event_pb2.Event(step="not a step")


@pytest.mark.parametrize("fail", [fail_with_enospc, fail_in_protobuf])
def test_a_failing_event_file_warns_once_and_metrics_go_on(tmp_path, capsys, fail):
    logger = RunLogger(tmp_path, num_seeds=2, tensorboard=True)
    logger.write(100, {"charts/sps": [1.0, 2.0]})
    fail(logger._event_files[1])
    for step in (200, 300):
        logger.write(step, {"charts/sps": [1.0, 2.0]})
    logger.close()
    logger.close()
    (line,) = warnings(capsys.readouterr().err)
    assert f"TensorBoard: cannot write {tmp_path / 'tb' / 'seed_1'}" in line
    assert ("No space left on device (ENOSPC)" in line) == (fail is fail_with_enospc)
    assert [r["step"] for r in records(tmp_path / "metrics.jsonl")] == [100, 200, 300]
    assert [s[0] for s in scalars(events(tmp_path / "tb" / "seed_0"))] == [100, 200]
    assert [s[0] for s in scalars(events(tmp_path / "tb" / "seed_1", False))] == [100]


def test_a_tensorboard_dir_that_cannot_be_made_warns_and_metrics_go_on(tmp_path, capsys):
    (tmp_path / "tb").write_text("a file where the directory goes")
    logger = RunLogger(tmp_path, num_seeds=1, tensorboard=True)
    logger.write(100, {"charts/sps": 1.0})
    logger.close()
    (line,) = warnings(capsys.readouterr().err)
    assert f"TensorBoard: cannot write {tmp_path / 'tb'}" in line
    assert [r["step"] for r in records(tmp_path / "metrics.jsonl")] == [100]


def test_a_failure_when_closing_warns_and_close_does_not_raise(tmp_path, capsys, monkeypatch):
    logger = RunLogger(tmp_path, num_seeds=2, tensorboard=True)
    logger.write(100, {"charts/sps": 1.0})
    files = [logger._file] + [event_file._file for event_file in logger._event_files]

    def fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fsync)
    logger.close()
    logger.close()
    (line,) = warnings(capsys.readouterr().err)
    assert "TensorBoard: cannot write" in line and "(EIO)" in line
    assert all(file.closed for file in files)
    assert [r["step"] for r in records(tmp_path / "metrics.jsonl")] == [100]


def test_a_resume_that_cannot_rewrite_metrics_leaves_them_as_they_were(
    tmp_path, capsys, monkeypatch
):
    logger = RunLogger(tmp_path, num_seeds=1, tensorboard=False)
    for step in (100, 200):
        logger.write(step, {"charts/sps": 1.0})
    logger.close()

    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", replace)
    logger = RunLogger(tmp_path, num_seeds=1, tensorboard=False, resume_step=100)
    logger.write(200, {"charts/sps": 2.0})
    logger.close()
    (line,) = warnings(capsys.readouterr().err)
    assert "metrics.jsonl: cannot write" in line and "ENOSPC" in line
    assert [r["charts/sps"] for r in records(tmp_path / "metrics.jsonl")] == [1.0, 1.0]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_resume_does_not_write_through_a_link_left_in_place_of_its_temporary(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 100}\n')
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    (tmp_path / "metrics.jsonl.tmp").symlink_to(target)
    RunLogger(tmp_path, num_seeds=1, tensorboard=False, resume_step=100).close()
    assert target.read_text() == "keep me"
    assert records(tmp_path / "metrics.jsonl") == [{"step": 100}]


def test_resume_drops_lines_too_long_too_deep_or_not_records(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logger_module, "MAX_RECORD_BYTES", 100)
    path = tmp_path / "metrics.jsonl"
    lines = [
        b'{"step": 100}',
        b"[" * 90 + b"]" * 90,  # deeper than safeio's bound
        b"\xff\xfe",
        b'{"step": 150, "x": "' + b"y" * 500_000 + b'"}',
        b'{"step": "150"}',
        b'{"step": 200}',
        b'{"time": 1.0}',
        b"",
        b'{"step": 300}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    RunLogger(tmp_path, num_seeds=1, tensorboard=False, resume_step=200).close()
    assert records(path) == [{"step": 100}, {"step": 200}]
    assert "lines [2, 3, 4, 5, 7] are not JSON records" in capsys.readouterr().err


def test_resume_names_the_first_twenty_damaged_lines(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text("x\n" * 25 + '{"step": 100}\n')
    RunLogger(tmp_path, num_seeds=1, tensorboard=False, resume_step=100).close()
    assert records(path) == [{"step": 100}]
    assert f"lines {list(range(1, 21))} and 5 more are not JSON" in capsys.readouterr().err
