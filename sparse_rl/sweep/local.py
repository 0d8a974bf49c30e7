"""Running sweep tasks: the code every worker runs, and the local backend that runs workers.

A *task* is the unit a worker process runs: one cell, or (with `--vectorize-seeds`) the seeds of
one cell group trained together in one process. Its JSON form is

    {"cells": [{"id", "path", "argv", "resume", "dense_matched"}, ...], "vectorized": bool}

`execute_task(task)` runs it in the current process (the Ray backend calls it inside a Ray
worker); `python -m sparse_rl.sweep.local TASK_JSON` does the same in a fresh process, which is
how the local backend runs each task: a separate Python process per task, so that a crash (even a
segfault or the OOM killer) ends only that task, and JAX starts clean with the thread limits set
in its environment. The run directory is the record of what happened: the parent reads each cell's
status (`COMPLETE`, `FAILED`) from it after the worker exits, and writes `FAILED` itself (under the
run's lock) when a worker died without writing one. A worker that exits with `LEFT_RESUMABLE` left
its unfinished cells as they were (a file error, a full disk): they get no `FAILED`, and a re-run
of the sweep resumes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Callable

from sparse_rl.errors import GroupResumeMismatch, RunFileError, leaves_run_resumable, one_line
from sparse_rl.signals import interrupt_on_sigterm
from sparse_rl.train.rundir import (FAILED, LOCK, RUN_MARKS, check_owned, open_lock,
                                   read_json_checked, run_status, write_json_checked,
                                   write_text_atomic)

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "PJRT_NPROC")  # PJRT_NPROC: XLA's CPU pool (train.dispatch)


# ----------------------------------------------------------------------------- worker side

def worker_env(threads: int, base: dict | None = None, *, share_accelerator: bool = True,
               compile_cache: str | os.PathLike | None = None) -> dict:
    """Environment for a worker process limited to `threads` CPU threads.

    XLA's CPU backend otherwise sizes its thread pools to every core, so N workers on N cores would
    each run N threads. User settings already in the environment are kept (XLA_FLAGS is appended
    to). With `share_accelerator`, GPU memory is not preallocated, so several workers share one
    GPU. With `compile_cache` (a directory), JAX's persistent compilation cache is shared by the
    workers: the cells of a sweep that run the same programs (every seed of a cell, and levels
    whose programs do not depend on the level) compile them once.
    """
    env = dict(os.environ if base is None else base)
    if compile_cache is not None:  # a cache directory the user chose is kept
        env.setdefault("JAX_COMPILATION_CACHE_DIR", str(compile_cache))
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    threads = max(1, int(threads))
    for var in THREAD_VARS:
        env.setdefault(var, str(threads))
    flags = env.get("XLA_FLAGS", "")
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        flags = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    if flags:
        env["XLA_FLAGS"] = flags
    if share_accelerator:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # The package must be importable by the worker even when it is not installed (a checkout).
    package_parent = str(Path(__file__).resolve().parents[2])
    path = env.get("PYTHONPATH", "")
    if package_parent not in path.split(os.pathsep):
        env["PYTHONPATH"] = package_parent + (os.pathsep + path if path else "")
    return env


def record_failure(path: str | os.PathLike, message: str) -> bool:
    """Write `FAILED` (with `message`) into the run directory at `path` unless the run is complete,
    already failed, or its lock is held by another process (then nothing is written: that process
    owns the run). Returns whether the run is now marked failed."""
    import fcntl

    path = Path(path)
    status = run_status(path)
    if status in ("complete", "failed"):
        return status == "failed"
    check_owned(path, RUN_MARKS, "out", "a sparse_rl run directory", "a run directory of the sweep")
    path.mkdir(parents=True, exist_ok=True)
    fd = open_lock(path / LOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if run_status(path) in ("complete", "failed"):
            return run_status(path) == "failed"
        write_text_atomic(path / FAILED, message.rstrip("\n") + "\n")
        return True
    finally:
        os.close(fd)  # also releases the lock


def add_dense_matched(path: str | os.PathLike, info: dict) -> None:
    """Add `dense_matched` (width multiplier, param counts) to the run's summary.json."""
    summary_path = Path(path) / "summary.json"
    if not summary_path.is_file():
        return
    try:
        summary = read_json_checked(summary_path)
    except RunFileError:  # issue 16: left as it is; the sweep's table reports it
        return
    if summary.get("dense_matched") == info:
        return
    summary["dense_matched"] = info
    write_json_checked(summary_path, summary)


def _parse_cell(cell: dict):
    from sparse_rl.cli import build_train_args

    run, config = build_train_args(list(cell["argv"]))
    return dataclasses.replace(run, resume=bool(cell.get("resume")), progress=False), config


# The worker/parent convention for a cell a run error left as it was (a file error, a full disk,
# a refused resume: `errors.leaves_run_resumable`): the worker reports it "incomplete" and exits
# with LEFT_RESUMABLE; the parent then writes no FAILED for it, so a re-run of the sweep resumes it.
LEFT_RESUMABLE = 75  # EX_TEMPFAIL (sysexits.h): try again later


def worker_exit_status(results: list[dict]) -> int:
    """The worker's exit status for its cells' `results`: 0 all complete, LEFT_RESUMABLE when the
    only unfinished cells were left resumable, 1 when some cell failed."""
    if all(r["status"] == "complete" for r in results):
        return 0
    return LEFT_RESUMABLE if all(r["status"] in ("complete", "incomplete") for r in results) else 1


def execute_task(task: dict) -> list[dict]:
    """Run a task in this process. Returns `[{"id", "status", "error"}]`, one per cell; never raises
    for a failing run (KeyboardInterrupt excepted): a diverged run or an unexpected error is
    recorded as `FAILED` in the run directory, a run left resumable is reported "incomplete"."""
    cells = task["cells"]
    resumable = False
    try:
        alone = cells
        if task.get("vectorized") and len(cells) > 1:
            from sparse_rl.train.runner import train_group

            parsed = [_parse_cell(c) for c in cells]
            try:
                train_group([r for r, _ in parsed], [c for _, c in parsed],
                            summary_extra=[{"dense_matched": c["dense_matched"]} if c.get("dense_matched") else None
                                           for c in cells])
                alone = []
            except GroupResumeMismatch:
                # Found before anything is written (the parent groups cells by their newest
                # checkpoint's step, which a damaged newest checkpoint can belie): each resumes alone.
                pass
        for cell in alone:
            run, config = _parse_cell(cell)
            from sparse_rl.train.runner import train

            train(run, config)
            if cell.get("dense_matched"):
                add_dense_matched(cell["path"], cell["dense_matched"])
        error = None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - everything a run raises is recorded
        resumable = isinstance(e, Exception) and leaves_run_resumable(e)
        error = (f"{one_line(e)}\n" if resumable else
                 f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    results = []
    for cell in cells:
        status = run_status(cell["path"])
        if status != "complete" and error is not None and status != "failed" and not resumable:
            record_failure(cell["path"], error)
            status = run_status(cell["path"])
        if resumable and status == "absent":
            status = "incomplete"
        results.append({"id": cell["id"], "status": status,
                        "error": None if status == "complete" else (error or failure_message(cell["path"]))})
    return results


def failure_message(path) -> str | None:
    try:
        return (Path(path) / FAILED).read_text()
    except OSError:
        return None


def task_layer_macs(task: dict) -> int | None:
    """Multiply-adds of the largest layer one program of `task` runs per gradient step (a
    vectorized task's runs share one program), from its first cell; None when unknown (a cell
    that does not parse fails later, in `execute_task`, with its own error)."""
    from sparse_rl import agents

    cells = task.get("cells") or []
    try:
        run, config = _parse_cell(cells[0])
    except (LookupError, TypeError, ValueError):  # ConfigError is a ValueError
        return None
    macs = agents.spec(run.agent).update_layer_macs(config)
    return macs * len(cells) if macs is not None and task.get("vectorized") else macs


def main(argv=None) -> int:
    """`python -m sparse_rl.sweep.local TASK_JSON`: run one task (a worker process)."""
    from sparse_rl.train.dispatch import configure_training_process

    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    task = json.loads(argv[0])
    # A fresh process, before its first computation: at most the threads its environment gives
    # it (`worker_env`), one for small networks.
    configure_training_process(None, task_layer_macs(task))
    try:
        interrupt_on_sigterm()  # a job stopped by its scheduler: the cells stay resumable
        results = execute_task(task)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for r in results:
        line = f"cell {r['id']}: {r['status']}"
        if r["error"]:
            line += f": {first_line(r['error'])}"
        print(line, flush=True)
    return worker_exit_status(results)


def first_line(text: str | None) -> str:
    if not text:
        return ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


# ----------------------------------------------------------------------------- parent side

def last_step(run_dir: str | os.PathLike) -> int:
    """The step of the last row of a run's metrics.csv (0 if none), read from the file's tail."""
    path = Path(run_dir) / "metrics.csv"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return 0
    lines = [ln for ln in tail.split("\n")[:-1] if ln]  # a partial last line is ignored
    for line in reversed(lines):
        head = line.split(",", 1)[0]
        try:
            return int(float(head))
        except ValueError:
            continue
    return 0


class SweepProgress:
    """One display for the whole sweep: env steps over all runs, runs done, running, failed, ETA.

    A live line on a terminal, a plain line every `log_every` seconds otherwise (and a line per
    finished or failed run)."""

    def __init__(self, tasks: list[dict], stream=None, enabled: bool | None = None, log_every: float = 30.0):
        from sparse_rl.train.progress import Progress

        self.cells = {c["id"]: c for t in tasks for c in t["cells"]}
        self.start = {cid: (last_step(c["path"]) if c.get("resume") else 0) for cid, c in self.cells.items()}
        total = sum(int(c.get("steps") or 0) for c in self.cells.values())
        self.progress = Progress(total, enabled=enabled, label="sweep", stream=stream, min_interval=0.5,
                                 log_every=log_every, start_step=sum(self.start.values()))
        self.finished: dict[str, str] = {}
        self._last_poll = 0.0
        self._steps = sum(self.start.values())

    def cell_done(self, cid: str, status: str, message: str | None = None):
        self.finished[cid] = status
        text = f"{status}: {cid}"
        if message:
            text += f" ({first_line(message)})"
        if status != "complete" or not self.progress.enabled:
            self.progress.log(text)

    def update(self, running_ids, force: bool = False):
        now = time.monotonic()
        if not force and now - self._last_poll < 0.5:
            return
        self._last_poll = now
        steps = 0
        for cid, c in self.cells.items():
            if self.finished.get(cid) == "complete":
                steps += int(c.get("steps") or 0)
            elif cid in running_ids or cid in self.finished:
                # a run's last rows come before its summary: not done until it says so
                steps += min(max(self.start[cid], last_step(c["path"])), max(0, int(c.get("steps") or 0) - 1))
            else:
                steps += self.start[cid]
        self._steps = steps
        failed = sum(1 for s in self.finished.values() if s != "complete")
        done = sum(1 for s in self.finished.values() if s == "complete")
        self.progress.update(steps, runs=f"{done}/{len(self.cells)}", running=len(running_ids),
                             failed=failed)

    def close(self):
        self.progress.close()


PARENT_VAR = "SPARSE_RL_SWEEP_PARENT"


def _die_with_parent() -> None:
    """In a worker: ask Linux to send SIGTERM when the sweep process that started it dies (so a
    killed sweep leaves no orphan runs behind; their directories stay resumable)."""
    parent = os.environ.get(PARENT_VAR)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        return
    if str(os.getppid()) != parent:  # the sweep died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit status {code}"


def _last_line(log: Path) -> str:
    """The last non-empty line of a worker's log (its report of the cell left resumable)."""
    lines = [ln for ln in _tail(log, 5).splitlines() if ln.strip()]
    return lines[-1] if lines else "left resumable"


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def log_path(out: str | os.PathLike, task: dict) -> Path:
    """`<out>/logs/<cell id>.log`; a vectorized task: `<out>/logs/<group>/seeds-<a>-<b>.log`."""
    cells = task["cells"]
    if len(cells) == 1:
        return Path(out) / "logs" / f"{cells[0]['id']}.log"
    groups = list(dict.fromkeys(c["id"].rsplit("/", 1)[0] for c in cells))
    seeds = list(dict.fromkeys(c["id"].rsplit("seed", 1)[-1] for c in cells))
    if len(groups) == 1:
        return Path(out) / "logs" / groups[0] / f"seeds-{'-'.join(seeds)}.log"
    # several sparsity levels: <agent>/<env>/<first level>-to-<last level>-seeds-<first>-to-<last>
    parent, first = groups[0].rsplit("/", 1)
    last = groups[-1].rsplit("/", 1)[1]
    return Path(out) / "logs" / parent / f"{first}-to-{last}-seeds-{seeds[0]}-to-{seeds[-1]}.log"


def finalize_task(task: dict, returncode: int | None, log: Path | None, error: str | None = None) -> list[dict]:
    """Outcome of each cell of a finished task from its run directory; a worker that died without
    recording its failure gets `FAILED` written for it."""
    results = []
    for cell in task["cells"]:
        status = run_status(cell["path"])
        message = None
        # A worker stopped by a signal from outside (Ctrl-C, a scheduler's SIGTERM, possibly before
        # its handler was installed) was interrupted, not failed: a re-run of the sweep resumes it.
        interrupted = returncode in (130, -signal.SIGINT, -signal.SIGTERM) and error is None
        if status != "complete" and interrupted:
            status, message = "interrupted", "worker interrupted; re-run the sweep to resume"
        elif status != "complete" and returncode == LEFT_RESUMABLE and error is None:
            status = "incomplete"  # the worker left it as it was: a re-run of the sweep resumes it
            message = (f"{_last_line(log)}; re-run the sweep to resume" if log else
                       "left resumable; re-run the sweep to resume")
        elif status != "complete":
            why = error or (f"worker {describe_exit(returncode)}" if returncode else
                            "worker finished without completing the run")
            if status != "failed":
                detail = f"{why}\n" + (f"log: {log}\n{_tail(log)}" if log else "")
                record_failure(cell["path"], detail)
                status = run_status(cell["path"])
                if status != "failed":  # the lock is held by another process
                    status = "busy"
            message = failure_message(cell["path"]) or why
        results.append({"id": cell["id"], "status": status, "error": message})
    return results


def compile_cache_dir(out: str | os.PathLike) -> Path:
    """The sweep's shared JAX compilation cache: `<out>/.jax_cache`."""
    return Path(out) / ".jax_cache"


def run_local(tasks: list[dict], out: str, *, workers: int, threads: int | None = None,
              progress: SweepProgress | None = None, poll: float = 0.2, compile_cache: bool = True,
              command: Callable[[dict], list[str]] | None = None) -> list[dict]:
    """Run `tasks` in at most `workers` worker processes at a time; returns per-cell results.

    On KeyboardInterrupt the workers are interrupted too (their runs stay resumable) and the
    interrupt is re-raised once they have exited.
    """
    workers = max(1, int(workers))
    # One thread per run unless asked (--cpus-per-run): a run's numbers then do not depend on how
    # many workers the sweep happened to use (XLA's multi-threaded kernels may sum in another order).
    threads = 1 if threads is None else max(1, int(threads))
    env = worker_env(threads, share_accelerator=workers > 1,
                     compile_cache=compile_cache_dir(out) if compile_cache else None)
    env[PARENT_VAR] = str(os.getpid())
    command = command or (lambda task: [sys.executable, "-m", "sparse_rl.sweep.local", json.dumps(task)])
    pending = deque(tasks)
    running: dict[subprocess.Popen, tuple[dict, Path, object]] = {}
    results: list[dict] = []

    def running_ids():
        return {c["id"] for task, _, _ in running.values() for c in task["cells"]}

    try:
        while pending or running:
            while pending and len(running) < workers:
                task = pending.popleft()
                log = log_path(out, task)
                log.parent.mkdir(parents=True, exist_ok=True)
                logf = open(log, "a", buffering=1)
                logf.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} sparse-rl train "
                           + " | ".join(" ".join(c["argv"]) for c in task["cells"]) + "\n")
                logf.flush()
                proc = subprocess.Popen(command(task), stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env)
                running[proc] = (task, log, logf)
            for proc in [p for p in running if p.poll() is not None]:
                task, log, logf = running.pop(proc)
                logf.close()
                for r in finalize_task(task, proc.returncode, log):
                    results.append(r)
                    if progress:
                        progress.cell_done(r["id"], r["status"], r["error"])
            if progress:
                progress.update(running_ids())
            time.sleep(poll)
    except KeyboardInterrupt:
        _stop(running)
        raise
    finally:
        if progress:
            progress.update(running_ids(), force=True)
    return results


def _stop(running: dict, grace: float = 30.0) -> None:
    """Interrupt the workers (SIGINT: runs stop without being marked failed), then kill stragglers."""
    for proc in running:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT)
            except OSError:
                pass
    deadline = time.monotonic() + grace
    for proc, (_, _, logf) in running.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()


if __name__ == "__main__":
    from sparse_rl.process import exit_process

    exit_process(main())
