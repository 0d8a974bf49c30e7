"""A run's start-up: seconds from the process's start to its first environment step, and parts.

Issue 15: for short runs and sweeps of many runs the fixed cost of a process (interpreter,
imports, building the agent, tracing and compiling or loading its programs) matters as much as
the per-step cost. A loop marks the moments below (`time.perf_counter()` values); `report`
turns them into the `startup` entry of summary.json.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

# The marks, in the order a run passes them; each part of the report is the time from the mark
# before to this one.
MARKS = ("context", "init_start", "init_done", "first_step")
PARTS = {"context": "before_run_seconds", "init_start": "setup_seconds", "init_done": "init_seconds",
         "first_step": "to_first_step_seconds"}


def process_seconds(stat_text: str | None = None, now: float | None = None) -> float | None:
    """Seconds since this process started, from Linux's /proc (start time in clock ticks since
    boot) and the boot-time clock; None where they are missing or unreadable."""
    try:
        if stat_text is None:
            with open("/proc/self/stat") as f:
                stat_text = f.read()
        # Field 22 (starttime); the command name (field 2) may hold spaces, so count after its ')'.
        start_ticks = int(stat_text.rsplit(")", 1)[1].split()[19])
        if now is None:
            now = time.clock_gettime(time.CLOCK_BOOTTIME)
        seconds = now - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return seconds if seconds >= 0 else None


def report(marks: Mapping[str, float], compile_seconds: float, since_start: float | None,
           now: float) -> dict:
    """The `startup` entry of summary.json from perf_counter `marks` (see MARKS) read at `now`,
    when the process had been running `since_start` seconds (None: unknown): `seconds` (process
    start to the first env step), `before_run_seconds` (interpreter, imports, argument parsing,
    agent and env spec, run directory), `setup_seconds` (config.json, envs, replay buffers),
    `init_seconds` (the keys and the agent's init, its compilation included),
    `to_first_step_seconds` (checkpoint, metric columns, recorders, the first act call with its
    compilation, the first env step) and `compile_seconds` (init and loop programs compiled by
    then)."""
    origin = None if since_start is None else now - since_start
    out: dict = {"seconds": None if origin is None or "first_step" not in marks else marks["first_step"] - origin}
    previous = origin
    for name in MARKS:
        if name not in marks:
            continue
        out[PARTS[name]] = None if previous is None else marks[name] - previous
        previous = marks[name]
    out["compile_seconds"] = float(compile_seconds)
    return out
