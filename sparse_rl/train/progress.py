"""A live progress line for long work: steps, SPS, recent return, sparsity, ETA.

On a terminal, `Progress.update` rewrites one line (carriage return) at most a few times a second:

    dqn CartPole-v1  12,000/50,000  24.0%  1,530 SPS  return 187.3  sparsity 0.9  ETA 0:24

When the stream is not a terminal (a log file, a cluster job) nothing is printed except `log(msg)`
lines and plain progress lines: every `log_every` seconds when given, and each time another
`fraction_every` of the steps is done when given (a training run: every 5%).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "format_eta"]


def format_eta(seconds: float | None) -> str:
    """`M:SS` under an hour, `H:MM:SS` under a day, `Dd HH:MM:SS` beyond; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    total = max(0, int(round(seconds)))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def _format_field(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number.is_integer() and abs(number) < 1e15:
        return f"{int(number):,}" if abs(number) >= 1000 else f"{number:g}"
    return f"{number:.4g}"


class Progress:
    """Progress of `total_steps` steps.

    `enabled=None` means "if `stream` (default `sys.stderr`) is a terminal". `update(step,
    **fields)` redraws at most every `min_interval` seconds (and always on the last step); fields
    (e.g. `ret=187.3, sparsity=0.9`; None values skipped) are shown as `name value` after the
    smoothed steps per second and before the ETA (`return` is shown for a field named `ret`; a
    field named `sps` replaces the measured steps per second, for callers that measure their own).
    `start_step` is where a resumed run starts, so that its SPS is not inflated. `log(msg)` prints
    a line above the live line (or plainly when disabled). `close()` ends the line.
    """

    def __init__(self, total_steps: int, enabled: bool | None = None, label: str = "", *,
                 stream: TextIO | None = None, min_interval: float = 0.2,
                 log_every: float | None = None, fraction_every: float | None = None,
                 start_step: int = 0, smoothing: float = 0.3, clock=time.monotonic):
        self.total = max(0, int(total_steps))
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            try:
                enabled = bool(self.stream.isatty())
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self.label = label
        self.min_interval = float(min_interval)
        self.log_every = log_every
        self.fraction_every = fraction_every
        self._next_fraction_step = self._fraction_step_after(int(start_step))
        self.smoothing = float(smoothing)
        self._clock = clock
        self._start_time = clock()
        self._last_time = self._start_time
        self._last_step = int(start_step)
        self._last_draw = -math.inf
        self._last_log = self._start_time
        self._sps: float | None = None
        self._width = 0
        self._line = ""
        self._closed = False
        self._fields: dict[str, Any] = {}
        self._update_time = self._start_time
        self._drawn_step: int | None = None
        self.step = int(start_step)

    def _fraction_step_after(self, step: int) -> float:
        """The first step past `step` at which another `fraction_every` of the total is done."""
        if not self.fraction_every or not self.total:
            return math.inf
        every = self.fraction_every * self.total
        return (math.floor(step / every) + 1) * every

    # --- measurements
    @property
    def sps(self) -> float | None:
        """Smoothed steps per second (None before the first measurement)."""
        return self._sps

    def _measure(self, now: float) -> None:
        dt = now - self._last_time
        if dt <= 0:
            return
        rate = (self.step - self._last_step) / dt
        self._sps = rate if self._sps is None else (
            self.smoothing * rate + (1 - self.smoothing) * self._sps)
        self._last_time, self._last_step = now, self.step

    def _measure_since_start(self, now: float) -> None:
        """Plain lines are far apart: the mean rate since the previous line, not smoothed."""
        dt = now - self._last_time
        if dt > 0:
            self._sps = (self.step - self._last_step) / dt
            self._last_time, self._last_step = now, self.step

    def eta(self, sps: float | None = None) -> float | None:
        sps = self._sps if sps is None else sps
        if not sps or sps <= 0 or not math.isfinite(sps):
            return None
        return max(0, self.total - self.step) / sps

    def format_line(self, fields: dict[str, Any]) -> str:
        fields = dict(fields)
        sps = fields.pop("sps", None)
        try:
            sps = self._sps if sps is None else float(sps)
        except (TypeError, ValueError):
            sps = self._sps
        parts = [self.label] if self.label else []
        width = len(f"{self.total:,}")
        parts.append(f"{self.step:>{width},}/{self.total:,}")
        if self.total:
            parts.append(f"{100.0 * min(self.step, self.total) / self.total:5.1f}%")
        parts.append(f"{sps:,.0f} SPS" if sps is not None and math.isfinite(sps) else "- SPS")
        for name, value in fields.items():
            if value is None:
                continue
            parts.append(f"{'return' if name == 'ret' else name} {_format_field(value)}")
        parts.append(f"ETA {format_eta(self.eta(sps))}")
        return "  ".join(parts)

    # --- output
    def update(self, step: int, **fields: Any) -> None:
        """Record that `step` steps are done; redraw if it is time to."""
        if self._closed:
            return
        self.step = int(step)
        self._fields = fields
        now = self._update_time = self._clock()
        last = self.total > 0 and self.step >= self.total
        if self.enabled:
            if last or now - self._last_draw >= self.min_interval:
                self._measure(now)
                self._last_draw = now
                self._draw(self.format_line(fields))
        elif ((self.log_every is not None and (now - self._last_log >= self.log_every or last))
              or self.step >= self._next_fraction_step):
            self._measure_since_start(now) if self.fraction_every else self._measure(now)
            self._last_log = now
            self._next_fraction_step = self._fraction_step_after(self.step)
            self._print(self.format_line(fields))

    def _terminal_width(self) -> int:
        return shutil.get_terminal_size((120, 24)).columns

    def _draw(self, line: str) -> None:
        line = line[: max(10, self._terminal_width() - 1)]
        pad = max(0, self._width - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width = len(line)
        self._line = line
        self._drawn_step = self.step

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def log(self, msg: str) -> None:
        """Print `msg` on its own line (above the live line when enabled)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._print(str(msg))
            self._width, drawn = 0, self._drawn_step
            self._draw(self._line)          # the same line again, same step
            self._drawn_step = drawn
        else:
            self._print(str(msg))

    def close(self) -> None:
        """Show the last update (if not shown yet) and end the live line with a newline
        (idempotent; prints nothing when disabled)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled and self._drawn_step is not None and self._drawn_step != self.step:
            self._measure(self._update_time)
            self._draw(self.format_line(self._fields))
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
