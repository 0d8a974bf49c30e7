"""What a run is (`RunConfig`) and what an env loop needs besides its agent (`RunContext`, composed
of the metrics log, clock, checkpoints, progress and summary parts), so that every agent writes the
same run directory.
"""

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from sparse_rl import agents, envs
from sparse_rl.errors import check, check_choice, check_fields
from sparse_rl.train.callbacks import Callback, notify_row
from sparse_rl.train.clock import RunClock
from sparse_rl.train.faults import check_finite
from sparse_rl.train.metrics_log import MetricsLog
from sparse_rl.train.progress import Progress
from sparse_rl.train.run_checkpoints import Checkpoints
from sparse_rl.train.rundir import RunDir
from sparse_rl.train.serialize import to_jsonable
from sparse_rl.train.summary import network_sparsity, write_summary

# Issue 16: an absurd --steps must be refused, not reach an allocation sized by it. 10^9 env steps
# is 20x Atari's 200M frames / 4 (the paper's longest runs) and keeps step counters within int32.
MAX_STEPS = 1_000_000_000

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
    """Everything an env loop needs besides its agent, composed from small parts: the metrics log
    (`metrics_log`), the clock (`clock`), the checkpoints and their config hash (`checkpoints`),
    the live progress line (`progress`), plus the evaluation history the loop appends to. Every
    path comes from `rundir`. Its methods only join the parts (a logged row is checked for NaN/Inf;
    a checkpoint carries the clock, the evaluations and the measured masks)."""

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
        self.clock = RunClock()
        self.metrics_log = MetricsLog(rundir, tensorboard=run.tensorboard)
        self.checkpoints = Checkpoints(recorded_config(run, agent_config), rundir, keep=run.keep_checkpoints)
        self.eval_history: list[tuple[int, float, float]] = []
        self.compile_seconds = 0.0
        self.eval_seconds = 0.0
        self.created_at = time.perf_counter()  # a start-up mark (sparse_rl.train.startup)
        self.startup: dict = {}  # summary.json's `startup`, set by the loop at its first env step

    def open_metrics(self, extra_columns, resume_step: int | None):
        return self.metrics_log.open(extra_columns, resume_step)

    def log(self, row: dict, state=None):
        """Write a metrics row; then (issue 7) stop the run with `NumericalError` if a loss or
        gradient column of the row, or (when `state` is given) a network parameter, is NaN/Inf."""
        row = self.metrics_log.write(row)
        self.check_finite(int(row["step"]), state, row)
        notify_row(self.callbacks, row)

    def check_finite(self, step: int, state=None, metrics: dict | None = None, whole_state=None):
        """`faults.check_finite` on `state`'s networks, naming this run's last good checkpoint."""
        networks = None if state is None else self.agent.networks(state)
        check_finite(step, networks, metrics, whole_state, last_checkpoint=self.checkpoints.last_step)

    def network_sparsity(self, state) -> dict[str, float]:
        """Measured sparsity per network and over all networks, from the actual parameters."""
        return network_sparsity(self.agent.networks(state))

    def save_checkpoint(self, step: int, tree, extra_arrays: dict, counters: dict, state=None):
        masks = None if state is None else self.network_sparsity(state)
        self.check_finite(step, state, whole_state=tree)  # issue 7: never checkpoint NaN/Inf
        self.metrics_log.sync()  # the checkpoint records metrics.csv: its rows must be on disk first
        self.checkpoints.save(step, tree, extra_arrays, counters, wall_time=self.clock.wall_time(),
                              eval_history=self.eval_history, masks=masks)

    def load_checkpoint(self, like):
        """(tree, extra_arrays, manifest) of the newest valid checkpoint, or None; restores the
        clock and the evaluation history from it."""
        result = self.checkpoints.load(like)
        if result is not None:
            manifest = result[2]
            self.clock.resume_from(manifest.get("wall_time", 0.0))
            self.eval_history = [tuple(e) for e in manifest.get("eval_history", [])]
        return result

    def write_summary(self, state, sps: float, extra: dict | None = None) -> dict:
        self.metrics_log.sync()
        return write_summary(self.rundir, self.run, self.spec.main_sparsity(self.agent_config),
                             self.agent.networks(state), self.eval_history, sps, self.compile_seconds,
                             self.clock.wall_time(), extra)

    def close(self):
        self.progress.close()
        self.metrics_log.close()


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
