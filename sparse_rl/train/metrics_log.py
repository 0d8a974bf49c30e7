"""A run's metrics log: metrics.csv (and TensorBoard events when asked), cut back on resume."""

import numpy as np

from sparse_rl.train.faults import kill_point
from sparse_rl.train.metrics import MetricsWriter, TensorBoardWriter
from sparse_rl.train.rundir import RunDir

BASE_COLUMNS = (
    "step", "wall_time", "train_return", "train_episodes", "eval_return_mean", "eval_return_std",
    "sparsity", "sps",
)


class MetricsLog:
    """Rows of metrics.csv and, with `tensorboard`, the same values as TensorBoard scalars."""

    def __init__(self, rundir: RunDir, tensorboard: bool):
        self.rundir = rundir
        self.tensorboard_enabled = tensorboard
        self.metrics: MetricsWriter | None = None
        self.tensorboard: TensorBoardWriter | None = None

    def open(self, extra_columns, resume_step: int | None) -> list[str]:
        """Open the log with the base columns then `extra_columns`; on resume drop rows after `resume_step`."""
        columns = list(BASE_COLUMNS) + [c for c in extra_columns if c not in BASE_COLUMNS]
        # Each row is flushed to the OS at once (a killed process loses none) but fsynced only when
        # a checkpoint records the file or the run ends (`sync`): an fsync per row was ~16 ms on
        # this machine's disk, 3% of a 30k-step DQN CartPole run (issue 15). After a machine crash
        # rows newer than the last checkpoint may be lost, which a resume cuts and rewrites anyway.
        self.metrics = MetricsWriter(self.rundir.metrics_path, columns, fsync=False)
        self.metrics.truncate_after(-1 if resume_step is None else resume_step)
        if self.tensorboard_enabled:
            self.tensorboard = TensorBoardWriter(self.rundir.tensorboard_dir, truncate_after=resume_step)
        return columns

    def write(self, row: dict) -> dict:
        """Write one row (values as floats where they are numbers); returns the row written."""
        row = {k: to_float(v) for k, v in row.items()}
        self.metrics.write(row)
        if self.tensorboard is not None:
            self.tensorboard.write(int(row["step"]), {k: v for k, v in row.items() if k != "step"})
        kill_point("log", int(row["step"]))  # test hook (faults.py)
        return row

    def sync(self) -> None:
        """fsync the rows written so far (before a checkpoint records them, and at the end)."""
        if self.metrics is not None:
            self.metrics.flush(sync=True)

    def close(self) -> None:
        try:  # a finished run synced at its summary; this is for a run stopped by an error
            self.sync()
        except OSError:  # (a full disk): the error that stopped the run is the one to report
            pass
        if self.tensorboard is not None:
            self.tensorboard.close()


def to_float(value):
    if value is None or isinstance(value, (int, np.integer)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
