"""Issue 16: the 21 attacks of a hostile trial that broke the README's guarantees, each kept as a
test. A short DQN CartPole run (tiny network, RigL so that every analysis file exists, checkpoints
every 200 steps) is trained once; each test works on a copy, damaged as the attack did, and
checks the promise: nothing outside a run directory is touched, nothing is lost or silently
short on resume, every failure is one line naming the file with exit status 2 (the user's input)
or 1 (the run could not go on), and a failed resume leaves the run resumable (never FAILED).

"Killed" below means: the finished run with its COMPLETE marker, summary.json and newest
checkpoint removed -- what `kill -9` after the step-500 rows leaves (metrics rows after the last
checkpoint included), so `--resume` continues from step 400.
"""

import csv
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparse_rl.cli import main
from sparse_rl.train import checkpoint as ckpt
from sparse_rl.train.rundir import read_json_checked, run_status

STEPS = 600
TRAIN = [
    "train", "--steps", str(STEPS), "--seed", "1", "--method", "rigl", "--sparsity", "0.8",
    "--update-every", "50", "--dqn.widths", "16", "16", "--dqn.learning-starts", "100",
    "--dqn.batch-size", "32", "--eval-every", "200", "--eval-episodes", "2", "--log-every", "100",
    "--checkpoint-every", "200", "--keep-checkpoints", "3", "--analysis-every", "50",
]
TIMING = {"wall_time", "sps"}


def train(out, *extra, resume=False):
    return main([*TRAIN, "--out", str(out), *(["--resume"] if resume else []), *extra])


def cli(*args, timeout=300, **kw):
    """`sparse-rl ARGS` in a subprocess: (exit status, stdout, stderr)."""
    # RuntimeWarnings shown (Python's default); other libraries' deprecation notes and JAX's notes
    # about its shared compilation cache are not what these tests are about.
    env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning,ignore::UserWarning")
    proc = subprocess.run([sys.executable, "-m", "sparse_rl.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)
    return proc.returncode, proc.stdout, proc.stderr


def is_report(line: str) -> bool:
    """A line `train` prints while it works (issue 13): the start announcement, a progress line."""
    return bool(re.match(r"(training|resuming) .*: run directory ", line) or re.search(r" [\d,]+ SPS", line))


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not is_report(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


def rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def listing(path: Path) -> dict:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("attacks") / "run"
    assert train(out) == 0
    assert ckpt.steps(out / "checkpoints") == [200, 400, 600]
    return out


@pytest.fixture
def killed(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    for name in ("COMPLETE", "summary.json", "analysis.json"):
        (out / name).unlink()
    for file in (out / "checkpoints").glob("ckpt_000000000600.*"):
        file.unlink()
    assert run_status(out) == "incomplete"
    return out


def refused_and_resumable(out, capsys, name, code=1):
    """A resume refused with one line naming `name`, the run left resumable (not FAILED)."""
    before = listing(out)
    assert train(out, resume=True) == code
    line = one_error_line(capsys.readouterr().err)
    assert name in line, line
    assert run_status(out) == "incomplete" and not (out / "FAILED").exists()
    after = listing(out)
    for state in (before, after):
        state.pop("run.lock")  # holds the PID of the last process that took the lock
    assert after == before  # nothing written, nothing cut
    return line


# ----------------------------------------------------------------------------- 1, 2: outside the run

def test_1_symlinked_run_lock_is_refused_and_its_target_untouched(killed, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (killed / "run.lock").unlink()
    (killed / "run.lock").symlink_to(victim)
    assert train(killed, resume=True) == 2
    assert "symbolic link" in one_error_line(capsys.readouterr().err)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["metrics.csv", "analysis.csv"])
def test_1_symlinked_csv_is_refused_and_its_target_untouched(killed, tmp_path, capsys, name):
    victim = tmp_path / "victim.csv"
    (killed / name).rename(victim)
    before = victim.read_bytes()
    (killed / name).symlink_to(victim)
    line = refused_and_resumable(killed, capsys, name)
    assert "symbolic link" in line and victim.read_bytes() == before


def test_1_markers_and_temporary_files_never_write_through_a_link(finished, killed, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in ("summary.json", "COMPLETE", "metrics.csv"):  # the names our atomic writes use
        (killed / f".{name}.tmp-{os.getpid()}").symlink_to(victim)
    assert train(killed, resume=True) == 0, capsys.readouterr().err
    assert victim.read_text() == "precious\n" and run_status(killed) == "complete"
    assert rows(killed / "metrics.csv") == rows(finished / "metrics.csv")


def test_2_resume_into_a_directory_of_user_files_touches_nothing(tmp_path, capsys):
    user = tmp_path / "mine"
    (user / "checkpoints").mkdir(parents=True)
    for name in ("metrics.csv", "summary.json", "analysis.csv", "ever_active.npz", "checkpoints/x"):
        (user / name).write_text(f"user's {name}\n")
    before = listing(user)
    for resume in (True, False):
        assert train(user, resume=resume) == 2
        assert "not a sparse_rl run directory" in one_error_line(capsys.readouterr().err)
        assert listing(user) == before  # no run.lock either


def test_2_out_root_creates_no_lock(capsys):
    assert not Path("/run.lock").exists()
    assert main([*TRAIN, "--out", "/"]) == 2
    assert "not a sparse_rl run directory" in one_error_line(capsys.readouterr().err)
    assert not Path("/run.lock").exists()


# ----------------------------------------------------------------------------- 3, 6, 7: resume checks

def test_3_truncated_metrics_resume_from_the_checkpoint_they_still_match(finished, killed, capsys):
    data = (killed / "metrics.csv").read_bytes()
    cut = data.index(b"\n300,") + 1  # rows up to step 200 survive: checkpoint 400 no longer matches
    (killed / "metrics.csv").write_bytes(data[:cut])
    assert train(killed, resume=True) == 0, capsys.readouterr().err
    assert rows(killed / "metrics.csv") == rows(finished / "metrics.csv")
    assert rows(killed / "analysis.csv") == rows(finished / "analysis.csv")


@pytest.mark.parametrize("name", ["metrics.csv", "analysis.csv", "init_params.npz", "ever_active.npz"])
def test_3_deleted_file_is_refused_and_run_stays_resumable(killed, capsys, name):
    (killed / name).unlink()
    refused_and_resumable(killed, capsys, name)


def test_3_metrics_cut_below_every_checkpoint_is_refused(killed, capsys):
    data = (killed / "metrics.csv").read_bytes()
    (killed / "metrics.csv").write_bytes(data[: data.index(b"\n") + 1])  # header only
    refused_and_resumable(killed, capsys, "metrics.csv")


@pytest.mark.parametrize("name", ["metrics.csv", "analysis.csv"])
def test_6_bad_byte_in_checkpointed_rows_is_refused(killed, capsys, name):
    data = bytearray((killed / name).read_bytes())
    data[40] = 0xFF  # in the header or the first rows: before every checkpoint
    (killed / name).write_bytes(bytes(data))
    refused_and_resumable(killed, capsys, name)


def test_6_bad_byte_after_the_checkpoint_is_cut_and_resume_is_exact(finished, killed, capsys):
    data = bytearray((killed / "metrics.csv").read_bytes())
    data[-10] = 0xFF  # the step-500 row, written after the last checkpoint
    (killed / "metrics.csv").write_bytes(bytes(data))
    assert train(killed, resume=True) == 0, capsys.readouterr().err
    assert rows(killed / "metrics.csv") == rows(finished / "metrics.csv")


def test_6_bad_byte_in_analysis_csv_is_one_line_in_analyze(finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    data = bytearray((out / "analysis.csv").read_bytes())
    data[len(data) // 2] = 0xFF
    (out / "analysis.csv").write_bytes(bytes(data))
    for what in ("gradient-flow", "topology"):
        assert main(["analyze", what, str(out), "--out", str(tmp_path / what)]) == 1
        assert "analysis.csv" in one_error_line(capsys.readouterr().err)


def test_7_every_checkpoint_corrupt_is_one_line_and_resumable(killed, capsys):
    for npz in (killed / "checkpoints").glob("*.npz"):
        data = bytearray(npz.read_bytes())
        data[len(data) // 2] ^= 0xFF
        npz.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="skipping the checkpoint"):
        refused_and_resumable(killed, capsys, "checkpoints")


@pytest.mark.parametrize("name", ["ever_active.npz", "init_params.npz"])
def test_7_bad_crc_in_analysis_npz_is_one_line_and_resumable(killed, capsys, name):
    import zipfile

    with zipfile.ZipFile(killed / name) as z:
        inside = z.infolist()[1].header_offset - 10  # the end of the first array's data
    data = bytearray((killed / name).read_bytes())
    data[inside] ^= 0xFF  # a CRC error, not a broken zip
    (killed / name).write_bytes(bytes(data))
    refused_and_resumable(killed, capsys, name)


# ----------------------------------------------------------------------------- 5: disk full

def test_5_disk_full_is_one_line_leaves_the_run_resumable_and_resume_is_exact(finished, tmp_path, capsys,
                                                                              monkeypatch):
    out = tmp_path / "run"
    real_save = ckpt.save

    def save(ckpt_dir, step, *args, **kwargs):
        if step == 400:  # what a full disk raises inside np.savez: no file name
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(ckpt_dir, step, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save", save)
    assert train(out) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(out) in line and "--resume" in line, line
    assert run_status(out) == "incomplete" and not (out / "FAILED").exists()
    monkeypatch.setattr(ckpt, "save", real_save)
    assert train(out, resume=True) == 0
    assert rows(out / "metrics.csv") == rows(finished / "metrics.csv")


# ----------------------------------------------------------------------------- 9: absurd sizes

@pytest.mark.parametrize("argv, field", [
    (["train", "--steps", "99999999999999999999"], "steps"),
    (["sweep", "--steps", "99999999999999999999", "--sparsities", "0.5"], "steps"),
    (["sweep", "--seeds", "0-999999999", "--sparsities", "0.5"], "seeds"),
    (["sweep", "--seeds", "0-9999", "--sparsities", "0.1,0.2,0.3,0.4,0.5"], "--large-grid"),
])
def test_9_absurd_sizes_are_refused_with_one_line(tmp_path, capsys, argv, field):
    out = tmp_path / "out"
    started = time.monotonic()
    assert main([*argv, "--out", str(out)]) == 2
    assert field in one_error_line(capsys.readouterr().err)
    assert time.monotonic() - started < 60 and not out.exists()


# ----------------------------------------------------------------------------- 4, 8, 1, 10: sweeps

SWEEP = ["sweep", "--methods", "dense-matched", "--sparsities", "0.5", "--seeds", "0,1", "--steps", "300",
         "--workers", "1", "--no-progress", "--set", "dqn.widths=16,16", "--set", "dqn.learning-starts=100",
         "--set", "dqn.batch-size=32", "--set", "eval-every=150", "--set", "eval-episodes=2",
         "--set", "checkpoint-every=150", "--set", "analysis-every=0"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("attack-sweep") / "sweep"
    code, stdout, stderr = cli(*SWEEP, "--out", out)
    assert code == 0, stderr[-3000:]
    return out


def cell_dirs(out):
    return sorted(p.parent for p in out.rglob("COMPLETE"))


def test_4_8_damaged_summaries_never_crash_a_sweep_or_count_as_averaged(sweep_dir, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(sweep_dir, out)
    first, second = cell_dirs(out)
    summary = (first / "summary.json").read_bytes()
    (first / "summary.json").write_bytes(summary[: len(summary) // 2])  # truncated (attack 8)
    code, stdout, stderr = cli(*SWEEP, "--out", out)
    assert code == 0 and "Traceback" not in stderr, stderr[-3000:]
    row = next(line for line in stdout.splitlines() if line.startswith("dqn"))
    assert "2/2" in row and "(n=1)" in row, stdout  # complete 2/2, but one seed averaged
    assert "summary.json" in stdout
    # a flipped byte in "env" (attack 4): the checksum catches it; plot never invents a task
    text = (second / "summary.json").read_text().replace("CartPole-v1", "CartPole-vZ")
    (second / "summary.json").write_text(text)
    with pytest.raises(Exception, match="checksum"):
        read_json_checked(second / "summary.json")
    from sparse_rl.sweep.results import load_runs

    assert {r.env for r in load_runs(out)} == {"CartPole-v1"}
    assert all(not r.has_score for r in load_runs(out))


def test_4_sweep_json_carries_a_checksum(sweep_dir):
    doc = read_json_checked(sweep_dir / "sweep.json")
    assert doc["checksum"].startswith("sha256:") and doc["cells"]


def test_1_symlinked_sweep_lock_is_refused(sweep_dir, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(sweep_dir, out)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "sweep.lock").unlink()
    (out / "sweep.lock").symlink_to(victim)
    assert main([*SWEEP, "--out", str(out)]) == 2
    assert victim.read_text() == "precious\n"


def test_2_sweep_into_a_directory_of_user_files_touches_nothing(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine\n")
    before = listing(user)
    assert main([*SWEEP, "--out", str(user)]) == 2
    assert "not a sweep directory" in one_error_line(capsys.readouterr().err)
    assert listing(user) == before


def test_10_sigterm_to_a_sweep_records_its_cells_as_interrupted(tmp_path):
    out = tmp_path / "sweep"
    args = [a.replace("300", "3000") for a in SWEEP]
    proc = subprocess.Popen([sys.executable, "-m", "sparse_rl.cli", *args, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.rglob("metrics.csv")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    statuses = {c["status"] for c in read_json_checked(out / "sweep.json")["cells"]}
    assert "pending" not in statuses, statuses
    assert all(run_status(c) != "failed" for c in out.glob("dqn/*/*/seed*"))


def test_10_sigterm_to_the_whole_job_leaves_its_cells_resumable(tmp_path):
    """A scheduler stopping the job (SIGTERM to the sweep and its workers at once) leaves every
    unfinished cell interrupted, never FAILED, and a re-run of the sweep resumes them."""
    out = tmp_path / "sweep"
    args = [a.replace("300", "3000") for a in SWEEP]
    proc = subprocess.Popen([sys.executable, "-m", "sparse_rl.cli", *args, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.rglob("metrics.csv")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "FAILED" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    runs = list(out.glob("dqn/*/*/seed*"))
    assert runs and all(run_status(c) != "failed" for c in runs)
    assert {c["status"] for c in read_json_checked(out / "sweep.json")["cells"]} <= {"interrupted", "complete"}
    again = subprocess.run([sys.executable, "-m", "sparse_rl.cli", *args, "--out", str(out), "--dry-run"],
                           capture_output=True, text=True, timeout=120)
    assert "0 failed" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]


def test_10_a_signal_after_the_command_finished_keeps_its_status(tmp_path):
    script = ("import os, signal, sys\nfrom sparse_rl import cli\n"
              f"sys.argv = ['sparse-rl', 'sweep', '--dry-run', '--sparsities', '0.5', '--out', {str(tmp_path / 's')!r}]\n"
              "code = cli.main()\nos.kill(os.getpid(), signal.SIGINT)\nos.kill(os.getpid(), signal.SIGTERM)\n"
              "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_10_divergence_message_comes_alone(tmp_path):
    code, _, stderr = cli("train", "--steps", "400", "--out", tmp_path / "nan", "--dqn.widths", "16", "16",
                          "--dqn.learning-starts", "100", "--dqn.batch-size", "16", "--dqn.learning-rate",
                          "1e30", "--eval-every", "400", "--eval-episodes", "1", "--log-every", "50",
                          "--analysis-every", "50")
    assert code == 1
    assert one_error_line(stderr).startswith("error: numerical fault at step")


# ----------------------------------------------------------------------------- follow-up (issue 16)

def kill(out):
    """What `kill -9` after the step-500 rows leaves of the finished run in `out` (see `killed`)."""
    for name in ("COMPLETE", "summary.json", "analysis.json"):
        (out / name).unlink(missing_ok=True)
    for file in (out / "checkpoints").glob("ckpt_000000000600.*"):
        file.unlink()
    assert run_status(out) == "incomplete"
    return out


def test_file_error_in_a_sweep_worker_leaves_the_cell_resumable(finished, tmp_path, monkeypatch):
    from sparse_rl.sweep.local import LEFT_RESUMABLE, execute_task, finalize_task, worker_exit_status

    out = tmp_path / "cell"
    task = {"cells": [{"id": "dqn/cell/seed1", "path": str(out), "argv": [*TRAIN[1:], "--out", str(out)],
                       "resume": False}], "vectorized": False}
    real_save = ckpt.save

    def save(ckpt_dir, step, *args, **kwargs):
        if step == 400:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(ckpt_dir, step, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save", save)
    results = execute_task(task)
    assert [r["status"] for r in results] == ["incomplete"], results
    assert "No space left on device" in results[0]["error"] and "Traceback" not in results[0]["error"]
    assert worker_exit_status(results) == LEFT_RESUMABLE
    parent = finalize_task(task, LEFT_RESUMABLE, None)  # the parent writes no FAILED either
    assert [r["status"] for r in parent] == ["incomplete"] and run_status(out) == "incomplete"
    assert not (out / "FAILED").exists()
    monkeypatch.setattr(ckpt, "save", real_save)
    task["cells"][0]["resume"] = True  # what a re-run of the sweep does with an incomplete cell
    assert [r["status"] for r in execute_task(task)] == ["complete"]
    assert rows(out / "metrics.csv") == rows(finished / "metrics.csv")
    # a worker that died without a word still gets its cell marked FAILED
    assert worker_exit_status([{"status": "failed"}, {"status": "incomplete"}]) == 1


@pytest.mark.parametrize("marker", ["COMPLETE", "FAILED"])
def test_symlinked_marker_is_refused_by_train(killed, tmp_path, capsys, marker):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (killed / marker).symlink_to(victim)
    assert train(killed, resume=True) == 2
    line = one_error_line(capsys.readouterr().err)
    assert marker in line and "symbolic link" in line, line
    assert victim.read_text() == "precious\n" and (killed / marker).is_symlink()


def test_symlinked_marker_is_refused_by_a_sweep(sweep_dir, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(sweep_dir, out)
    first = cell_dirs(out)[0]
    victim = tmp_path / "victim.json"
    shutil.copy(first / "COMPLETE", victim)
    (first / "COMPLETE").unlink()
    (first / "COMPLETE").symlink_to(victim)
    code, stdout, stderr = cli(*SWEEP, "--out", out)
    assert code == 2, stderr[-3000:]
    assert "symbolic link" in one_error_line(stderr)


def test_interrupt_after_complete_reports_the_run_complete(tmp_path, capsys, monkeypatch):
    from sparse_rl.train.rundir import RunDir

    real = RunDir.mark_complete

    def mark_complete(self):
        real(self)
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM) landing just after COMPLETE

    monkeypatch.setattr(RunDir, "mark_complete", mark_complete)
    out = tmp_path / "run"
    assert train(out, "--steps", "200") == 0
    err = capsys.readouterr().err
    assert "completed" in err and "--resume" not in err, err
    assert run_status(out) == "complete"


def test_resume_with_analysis_of_a_run_without_it_is_refused(tmp_path, capsys):
    finished_without = tmp_path / "finished"
    assert train(finished_without, "--analysis-every", "0") == 0
    out = tmp_path / "run"
    shutil.copytree(finished_without, out)
    kill(out)
    assert not (out / "init_params.npz").exists()
    capsys.readouterr()
    assert train(out, resume=True) == 2  # with analysis: no initial parameters to measure from
    line = one_error_line(capsys.readouterr().err)
    assert "analysis_every" in line and "init_params.npz" in line and "--analysis-every 0" in line, line
    assert run_status(out) == "incomplete" and not (out / "FAILED").exists()
    assert not (out / "analysis.csv").exists() and not (out / "init_params.npz").exists()
    # the refusal only dropped the rows after the checkpoint (as any resume does): still exact
    assert train(out, "--analysis-every", "0", resume=True) == 0 and run_status(out) == "complete"
    assert rows(out / "metrics.csv") == rows(finished_without / "metrics.csv")
