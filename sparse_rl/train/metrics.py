"""Metrics: a CSV file with a fixed header, and optional TensorBoard scalars.

`MetricsWriter` appends one row per `write` call and flushes (and by default fsyncs) it at once, so a
crash never loses a written row. Every row is one physical line (strings have their line breaks
replaced), which lets `truncate_after(step)` cut the file back to the rows of a checkpoint's step
when a killed run is resumed: the resumed run then writes exactly the rows an uninterrupted run
would have written, and (for the columns that do not measure wall time) the same bytes.

Values: ints as ints, floats as `repr(float(x))` (shortest string that reads back to the same
float64; nan / inf as `nan` / `inf`), bools as 1 / 0, missing or None as an empty field.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sparse_rl.errors import file_error

__all__ = ["MetricsWriter", "read_metrics", "TensorBoardWriter", "format_value"]


def format_value(value: Any) -> str:
    """The CSV text of one metric value (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.ndim != 0:
            raise ValueError(f"metric values must be scalars, got an array of shape {arr.shape}")
        value = arr.item()
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(float(value))
    text = str(value)
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _line(values: Iterable[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(values))
    return buf.getvalue()


def _parse_line(line: str) -> list[str]:
    return next(csv.reader([line.rstrip("\n")]), [])


class MetricsWriter:
    """Append-only CSV metrics file with the header `fieldnames`.

    A new (or empty) file gets the header. An existing file with the same header is opened for
    appending (a trailing partial line left by a crash is removed); a different header raises
    `ValueError` naming the file. `write(row)` takes a mapping whose keys are a subset of the
    header (an unknown key raises `ValueError`; missing ones are written empty). On resume, call
    `truncate_after(checkpoint_step)` before writing: rows with a step greater than the
    checkpoint's are dropped (`step_field` names the step column).
    """

    def __init__(self, path: str | os.PathLike, fieldnames: Sequence[str], *,
                 step_field: str = "step", fsync: bool = True):
        self.path = Path(path)
        self.fieldnames = tuple(str(f) for f in fieldnames)
        if not self.fieldnames:
            raise ValueError("metrics: fieldnames must not be empty")
        if len(set(self.fieldnames)) != len(self.fieldnames):
            raise ValueError(f"metrics: duplicate field names in {self.fieldnames}")
        if step_field not in self.fieldnames:
            raise ValueError(f"metrics: step field {step_field!r} is not among the fields "
                             f"{', '.join(self.fieldnames)}")
        self.step_field = step_field
        self._step_index = self.fieldnames.index(step_field)
        self._fields = set(self.fieldnames)
        self._fsync = fsync
        self._header = _line(self.fieldnames)
        self._file = None
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # never appended to through a symbolic link (issue 16)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if self.path.is_symlink():
                raise file_error(self.path, "is a symbolic link; refusing to follow it",
                                 "replace it with the run's own file") from None
            raise
        f = os.fdopen(fd, "a+b")
        try:
            f.seek(0)
            data = f.read()
            header_end = data.find(b"\n")
            if header_end < 0:  # new, empty, or header cut short by a crash
                f.truncate(0)
                f.write(self._header.encode("utf-8"))
            else:
                header = data[:header_end + 1].decode("utf-8", errors="replace")
                if header != self._header:
                    raise file_error(self.path, f"existing header ({_clip(header.strip())}) "
                                     f"differs from this run's fields ({_clip(self._header.strip())})",
                                     "move the file aside, or train in a new directory")
                if not data.endswith(b"\n"):  # partial last row from a crash
                    f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            raise
        f.seek(0, os.SEEK_END)
        self._file = f

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, row: Mapping[str, Any] | None = None, /, **values: Any) -> None:
        """Append one row (a mapping and/or keyword values) and flush it to disk."""
        if self._file is None:
            raise RuntimeError(f"metrics file {self.path} is closed")
        merged = dict(row or {}, **values)
        unknown = [k for k in merged if k not in self._fields]
        if unknown:
            raise ValueError(f"metrics: unknown field {unknown[0]!r} "
                             f"(fields: {', '.join(self.fieldnames)})")
        line = _line(format_value(merged.get(k)) for k in self.fieldnames)
        self._file.write(line.encode("utf-8"))
        self.flush()

    __call__ = write

    def flush(self, sync: bool | None = None) -> None:
        """Flush written rows to the OS (and fsync them if `sync`, default: the `fsync` option)."""
        if self._file is None:
            return
        self._file.flush()
        if self._fsync if sync is None else sync:
            os.fsync(self._file.fileno())

    def truncate_after(self, step: int | None) -> int:
        """Drop every row from the first one whose step is greater than `step` on (all rows if
        `step` is None); returns the number of rows dropped. Rows with an empty step are kept."""
        if self._file is None:
            raise RuntimeError(f"metrics file {self.path} is closed")
        self._file.flush()
        self._file.seek(0)
        data = self._file.read()
        offset = data.find(b"\n") + 1
        cut = None
        dropped = 0
        pos = offset
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end < 0:
                break
            if cut is None:  # a damaged byte in a row after the checkpoint: that row is cut
                fields = _parse_line(data[pos:end].decode("utf-8", errors="replace"))
                text = fields[self._step_index] if self._step_index < len(fields) else ""
                try:
                    later = step is None or (text != "" and float(text) > step)
                except ValueError:  # not a number: not a step, keep the row
                    later = False
                if later:
                    cut = pos
            if cut is not None:
                dropped += 1
            pos = end + 1
        if cut is None:
            cut = pos
        self._file.truncate(cut)
        self._file.seek(0, os.SEEK_END)
        self.flush(sync=True)
        return dropped

    def close(self) -> None:
        if self._file is not None:
            try:
                self.flush()
            finally:
                self._file.close()
                self._file = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def read_metrics(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a metrics CSV into `{column: array}`: float64 arrays (NaN for empty fields) for numeric
    columns, string arrays for columns that hold text. A trailing partial line is ignored."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:  # issue 16: one line naming the file, never a traceback
        raise file_error(path, f"not valid UTF-8 at byte {e.start} (corrupt)",
                         "restore it, or train the run again") from None
    if not text:
        return {}
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise file_error(path, f"not a CSV file ({e})", "restore it, or train the run again") from None
    if not rows:
        return {}
    header, body = rows[0], rows[1:]
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        column = [r[j] if j < len(r) else "" for r in body]
        try:
            out[name] = np.array([float(v) if v != "" else math.nan for v in column],
                                 dtype=np.float64)
        except ValueError:
            out[name] = np.array(column, dtype=str)
    return out


class TensorBoardWriter:
    """Scalars to TensorBoard event files (tensorboardX), for `--tensorboard`.

    `write(step, {name: value})` logs every numeric value (None and text are skipped). When a run is
    resumed from a checkpoint at step S, pass `truncate_after=S`: TensorBoard then hides the events
    an earlier attempt wrote after S (tensorboardX `purge_step`), like `MetricsWriter.truncate_after`.
    """

    def __init__(self, logdir: str | os.PathLike, *, truncate_after: int | None = None,
                 flush_secs: int = 30):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            from sparse_rl.errors import ConfigError
            raise ConfigError("tensorboard", "needs the tensorboardX package",
                              "pip install tensorboardX") from None
        purge = None if truncate_after is None else int(truncate_after) + 1
        self.logdir = Path(logdir)
        self._writer = SummaryWriter(logdir=str(self.logdir), purge_step=purge,
                                     flush_secs=flush_secs)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        for name, value in scalars.items():
            if value is None or isinstance(value, str):
                continue
            try:
                number = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
            self._writer.add_scalar(name, number, global_step=int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TensorBoardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
