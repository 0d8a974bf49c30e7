"""Figures of the analyses: gradient flow, SNR, topology dynamics, sensitivity, robustness.

Every function writes PNG and PDF files into `out_dir` and returns their paths. Runs are read from
their directories (`load_analysis`): `analysis.csv` (written during training by
`sparse_rl.train.recorder.GradientFlowRecorder`) plus `config.json` / `summary.json` for the labels. Runs that
differ only by seed form a group, drawn as the mean over seeds with a min-max band.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from sparse_rl.errors import RunFileError
from sparse_rl.sweep.plots import steps_formatter
from sparse_rl.train.rundir import read_json_checked

__all__ = ["RunAnalysis", "load_analysis", "plot_gradient_flow", "plot_topology",
           "plot_sensitivity", "plot_robustness", "plot_components", "FORMATS"]

FORMATS = ("png", "pdf")
METHOD_ORDER = ("dense", "static", "prune", "set", "rigl")
COLORS = {"dense": "#444444", "static": "#1f77b4", "prune": "#2ca02c", "set": "#ff7f0e",
          "rigl": "#d62728"}
EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_dir: Path, stem: str, formats=FORMATS) -> list[Path]:
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150 if fmt == "png" else None, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _grid(n: int, width: float = 4.2, height: float = 3.2, ncols: int = 3):
    plt = _plt()
    n = max(n, 1)
    ncols = min(n, ncols)
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _legend(fig, axes, order: Sequence[str] = ()) -> None:
    seen = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    if order:  # groups in method order, each group's entries together
        def rank(label):
            hits = [i for i, g in enumerate(order) if label == g or label.startswith(g + " ")
                    or label.startswith(g + ":")]
            return hits[-1] if hits else len(order)
        seen = dict(sorted(seen.items(), key=lambda kv: rank(kv[0])))
    if seen:
        ncol = min(len(seen), 5)
        rows = (len(seen) - 1) // ncol + 1
        fig.legend(list(seen.values()), list(seen), loc="lower center", frameon=False,
                   ncol=ncol, bbox_to_anchor=(0.5, 0.0))
        height = fig.get_size_inches()[1]
        fig.tight_layout(rect=(0, min(0.4, (0.1 + 0.25 * rows) / height), 1, 1))
    else:
        fig.tight_layout()


def _short(path: str) -> str:
    """"q/mlp/~/linear_0/w" -> "q: mlp/linear_0"."""
    net, _, rest = path.partition("/")
    rest = rest.replace("/~/", "/")
    if rest.endswith("/w"):
        rest = rest[:-2]
    return f"{net}: {rest}" if rest else net


# --- reading runs -----------------------------------------------------------------------------------

@dataclasses.dataclass
class RunAnalysis:
    """One run's analysis.csv and what it is."""

    path: Path
    agent: str
    env: str
    method: str
    sparsity: float
    seed: int
    data: dict  # column -> np.ndarray (read_metrics)

    @property
    def group(self) -> str:
        return f"{self.method}" if self.method == "dense" else f"{self.method} {self.sparsity:g}"

    @property
    def task(self) -> str:
        return f"{self.agent} {self.env}"

    def rows(self, event: str) -> dict:
        ev = self.data.get("event")
        if ev is None:
            return {}
        sel = np.asarray(ev) == event
        return {k: np.asarray(v)[sel] for k, v in self.data.items()}


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _method_of(config: dict) -> tuple[str, float]:
    from sparse_rl.agents import main_sparsity_of

    sc = main_sparsity_of(config)
    if sc is None or "method" not in sc:
        return "dense", 0.0
    method = sc["method"]
    return method, (0.0 if method == "dense" else float(sc.get("sparsity", 0.0)))


def load_analysis(run_dir) -> RunAnalysis | None:
    """The run's analysis (None when it has no analysis.csv)."""
    from sparse_rl.train.rundir import ANALYSIS as ANALYSIS_FILE
    from sparse_rl.train.metrics import read_metrics

    run_dir = Path(run_dir)
    file = run_dir / ANALYSIS_FILE
    if not file.is_file():
        return None
    config = _json(run_dir / "config.json")
    try:  # issue 16: labels only from a summary that passes its checksum, else from config.json
        summary = read_json_checked(run_dir / "summary.json")
    except RunFileError:
        summary = {}
    run = config.get("run", {}) or {}
    method, sparsity = _method_of(config)
    method = summary.get("method", method)
    sparsity = float(summary.get("target_sparsity", sparsity) or 0.0)
    return RunAnalysis(run_dir, str(run.get("agent", summary.get("agent", "?"))),
                       str(run.get("env", summary.get("env", "?"))), str(method), sparsity,
                       int(run.get("seed", summary.get("seed", 0)) or 0), read_metrics(file))


def _group_key(run: RunAnalysis):
    m = METHOD_ORDER.index(run.method) if run.method in METHOD_ORDER else len(METHOD_ORDER)
    return (m, run.method, run.sparsity)


def _groups(runs: Sequence[RunAnalysis]) -> dict[str, list[RunAnalysis]]:
    out: dict[str, list[RunAnalysis]] = {}
    for r in sorted(runs, key=_group_key):
        out.setdefault(r.group, []).append(r)
    return out


def _color(group_runs: list[RunAnalysis], index: int, n_same_method: int, rank: int) -> str:
    method = group_runs[0].method
    base = COLORS.get(method)
    if base is None:
        return EXTRA_COLORS[index % len(EXTRA_COLORS)]
    if n_same_method <= 1:
        return base
    # several sparsity levels of one method: lighter for sparser? darker for sparser.
    import matplotlib.colors as mc
    rgb = np.array(mc.to_rgb(base))
    t = 0.55 * (1 - rank / max(n_same_method - 1, 1))
    return mc.to_hex(rgb + (1 - rgb) * t)


def _styles(groups: dict[str, list[RunAnalysis]]) -> dict[str, str]:
    by_method: dict[str, list[str]] = {}
    for g, runs in groups.items():
        by_method.setdefault(runs[0].method, []).append(g)
    out = {}
    for i, (g, runs) in enumerate(groups.items()):
        same = by_method[runs[0].method]
        out[g] = _color(runs, i, len(same), same.index(g))
    return out


def _series(runs: Sequence[RunAnalysis], event: str, column: str):
    """(x, mean, lo, hi) over the runs' rows of `event`, aligned on grad_step; None if absent."""
    curves = []
    for r in runs:
        rows = r.rows(event)
        if column not in rows or "grad_step" not in rows:
            continue
        x, y = rows["grad_step"], rows[column]
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            curves.append(dict(zip(x[ok].tolist(), y[ok].tolist())))
    if not curves:
        return None
    xs = sorted(set.intersection(*(set(c) for c in curves))) if len(curves) > 1 else sorted(curves[0])
    if not xs:
        xs = sorted(curves[0])
        curves = curves[:1]
    m = np.array([[c[x] for x in xs] for c in curves])
    return np.array(xs), m.mean(0), m.min(0), m.max(0)


def _plot_series(ax, groups, styles, event, column, *, log=False, linestyle="-", label_suffix="",
                 seeds_in_label=True):
    drawn = False
    positive = True
    for g, runs in groups.items():
        s = _series(runs, event, column)
        if s is None:
            continue
        x, mean, lo, hi = s
        positive = positive and bool(np.all(lo > 0))
        label = g + label_suffix + (f" (n={len(runs)})" if len(runs) > 1 and seeds_in_label else "")
        ax.plot(x, mean, color=styles[g], linestyle=linestyle, label=label, lw=1.4)
        if len(runs) > 1:
            ax.fill_between(x, lo, hi, color=styles[g], alpha=0.15, lw=0)
        drawn = True
    if drawn and log and positive and not ax.get_yscale() == "log":
        ax.set_yscale("log")
    ax.xaxis.set_major_formatter(steps_formatter())
    ax.set_xlabel("gradient step")
    ax.grid(alpha=0.3)
    return drawn


def _columns(runs, prefix: str, suffix: str) -> list[str]:
    cols = []
    for r in runs:
        for c in r.data:
            if c.startswith(prefix) and c.endswith(suffix) and c not in cols:
                cols.append(c)
    return cols


def _by_task(runs: Sequence[RunAnalysis]) -> dict[str, list[RunAnalysis]]:
    out: dict[str, list[RunAnalysis]] = {}
    for r in runs:
        out.setdefault(r.task, []).append(r)
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text).strip("-")


# --- gradient flow -------------------------------------------------------------------------------

def plot_gradient_flow(runs: Sequence[RunAnalysis], out_dir, formats=FORMATS) -> list[Path]:
    """Per task (agent, env): total norms, per-layer gradient norms, SNR, topology-update effect."""
    files: list[Path] = []
    tasks = _by_task(runs)
    for task, task_runs in tasks.items():
        tag = "" if len(tasks) == 1 else "_" + _slug(task)
        groups = _groups(task_runs)
        styles = _styles(groups)

        # 1. totals per network
        nets = sorted({c.split("/")[1] for r in task_runs for c in r.data if c.startswith("gf/")})
        panels = [(n, stat) for n in nets for stat in
                  ("dense_grad_norm", "masked_grad_norm", "weight_norm", "dist_from_init")]
        fig, axes = _grid(len(panels), ncols=4)
        for ax, (net, stat) in zip(axes, panels):
            _plot_series(ax, groups, styles, "periodic", f"gf/{net}/total/{stat}",
                         log=stat.endswith("grad_norm"))
            ax.set_title(f"{net}: {stat.replace('_', ' ')}", fontsize=10)
        fig.suptitle(f"Gradient flow, {task}", fontsize=11)
        _legend(fig, axes, list(groups))
        files += _save(fig, out_dir, f"gradient_flow{tag}", formats)

        # 2. per-layer gradient norms (masked solid, dense dashed)
        cols = [c for c in _columns(task_runs, "gf/", "/masked_grad_norm") if "/total/" not in c]
        if cols:
            fig, axes = _grid(len(cols))
            for ax, col in zip(axes, cols):
                layer = col[len("gf/"):-len("/masked_grad_norm")]
                _plot_series(ax, groups, styles, "periodic", col, log=True)
                _plot_series(ax, groups, styles, "periodic", f"gf/{layer}/dense_grad_norm",
                             log=True, linestyle="--", label_suffix=" (dense grad)")
                ax.set_title(_short(layer), fontsize=10)
            fig.suptitle(f"Per-layer gradient norm (solid: masked, dashed: dense), {task}", fontsize=11)
            _legend(fig, axes, list(groups))
            files += _save(fig, out_dir, f"gradient_flow_layers{tag}", formats)

        # 3. SNR
        cols = _columns(task_runs, "snr/", "/median")
        if cols and any(_series(g, "periodic", cols[0]) is not None for g in groups.values()):
            totals = [c for c in cols if "/total/" in c]
            layers = [c for c in cols if "/total/" not in c]
            panels = [(c.replace("/median", "/mean"), "mean") for c in totals] + \
                     [(c, "median") for c in totals] + \
                     [(c.replace("/median", "/mean_all"), "mean_all") for c in totals] + \
                     [(c, "median") for c in layers]
            fig, axes = _grid(len(panels))
            for ax, (col, stat) in zip(axes, panels):
                _plot_series(ax, groups, styles, "periodic", col, log=True)
                name = col[len("snr/"):-len(stat) - 1]
                what = {"mean": "mean (active)", "median": "median (active)",
                        "mean_all": "mean (inactive = 0)"}[stat]
                ax.set_title(f"SNR {what}, {_short(name)}", fontsize=10)
            fig.suptitle(f"Gradient signal-to-noise ratio |mean|/std over a batch, {task}", fontsize=11)
            _legend(fig, axes, list(groups))
            files += _save(fig, out_dir, f"gradient_snr{tag}", formats)

        # 4. effect of topology updates on gradient flow
        cols = [c for c in _columns(task_runs, "topo/", "/total/masked_grad_norm_before")]
        if cols:
            fig, axes = _grid(len(cols) * 2, ncols=2)
            for i, col in enumerate(cols):
                net = col.split("/")[1]
                ax = axes[2 * i]
                _plot_series(ax, groups, styles, "topology", col, linestyle="--",
                             label_suffix=": old mask / before")
                _plot_series(ax, groups, styles, "topology", col.replace("_before", "_after"),
                             label_suffix=": new mask, same gradient")
                ax.set_title(f"{net}: gradient before the update under the old vs new mask",
                             fontsize=9)
                ax = axes[2 * i + 1]
                _plot_series(ax, groups, styles, "topology",
                             f"topo/{net}/total/masked_grad_norm_before", linestyle="--",
                             label_suffix=": old mask / before")
                _plot_series(ax, groups, styles, "topology",
                             f"topo/{net}/total/post_masked_grad_norm", linestyle=":",
                             label_suffix=": just after (new gradient)")
                ax.set_title(f"{net}: masked gradient norm before vs just after the update",
                             fontsize=9)
            fig.suptitle(f"Gradient flow around topology updates, {task}", fontsize=11)
            _legend(fig, axes, list(groups))
            files += _save(fig, out_dir, f"gradient_flow_updates{tag}", formats)
    return files


# --- topology --------------------------------------------------------------------------------------

def plot_topology(runs: Sequence[RunAnalysis], out_dir, fan_in: dict | None = None,
                  formats=FORMATS) -> list[Path]:
    """Churn, positions ever active, per-layer sparsity (at mask updates), dormant neurons over
    training, and (given `fan_in` = {layer: per-unit fan-in}) the fan-in histogram at the end."""
    files: list[Path] = []
    tasks = _by_task(runs)
    for task, task_runs in tasks.items():
        tag = "" if len(tasks) == 1 else "_" + _slug(task)
        groups = _groups(task_runs)
        styles = _styles(groups)
        churn = _columns(task_runs, "topo/", "/total/churn")
        dormant = _columns(task_runs, "dormant/", "")
        dormant_total = [c for c in dormant if "/total/" in c]
        panels = []
        for col in churn:
            net = col.split("/")[1]
            panels += [("topology", col, f"{net}: churn (fraction replaced)", False),
                       ("topology", f"topo/{net}/total/ever_active", f"{net}: fraction ever active", False)]
            layers = [c for c in _columns(task_runs, f"topo/{net}/", "/sparsity") if "/total/" not in c]
            if layers:
                panels.append(("layers", layers, f"{net}: sparsity per layer (at mask updates)", False))
        for col in dormant_total:
            parts = col.split("/")
            panels.append(("periodic", col, f"{parts[1]}: dormant neurons ({parts[-1].replace('tau', 'tau=')})", False))
        if fan_in:
            panels.append(("fan_in", None, "fan-in of units at the end", False))
        if not panels:
            continue
        fig, axes = _grid(len(panels))
        for ax, (event, col, title, log) in zip(axes, panels):
            if event == "fan_in":
                uniform = []
                for layer, f in fan_in.items():
                    f = np.asarray(f)
                    if f.size and np.all(f == f[0]):  # dense (or N:M): nothing to histogram
                        uniform.append(f"{_short(layer)}: all {int(f[0])}")
                        continue
                    ax.hist(f, bins=min(30, max(int(f.max()) + 1, 2)), alpha=0.5,
                            label=f"{_short(layer)} ({int(np.sum(f == 0))} dead)")
                if uniform:
                    ax.text(0.98, 0.55, "uniform fan-in:\n" + "\n".join(uniform), fontsize=6,
                            ha="right", va="top", transform=ax.transAxes)
                ax.set_xlabel("active inputs per unit")
                ax.set_ylabel("units")
                ax.legend(fontsize=7)
            elif event == "layers":
                for j, layer in enumerate(col):
                    name = _short(layer[len("topo/"):-len("/sparsity")]).split(": ", 1)[-1]
                    _plot_series(ax, groups, styles, "topology", layer,
                                 linestyle=("-", "--", ":", "-.")[j % 4], label_suffix=f": {name}",
                                 seeds_in_label=False)
                ax.legend(fontsize=6)
            else:
                _plot_series(ax, groups, styles, event, col, log=log)
            ax.set_title(title, fontsize=9)
        fig.suptitle(f"Topology dynamics, {task}", fontsize=11)
        # the fan-in legend is per axis; the group legend goes below
        _legend(fig, [a for a, p in zip(axes, panels) if p[0] not in ("fan_in", "layers")],
                list(groups))
        files += _save(fig, out_dir, f"topology{tag}", formats)
    return files


# --- sensitivity --------------------------------------------------------------------------------------

def plot_sensitivity(rows: Sequence[dict], out_dir, title: str = "", stem: str = "sensitivity",
                     formats=FORMATS) -> list[Path]:
    """Return vs pruning level, one line per target; layers and whole networks in two panels."""
    kinds = [k for k in ("layer", "network") if any(r["kind"] == k for r in rows)]
    fig, axes = _grid(len(kinds), width=5.2, height=3.8, ncols=2)
    for ax, kind in zip(axes, kinds):
        targets = list(dict.fromkeys(r["target"] for r in rows if r["kind"] == kind))
        for i, t in enumerate(targets):
            rs = [r for r in rows if r["target"] == t]
            x = np.array([r["level"] for r in rs])
            y = np.array([r["return_mean"] for r in rs])
            e = np.array([r["return_std"] for r in rs])
            c = EXTRA_COLORS[i % len(EXTRA_COLORS)] if kind == "layer" else \
                list(COLORS.values())[i % len(COLORS)]
            ax.plot(x, y, marker="o", ms=3, color=c, label=_short(t) if kind == "layer" else t)
            ax.fill_between(x, y - e, y + e, color=c, alpha=0.12, lw=0)
        ax.set_xscale("function", functions=(lambda v: -np.log10(np.clip(1 - v, 1e-4, None)),
                                             lambda v: 1 - 10.0 ** (-v)))
        levels = sorted({r["level"] for r in rows})
        ax.set_xticks(levels)
        ax.set_xticklabels([f"{v:g}" for v in levels], fontsize=8)
        ax.set_xlabel("pruning level (fraction of remaining weights removed)"
                      if kind == "layer" else "pruning level of every kernel of the network")
        ax.set_ylabel("evaluation return")
        ax.set_title("one layer at a time" if kind == "layer" else "one network at a time", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, stem, formats)


def plot_robustness(rows: Sequence[dict], out_dir, title: str = "", stem: str = "robustness",
                    formats=FORMATS) -> list[Path]:
    """Return vs Gaussian observation-noise scale."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    x = np.array([r["scale"] for r in rows])
    y = np.array([r["return_mean"] for r in rows])
    e = np.array([r["return_std"] for r in rows])
    ax.plot(x, y, marker="o", color=COLORS["rigl"])
    ax.fill_between(x, y - e, y + e, color=COLORS["rigl"], alpha=0.15, lw=0)
    mode = rows[0]["noise_mode"] if rows else "std"
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("noise scale" + (" (x per-dimension observation std)" if mode == "std" else " (absolute)"))
    ax.set_ylabel("evaluation return")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, stem, formats)


def plot_components(rows: Sequence[dict], out_dir, stem: str = "components",
                    formats=FORMATS) -> list[Path]:
    """Final return vs the sparsity of the sparse component, one line per component (training-time
    per-component sensitivity sweeps; rows from `sensitivity.component_table`)."""
    files = []
    tasks: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("final_return") is not None:
            tasks.setdefault(f"{r['agent']} {r['env']}", []).append(r)
    plt = _plt()
    for task, task_rows in tasks.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        series = list(dict.fromkeys(r["series"] for r in task_rows))
        dense = [r["final_return"] for r in task_rows if r["series"] == "dense"]
        for i, name in enumerate(x for x in series if x != "dense"):
            mine = [r for r in task_rows if r["series"] == name]
            comps = [r["component"] for r in mine]
            comp = max(set(comps), key=comps.count)
            by_level: dict[float, list[float]] = {}
            for r in mine:
                by_level.setdefault(round(r["sparsity"], 3), []).append(r["final_return"])
            xs = sorted(by_level)
            m = np.array([np.mean(by_level[x]) for x in xs])
            s = np.array([np.std(by_level[x]) for x in xs])
            c = EXTRA_COLORS[i % len(EXTRA_COLORS)]
            ax.plot(xs, m, marker="o", color=c, label=f"{name}: {comp}")
            ax.fill_between(xs, m - s, m + s, color=c, alpha=0.15, lw=0)
        if dense:
            ax.axhline(np.mean(dense), color=COLORS["dense"], ls="--", label="all dense")
        ax.set_xlabel("sparsity of the swept component(s)")
        ax.set_ylabel("final evaluation return")
        ax.set_title(f"Per-component sensitivity, {task}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        files += _save(fig, out_dir, stem + ("" if len(tasks) == 1 else "_" + _slug(task)), formats)
    return files
