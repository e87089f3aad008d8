"""metrics.jsonl and TensorBoard across a resume: later records dropped, a cut-off or damaged
line survived, TensorBoard told to discard the dropped steps."""

import json
import struct

from tensorboardX.proto import event_pb2

from fleetrl.logger import RunLogger


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


def events(directory):
    """Every event in the TFRecord files of ``directory``, oldest file first."""
    out = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[at + 12 : at + 12 + length])
            out.append(event)
            at += 12 + length + 4
    return out


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
        assert starts == [200]
        scalars = [(e.step, e.summary.value[0].simple_value) for e in written if e.summary.value]
        assert scalars[-1] == (300, value)
