"""Training-run infrastructure: run directories, metrics, checkpoints, progress, config JSON.

Importing this package does not import JAX (checkpoint functions import it when called).
"""

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
