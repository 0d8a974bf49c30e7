"""What a run is (`RunConfig`) and what an env loop needs besides its agent (`RunContext`: metrics,
checkpoints, progress, summary), so that every agent writes the same run directory.
"""

import dataclasses
import math
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

import sparse_rl
from sparse_rl import agents, envs
from sparse_rl.errors import ConfigError, NumericalError, check, check_choice, check_fields
from sparse_rl.sparsity import sparsity_summary
from sparse_rl.train import checkpoint as ckpt
from sparse_rl.train import run_files
from sparse_rl.train.callbacks import Callback, notify_row
from sparse_rl.train.metrics import MetricsWriter, TensorBoardWriter
from sparse_rl.train.progress import Progress
from sparse_rl.train.faults import first_nonfinite, kill_point
from sparse_rl.train.rundir import RunDir, write_json_checked
from sparse_rl.train.serialize import config_hash, to_jsonable

# Settings that change what is recorded about training but never training itself (the recorder
# reads the training batch and state and draws no random numbers): a resumed run may change them.
RECORDING_ONLY = ("run.analysis_every", "run.analysis_snr_every")

# Issue 16: an absurd --steps must be refused, not reach an allocation sized by it. 10^9 env steps
# is 20x Atari's 200M frames / 4 (the paper's longest runs) and keeps step counters within int32.
MAX_STEPS = 1_000_000_000

BASE_COLUMNS = (
    "step", "wall_time", "train_return", "train_episodes", "eval_return_mean", "eval_return_std",
    "sparsity", "sps",
)


# RunConfig's Atari fields -> the keyword of `envs.make_env` each one sets. Left out of config.json
# and of the checkpoint hash while None, so that runs written before they existed still resume.
ATARI_FIELDS = {"sticky_actions": "repeat_action_probability", "frame_skip": "frame_skip",
                "full_action_space": "full_action_space", "terminal_on_life_loss": "terminal_on_life_loss"}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What a run is, apart from the agent's own settings."""

    agent: str = "dqn"
    """Agent: dqn, sac or ppo."""
    env: str = "CartPole-v1"
    """Environment: any gymnasium id (the paper's settings for classic control, MuJoCo v5 and ALE/<Game>-v5) or module:Id."""
    steps: int = 50_000
    """Environment steps to train for."""
    seed: int = 0
    """Random seed (networks, masks, environments, replay)."""
    out: str | None = None
    """Run directory (None: runs/<agent>-<env>-<method>-<sparsity>-s<seed>)."""
    eval_every: int = 2_500
    """Evaluate every this many environment steps (and at the end)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    log_every: int = 1_000
    """Write a metrics row every this many environment steps."""
    checkpoint_every: int = 10_000
    """Checkpoint every this many environment steps (and at the end); 0 disables."""
    keep_checkpoints: int = 2
    """How many complete checkpoints to keep."""
    resume: bool = False
    """Continue the run in `out` from its last complete checkpoint."""
    tensorboard: bool = False
    """Also write TensorBoard event files to <out>/tb."""
    progress: bool | None = None
    """--progress: a live progress line; --no-progress: none (None: live on a terminal, else a plain line every 5% of the steps)."""
    analysis_every: int = 1000
    """Write gradient-flow, dormant-neuron and topology statistics to <out>/analysis.csv every this many gradient steps (gradient SNR on every analysis_snr_every-th such row; see sparse_rl.analysis); 0 disables."""
    analysis_snr_every: int = 10
    """Compute the gradient SNR on every this many analysis rows; 0 disables."""
    sticky_actions: float | None = None
    """Atari: probability that the emulator repeats the previous action (None: 0.25, the paper's sticky actions, Machado et al. 2018)."""
    frame_skip: int | None = None
    """Atari: emulator frames per agent step, max-pooled over the last two (None: 4, the paper's)."""
    full_action_space: bool | None = None
    """Atari: all 18 actions instead of the game's minimal set (None: False, the paper's)."""
    terminal_on_life_loss: bool | None = None
    """Atari: end an episode when a life is lost (None: False, the paper's)."""

    def env_options(self) -> dict:
        """The Atari settings given, as keyword arguments of `envs.make_env` (None: the paper's)."""
        given = {field: getattr(self, field) for field in ATARI_FIELDS}
        return {ATARI_FIELDS[k]: v for k, v in given.items() if v is not None}

    def __post_init__(self):
        check_fields(self)  # issue 7: wrong types (a string, a bool, NaN) -> ConfigError naming the field
        check_choice(self.agent, "agent", agents.AGENTS)
        # JAX PRNG keys take 32 bits (PRNGKey(2**32) == PRNGKey(0)); gymnasium refuses negative seeds.
        check(0 <= self.seed < 2**32, "seed", f"got {self.seed}", "an int in [0, 2**32 - 1]")
        check(self.out is None or self.out.strip() != "", "out", "must be a directory name or unset")
        check(isinstance(self.env, str) and self.env != "", "env", "must be an environment id")
        check(0 < self.steps <= MAX_STEPS, "steps", f"got {self.steps}", f"1 to {MAX_STEPS:.0e}")
        check(self.eval_every > 0, "eval_every", f"must be > 0, got {self.eval_every}")
        check(self.eval_episodes > 0, "eval_episodes", f"must be > 0, got {self.eval_episodes}")
        check(self.log_every > 0, "log_every", f"must be > 0, got {self.log_every}")
        check(self.checkpoint_every >= 0, "checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        check(self.analysis_every >= 0, "analysis_every", f"must be >= 0, got {self.analysis_every}")
        check(self.analysis_snr_every >= 0, "analysis_snr_every", f"must be >= 0, got {self.analysis_snr_every}")
        for field in ATARI_FIELDS:
            check(getattr(self, field) is None or self.env.startswith("ALE/"), field,
                  f"is an Atari setting, but {self.env} is not an Atari env", "ALE/<Game>-v5 envs")
        envs.atari_settings(self.env_options())


def run_for_hash(run: RunConfig) -> RunConfig:
    """`run` without the fields that may differ between an interrupted run and its resumption."""
    return dataclasses.replace(run, resume=False, progress=None, out=None, tensorboard=False)


def recorded_config(run: RunConfig, agent_config) -> dict:
    """config.json's {"run", "agent"} (the checkpoint hash is computed from it): unset Atari
    fields are left out, so runs written before they existed keep their config and hash."""
    fields = {k: v for k, v in to_jsonable(run_for_hash(run)).items()
              if not (k in ATARI_FIELDS and v is None)}
    return {"run": fields, "agent": to_jsonable(agent_config)}


def default_out(run: RunConfig, agent_config) -> str:
    sparsity = agents.spec(run.agent).main_sparsity(agent_config)
    method = sparsity.method
    level = "" if method == "dense" else f"-{sparsity.sparsity:g}"
    env = run.env.replace("/", "_")
    return str(Path("runs") / f"{run.agent}-{env}-{method}{level}-s{run.seed}")


class RunContext:
    """Everything an env loop needs besides its agent: metrics, evaluation, checkpoints, summary."""

    def __init__(self, run: RunConfig, agent_config, rundir: RunDir, env_spec, agent, spec,
                 callbacks: Sequence[Callback] = ()):
        self.run = run
        self.callbacks = tuple(callbacks)
        self.agent_config = agent_config
        self.rundir = rundir
        self.env_spec = env_spec
        self.agent = agent
        self.spec = spec
# Not on a terminal (a log file, a cluster job): a plain line every 5% of the steps.
        self.progress = Progress(run.steps, enabled=run.progress, label=f"{run.agent} {run.env}",
                                 fraction_every=0.05 if run.progress is None else None)
        self.tensorboard: TensorBoardWriter | None = None
        self.metrics: MetricsWriter | None = None
        self.eval_history: list[tuple[int, float, float]] = []
        self.compile_seconds = 0.0
        self.eval_seconds = 0.0
        self._clock_start = time.perf_counter()
        self.wall_offset = 0.0  # wall time already spent before a resume
        self._sps_mark = (0, time.perf_counter())

    # --- metrics -------------------------------------------------------------------------
    def open_metrics(self, extra_columns, resume_step: int | None):
        columns = list(BASE_COLUMNS) + [c for c in extra_columns if c not in BASE_COLUMNS]
        self.metrics = MetricsWriter(self.rundir.metrics_path, columns)
        self.metrics.truncate_after(-1 if resume_step is None else resume_step)
        if self.run.tensorboard:
            self.tensorboard = TensorBoardWriter(self.rundir.tensorboard_dir, truncate_after=resume_step)
        return columns

    def wall_time(self) -> float:
        return self.wall_offset + time.perf_counter() - self._clock_start

    def sps(self, step: int) -> float:
        last_step, last_time = self._sps_mark
        now = time.perf_counter()
        self._sps_mark = (step, now)
        return (step - last_step) / max(now - last_time, 1e-9)

    def reset_sps(self, step: int):
        self._sps_mark = (step, time.perf_counter())

    def log(self, row: dict, state=None):
        """Write a metrics row; then (issue 7) stop the run with `NumericalError` if a loss or
        gradient column of the row, or (when `state` is given) a network parameter, is NaN/Inf."""
        row = {k: _to_float(v) for k, v in row.items()}
        self.metrics.write(row)
        if self.tensorboard is not None:
            self.tensorboard.write(int(row["step"]), {k: v for k, v in row.items() if k != "step"})
        kill_point("log", int(row["step"]))  # test hook (faults.py)
        self.check_finite(int(row["step"]), state, row)
        notify_row(self.callbacks, row)

    def check_finite(self, step: int, state=None, metrics: dict | None = None, whole_state=None):
        """Raise `NumericalError` (step, first non-finite parameter path, last good checkpoint) if
        a loss/gradient metric or a parameter is NaN or Inf. `whole_state`: also scan every other
        float leaf (optimizer moments, target networks) -- done before each checkpoint."""
        bad = {k: v for k, v in (metrics or {}).items()
               if ("loss" in k or "grad" in k) and isinstance(v, float) and not math.isfinite(v)}
        where = None
        if state is not None:
            for name, (params, _) in self.agent.networks(state).items():
                path = first_nonfinite(params)
                if path is not None:
                    where = f"{name}/{path}"
                    break
        if where is None and whole_state is not None:
            path = first_nonfinite(whole_state)
            where = None if path is None else f"state/{path}"
        if bad or where is not None:
            last = ckpt.latest(self.checkpoint_dir)
            note = ("no checkpoint written" if last is None else
                    f"last good checkpoint: step {last}; metrics up to step {step} are in metrics.csv")
            raise NumericalError(step, where, bad, note)

    def network_sparsity(self, state) -> dict[str, float]:
        """Measured sparsity per network and over all networks, from the actual parameters."""
        out, zeros, total = {}, 0, 0
        for name, (params, _) in self.agent.networks(state).items():
            summary = sparsity_summary(params)
            out[f"sparsity_{name}"] = summary["sparsity"]
            zeros += summary["total"] - summary["nonzero"]
            total += summary["total"]
        out["sparsity"] = zeros / max(total, 1)
        return out

    # --- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.rundir.checkpoint_dir

    def save_checkpoint(self, step: int, tree, extra_arrays: dict, counters: dict, state=None):
        manifest = {
            "config": self.config_dict(),
            "config_hash": self.config_hash(),
            "counters": to_jsonable(counters),
            "wall_time": self.wall_time(),
            "eval_history": self.eval_history,
            "files": run_files.record(self.rundir.path),  # issue 16: checked on resume
        }
        if state is not None:
            manifest["masks"] = self.network_sparsity(state)
        self.check_finite(step, state, whole_state=tree)  # issue 7: never checkpoint NaN/Inf
        ckpt.save(self.checkpoint_dir, step, tree, manifest, keep=self.run.keep_checkpoints,
                  extra_arrays=extra_arrays)

    def load_checkpoint(self, like):
        """(tree, extra_arrays, manifest) of the newest valid checkpoint, or None."""
        path = self.rundir.path
        result = ckpt.load_latest_valid(  # issue 16: never resume beside short or edited files
            self.checkpoint_dir, like,
            accept=lambda r: run_files.check(path, r.manifest.get("files"), r.step))
        if result is None:
            return None
        tree, manifest, extra = result.tree, result.manifest, result.extra
        if manifest.get("config_hash") not in self.accepted_config_hashes():
            raise ConfigError("resume", "the checkpoint in this run directory was written with a different config")
        run_files.cut(path, manifest.get("files"))
        self.wall_offset = float(manifest.get("wall_time", 0.0))
        self._clock_start = time.perf_counter()
        self.eval_history = [tuple(e) for e in manifest.get("eval_history", [])]
        return tree, extra, manifest

    def config_dict(self) -> dict:
        return recorded_config(self.run, self.agent_config)

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

    def run_for_hash(self):
        return run_for_hash(self.run)

    # --- summary -------------------------------------------------------------------------
    def write_summary(self, state, sps: float, extra: dict | None = None) -> dict:
        evals = [mean for _, mean, _ in self.eval_history]
        tail = max(1, int(math.ceil(0.1 * len(evals)))) if evals else 0
        networks = {}
        nonzero = total = 0
        for name, (params, masks) in self.agent.networks(state).items():
            summary = sparsity_summary(params, masks)
            networks[name] = summary
            nonzero += summary["nonzero"]
            total += summary["total"]
        main = self.spec.main_sparsity(self.agent_config)
        summary = {
            "agent": self.run.agent,
            "env": self.run.env,
            "seed": self.run.seed,
            "steps": self.run.steps,
            "method": main.method,
            "target_sparsity": 0.0 if main.method == "dense" else float(main.sparsity),
            "final_eval_return": float(np.mean(evals[-tail:])) if evals else None,
            "eval_returns": evals,
            "sparsity": 1.0 - nonzero / max(total, 1),
            "nonzero_params": nonzero,
            "total_params": total,
            "networks": networks,
            "steps_per_second": sps,
            "compile_seconds": self.compile_seconds,
            "wall_time": self.wall_time(),
            "library_version": sparse_rl.__version__,
            "jax_version": jax.__version__,
            "device": str(jax.devices()[0].platform),
        }
        summary.update(extra or {})
        write_json_checked(self.rundir.summary_path, summary)  # issue 16: with a checksum
        return summary

    def close(self):
        self.progress.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _to_float(value):
    if value is None or isinstance(value, (int, np.integer)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def split_state(state: dict, prefix: str) -> tuple[dict, dict]:
    """Separate numpy arrays (checkpoint arrays) from JSON-able values (manifest)."""
    arrays, values = {}, {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            arrays[f"{prefix}{name}"] = value
        else:
            values[name] = value
    return arrays, values


def join_state(arrays: dict, values: dict, prefix: str) -> dict:
    state = dict(values)
    state.update({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
    return state
