"""Metrics CSV (exact resume), TensorBoard scalars, and the progress line."""

import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_rl.errors import RunFileError
from sparse_rl.train import MetricsWriter, Progress, TensorBoardWriter, format_eta, read_metrics

FIELDS = ["step", "wall_time", "train_return", "eval_return", "loss", "note"]


def row(step):
    """A deterministic row; evaluations every 300 steps, as a runner would log them."""
    return {"step": step, "train_return": step / 7, "loss": np.float32(1 / (step + 1)),
            "eval_return": (step * 0.1 + 0.3) if step % 300 == 0 else None}


def test_rows_values_and_read_back(tmp_path):
    path = tmp_path / "metrics.csv"
    with MetricsWriter(path, FIELDS) as m:
        m.write({"step": 0, "train_return": 0.1, "note": "a,b\nc", "wall_time": True})
        m.write(step=100, loss=float("nan"), eval_return=float("inf"))
        assert path.read_text().count("\n") == 3      # flushed at once, one line per row
        with pytest.raises(ValueError, match="unknown field 'lss'"):
            m.write(step=5, lss=1.0)
    assert path.read_text() == ("step,wall_time,train_return,eval_return,loss,note\n"
                                '0,1,0.1,,,"a,b c"\n'
                                "100,,,inf,nan,\n")
    data = read_metrics(path)
    np.testing.assert_array_equal(data["step"], [0, 100])
    assert math.isnan(data["train_return"][1]) and data["eval_return"][1] == math.inf
    assert data["note"].tolist() == ["a,b c", ""]


@settings(max_examples=50, deadline=None)
@given(st.floats(allow_nan=False, width=64) | st.floats(width=32).filter(math.isfinite))
def test_floats_round_trip_exactly(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("m") / "metrics.csv"
    with MetricsWriter(path, ["step", "x"], fsync=False) as m:
        m.write(step=1, x=np.float32(value) if abs(value) < 3e38 else value)
        m.write(step=2, x=value)
    x = read_metrics(path)["x"]
    assert x[1] == value
    if abs(value) < 3e38:
        assert x[0] == float(np.float32(value))


def test_resume_truncates_to_checkpoint_and_matches_uninterrupted(tmp_path):
    steps = list(range(0, 1500, 100))
    full = tmp_path / "full.csv"
    with MetricsWriter(full, FIELDS) as m:
        for s in steps:
            m.write(row(s))

    resumed = tmp_path / "resumed.csv"
    m = MetricsWriter(resumed, FIELDS)
    for s in steps[:10]:                  # runs to step 900; checkpoint was at step 600
        m.write(row(s))
    m._file.write(b"900,,12.")            # killed in the middle of a row
    m._file.flush()
    del m

    m = MetricsWriter(resumed, FIELDS)    # the partial line is dropped on reopening
    assert read_metrics(resumed)["step"][-1] == 900
    assert m.truncate_after(600) == 3
    assert read_metrics(resumed)["step"][-1] == 600
    for s in steps[7:]:
        m.write(row(s))
    m.close()
    assert resumed.read_bytes() == full.read_bytes()

    m = MetricsWriter(resumed, FIELDS)    # no checkpoint at all: start over
    assert m.truncate_after(None) == len(steps)
    m.close()
    assert resumed.read_text() == ",".join(FIELDS) + "\n"


def test_header_checks(tmp_path):
    path = tmp_path / "metrics.csv"
    with pytest.raises(ValueError, match="step field 'step'"):
        MetricsWriter(path, ["x"])
    MetricsWriter(path, ["step", "x"]).close()
    with pytest.raises(RunFileError, match="header .* differs"):
        MetricsWriter(path, ["step", "y"])
    path.write_text("step,")              # header cut short by a crash: rewritten
    MetricsWriter(path, ["step", "x"]).close()
    assert path.read_text() == "step,x\n"


def test_tensorboard_scalars(tmp_path):
    with TensorBoardWriter(tmp_path / "tb", truncate_after=5) as tb:
        tb.write(10, {"eval/return": np.float32(1.5), "note": "skipped", "none": None})
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


# ----------------------------------------------------------------------------- progress

class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_disabled_progress_prints_nothing(capsys):
    p = Progress(1000)                  # under pytest stderr is not a terminal
    assert not p.enabled
    for step in range(0, 1001, 10):
        p.update(step, ret=1.0, sparsity=0.9)
    p.close()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    p.log("evaluation: 200.0")
    assert capsys.readouterr().err == "evaluation: 200.0\n"


def test_disabled_progress_with_log_every():
    stream, clock = io.StringIO(), FakeClock()
    p = Progress(1000, enabled=False, stream=stream, log_every=10, clock=clock)
    for step in range(0, 1001, 50):
        p.update(step)
        clock.t += 1.0                  # 50 steps per second
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()   # at t=10 and t=20 (last step)
    assert lines[0].startswith("  500/1,000") and "50 SPS" in lines[0]
    assert lines[1].startswith("1,000/1,000") and "ETA 0:00" in lines[1]


def test_enabled_progress_line():
    stream, clock = io.StringIO(), FakeClock()
    p = Progress(11_000, enabled=True, label="dqn", stream=stream, clock=clock)
    for step in range(0, 5001, 100):    # 100 steps per 0.05 s: 2000 SPS, redrawn every 0.2 s
        p.update(step, ret=187.25, sparsity=0.9, loss=None)
        clock.t += 0.05
    text = stream.getvalue()
    assert 10 <= text.count("\r") <= 14
    last = text.split("\r")[-1].rstrip()
    assert last.startswith("dqn  ") and "2,000 SPS" in last
    assert "return 187.2" in last and "sparsity 0.9" in last and "loss" not in last
    p.log("eval 200")
    assert "\reval 200\n\rdqn" in stream.getvalue()   # above the redrawn live line
    p.close()                           # shows the last update, then ends the line
    p.close()
    text = stream.getvalue()
    assert text.endswith("\n") and not text.endswith("\n\n")
    last = text.split("\r")[-1].rstrip()
    assert "5,000/11,000" in last and "ETA 0:03" in last   # 6000 steps left at 2000 SPS


def test_caller_sps_replaces_measured():
    stream, clock = io.StringIO(), FakeClock()
    p = Progress(10_000, enabled=True, stream=stream, clock=clock)
    clock.t = 1.0
    p.update(4000, sps=1000.4, ret=1.0)
    line = stream.getvalue().split("\r")[-1]
    assert "1,000 SPS  return 1  ETA 0:06" in line and "sps" not in line


def test_format_eta():
    assert format_eta(0) == "0:00"
    assert format_eta(59.6) == "1:00"
    assert format_eta(3725) == "1:02:05"
    assert format_eta(2 * 86400 + 3600 + 61) == "2d 01:01:01"
    assert format_eta(float("inf")) == format_eta(None) == "?"
    assert format_eta(-5) == "0:00"


def test_metrics_log_flushes_each_row_and_fsyncs_only_when_synced(tmp_path, monkeypatch):
    # issue 15: an fsync per row cost ~1-3% of a short run; rows reach the OS at once (a killed
    # process loses none) and the disk when a checkpoint records them or the run ends.
    import sparse_rl.train.metrics as metrics_module
    from sparse_rl.train.metrics_log import MetricsLog
    from sparse_rl.train.rundir import RunDir

    synced = []
    monkeypatch.setattr(metrics_module.os, "fsync", lambda fd: synced.append(fd))
    rundir = RunDir(tmp_path / "run")
    log = MetricsLog(rundir, tensorboard=False)
    log.open(["loss"], None)
    opened = len(synced)  # creating the file syncs its header
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 0.5})
    assert len(synced) == opened
    assert list(read_metrics(rundir.metrics_path)["step"]) == [1, 2, 3]  # readable before a sync
    log.sync()
    assert len(synced) == opened + 1
    log.close()
    assert len(synced) == opened + 2
    rundir.release()
