"""Hooks into a training run: called with each metrics row and each evaluation.

Subclass `Callback` and override what you need; pass instances to `sparse_rl.train(...,
callbacks=[...])` (or `runner.train(run, config, callbacks=...)`). Callbacks observe: they get
copies of the numbers written to metrics.csv and cannot change training, so a run with callbacks
gives the same results as one without.
"""

from __future__ import annotations

import math
from typing import Any


class Callback:
    """Base class: every hook does nothing."""

    def on_start(self, run_dir: str, config: dict) -> None:
        """Before the first step: the run directory and config.json's contents."""

    def on_metrics(self, row: dict[str, Any]) -> None:
        """After each metrics row is written (a dict of metrics.csv's columns, `step` included)."""

    def on_evaluation(self, step: int, return_mean: float, return_std: float) -> None:
        """After each evaluation (mean and std of the evaluation episodes' returns)."""

    def on_end(self, summary: dict[str, Any]) -> None:
        """After summary.json is written (a finished run)."""


def notify_row(callbacks, row: dict[str, Any]) -> None:
    """Call `on_metrics` (and `on_evaluation` when the row holds one) of every callback."""
    mean = row.get("eval_return_mean")
    evaluated = isinstance(mean, float) and math.isfinite(mean)
    for callback in callbacks:
        callback.on_metrics(dict(row))
        if evaluated:
            callback.on_evaluation(int(row["step"]), mean, float(row.get("eval_return_std") or 0.0))


class WandbCallback(Callback):
    """Log metrics rows, evaluations and the summary to Weights & Biases (extra `[wandb]`).

    `wandb.init` gets `project`, the run's config and `init_kwargs`; set `WANDB_MODE=offline` (or
    `disabled`) to keep everything on this machine."""

    def __init__(self, project: str = "sparse_rl", **init_kwargs: Any):
        from sparse_rl.extras import require

        self._wandb = require("wandb", "wandb")
        self.project, self.init_kwargs = project, init_kwargs
        self.run = None

    def on_start(self, run_dir: str, config: dict) -> None:
        self.run = self._wandb.init(project=self.project, config=config, dir=run_dir,
                                    name=self.init_kwargs.pop("name", run_dir.rstrip("/").split("/")[-1]),
                                    **self.init_kwargs)

    def on_metrics(self, row: dict[str, Any]) -> None:
        values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        self.run.log(values, step=int(row["step"]))

    def on_end(self, summary: dict[str, Any]) -> None:
        for key in ("final_eval_return", "sparsity", "nonzero_params", "total_params", "steps_per_second"):
            self.run.summary[key] = summary.get(key)
        self.run.finish()
