"""A run's clocks: wall time across resumes, and steps per second since the last mark."""

import time


class RunClock:
    """Wall time of a run (including time spent before a resume) and throughput between marks."""

    def __init__(self):
        self._start = time.perf_counter()
        self._offset = 0.0  # wall time already spent before a resume
        self._sps_mark = (0, time.perf_counter())

    def resume_from(self, wall_time: float) -> None:
        """Continue a run that had already spent `wall_time` seconds (from its checkpoint)."""
        self._offset = float(wall_time)
        self._start = time.perf_counter()

    def wall_time(self) -> float:
        return self._offset + time.perf_counter() - self._start

    def sps(self, step: int) -> float:
        """Steps per second since the previous call (or `reset_sps`); marks `step` now."""
        last_step, last_time = self._sps_mark
        now = time.perf_counter()
        self._sps_mark = (step, now)
        return (step - last_step) / max(now - last_time, 1e-9)

    def reset_sps(self, step: int) -> None:
        self._sps_mark = (step, time.perf_counter())
