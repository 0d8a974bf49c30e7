"""Run directory (lock, COMPLETE protection, status) and config JSON round trips."""

import dataclasses
import enum
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from sparse_rl.errors import ConfigError
from sparse_rl.train import (RunDir, config_diff, config_hash, dataclass_from_dict, run_status,
                             to_jsonable, write_json_atomic)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- RunDir

def test_fresh_run_lifecycle(tmp_path):
    out = tmp_path / "runs" / "a"
    assert run_status(out) == "absent"
    with RunDir(out) as run:
        assert run.fresh and out.is_dir() and (out / "run.lock").exists()
        assert run_status(out) == "absent"          # only the lock: nothing to resume
        run.write_config({"agent": "dqn", "lr": 1e-3})
        assert run_status(out) == "incomplete"
        metrics = run.open_metrics(["step", "return"])
        metrics.write(step=0, **{"return": 1.5})
        run.checkpoint_dir.mkdir()
        run.write_summary({"final": np.float32(2.5), "sparsity": {"q": 0.9}})
        assert not run.is_complete
        run.mark_complete()
        assert run.is_complete and run_status(out) == "complete"
        with pytest.raises(RuntimeError, match="complete"):
            run.write_summary({})
    summary = json.loads((out / "summary.json").read_text())
    assert summary.pop("checksum").startswith("sha256:")   # issue 16
    assert summary == {"final": 2.5, "sparsity": {"q": 0.9}}
    assert json.loads((out / "config.json").read_text())["agent"] == "dqn"
    assert (out / "metrics.csv").read_text() == "step,return\n0,1.5\n"
    assert "library_version" in json.loads((out / "COMPLETE").read_text())
    assert not any(".tmp-" in n for n in os.listdir(out))


def test_finished_run_is_never_reopened(tmp_path):
    with RunDir(tmp_path) as run:
        run.write_config({"a": 1})
        run.mark_complete()
    for resume in (False, True):
        with pytest.raises(ConfigError) as err:
            RunDir(tmp_path, resume=resume)
        assert err.value.field == "out" and "finished run" in str(err.value)
    assert not RunDir.in_use(tmp_path)  # the refused attempts left no lock behind


def test_unfinished_run_needs_resume(tmp_path):
    with RunDir(tmp_path) as run:
        run.write_config({"a": 1})
    with pytest.raises(ConfigError, match="--resume") as err:
        RunDir(tmp_path)
    assert err.value.field == "out"
    with RunDir(tmp_path, resume=True) as run:
        assert not run.fresh
        run.write_config({"a": 1})          # same config: accepted, file untouched
        with pytest.raises(ConfigError, match=r"config: differs .* at: a"):
            run.write_config({"a": 2})
        run.write_config({"a": 1, "steps": 10}, ignore=("steps",))
    with RunDir(tmp_path / "new", resume=True) as run:   # --resume on nothing starts afresh
        assert run.fresh


def test_failed_run_status_and_retry(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with RunDir(tmp_path) as run:
            run.write_config({"a": 1})
            1 / 0
    assert run_status(tmp_path) == "failed"
    assert (tmp_path / "FAILED").read_text() == "ZeroDivisionError: division by zero\n"
    with RunDir(tmp_path, resume=True) as run:       # retrying clears the marker
        assert run_status(tmp_path) == "incomplete"
        run.mark_failed("nan in loss at step 10")
    assert (tmp_path / "FAILED").read_text() == "nan in loss at step 10\n"
    with RunDir(tmp_path, resume=True) as run:
        run.mark_complete()
    assert run_status(tmp_path) == "complete" and not (tmp_path / "FAILED").exists()


def test_lock_in_same_process(tmp_path):
    run = RunDir(tmp_path)
    assert RunDir.in_use(tmp_path)
    with pytest.raises(ConfigError, match="in use by another process") as err:
        RunDir(tmp_path, resume=True)
    assert err.value.field == "out"
    run.release()
    assert not RunDir.in_use(tmp_path)
    RunDir(tmp_path, resume=True).release()


HOLDER = """
import sys
from sparse_rl.train.rundir import RunDir
run = RunDir(sys.argv[1])
run.write_config({"a": 1})
print("locked", flush=True)
sys.stdin.read()
"""


def test_lock_across_processes_and_kill_9(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match="out: run directory is in use by another process"):
            RunDir(tmp_path, resume=True)
        assert RunDir.in_use(tmp_path)
        assert run_status(tmp_path) == "incomplete"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # the OS dropped the dead process's lock: the run can be resumed
    with RunDir(tmp_path, resume=True) as run:
        assert not run.fresh


def test_out_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a directory") as err:
        RunDir(f)
    assert err.value.field == "out"


def test_write_json_atomic_replaces(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": (1, 2), "p": Path("/x"), "nan": float("nan")})
    write_json_atomic(path, {"b": 1})
    assert json.loads(path.read_text()) == {"b": 1}
    assert os.listdir(tmp_path) == ["x.json"]


# ----------------------------------------------------------------------------- serialize

class Kind(enum.Enum):
    A = "a"
    B = "b"


@dataclasses.dataclass(frozen=True)
class Sparse:
    method: str = "rigl"
    sparsity: float = 0.9
    dense: tuple[str, ...] = ()
    overrides: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class Agent:
    lr: float = 1e-3
    widths: tuple[int, ...] = (64, 64)
    sparse: Sparse = Sparse()
    critic: Optional[Sparse] = None
    kind: Kind = Kind.A
    out: Path = Path("runs/x")
    tags: dict[str, int] = dataclasses.field(default_factory=dict)
    derived: int = dataclasses.field(default=0, init=False)


def test_dataclass_round_trip():
    cfg = Agent(lr=3e-4, widths=(256, 256, 128),
                sparse=Sparse(sparsity=0.95, dense=("linear_0",), overrides=(("w$", 0.5),)),
                critic=Sparse(method="set"), kind=Kind.B, out=Path("/tmp/r"), tags={"x": 1})
    data = json.loads(json.dumps(to_jsonable(cfg)))
    assert data["sparse"]["overrides"] == [["w$", 0.5]] and data["kind"] == "b"
    back = dataclass_from_dict(Agent, data)
    assert back == cfg and isinstance(back.sparse.overrides[0], tuple)
    assert config_hash(cfg) == config_hash(data) == config_hash(back)
    assert config_hash(cfg) != config_hash(dataclasses.replace(cfg, lr=1e-4))
    assert dataclass_from_dict(Agent, {"sparse": {"sparsity": 1}}).sparse.sparsity == 1.0
    assert dataclass_from_dict(Agent, {}) == Agent()


def test_dataclass_from_dict_errors():
    with pytest.raises(ConfigError, match=r"^sparse\.sparsty: unknown key \(allowed: .*sparsity") \
            as err:
        dataclass_from_dict(Agent, {"sparse": {"sparsty": 0.5}})
    assert err.value.field == "sparse.sparsty"
    with pytest.raises(ConfigError, match="^widths: expected a list"):
        dataclass_from_dict(Agent, {"widths": 64})
    with pytest.raises(ConfigError, match=r"^kind: unknown value 'c' \(allowed: a, b\)"):
        dataclass_from_dict(Agent, {"kind": "c"})
    with pytest.raises(ConfigError, match="^lr: expected a number"):
        dataclass_from_dict(Agent, {"lr": "fast"})


def test_to_jsonable_scalars_and_diff():
    import jax.numpy as jnp

    data = to_jsonable({"a": np.float32(0.5), "b": jnp.asarray(3), "c": np.arange(3),
                        1: "x", "f": len, "k": (Kind.B,)})
    assert data == {"a": 0.5, "b": 3, "c": [0, 1, 2], "1": "x", "f": "builtins:len",
                    "k": ["b"]}
    with pytest.raises(TypeError, match="^x.y: cannot convert object"):
        to_jsonable({"x": {"y": object()}})
    assert config_diff({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 2, "d": 4}, "e": 0}) \
        == ["b.d", "e"]
    assert config_diff({"a": 1, "steps": 5}, {"a": 1, "steps": 6}, ignore=("steps",)) == []
