"""The run directory: one training run's files, its lock and its completion state.

```
runs/NAME/
  run.lock        held (fcntl.flock) by the process writing the run; never deleted
  config.json     the run's configuration (written atomically)
  metrics.csv     one row per log point (see metrics.py)
  summary.json    final results (written atomically)
  checkpoints/    see checkpoint.py
  tb/             optional TensorBoard event files (`--tensorboard`)
  analysis.csv    training-time analysis rows, with analysis.json, init_params.npz and
                  ever_active.npz (see sparse_rl.train.recorder)
  FAILED          the error message of a run that stopped on an error
  COMPLETE        written last, atomically, by `mark_complete()`
```

A directory holding `COMPLETE` is finished and is never reopened for writing. A directory with
content but no `COMPLETE` is an unfinished run: it is reopened only with `resume=True`.
`RunDir.status(path)` tells a sweep which of these a directory is, without taking the lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Literal, Sequence

from sparse_rl.errors import ConfigError, file_error, leaves_run_resumable
from sparse_rl.train.metrics import MetricsWriter
from sparse_rl.train.serialize import config_diff, to_jsonable

__all__ = ["RunDir", "run_status", "status", "write_json_atomic", "write_text_atomic", "fsync_dir",
           "open_lock", "check_owned", "write_json_checked", "read_json_checked"]

CONFIG = "config.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tb"
COMPLETE = "COMPLETE"
FAILED = "FAILED"
LOCK = "run.lock"
# Written by the training-time analysis recorder (sparse_rl.train.recorder).
ANALYSIS = "analysis.csv"
ANALYSIS_META = "analysis.json"
INIT_PARAMS = "init_params.npz"
EVER_ACTIVE = "ever_active.npz"
# A directory holding one of these (regular files) was made by sparse_rl as a run directory.
RUN_MARKS = (CONFIG, LOCK)

Status = Literal["complete", "failed", "incomplete", "absent"]


# ----------------------------------------------------------------------------- atomic files

def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that renames in it survive a crash (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str | bytes) -> None:
    """Write `text` to `path` atomically: a temporary file in the same directory, flushed and
    fsynced, then `os.replace`d over `path`, then the directory fsynced. Readers see either the
    old file or the new one, never a partial one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        tmp.unlink()  # a stale temporary file (or a link planted under its name) of a dead process
    except FileNotFoundError:
        pass
    try:
        # O_EXCL | O_NOFOLLOW: never write through a symbolic link (issue 16)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write `to_jsonable(obj)` as JSON to `path` atomically (see `write_text_atomic`)."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=True) + "\n"
    write_text_atomic(path, text)


CHECKSUM = "checksum"  # key of the sha256 that summary.json and sweep.json carry (issue 16)


def _json_digest(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != CHECKSUM}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_json_checked(path: str | os.PathLike, obj: Any) -> dict:
    """Write the JSON object `obj` with a `checksum` of its content (see `read_json_checked`),
    atomically; returns what was written (checksum included)."""
    doc = json.loads(json.dumps(to_jsonable(obj), allow_nan=True))  # as it will read back
    if not isinstance(doc, dict):
        raise TypeError(f"{path}: a checked JSON file holds an object, not {type(doc).__name__}")
    doc[CHECKSUM] = _json_digest(doc)
    write_json_atomic(path, doc)
    return doc


def read_json_checked(path: str | os.PathLike) -> dict:
    """The JSON object in `path`, verified against its `checksum`; `RunFileError` naming the file
    when it is unreadable, not an object, or changed since it was written. A file without a
    checksum (written before sparse_rl kept one) is accepted as it is."""
    path = Path(path)
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise file_error(path, "missing", "re-run the run that writes it") from None
    except (OSError, ValueError) as e:
        raise file_error(path, f"unreadable ({type(e).__name__})",
                         "delete it and re-run the run that writes it") from None
    if not isinstance(doc, dict):
        raise file_error(path, "not a JSON object", "delete it and re-run the run that writes it")
    if CHECKSUM in doc and doc[CHECKSUM] != _json_digest(doc):
        raise file_error(path, "checksum mismatch: the file was changed or corrupted",
                         "delete it and re-run the run that writes it")
    return doc


# ----------------------------------------------------------------------------- status

def _content(path: Path) -> list[str]:
    """Entries of a run directory other than the lock file and our temporary files."""
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [n for n in names if n != LOCK and not (n.startswith(".") and ".tmp-" in n)]


def has_marker(path: str | os.PathLike, name: str) -> bool:
    """Whether the run directory at `path` holds the marker `name` (`COMPLETE`, `FAILED`). A marker
    that is a symbolic link is refused (issue 16): through it any file would read as a finished or
    failed run, and a sweep would skip the cell."""
    marker = Path(path) / name
    if marker.is_symlink():
        raise ConfigError("out", f"{marker} is a symbolic link, not a marker sparse_rl wrote; "
                          "remove it and re-run")
    return marker.is_file()


def run_status(path: str | os.PathLike) -> Status:
    """What a run directory holds, without taking its lock:

    * ``"complete"``: `COMPLETE` is present (finished; a sweep skips it);
    * ``"failed"``: `FAILED` is present and `COMPLETE` is not;
    * ``"incomplete"``: other content (started, killed or still running; resumable);
    * ``"absent"``: no directory, or nothing in it but the lock file.
    """
    path = Path(path)
    if has_marker(path, COMPLETE):
        return "complete"
    if has_marker(path, FAILED):
        return "failed"
    return "incomplete" if _content(path) else "absent"


status = run_status  # `sparse_rl.train.rundir.status(path)`, as docs/CONTRACTS.md names it


def open_lock(path: str | os.PathLike, field: str = "out", *, create: bool = True) -> int:
    """Open the lock file at `path` for `fcntl.flock` and return its descriptor. A symbolic link or
    anything but a regular file is refused with `ConfigError(field)` (issue 16: truncating and
    writing a lock must never reach another file); so is a file that cannot be created."""
    path = Path(path)
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if path.is_symlink():
            raise ConfigError(field, f"{path} is a symbolic link; refusing to follow it",
                              "remove the link") from None
        if not create and isinstance(e, FileNotFoundError):
            raise
        raise ConfigError(field, f"cannot open the lock file {path}: {e.strerror or e}") from None
    import stat

    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(field, f"{path} is not a regular file; refusing to use it as a lock",
                          "remove it")
    return fd


def check_owned(path: str | os.PathLike, marks: Sequence[str], field: str, what: str,
                allowed: str) -> None:
    """Refuse (ConfigError naming `field`) an existing directory that holds files but none of
    `marks`, the files sparse_rl writes first into a directory of its own: issue 16, sparse_rl
    never creates or changes a file in a directory it did not make (`--out /`, a folder of the
    user's files), with or without --resume. Reads only."""
    path = Path(path)
    if not path.is_dir():
        return
    try:
        names = os.listdir(path)
    except OSError as e:
        raise ConfigError(field, f"cannot read {path}: {e.strerror or e}") from None
    if names and not any((path / m).is_file() and not (path / m).is_symlink() for m in marks):
        raise ConfigError(field, f"{path} is not {what} (it holds files but no "
                          f"{' or '.join(marks)}); refusing to write into it", allowed)


def _probe_lock(path: Path) -> bool:
    import fcntl

    try:
        fd = open_lock(path / LOCK, create=False)
    except (OSError, ConfigError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases a lock we may have taken
    return False


# ----------------------------------------------------------------------------- RunDir

class RunDir:
    """One run directory, locked for the lifetime of this object.

    `RunDir(path)` creates the directory (parents too) and takes an exclusive, non-blocking
    `flock` on `run.lock`; it raises `ConfigError` naming `out` when

    * another process holds the lock ("run directory is in use by another process"),
    * the directory holds a finished run (`COMPLETE`): finished results are never overwritten,
      with or without `resume`,
    * the directory holds an unfinished run and `resume` is False (the message suggests
      `--resume`).

    With `resume=True` an unfinished (or failed) run is reopened: a `FAILED` marker is removed, as
    the run is being retried; `fresh` tells whether there was anything to resume. The lock is held
    until `release()` (or the end of a `with` block, or process exit: the OS drops it even on
    kill -9). Leaving a `with` block on an exception (not KeyboardInterrupt, nor one that leaves
    the run resumable: `errors.leaves_run_resumable`) writes `FAILED` with the exception's message
    unless the run is complete or `FAILED` was written already.

    An existing directory that holds files but no `config.json` or `run.lock` is not a run
    directory: it is refused before anything is created in it (`check_owned`), and `run.lock`
    is never opened through a symbolic link (`open_lock`)."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False):
        import fcntl

        self.path = Path(path)
        self.resume = bool(resume)
        self._lock_fd: int | None = None
        self._metrics: MetricsWriter | None = None
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError("out", f"{self.path} exists and is not a directory")
        check_owned(self.path, RUN_MARKS, "out", "a sparse_rl run directory",
                    "a new or empty directory, or a run directory written by sparse-rl train")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError("out", f"cannot create run directory {self.path}: "
                              f"{e.strerror or e}") from None
        fd = open_lock(self.path / LOCK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError("out", f"run directory is in use by another process: {self.path}",
                              "a directory no other run is writing") from None
        except OSError as e:
            os.close(fd)
            raise ConfigError("out", f"cannot lock {self.path / LOCK}: {e.strerror or e}") from None
        self._lock_fd = fd
        try:
            self._check_state()
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            self.release()
            raise

    def _check_state(self) -> None:
        if has_marker(self.path, COMPLETE):
            raise ConfigError("out", f"{self.path} holds a finished run (COMPLETE); refusing to "
                              "overwrite finished results", f"a new directory: --out {self.path}-2")
        content = _content(self.path)
        self.fresh = not content
        if content and not self.resume:
            raise ConfigError("out", f"{self.path} holds an unfinished run; pass --resume to "
                              "continue it, or choose a new directory")
        if self.resume and has_marker(self.path, FAILED):
            (self.path / FAILED).unlink()
            fsync_dir(self.path)

    # --- paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    # --- state
    status = staticmethod(run_status)

    @staticmethod
    def in_use(path: str | os.PathLike) -> bool:
        """Whether some process (this one included) holds the lock of the run at `path`."""
        return _probe_lock(Path(path))

    @property
    def is_complete(self) -> bool:
        return has_marker(self.path, COMPLETE)

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise RuntimeError(f"run directory {self.path} was released")
        if self.is_complete:
            raise RuntimeError(f"run directory {self.path} is complete; it is not written again")

    # --- files
    def write_config(self, config: Any, *, ignore: Sequence[str] = ()) -> None:
        """Write `config.json` (a dataclass or a dict). When resuming a run that already has one,
        check instead that `config` equals it (dotted keys in `ignore` excepted, e.g. the number
        of steps of an extended run) and raise `ConfigError` naming the keys that differ; the file
        is then left as it was."""
        self._check_open()
        if self.config_path.exists():
            try:
                old = json.loads(self.config_path.read_text())
            except (OSError, ValueError) as e:
                raise ConfigError("out", f"{self.config_path} is unreadable ({e}); cannot "
                                  "check that the resumed run has the same config") from None
            diff = config_diff(old, config, ignore=tuple(ignore))
            if diff:
                shown = ", ".join(diff[:8]) + (", ..." if len(diff) > 8 else "")
                raise ConfigError("config", f"differs from the run being resumed in "
                                  f"{self.path} at: {shown}", "the original run's settings")
            return
        write_json_atomic(self.config_path, config)

    def read_config(self) -> dict | None:
        """The contents of `config.json`, or None if there is none yet."""
        if not self.config_path.exists():
            return None
        return json.loads(self.config_path.read_text())

    def open_metrics(self, fieldnames: Sequence[str], **kwargs) -> MetricsWriter:
        """Open `metrics.csv` with this header (appending when resuming; see `MetricsWriter`)."""
        self._check_open()
        if self._metrics is not None:
            self._metrics.close()
        self._metrics = MetricsWriter(self.metrics_path, fieldnames, **kwargs)
        return self._metrics

    @property
    def metrics(self) -> MetricsWriter:
        """The writer made by `open_metrics`."""
        if self._metrics is None:
            raise RuntimeError("call open_metrics(fieldnames) before using RunDir.metrics")
        return self._metrics

    def write_summary(self, summary: Any) -> None:
        """Write `summary.json` atomically, with a checksum."""
        self._check_open()
        write_json_checked(self.summary_path, summary)

    def mark_failed(self, message: str) -> None:
        """Write `FAILED` holding `message` (atomically). A failed run can be retried with
        `resume=True`, which removes the marker."""
        self._check_open()
        if self._metrics is not None:
            self._metrics.flush(sync=True)
        write_text_atomic(self.path / FAILED, str(message).rstrip("\n") + "\n")

    def mark_complete(self) -> None:
        """Close the metrics file and write `COMPLETE` atomically, last. From then on the
        directory is never written again (this object refuses further writes)."""
        self._check_open()
        if self._metrics is not None:
            self._metrics.close()
        if (self.path / FAILED).exists():
            (self.path / FAILED).unlink()
        fsync_dir(self.path)
        info = {"completed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            from sparse_rl import __version__
            info["library_version"] = __version__
        except ImportError:  # pragma: no cover
            pass
        write_json_atomic(self.path / COMPLETE, info)

    # --- lifetime
    def release(self) -> None:
        """Close the metrics file and drop the lock (idempotent)."""
        if self._metrics is not None:
            try:
                self._metrics.close()
            finally:
                self._metrics = None
        if self._lock_fd is not None:
            import fcntl

            fd, self._lock_fd = self._lock_fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    close = release

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if (exc is not None and isinstance(exc, Exception) and self._lock_fd is not None
                    and not leaves_run_resumable(exc) and not self.is_complete and not (self.path / FAILED).exists()):
                message = f"{type(exc).__name__}: {exc}".replace("\n", " ")
                try:
                    self.mark_failed(message)
                except Exception:
                    pass
        finally:
            self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, resume={self.resume})"
