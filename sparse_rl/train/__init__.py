"""Training-run infrastructure: run directories, metrics, checkpoints, progress, config JSON.

Importing this package does not import JAX (checkpoint functions import it when called).
Calling it trains an agent: `sparse_rl.train("dqn", "CartPole-v1", ...)` is `sparse_rl.api.train`.
"""

import sys
import types

from sparse_rl.train import checkpoint
from sparse_rl.train.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    Restored,
)
from sparse_rl.train.metrics import MetricsWriter, TensorBoardWriter, read_metrics
from sparse_rl.train.progress import Progress, format_eta
from sparse_rl.train.rundir import RunDir, run_status, write_json_atomic, write_text_atomic
from sparse_rl.train.serialize import config_diff, config_hash, dataclass_from_dict, to_jsonable

__all__ = [
    "checkpoint",
    "CheckpointError",
    "CorruptCheckpointError",
    "IncompatibleCheckpointError",
    "Restored",
    "MetricsWriter",
    "TensorBoardWriter",
    "read_metrics",
    "Progress",
    "format_eta",
    "RunDir",
    "run_status",
    "write_json_atomic",
    "write_text_atomic",
    "config_diff",
    "config_hash",
    "dataclass_from_dict",
    "to_jsonable",
]


class CallablePackage(types.ModuleType):
    """This package, which is also the top-level training function: `sparse_rl.train(...)` is
    `sparse_rl.api.train(...)` (the Python API; the package had the name first, and a function
    bound to the same attribute would be replaced by the package on its first import)."""

    def __call__(self, *args, **kwargs):
        from sparse_rl.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = CallablePackage
