"""Load the runs of a sweep into a tidy table, and the statistics the plots and tables use.

Run directories are found by walking `sweep_dir` for `config.json` files (the layout under the sweep
directory is not relied on); each one is read as described in docs/CONTRACTS.md ("Runs"):

* agent, env, seed from `config.json` (`run`), method and target sparsity from `summary.json` when
  present (else from the agent config's `sparsity` / `actor_sparsity`);
* a sparse run whose per-layer distribution (the agent config's main sparsity) is not ERK, the
  default, gets the distribution in its method name (`rigl-uniform`), so that an ERK-vs-uniform
  study plotted from one directory keeps the two apart instead of pooling them as one cell;
* ``dense-matched`` runs: a summary with a `dense_matched` entry (or method ``dense-matched``, or a
  dense run with `width_multiplier` != 1). Their "sparsity" is the sparsity they were matched to
  (`dense_matched.sparsity` / `target_sparsity` / `matched_sparsity`, else the sweep.json cell);
  their width multiplier comes from `dense_matched.width_multiplier` or the agent config;
* status from the `COMPLETE` / `FAILED` markers: complete, failed or incomplete;
* the learning curve from the `metrics.csv` rows whose `eval_return_mean` is not empty.

Only *complete* runs have a final score (`summary.json` `final_eval_return`, the mean of the last 10%
of evaluations); failed or unfinished runs still contribute their learning curve (whatever
evaluations they logged) but no final score, so they are left out of the tables, the score plots
and the aggregates, and are listed by `missing_report`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sparse_rl.errors import ConfigError, RunFileError
from sparse_rl.sparsity.config import DISTRIBUTIONS
from sparse_rl.train.rundir import COMPLETE, FAILED, has_marker, read_json_checked

__all__ = ["RunRecord", "MissingCell", "load_runs", "missing_report", "complete_runs",
           "final_scores", "CellScore", "bootstrap_mean_ci", "write_results_csv", "RESULT_FIELDS",
           "METHOD_ORDER", "method_sort_key", "method_label", "base_method", "DENSE", "DENSE_MATCHED",
           "DEFAULT_DISTRIBUTION"]

DENSE = "dense"
DENSE_MATCHED = "dense-matched"
METHOD_ORDER = (DENSE, DENSE_MATCHED, "static", "prune", "set", "rigl")
SKIP_DIRS = {"checkpoints", "tensorboard", "plots", "__pycache__"}
DEFAULT_DISTRIBUTION = "erk"


def method_label(method: str, distribution: str | None) -> str:
    """The name a run is grouped, tabled and plotted under: the method, with the per-layer
    distribution appended when a sparse run does not use the default (`rigl-uniform`)."""
    if method in (DENSE, DENSE_MATCHED) or not distribution or distribution == DEFAULT_DISTRIBUTION:
        return method
    return f"{method}-{distribution}"


def base_method(label: str) -> str:
    """The training method of a `method_label` ("rigl-uniform" -> "rigl"); unknown names as given."""
    if label in METHOD_ORDER:
        return label
    head = label.split("-", 1)[0]
    return head if head in METHOD_ORDER else label


def method_sort_key(method: str):
    """Table order: the paper's method order, each method's distribution variants right after it."""
    base = base_method(method)
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), base != method, method)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run directory of a sweep."""
    path: str
    agent: str
    env: str
    method: str
    sparsity: float                  # target sparsity (0 for dense; the matched one for dense-matched)
    seed: int
    status: str                      # complete | failed | incomplete
    final_eval_return: float | None  # complete runs only
    total_params: int | None = None
    nonzero_params: int | None = None
    width_multiplier: float = 1.0
    steps: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0), compare=False, repr=False)
    eval_returns: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0), compare=False, repr=False)
    wall_times: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0), compare=False, repr=False)
    error: str | None = None         # first line of FAILED

    @property
    def cell(self) -> tuple[str, str, str, float]:
        return (self.agent, self.env, self.method, self.sparsity)

    @property
    def has_score(self) -> bool:
        return self.status == "complete" and self.final_eval_return is not None \
            and math.isfinite(self.final_eval_return)

    @property
    def params(self) -> int | None:
        """Parameter count for the score-vs-size plot: all parameters of a dense network, the
        non-zero ones of a sparse network."""
        if self.method in (DENSE, DENSE_MATCHED):
            return self.total_params if self.total_params is not None else self.nonzero_params
        return self.nonzero_params if self.nonzero_params is not None else self.total_params


@dataclasses.dataclass(frozen=True)
class MissingCell:
    """A cell (one seed) of the sweep without a final score."""
    agent: str | None
    env: str | None
    method: str | None
    sparsity: float | None
    seed: int | None
    path: str
    status: str                      # missing | failed | incomplete
    error: str | None = None

    def describe(self, root: str | os.PathLike | None = None) -> str:
        """One line: status, cell, run directory (relative to `root` when inside it), error."""
        path = self.path
        if root is not None:
            try:
                path = str(Path(self.path).relative_to(Path(root)))
            except ValueError:
                pass
        parts = [str(p) for p in (self.agent, self.env, self.method) if p is not None]
        if self.sparsity is not None:
            parts.append(f"sparsity {self.sparsity:g}")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        text = f"{self.status}: {' '.join(parts) or '(unknown cell)'} ({path})"
        if self.error:
            text += f": {self.error}"
        return text


# ----------------------------------------------------------------------------- reading

def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _status(path: Path) -> str:
    if has_marker(path, COMPLETE):
        return "complete"
    if has_marker(path, FAILED):
        return "failed"
    return "incomplete"


def _first_line(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return text.splitlines()[0][:300] if text else None


def _float(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out


def _int(value) -> int | None:
    f = _float(value)
    return None if f is None or not math.isfinite(f) else int(f)


def _read_curve(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps, returns, walls = [], [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                value = _float(row.get("eval_return_mean"))
                step = _float(row.get("step"))
                if value is None or step is None or not math.isfinite(value):
                    continue
                steps.append(step)
                returns.append(value)
                wall = _float(row.get("wall_time"))
                walls.append(np.nan if wall is None else wall)
    except (OSError, csv.Error, UnicodeDecodeError):
        pass
    steps, returns, walls = np.asarray(steps, float), np.asarray(returns, float), np.asarray(walls, float)
    if steps.size:
        # a resumed run may repeat steps: keep the last value per step, in step order
        _, last = np.unique(steps[::-1], return_index=True)
        keep = steps.size - 1 - last
        steps, returns, walls = steps[keep], returns[keep], walls[keep]
    return steps, returns, walls



def _matched_sparsity(summary: Mapping, config: Mapping, cell: Mapping | None) -> float | None:
    sources = [summary.get("dense_matched"), config.get("dense_matched"), config.get("sweep"), cell]
    for source in sources:
        if isinstance(source, Mapping):
            for key in ("sparsity", "target_sparsity", "matched_sparsity"):
                value = _float(source.get(key))
                if value is not None:
                    return value
    value = _float(summary.get("target_sparsity"))
    return value if value else None


def _record(run_dir: Path, config: Mapping, cell: Mapping | None) -> RunRecord:
    run_cfg = config.get("run") if isinstance(config.get("run"), Mapping) else {}
    agent_cfg = config.get("agent") if isinstance(config.get("agent"), Mapping) else {}
    summary_path = run_dir / "summary.json"
    summary, unreadable = {}, None
    if summary_path.is_file():
        try:
            summary = read_json_checked(summary_path)
        except RunFileError as error:  # issue 16: no score, and never a field read from it
            unreadable = str(error)
    cell = cell or {}

    agent = summary.get("agent") or run_cfg.get("agent") or cell.get("agent") or "?"
    env = summary.get("env") or run_cfg.get("env") or cell.get("env") or "?"
    seed = _int(summary.get("seed"))
    if seed is None:
        seed = _int(run_cfg.get("seed"))
    if seed is None:
        seed = _int(cell.get("seed"))
    seed = -1 if seed is None else seed

    sparsity_cfg = {}
    if summary.get("method") != DENSE:  # the distribution is only in the config (else no agent import needed)
        from sparse_rl.agents import main_sparsity_of

        sparsity_cfg = main_sparsity_of({"run": {"agent": agent}, "agent": agent_cfg}) or {}
    method = summary.get("method") or sparsity_cfg.get("method") or cell.get("method") or DENSE
    method = str(method).replace("_", "-")
    distribution = sparsity_cfg.get("distribution")
    width = _float(agent_cfg.get("width_multiplier"))
    dm = summary.get("dense_matched")
    if isinstance(dm, Mapping) and _float(dm.get("width_multiplier")) is not None:
        width = _float(dm.get("width_multiplier"))
    width = 1.0 if width is None else width
    cell_method = str(cell.get("method", "")).replace("_", "-")
    if method == DENSE and (isinstance(dm, Mapping) or cell_method == DENSE_MATCHED
                            or abs(width - 1.0) > 1e-9):
        method = DENSE_MATCHED
    if method == DENSE:
        sparsity = 0.0
    elif method == DENSE_MATCHED:
        sparsity = _matched_sparsity(summary, config, cell)
        sparsity = float("nan") if sparsity is None else sparsity
    else:
        sparsity = _float(summary.get("target_sparsity"))
        if sparsity is None:
            sparsity = _float(sparsity_cfg.get("sparsity"))
        if sparsity is None:
            sparsity = _float(cell.get("sparsity"))
        sparsity = float("nan") if sparsity is None else sparsity
    sparsity = round(sparsity, 6) if math.isfinite(sparsity) else sparsity
    if method not in (DENSE, DENSE_MATCHED):
        method = method_label(method, distribution if distribution in DISTRIBUTIONS else None)

    status = _status(run_dir)
    final = _float(summary.get("final_eval_return")) if status == "complete" else None
    steps, returns, walls = _read_curve(run_dir / "metrics.csv")
    return RunRecord(
        path=str(run_dir), agent=str(agent), env=str(env), method=method, sparsity=sparsity,
        seed=seed, status=status, final_eval_return=final,
        total_params=_int(summary.get("total_params")),
        nonzero_params=_int(summary.get("nonzero_params")), width_multiplier=width,
        steps=steps, eval_returns=returns, wall_times=walls,
        error=_first_line(run_dir / "FAILED") if status == "failed" else unreadable)


def _sweep_cells(sweep_dir: Path) -> list[dict]:
    """The cells listed in `sweep.json`, one dict per run directory with an absolute `path`
    (tolerant of the format: a list of cells under `cells` / `runs`, or a top-level list; each cell
    names its run directory as `run_dir` / `path` / `dir` / `out`, or several as `run_dirs` with
    `seeds`)."""
    try:
        data = read_json_checked(sweep_dir / "sweep.json")
    except RunFileError as error:  # issue 16: the run directories are read without it
        if (sweep_dir / "sweep.json").is_file():
            warnings.warn(f"{error}; the cells are taken from the run directories alone",
                          RuntimeWarning, stacklevel=2)
        data = None
    if isinstance(data, Mapping):
        data = data.get("cells", data.get("runs"))
    if not isinstance(data, list):
        return []
    cells = []
    for item in data:
        if not isinstance(item, Mapping):
            continue
        dirs = None
        for key in ("run_dir", "path", "dir", "out", "rundir"):
            if isinstance(item.get(key), str):
                dirs = [item[key]]
                break
        seeds = [item.get("seed")]
        if dirs is None and isinstance(item.get("run_dirs"), list):
            dirs = [d for d in item["run_dirs"] if isinstance(d, str)]
            seeds = item.get("seeds") if isinstance(item.get("seeds"), list) else [None] * len(dirs)
        if not dirs:
            continue
        for i, d in enumerate(dirs):
            p = Path(d)
            if not p.is_absolute():
                p = sweep_dir / p
            cell = {k: item.get(k) for k in ("agent", "env", "method", "seed")}
            cell["sparsity"] = item.get("sparsity", item.get("target_sparsity"))
            if i < len(seeds) and seeds[i] is not None:
                cell["seed"] = seeds[i]
            cell["path"] = str(p.resolve())
            cells.append(cell)
    return cells


def _check_dir(sweep_dir) -> Path:
    path = Path(sweep_dir)
    if not path.exists():
        raise ConfigError("sweep_dir", f"{str(sweep_dir)!r} does not exist", "a sweep directory")
    if not path.is_dir():
        raise ConfigError("sweep_dir", f"{str(sweep_dir)!r} is not a directory", "a sweep directory")
    return path.resolve()


def load_runs(sweep_dir: str | os.PathLike) -> list[RunRecord]:
    """Every run directory (one holding `config.json`) under `sweep_dir`, sorted by agent, env,
    method, sparsity, seed. Raises `ConfigError` naming `sweep_dir` when it does not exist or
    holds no run."""
    root = _check_dir(sweep_dir)
    cells = {c["path"]: c for c in _sweep_cells(root)}
    runs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        if "config.json" not in filenames:
            continue
        dirnames[:] = []  # a run directory holds no other runs
        run_dir = Path(dirpath)
        config = _read_json(run_dir / "config.json")
        if not isinstance(config, Mapping) or not isinstance(config.get("run"), Mapping):
            continue  # not a run's config (e.g. some other tool's config.json)
        runs.append(_record(run_dir, config, cells.get(str(run_dir.resolve()))))
    if not runs:
        raise ConfigError("sweep_dir", f"no run directories (with config.json) under {str(sweep_dir)!r}",
                          "a directory written by `sparse-rl sweep` or `sparse-rl train`")
    runs.sort(key=lambda r: (r.agent, r.env, method_sort_key(r.method),
                             r.sparsity if math.isfinite(r.sparsity) else 2.0, r.seed, r.path))
    return runs


def missing_report(sweep_dir: str | os.PathLike, runs: Sequence[RunRecord] | None = None) -> list[MissingCell]:
    """The cells without a final score: the run directories of `sweep.json` (if there is one) that
    do not exist or hold nothing yet ("missing"), and every found run that is failed or incomplete
    (or complete but without a final score, reported as "incomplete")."""
    root = _check_dir(sweep_dir)
    if runs is None:
        runs = load_runs(root)
    found = {str(Path(r.path).resolve()): r for r in runs}
    out = []
    for cell in _sweep_cells(root):
        if cell["path"] in found:
            continue
        path = Path(cell["path"])
        if has_marker(path, FAILED):
            status = "failed"       # e.g. refused before the run wrote its config
        elif (path / "config.json").is_file():
            status = _status(path)  # unreadable config.json
        else:
            status = "missing"      # never started
        error = _first_line(path / "FAILED") if status == "failed" else None
        sp = _float(cell.get("sparsity"))
        out.append(MissingCell(cell.get("agent"), cell.get("env"),
                               None if cell.get("method") is None else str(cell["method"]),
                               sp, _int(cell.get("seed")), str(path), status, error))
    for r in runs:
        if not r.has_score:
            out.append(MissingCell(r.agent, r.env, r.method, r.sparsity, r.seed, r.path,
                                   r.status if r.status != "complete" else "incomplete",
                                   r.error if r.status == "failed" else
                                   (None if r.status != "complete" else
                                    r.error or "no final_eval_return in summary.json")))
    return out


# ----------------------------------------------------------------------------- statistics

def complete_runs(runs: Iterable[RunRecord]) -> list[RunRecord]:
    return [r for r in runs if r.has_score]


def bootstrap_mean_ci(values, reps: int = 2000, size: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its percentile-bootstrap confidence interval
    over `reps` resamples (deterministic for a given seed). One value gives (x, x, x)."""
    values = np.asarray(values, dtype=float).ravel()
    if values.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(values.mean())
    if values.size == 1 or np.all(values == values[0]):
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(int(reps), values.size))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - size) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (mean, float(min(low, mean)), float(max(high, mean)))


def bootstrap_curve_ci(matrix: np.ndarray, reps: int = 2000, size: float = 0.95, seed: int = 0):
    """Mean over rows (seeds) of `matrix` (seeds x points, NaN where a seed has no value) and the
    percentile-bootstrap CI of that mean at each point (seeds resampled jointly across points; at a
    point, the resampled seeds that have a value are averaged)."""
    matrix = np.asarray(matrix, dtype=float)
    present = np.isfinite(matrix)
    values = np.where(present, matrix, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = values.sum(0) / present.sum(0)
        if matrix.shape[0] < 2:
            return mean, mean.copy(), mean.copy()
        rng = np.random.default_rng(seed)
        n = matrix.shape[0]
        # bootstrap resamples as multinomial counts: (reps x seeds) @ (seeds x points)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=int(reps)).astype(float)
        means = (counts @ values) / (counts @ present.astype(float))
        alpha = (1.0 - size) / 2.0
        low, high = np.nanquantile(means, [alpha, 1.0 - alpha], axis=0)
    return mean, np.fmin(low, mean), np.fmax(high, mean)


@dataclasses.dataclass(frozen=True)
class CellScore:
    """Final scores of one (agent, env, method, sparsity) over its complete seeds."""
    agent: str
    env: str
    method: str
    sparsity: float
    n: int
    mean: float
    ci_low: float
    ci_high: float
    params: float | None            # mean parameter count (see RunRecord.params)
    width_multiplier: float
    seeds: tuple[int, ...]
    scores: tuple[float, ...]


def final_scores(runs: Iterable[RunRecord], reps: int = 2000) -> list[CellScore]:
    """One CellScore per cell with at least one complete run, in table order."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in complete_runs(runs):
        groups.setdefault(r.cell, []).append(r)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], method_sort_key(k[2]),
                                             k[3] if math.isfinite(k[3]) else 2.0)):
        members = sorted(groups[key], key=lambda r: r.seed)
        scores = [r.final_eval_return for r in members]
        mean, low, high = bootstrap_mean_ci(scores, reps=reps)
        params = [r.params for r in members if r.params is not None]
        out.append(CellScore(*key, n=len(members), mean=mean, ci_low=low, ci_high=high,
                             params=float(np.mean(params)) if params else None,
                             width_multiplier=float(np.mean([r.width_multiplier for r in members])),
                             seeds=tuple(r.seed for r in members), scores=tuple(scores)))
    return out


# ----------------------------------------------------------------------------- aggregates

# Aggregate metrics over tasks, as in rliable (Agarwal et al. 2021), on a *batch* of score sets:
# `tasks` is a list with one array per task, shaped (batch, runs of that task). Run counts may differ
# between tasks (a sweep with missing seeds): IQM and the performance profile then pool all runs;
# mean and median are over per-task means. On equal run counts they equal rliable.metrics'
# aggregate_iqm / aggregate_mean / aggregate_median of the (runs x tasks) matrix.
# rliable.library (its bootstrap) is not used: it imports arch, and arch 7.x fails to import with
# pandas 3 while arch 8 rejects rliable's `random_state` argument. This vectorised version was checked
# against rliable.library (pandas 2.3, arch 7.2): the same point estimates, and CIs equal within
# Monte-Carlo error, for IQM / median / mean, performance profiles and probability of improvement.

def agg_iqm(tasks: Sequence[np.ndarray]) -> np.ndarray:
    from scipy import stats
    return stats.trim_mean(np.concatenate(tasks, axis=1), proportiontocut=0.25, axis=1)


def agg_mean(tasks: Sequence[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack([t.mean(axis=1) for t in tasks], axis=1), axis=1)


def agg_median(tasks: Sequence[np.ndarray]) -> np.ndarray:
    return np.median(np.stack([t.mean(axis=1) for t in tasks], axis=1), axis=1)


AGGREGATES = {"IQM": agg_iqm, "Median": agg_median, "Mean": agg_mean}


def _percentile_ci(samples: np.ndarray, size: float):
    alpha = (1.0 - size) / 2.0
    return np.quantile(samples, [alpha, 1.0 - alpha], axis=0)


def _resample(task: np.ndarray, reps: int, rng) -> np.ndarray:
    n = task.shape[0]
    return task[rng.integers(0, n, size=(reps, n))]


def stratified_bootstrap(tasks: Sequence[np.ndarray], func, reps: int = 2000, size: float = 0.95,
                         seed: int = 0):
    """Point estimate and percentile CI of `func` (batch of tasks -> (batch, ...)) under the
    stratified bootstrap: the runs of each task are resampled with replacement, independently per
    task (rliable's `StratifiedBootstrap`, vectorised). Returns (point, low, high)."""
    tasks = [np.asarray(t, dtype=float).ravel() for t in tasks]
    point = np.asarray(func([t[None, :] for t in tasks]))[0]
    rng = np.random.default_rng(seed)
    samples = np.asarray(func([_resample(t, int(reps), rng) for t in tasks]))
    low, high = _percentile_ci(samples, size)
    return point, low, high


def performance_profile(tasks: Sequence[np.ndarray], taus: np.ndarray, reps: int = 2000,
                        size: float = 0.95, seed: int = 0):
    """Fraction of runs (pooled over tasks) with normalised score > tau, for each tau, with
    stratified-bootstrap CIs (rliable's `create_performance_profile` with score distributions)."""
    taus = np.asarray(taus, dtype=float)

    def profile(batch):
        pooled = np.concatenate(batch, axis=1)
        return (pooled[:, :, None] > taus[None, None, :]).mean(axis=1)

    return stratified_bootstrap(tasks, profile, reps=reps, size=size, seed=seed)


def _poi_batch(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> np.ndarray:
    per_task = []
    for x, y in zip(xs, ys):
        d = x[:, :, None] - y[:, None, :]
        per_task.append(((d > 0) + 0.5 * (d == 0)).mean(axis=(1, 2)))
    return np.mean(np.stack(per_task, axis=1), axis=1)


def probability_of_improvement(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], reps: int = 2000,
                               size: float = 0.95, seed: int = 0):
    """P(X > Y) averaged over tasks (Mann-Whitney U / (n_x n_y) per task, ties counting 1/2, as
    rliable.metrics.probability_of_improvement), with CIs from resampling the runs of X and of Y
    independently within each task (rliable's `StratifiedIndependentBootstrap`)."""
    xs = [np.asarray(t, dtype=float).ravel() for t in xs]
    ys = [np.asarray(t, dtype=float).ravel() for t in ys]
    point = float(_poi_batch([x[None] for x in xs], [y[None] for y in ys])[0])
    rng = np.random.default_rng(seed)
    samples = _poi_batch([_resample(x, int(reps), rng) for x in xs],
                         [_resample(y, int(reps), rng) for y in ys])
    low, high = _percentile_ci(samples, size)
    return point, float(low), float(high)


# ----------------------------------------------------------------------------- files

RESULT_FIELDS = ("agent", "env", "method", "sparsity", "seed", "status", "final_eval_return",
                 "nonzero_params", "total_params", "width_multiplier", "num_evals", "path")


def write_results_csv(runs: Iterable[RunRecord], path: str | os.PathLike) -> Path:
    """`results.csv`: one row per run (final_eval_return empty for runs without a final score)."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(RESULT_FIELDS)
        for r in runs:
            writer.writerow([r.agent, r.env, r.method, _num(r.sparsity), r.seed, r.status,
                             "" if r.final_eval_return is None else repr(float(r.final_eval_return)),
                             "" if r.nonzero_params is None else r.nonzero_params,
                             "" if r.total_params is None else r.total_params,
                             _num(r.width_multiplier), int(r.steps.size), r.path])
    return path


def _num(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:g}" if isinstance(x, float) else str(x)
