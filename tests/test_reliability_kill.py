"""kill -9 during training (issue 7): `--resume` always continues from the last complete
checkpoint, the final metrics and summary equal an uninterrupted run's (CPU, timing columns aside),
and at no kill point does the run directory look finished to a sweep.

One training run (DQN, CartPole, tiny network) is killed four times in a row and resumed after
each kill; an uninterrupted run with the same arguments runs beside it. The kill points are exact,
through the test hook in `sparse_rl.train.faults` (SPARSE_RL_TEST_KILL_AT), plus one kill at
whatever moment the process has reached when a metrics row appears:

  A. a metrics row written before the first checkpoint (no checkpoint to resume from); while A
     is frozen there, a second process on the same directory is refused (exit 2, run lock);
  B. in the middle of a checkpoint write: arrays and manifest renamed, completion marker not yet;
  C. an arbitrary moment after a later metrics row (SIGKILL from the test);
  D. after the final summary.json is written, before the COMPLETE marker;
  E. resumed to completion.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparse_rl.train import checkpoint as ckpt
from sparse_rl.train.rundir import RunDir, run_status

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see a frozen process")

STEPS = 800
ARGS = [
    "train", "--steps", str(STEPS), "--seed", "3", "--method", "rigl", "--sparsity", "0.8",
    "--update-every", "50", "--dqn.widths", "32", "32", "--dqn.learning-starts", "100",
    "--dqn.batch-size", "32", "--dqn.target-update-every", "50", "--eval-every", "200",
    "--eval-episodes", "2", "--log-every", "100", "--checkpoint-every", "200",
    "--keep-checkpoints", "2", "--analysis-every", "150",
]
TIMING_COLUMNS = {"wall_time", "sps"}
TIMING_SUMMARY = {"steps_per_second", "compile_seconds", "wall_time", "startup", "checksum"}  # checksum: of the timings too
TIMEOUT = 400
# The processes share JAX's persistent compilation cache: only the first one compiles (~3x faster
# on 2 CPU cores). A cached executable is the same program, so results are unchanged.
CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def subprocess_env(cache: Path) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", JAX_COMPILATION_CACHE_DIR=str(cache), **CACHE_ENV)
    for name in ("SPARSE_RL_TEST_KILL_AT", "SPARSE_RL_TEST_KILL_SIGNAL"):
        env.pop(name, None)
    return env


def start(out: Path, *extra, kill_at=None, sig="SIGSTOP"):
    """The training process; its stderr goes to a file (a pipe nobody reads while the process is
    frozen could fill up and block it before its kill point), read back by `stderr_of`."""
    env = subprocess_env(out.parent / "jax-cache")
    if kill_at:
        env["SPARSE_RL_TEST_KILL_AT"] = kill_at
        env["SPARSE_RL_TEST_KILL_SIGNAL"] = sig
    log = out.parent / f"{out.name}-{kill_at or 'end'}-{time.monotonic_ns()}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sparse_rl.cli", *ARGS, "--out", str(out), *extra],
                                stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
    proc.log = log
    return proc


def stderr_of(proc) -> str:
    return proc.log.read_text()


def wait_stopped(proc, timeout=TIMEOUT):
    """Wait until `proc` froze itself at its kill point (SIGSTOP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before its kill point:\n{stderr_of(proc)[-3000:]}")
        try:
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "?"
        if state in ("T", "t"):
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("kill point not reached in time")


def kill9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def metric_steps(path: Path) -> list[int]:
    try:
        with open(path) as f:
            return [int(float(r["step"])) for r in csv.DictReader(f) if r.get("step")]
    except (FileNotFoundError, ValueError, KeyError):
        return []


def observe(out: Path) -> dict:
    return {"status": run_status(out), "latest": ckpt.latest(out / "checkpoints"),
            "files": sorted(p.name for p in (out / "checkpoints").glob("*")) if (out / "checkpoints").exists() else [],
            "summary": (out / "summary.json").exists(), "locked": RunDir.in_use(out)}


def rows(path: Path, drop=TIMING_COLUMNS):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def analysis_rows(run: Path, ever_active=False):
    with open(run / "analysis.csv") as f:
        return [{k: v for k, v in r.items() if ever_active == k.endswith("/ever_active")}
                for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    ref_dir, out = root / "reference", root / "killed"
    seen = {}
    try:
        # A: frozen right after the step-100 metrics row, before any checkpoint exists.
        a = start(out, kill_at="log@100")
        wait_stopped(a)
        seen["A"] = observe(out)
        reference = start(ref_dir)  # uninterrupted, beside the chain (A filled the compile cache)
        contender = subprocess.run([sys.executable, "-m", "sparse_rl.cli", *ARGS, "--out", str(out), "--resume"],
                                   capture_output=True, text=True, timeout=TIMEOUT,
                                   env=subprocess_env(root / "jax-cache"))
        seen["contender"] = (contender.returncode, contender.stderr)
        kill9(a)
        seen["A_after"] = observe(out)
        # A resume with other settings is refused, and leaves the killed run resumable.
        from sparse_rl.cli import build_train_args
        from sparse_rl.train.runner import train

        try:
            train(*build_train_args([*ARGS[1:], "--out", str(out), "--resume", "--dqn.learning-rate", "0.5"]))
        except ValueError as error:
            seen["other_settings"] = (str(error), observe(out))

        # B: killed inside the step-400 checkpoint write (files renamed, no completion marker).
        b = start(out, "--resume", kill_at="checkpoint_marker@400")
        wait_stopped(b)
        kill9(b)
        seen["B"] = observe(out)

        # C: SIGKILL at whatever point it has reached once the step-500 row is on disk (and, as a
        # backstop should this process be slow to react, before COMPLETE at the latest).
        c = start(out, "--resume", kill_at="complete", sig="SIGKILL")
        deadline = time.monotonic() + TIMEOUT
        while c.poll() is None and not any(s >= 500 for s in metric_steps(out / "metrics.csv")):
            assert time.monotonic() < deadline, "run C made no progress"
            time.sleep(0.02)
        if c.poll() is None:
            c.send_signal(signal.SIGKILL)
        c.wait(timeout=60)
        assert c.returncode == -signal.SIGKILL, c.returncode
        seen["C"] = observe(out)

        # D: the summary is written, COMPLETE is not.
        d = start(out, "--resume", kill_at="complete")
        wait_stopped(d)
        seen["D"] = observe(out)
        kill9(d)

        # E: resumed to the end.
        e = start(out, "--resume")
        e.wait(timeout=TIMEOUT)
        seen["E"] = (e.returncode, stderr_of(e))
        reference.wait(timeout=TIMEOUT)
        seen["reference"] = (reference.returncode, stderr_of(reference))
    finally:
        for proc in list(locals().values()):
            if isinstance(proc, subprocess.Popen) and proc.poll() is None:
                proc.kill()
                proc.wait()
    return ref_dir, out, seen


def test_kill_points_never_look_finished(chain):
    _, _, seen = chain
    for point in ("A", "A_after", "B", "C", "D"):
        assert seen[point]["status"] == "incomplete", (point, seen[point])
    assert seen["A"]["latest"] is None and seen["A"]["locked"]
    assert not seen["A_after"]["locked"]  # kill -9 releases the run lock
    # B died between the checkpoint's files and its completion marker: step 400 is not complete.
    assert seen["B"]["latest"] == 200, seen["B"]
    assert "ckpt_000000000400.npz" in seen["B"]["files"] and "ckpt_000000000400.done" not in seen["B"]["files"]
    assert seen["C"]["latest"] is not None and seen["C"]["latest"] >= 400, seen["C"]
    # D: summary.json exists, yet without COMPLETE the sweep must resume it, not skip it.
    assert seen["D"]["summary"] and seen["D"]["latest"] == STEPS


def test_resume_with_other_settings_is_refused_and_run_stays_resumable(chain):
    _, _, seen = chain
    message, after = seen["other_settings"]
    assert "learning_rate" in message and "differs from the run being resumed" in message
    assert after["status"] == "incomplete" and not after["locked"]


def test_second_process_on_same_run_directory_exits_2(chain):
    _, _, seen = chain
    code, stderr = seen["contender"]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and "in use by another process" in lines[0], stderr


def test_resumed_run_equals_uninterrupted(chain):
    ref_dir, out, seen = chain
    assert seen["E"][0] == 0, seen["E"][1][-3000:]
    assert seen["reference"][0] == 0, seen["reference"][1][-3000:]
    assert run_status(out) == "complete" and run_status(ref_dir) == "complete"
    ref_rows, got_rows = rows(ref_dir / "metrics.csv"), rows(out / "metrics.csv")
    assert [r["step"] for r in got_rows] == [str(s) for s in range(100, STEPS + 1, 100)]
    assert got_rows == ref_rows
    ref_summary = json.loads((ref_dir / "summary.json").read_text())
    got_summary = json.loads((out / "summary.json").read_text())
    for key in TIMING_SUMMARY:
        ref_summary.pop(key, None)
        got_summary.pop(key, None)
    assert got_summary == ref_summary
    # Training-time analysis (gradient flow, dormant neurons, topology) resumes exactly too (the
    # ever-active statistics: the test below).
    if (ref_dir / "analysis.csv").exists():
        assert analysis_rows(out) == analysis_rows(ref_dir)
    # Leftovers of the interrupted checkpoint writes are gone; keep-N holds.
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert not [n for n in names if ".tmp-" in n]
    assert ckpt.steps(out / "checkpoints") == [STEPS - 200, STEPS]


def test_ever_active_statistics_resume_exactly(chain):
    ref_dir, out, _ = chain
    if not (ref_dir / "analysis.csv").exists():
        pytest.skip("no analysis.csv")
    assert analysis_rows(out, ever_active=True) == analysis_rows(ref_dir, ever_active=True)
