"""What a checkpoint records about the other files of its run, and the check on resume.

A resume continues from a checkpoint at step S and keeps the rows of `metrics.csv` and
`analysis.csv` up to S, and the analysis's `init_params.npz` (the distance-from-init columns) and
`ever_active.npz`. A truncated, deleted or edited file would otherwise make the resumed run silently
short (issue 16). So each checkpoint records, for each CSV file, its size, its number of rows and
the sha256 of its bytes at that moment (the rows are written before the checkpoint and never
rewritten: a resume only cuts rows after its own checkpoint), the sha256 of `init_params.npz`
(written once), and whether `ever_active.npz` existed (it is rewritten at later topology updates,
so it must only stay readable).

`check(run_path, recorded, step)` verifies all of them without writing anything and raises one
`RunFileError` naming the first file that differs and what to do; `cut(run_path, recorded)` then
drops the rows written after the checkpoint. `checkpoint.load_latest_valid(accept=...)` tries older
checkpoints when the newest one's files do not match, so that a CSV cut back to an earlier
checkpoint's rows still resumes exactly from that checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Mapping

from sparse_rl.errors import file_error
from sparse_rl.train.rundir import ANALYSIS, EVER_ACTIVE, INIT_PARAMS, METRICS

__all__ = ["CSV_FILES", "ONCE_FILES", "READABLE_FILES", "record", "check", "cut"]

# The run directory's files a resume relies on: rows appended up to the checkpoint; written once
# at the start; rewritten later.
CSV_FILES = (METRICS, ANALYSIS)
ONCE_FILES = (INIT_PARAMS,)
READABLE_FILES = (EVER_ACTIVE,)

_RESTART = "restore it, or train again in a new directory"


def _read(path: Path, size: int | None = None) -> bytes | None:
    """The first `size` bytes of `path` (all if None); None if it does not exist. Symbolic links
    are not followed: a run's files are regular files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        if path.is_symlink():
            raise file_error(path, "is a symbolic link; refusing to follow it", _RESTART) from None
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read() if size is None else f.read(size)


def record(run_path: str | os.PathLike) -> dict:
    """`{file name: facts}` of the run's files as they are now, for a checkpoint's manifest."""
    run_path = Path(run_path)
    out: dict = {}
    for name in CSV_FILES:
        data = _read(run_path / name)
        if data is not None:
            data = data[: data.rfind(b"\n") + 1]  # complete rows only
            out[name] = {"bytes": len(data), "rows": max(data.count(b"\n") - 1, 0),
                         "sha256": hashlib.sha256(data).hexdigest()}
    for name in ONCE_FILES:
        data = _read(run_path / name)
        if data is not None:
            out[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    for name in READABLE_FILES:
        if (run_path / name).is_file():
            out[name] = {"present": True}
    return out


def _check_zip(path: Path) -> str | None:
    """Why the npz at `path` cannot be read (None if every member reads back with a good CRC)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    return None if bad is None else f"corrupt (bad CRC in {bad})"


def check(run_path: str | os.PathLike, recorded: Mapping | None, step: int) -> None:
    """Raise `RunFileError` unless the run's files hold what the checkpoint at `step` recorded
    (`recorded`: its `record()`; None for a checkpoint written before this check existed, which is
    accepted as it is). Reads only; writes nothing."""
    if not recorded:
        return
    run_path = Path(run_path)
    for name in CSV_FILES:
        facts = recorded.get(name)
        if not facts:
            continue
        path, rows = run_path / name, int(facts["rows"])
        data = _read(path, int(facts["bytes"]))
        if data is None:
            raise file_error(path, f"missing, but the checkpoint at step {step} recorded {rows} "
                             "rows", _RESTART)
        if hashlib.sha256(data).hexdigest() != facts["sha256"]:
            found = data.count(b"\n") - 1 if len(data) == int(facts["bytes"]) else "fewer"
            raise file_error(path, f"rows up to step {step} differ from what the checkpoint at "
                             f"step {step} recorded ({rows} rows expected, {found} found intact)",
                             _RESTART)
    for name in ONCE_FILES:
        facts = recorded.get(name)
        if not facts:
            continue
        path = run_path / name
        data = _read(path)
        if data is None:
            raise file_error(path, f"missing, but the checkpoint at step {step} recorded it",
                             _RESTART)
        if hashlib.sha256(data).hexdigest() != facts["sha256"]:
            raise file_error(path, f"differs from what the checkpoint at step {step} recorded "
                             "(corrupt or replaced)", _RESTART)
    for name in READABLE_FILES:
        if not recorded.get(name):
            continue
        path = run_path / name
        if not path.is_file() or path.is_symlink():
            raise file_error(path, f"missing, but the checkpoint at step {step} recorded it",
                             _RESTART)
        problem = _check_zip(path)
        if problem is not None:
            raise file_error(path, problem, _RESTART)


def cut(run_path: str | os.PathLike, recorded: Mapping | None) -> None:
    """Drop the rows of each CSV file written after the checkpoint (call after `check`)."""
    if not recorded:
        return
    for name in CSV_FILES:
        facts = recorded.get(name)
        path = Path(run_path) / name
        if facts and path.is_file() and path.stat().st_size > int(facts["bytes"]):
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            try:
                os.ftruncate(fd, int(facts["bytes"]))
                os.fsync(fd)
            finally:
                os.close(fd)
