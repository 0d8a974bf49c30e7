"""A run's checkpoints: the settings they depend on (config.json, config hash) and saving /
loading them in the run directory, next to the run files they must agree with."""

import copy

import sparse_rl
from sparse_rl.errors import ConfigError
from sparse_rl.train import checkpoint as ckpt
from sparse_rl.train import run_files
from sparse_rl.train.rundir import RunDir
from sparse_rl.train.serialize import config_hash, to_jsonable

# Settings that change what is recorded about training but never training itself (the recorder
# reads the training batch and state and draws no random numbers): a resumed run may change them.
RECORDING_ONLY = ("run.analysis_every", "run.analysis_snr_every")


class Checkpoints:
    """Checkpoints of one run in `rundir` (the newest `keep` complete ones), tagged with the hash
    of `recorded`: the run's config.json settings {"run", "agent"} (`context.recorded_config`)."""

    def __init__(self, recorded: dict, rundir: RunDir, keep: int):
        self.recorded = recorded
        self.rundir = rundir
        self.keep = keep

    @property
    def directory(self):
        return self.rundir.checkpoint_dir

    def last_step(self) -> int | None:
        return ckpt.latest(self.directory)

    def save(self, step: int, tree, extra_arrays: dict, counters: dict, wall_time: float,
             eval_history: list, masks: dict | None = None) -> None:
        manifest = {
            "config": self.config_dict(),
            "config_hash": self.config_hash(),
            "counters": to_jsonable(counters),
            "wall_time": wall_time,
            "eval_history": eval_history,
            "files": run_files.record(self.rundir.path),  # issue 16: checked on resume
        }
        if masks is not None:
            manifest["masks"] = masks
        ckpt.save(self.directory, step, tree, manifest, keep=self.keep,
                  extra_arrays=extra_arrays)

    def load(self, like):
        """(tree, extra_arrays, manifest) of the newest valid checkpoint, or None. Refuses a
        checkpoint of other settings; cuts the run files back to the checkpoint's step."""
        path = self.rundir.path
        result = ckpt.load_latest_valid(  # issue 16: never resume beside short or edited files
            self.directory, like,
            accept=lambda r: run_files.check(path, r.manifest.get("files"), r.step))
        if result is None:
            return None
        tree, manifest, extra = result.tree, result.manifest, result.extra
        if manifest.get("config_hash") not in self.accepted_config_hashes():
            raise ConfigError("resume", "the checkpoint in this run directory was written with a different config")
        run_files.cut(path, manifest.get("files"))
        return tree, extra, manifest

    def config_dict(self) -> dict:
        return copy.deepcopy(self.recorded)  # callers may change their copy (config_hash does)

    def config_hash(self) -> str:
        """Hash of the settings a checkpoint depends on (recording-only fields left out)."""
        training = self.config_dict()
        training["run"] = {k: v for k, v in training["run"].items() if f"run.{k}" not in RECORDING_ONLY}
        return config_hash(training)

    def accepted_config_hashes(self) -> set[str]:
        """Hashes a checkpoint of this run may carry: this version's, and the hash an earlier
        version gave the settings in this directory's config.json, which `write_config` has
        already checked against the current ones (so an older run stays resumable)."""
        accepted = {self.config_hash()}
        written = self.rundir.read_config()
        if written and "run" in written and "agent" in written:
            accepted.add(config_hash({"run": written["run"], "agent": written["agent"]}))
        return accepted

    def write_config(self, out) -> None:
        """Write config.json, or on resume check that the settings are those of the run resumed.
        Fields that only decide what is recorded about training (RECORDING_ONLY) may differ: the
        resumed part then follows the new values while config.json keeps the first ones."""
        self.rundir.write_config(self.config_dict() | {"out": str(out), "library_version": sparse_rl.__version__},
                                 ignore=("library_version", "out", *RECORDING_ONLY))
