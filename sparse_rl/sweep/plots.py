"""The figures and tables of `sparse-rl plot SWEEP_DIR`.

`plot_sweep(sweep_dir, out=None, formats=("png", "pdf"), reps=2000, x="env_steps")` writes, under
`out` (default `SWEEP_DIR/plots`):

* ``curves_<agent>[_s<sparsity>].{png,pdf}``: evaluation return vs environment steps, one panel per
  env, one line per method at that sparsity (dense on every figure; one figure per sparsity level),
  or one line per sparsity level when the sweep has a single sparse method; mean over seeds with a
  95% bootstrap band.
* ``sparsity_<agent>``: final return vs sparsity, one line per method with 95% bootstrap CIs, dense
  as a horizontal band (mean and CI); x axis on a -log10(1 - s) scale labelled with the sparsities.
* ``params_<agent>``: final return vs parameter count (log x): dense at several widths (dense and
  dense-matched runs: all parameters) vs each sparse method (non-zero parameters).
* ``iqm_<agent>[_atari]``: IQM of normalised scores vs sparsity (stratified bootstrap CIs), and per
  sparsity level ``intervals_*`` (IQM, median, mean), ``profiles_*`` (performance profiles) and
  ``poi_*`` (probability of improvement of each sparse method over dense), drawn with
  rliable.plot_utils. Normalisation: see `sparse_rl.sweep.normalize`.
* ``results.csv`` (one row per run), ``scores.csv`` (one row per cell, full precision),
  ``aggregates.csv`` and ``results.md`` (Markdown tables of final scores and aggregates with 95% CIs,
  what is missing, notes).

Final scores are the runs' `summary.json` `final_eval_return` (mean of the last 10% of
evaluations); only complete runs have one (see `sparse_rl.sweep.results`).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sparse_rl.errors import ConfigError, check
from sparse_rl.sweep import normalize as norm
from sparse_rl.sweep.results import (AGGREGATES, DENSE, DENSE_MATCHED, CellScore, MissingCell,
                                     RunRecord, base_method, bootstrap_curve_ci, complete_runs,
                                     final_scores, load_runs, method_sort_key, missing_report,
                                     performance_profile, probability_of_improvement,
                                     stratified_bootstrap, write_results_csv)

__all__ = ["plot_sweep", "PlotReport", "FORMATS", "X_AXES", "METHOD_COLORS"]

FORMATS = ("png", "pdf", "svg")
X_AXES = {"env_steps": "environment steps", "wall_time": "wall time (s)"}
METHOD_COLORS = {DENSE: "#222222", DENSE_MATCHED: "#8c8c8c", "static": "#1f77b4",
                 "prune": "#2ca02c", "set": "#ff7f0e", "rigl": "#d62728"}
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_MARKERS = {DENSE: "s", DENSE_MATCHED: "D", "static": "o", "prune": "v", "set": "^", "rigl": "P"}


def _color(method: str) -> str:
    """A method's colour; a distribution variant (`rigl-uniform`) gets a lighter shade of its
    method's, so that ERK and uniform of one method read as a pair."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    base = base_method(method)
    if base in METHOD_COLORS:
        return _lighter(METHOD_COLORS[base])
    return _EXTRA_COLORS[sum(map(ord, method)) % len(_EXTRA_COLORS)]


def _lighter(hex_color: str, amount: float = 0.5) -> str:
    """`hex_color` mixed with white (amount 0: unchanged, 1: white)."""
    rgb = [int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in rgb)


def _marker(method: str) -> str:
    return _MARKERS.get(base_method(method), "o")


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


@dataclasses.dataclass
class PlotReport:
    out: Path
    runs: list[RunRecord]
    missing: list[MissingCell]
    files: list[Path] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    scores: list[CellScore] = dataclasses.field(default_factory=list)
    aggregates: list[dict] = dataclasses.field(default_factory=list)
    formats: tuple[str, ...] = ("png",)


# ----------------------------------------------------------------------------- helpers

def _fmt_sparsity(s: float) -> str:
    return "nan" if not math.isfinite(s) else f"{s:g}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in str(text)).strip("-")


def _save(fig, stem: str, report: PlotReport, formats: Sequence[str]) -> None:
    plt = _plt()
    for fmt in formats:
        path = report.out / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150 if fmt == "png" else None, bbox_inches="tight")
        report.files.append(path)
    plt.close(fig)


def steps_formatter():
    from matplotlib.ticker import FuncFormatter

    def fmt(x, _pos):
        ax = abs(x)
        if ax >= 1e6:
            return f"{x / 1e6:g}M"
        if ax >= 1e3:
            return f"{x / 1e3:g}k"
        return f"{x:g}"
    return FuncFormatter(fmt)


def _grid(n: int, width: float = 4.2, height: float = 3.3):
    plt = _plt()
    ncols = min(n, 3)
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _legend_below(fig, axes) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in handles:
                handles[l] = h
                labels.append(l)
    if labels:
        fig.legend([handles[l] for l in labels], labels, loc="lower center",
                   ncol=min(len(labels), 6), frameon=False, bbox_to_anchor=(0.5, -0.01))
        fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(labels) - 1) // 6), 1, 1))
    else:
        fig.tight_layout()


def _n_seeds(counts: Sequence[int]) -> str:
    counts = sorted(set(counts))
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"n={n} seed{'s' if counts[-1] > 1 else ''}"


def _short_env(env: str) -> str:
    return env[4:] if env.startswith("ALE/") else env


# ----------------------------------------------------------------------------- learning curves

def _curve_matrix(runs: Sequence[RunRecord], x: str):
    """(grid, seeds x grid matrix): each seed's curve linearly interpolated onto the union of
    the x values, NaN outside that seed's own range."""
    xs = []
    for r in runs:
        xv = r.steps if x == "env_steps" else r.wall_times
        ok = np.isfinite(xv) & np.isfinite(r.eval_returns)
        xs.append((xv[ok], r.eval_returns[ok]))
    xs = [(a, b) for a, b in xs if a.size]
    if not xs:
        return None, None
    grid = np.unique(np.concatenate([a for a, _ in xs]))
    if grid.size > 400:  # keep the bootstrap cheap on long runs
        grid = np.unique(np.quantile(grid, np.linspace(0, 1, 400), method="nearest"))
    matrix = np.full((len(xs), grid.size), np.nan)
    for i, (a, b) in enumerate(xs):
        order = np.argsort(a)
        a, b = a[order], b[order]
        inside = (grid >= a[0]) & (grid <= a[-1])
        matrix[i, inside] = np.interp(grid[inside], a, b)
    return grid, matrix


def _plot_curve(ax, runs, x, reps, color, label, linestyle="-"):
    grid, matrix = _curve_matrix(runs, x)
    if grid is None:
        return False
    mean, low, high = bootstrap_curve_ci(matrix, reps=reps)
    n = matrix.shape[0]
    ax.plot(grid, mean, color=color, lw=1.6, ls=linestyle, label=f"{label}")
    if n > 1:
        ax.fill_between(grid, low, high, color=color, alpha=0.18, lw=0)
    if grid.size == 1:
        ax.plot(grid, mean, marker="o", color=color)
    return True


def learning_curves(runs: Sequence[RunRecord], report: PlotReport, formats, reps: int, x: str) -> None:
    with_curve = [r for r in runs if r.steps.size]
    if not with_curve:
        report.notes.append("learning curves: no run has evaluations in metrics.csv; skipped")
        return
    plt = _plt()
    for agent in sorted({r.agent for r in with_curve}):
        mine = [r for r in with_curve if r.agent == agent]
        envs = sorted({r.env for r in mine})
        sparse_methods = sorted({r.method for r in mine if r.method != DENSE}, key=method_sort_key)
        levels = sorted({r.sparsity for r in mine if r.method != DENSE and math.isfinite(r.sparsity)})
        if len(sparse_methods) <= 1:
            figures = [(None, None)]      # one figure: one line per sparsity level
        else:
            figures = [(s, None) for s in levels] or [(None, None)]
        for level, _ in figures:
            fig, axes = _grid(len(envs))
            for ax, env in zip(axes, envs):
                here = [r for r in mine if r.env == env]
                lines = []
                dense = [r for r in here if r.method == DENSE]
                if dense:
                    lines.append((dense, _color(DENSE), DENSE, "--"))
                if level is None:
                    cmap = plt.get_cmap("viridis")
                    for i, s in enumerate(levels):
                        group = [r for r in here if r.method != DENSE and r.sparsity == s]
                        if group:
                            color = cmap(0.15 + 0.7 * i / max(1, len(levels) - 1))
                            name = f"{group[0].method} {_fmt_sparsity(s)}"
                            lines.append((group, color, name, "-"))
                else:
                    for m in sparse_methods:
                        group = [r for r in here if r.method == m and r.sparsity == level]
                        if group:
                            lines.append((group, _color(m), m, "-"))
                for group, color, name, ls in lines:
                    _plot_curve(ax, group, x, reps, color, name, ls)
                counts = sorted({len(g) for g, *_ in lines})
                seeds = "" if not counts else f"  ({_n_seeds(counts)})"
                ax.set_title(f"{_short_env(env)}{seeds}", fontsize=10)
                ax.set_xlabel(X_AXES[x])
                ax.set_ylabel("eval return")
                if x == "env_steps":
                    ax.xaxis.set_major_formatter(steps_formatter())
                ax.grid(alpha=0.3)
            title = f"{agent.upper()}: evaluation return (mean, 95% bootstrap CI)"
            if level is not None:
                title += f", sparsity {_fmt_sparsity(level)}"
            fig.suptitle(title, fontsize=11)
            _legend_below(fig, axes)
            stem = f"curves_{_slug(agent)}" + ("" if level is None else f"_s{_fmt_sparsity(level)}")
            _save(fig, stem, report, formats)


# ----------------------------------------------------------------------------- final scores

def _sparsity_axis(ax, levels: Sequence[float]) -> None:
    """x on -log10(1 - s): 0.5, 0.9, 0.99 equally readable; ticks at the sweep's levels."""
    def forward(s):
        s = np.asarray(s, dtype=float)
        return -np.log10(np.clip(1.0 - s, 1e-6, None))

    def inverse(t):
        return 1.0 - np.power(10.0, -np.asarray(t, dtype=float))

    ax.set_xscale("function", functions=(forward, inverse))
    levels = sorted(set(levels))
    lo, hi = float(forward(levels[0])), float(forward(levels[-1]))
    gap = 0.075 * max(hi - lo, 0.3)
    ticks = []
    for s in levels:  # label the levels whose labels do not overlap (always the last one)
        if not ticks or float(forward(s)) - float(forward(ticks[-1])) >= gap:
            ticks.append(s)
        elif s == levels[-1]:
            ticks[-1] = s
    ax.set_xticks(ticks)
    ax.set_xticklabels([_fmt_sparsity(s) for s in ticks], rotation=45 if len(ticks) > 5 else 0)
    ax.set_xticks([s for s in levels if s not in ticks], minor=True)
    ax.set_xticklabels([], minor=True)
    pad = max(0.08, 0.06 * (hi - lo))
    ax.set_xlim(float(inverse(lo - pad)), float(inverse(hi + pad)))


def final_vs_sparsity(scores: Sequence[CellScore], report: PlotReport, formats) -> None:
    for agent in sorted({c.agent for c in scores}):
        mine = [c for c in scores if c.agent == agent]
        sparse = [c for c in mine if c.method != DENSE and math.isfinite(c.sparsity)]
        if not sparse:
            report.notes.append(f"{agent}: no complete sparse or dense-matched runs; "
                                "final-return-vs-sparsity figure skipped")
            continue
        envs = sorted({c.env for c in mine})
        levels = sorted({c.sparsity for c in sparse})
        fig, axes = _grid(len(envs))
        for ax, env in zip(axes, envs):
            dense = [c for c in mine if c.env == env and c.method == DENSE]
            if dense:
                d = dense[0]
                ax.axhspan(d.ci_low, d.ci_high, color=_color(DENSE), alpha=0.12, lw=0)
                ax.axhline(d.mean, color=_color(DENSE), ls="--", lw=1.3, label=f"{DENSE} (100% width)")
            for m in sorted({c.method for c in sparse if c.env == env}, key=method_sort_key):
                cells = sorted((c for c in sparse if c.env == env and c.method == m), key=lambda c: c.sparsity)
                s = np.array([c.sparsity for c in cells])
                mean = np.array([c.mean for c in cells])
                err = np.array([[c.mean - c.ci_low for c in cells], [c.ci_high - c.mean for c in cells]])
                ax.errorbar(s, mean, yerr=err, color=_color(m), marker=_marker(m), ms=5,
                            lw=1.6, capsize=3, label=m)
            _sparsity_axis(ax, levels)
            n = sorted({c.n for c in mine if c.env == env})
            ax.set_title(f"{_short_env(env)}  ({_n_seeds(n)})", fontsize=10)
            ax.set_xlabel("sparsity")
            ax.set_ylabel("final eval return")
            ax.grid(alpha=0.3)
        fig.suptitle(f"{agent.upper()}: final return vs sparsity (mean, 95% bootstrap CI)", fontsize=11)
        _legend_below(fig, axes)
        _save(fig, f"sparsity_{_slug(agent)}", report, formats)


def final_vs_params(scores: Sequence[CellScore], report: PlotReport, formats) -> None:
    for agent in sorted({c.agent for c in scores}):
        mine = [c for c in scores if c.agent == agent and c.params]
        if not mine:
            report.notes.append(f"{agent}: no parameter counts in the summaries; "
                                "final-return-vs-parameters figure skipped")
            continue
        envs = sorted({c.env for c in mine})
        fig, axes = _grid(len(envs))
        for ax, env in zip(axes, envs):
            here = [c for c in mine if c.env == env]
            groups = {}
            for c in here:
                key = "dense (scaled width)" if c.method in (DENSE, DENSE_MATCHED) else c.method
                groups.setdefault(key, []).append(c)
            order = sorted(groups, key=lambda k: method_sort_key(DENSE if k.startswith("dense") else k))
            for key in order:
                cells = sorted(groups[key], key=lambda c: c.params)
                method = DENSE if key.startswith("dense") else key
                p = np.array([c.params for c in cells], dtype=float)
                mean = np.array([c.mean for c in cells])
                err = np.array([[c.mean - c.ci_low for c in cells], [c.ci_high - c.mean for c in cells]])
                ax.errorbar(p, mean, yerr=err, color=_color(method), marker=_marker(method),
                            ms=5, lw=1.6, capsize=3, ls="--" if method == DENSE else "-", label=key)
                if method == DENSE:  # mark the full-width network
                    for c in cells:
                        if c.method == DENSE:
                            ax.plot([c.params], [c.mean], marker="*", ms=11, color=_color(DENSE),
                                    ls="none", label="dense, 100% width")
            ax.set_xscale("log")
            ax.set_title(_short_env(env), fontsize=10)
            ax.set_xlabel("parameters (non-zero for sparse networks)")
            ax.set_ylabel("final eval return")
            ax.grid(alpha=0.3, which="both")
        fig.suptitle(f"{agent.upper()}: final return vs parameter count (mean, 95% bootstrap CI)", fontsize=11)
        _legend_below(fig, axes)
        _save(fig, f"params_{_slug(agent)}", report, formats)


# ----------------------------------------------------------------------------- aggregates

def aggregates(runs: Sequence[RunRecord], report: PlotReport, formats, reps: int) -> None:
    """IQM / median / mean with stratified bootstrap CIs, performance profiles and probability of
    improvement over dense, on normalised scores, per agent and suite (Atari human-normalised vs
    dense-normalised tasks are never mixed)."""
    done = complete_runs(runs)
    if not done:
        return
    dense_means = {}
    for key in {(r.agent, r.env) for r in done}:
        d = [r.final_eval_return for r in done if (r.agent, r.env) == key and r.method == DENSE]
        if d:
            dense_means[key] = float(np.mean(d))
    normalizers, notes = norm.build_normalizers(dense_means, {(r.agent, r.env) for r in done})
    report.notes.extend(notes)
    if not normalizers:
        report.notes.append("aggregates skipped: no task could be normalised (no dense runs and "
                            "no Atari game)")
        return
    suites = sorted({(n.agent, n.suite) for n in normalizers.values()})
    atari_agents = {a for a, s in suites if s == "atari"}
    for agent, suite in suites:
        tasks = sorted(env for (a, env), n in normalizers.items() if a == agent and n.suite == suite)
        label = normalizers[(agent, tasks[0])].label
        scores: dict[tuple[str, float], list[np.ndarray]] = {}
        by_cell: dict[tuple[str, float, str], list[float]] = {}
        for r in done:
            if r.agent == agent and r.env in tasks:
                by_cell.setdefault((r.method, r.sparsity, r.env), []).append(
                    normalizers[(agent, r.env)](r.final_eval_return))
        levels = sorted({s for (m, s, _) in by_cell if m != DENSE and math.isfinite(s)})
        methods = sorted({m for (m, _, _) in by_cell if m != DENSE}, key=method_sort_key)
        dense_tasks = [np.array(by_cell[(DENSE, 0.0, e)]) for e in tasks if (DENSE, 0.0, e) in by_cell]
        if len(dense_tasks) != len(tasks):
            dense_tasks = None
        for m in methods:
            for s in levels:
                have = [(m, s, e) in by_cell for e in tasks]
                if all(have):
                    scores[(m, s)] = [np.array(by_cell[(m, s, e)]) for e in tasks]
                elif any(have):
                    missing_envs = [e for e, h in zip(tasks, have) if not h]
                    report.notes.append(f"aggregates {agent}: {m} at sparsity {_fmt_sparsity(s)} has no "
                                        f"complete run on {', '.join(missing_envs)}; left out")
        several = len([1 for a, _ in suites if a == agent]) > 1
        tag = _slug(agent) + ("_atari" if suite == "atari" and several else "")
        estimates = {}
        for key, task_scores in scores.items():
            estimates[key] = stratified_bootstrap(task_scores, lambda b: np.stack(
                [f(b) for f in AGGREGATES.values()], axis=-1), reps=reps)
        dense_est = None
        if dense_tasks is not None:
            dense_est = stratified_bootstrap(dense_tasks, lambda b: np.stack(
                [f(b) for f in AGGREGATES.values()], axis=-1), reps=reps)
        for (m, s), (point, low, high) in sorted(estimates.items(), key=lambda kv: (kv[0][1], method_sort_key(kv[0][0]))):
            for i, name in enumerate(AGGREGATES):
                report.aggregates.append(dict(agent=agent, suite=suite, method=m, sparsity=s, metric=name,
                                              value=float(point[i]), ci_low=float(low[i]),
                                              ci_high=float(high[i]), tasks=len(tasks),
                                              runs=int(sum(t.size for t in scores[(m, s)]))))
        if dense_est is not None:
            for i, name in enumerate(AGGREGATES):
                report.aggregates.append(dict(agent=agent, suite=suite, method=DENSE, sparsity=0.0, metric=name,
                                              value=float(dense_est[0][i]), ci_low=float(dense_est[1][i]),
                                              ci_high=float(dense_est[2][i]), tasks=len(tasks),
                                              runs=int(sum(t.size for t in dense_tasks))))
        if not estimates and dense_est is None:
            continue
        _iqm_vs_sparsity(agent, tasks, label, estimates, dense_est, levels, report, formats, tag)
        for s in levels:
            at = {m: scores[(m, s)] for m in methods if (m, s) in scores}
            est = {m: estimates[(m, s)] for m in at}
            if dense_tasks is not None:
                at, est = {DENSE: dense_tasks, **at}, {DENSE: dense_est, **est}
            _rliable_figures(agent, tasks, label, s, at, est, report, formats, reps, tag)


def _iqm_vs_sparsity(agent, tasks, label, estimates, dense_est, levels, report, formats, tag):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    if dense_est is not None:
        point, low, high = dense_est
        ax.axhspan(low[0], high[0], color=_color(DENSE), alpha=0.12, lw=0)
        ax.axhline(point[0], color=_color(DENSE), ls="--", lw=1.3, label=f"{DENSE} (100% width)")
    for m in sorted({m for m, _ in estimates}, key=method_sort_key):
        keys = sorted((k for k in estimates if k[0] == m), key=lambda k: k[1])
        s = np.array([k[1] for k in keys])
        point = np.array([estimates[k][0][0] for k in keys])
        low = np.array([estimates[k][1][0] for k in keys])
        high = np.array([estimates[k][2][0] for k in keys])
        ax.plot(s, point, color=_color(m), marker=_marker(m), ms=5, lw=1.6, label=m)
        ax.fill_between(s, low, high, color=_color(m), alpha=0.15, lw=0)
    if levels:
        _sparsity_axis(ax, levels)
    ax.set_xlabel("sparsity")
    ax.set_ylabel(f"IQM {label}")
    ax.grid(alpha=0.3)
    ax.set_title(f"{agent.upper()} over {len(tasks)} task{'s' if len(tasks) > 1 else ''}: IQM, "
                 "95% stratified bootstrap CI", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    _save(fig, f"iqm_{tag}", report, formats)


def _rliable_figures(agent, tasks, label, s, at, est, report, formats, reps, tag):
    """rliable.plot_utils figures at one sparsity level: interval estimates (IQM, median, mean),
    performance profiles, probability of improvement of each method over dense."""
    plt = _plt()
    from rliable import plot_utils

    colors = {m: _color(m) for m in at}
    stem = f"{tag}_s{_fmt_sparsity(s)}"
    order = sorted(at, key=method_sort_key)
    points = {m: est[m][0] for m in order}
    intervals = {m: np.stack([est[m][1], est[m][2]]) for m in order}
    fig, axes = plot_utils.plot_interval_estimates(
        points, intervals, list(AGGREGATES), algorithms=order, colors=colors, xlabel=label,
        subfigure_width=3.4, row_height=0.5)
    for text in list(fig.texts):   # rliable's x label sits on the tick labels: put it on the axes
        text.remove()
    axes = np.atleast_1d(axes)
    axes[len(axes) // 2].set_xlabel(label, fontsize="x-large", labelpad=8)
    height = fig.get_size_inches()[1]
    fig.suptitle(f"{agent.upper()}, sparsity {_fmt_sparsity(s)}: aggregates over {len(tasks)} "
                 f"task{'s' if len(tasks) > 1 else ''} (95% stratified bootstrap CIs)",
                 x=(axes[0].get_position().x0 + axes[-1].get_position().x1) / 2,
                 y=1.0 + 0.55 / height, fontsize="x-large")
    _save(fig, f"intervals_{stem}", report, formats)
    # performance profiles
    pooled = np.concatenate([np.concatenate(t) for t in at.values()])
    lo, hi = float(np.min(pooled)), float(np.max(pooled))
    lo, hi = min(lo, 0.0), max(hi, 1.0)
    taus = np.linspace(lo, hi + 0.02 * (hi - lo), 81)
    profiles, cis = {}, {}
    for m, task_scores in at.items():
        p, l, h = performance_profile(task_scores, taus, reps=reps)
        profiles[m] = p
        cis[m] = np.stack([l, h])
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    plot_utils.plot_performance_profiles({k: profiles[k] for k in order}, taus, performance_profile_cis=cis,
                                         colors=colors, ax=ax, xlabel=rf"{label} ($\tau$)",
                                         ylabel=r"fraction of runs with score $> \tau$",
                                         labelsize="medium", ticklabelsize="small", legend=False)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"{agent.upper()}, sparsity {_fmt_sparsity(s)}: performance profiles", fontsize=10)
    fig.tight_layout()
    _save(fig, f"profiles_{stem}", report, formats)
    # probability of improvement over dense
    if DENSE in at and len(at) > 1:
        probs, prob_cis = {}, {}
        for m in order:
            if m == DENSE:
                continue
            p, l, h = probability_of_improvement(at[m], at[DENSE], reps=reps)
            probs[f"{m},{DENSE}"] = p
            prob_cis[f"{m},{DENSE}"] = np.array([l, h])
        fig, ax = plt.subplots(figsize=(5.0, max(2.2, 0.9 + 0.55 * len(probs))))
        plot_utils.plot_probability_of_improvement(
            probs, prob_cis, ax=ax, colors=[_color(k.split(",")[0]) for k in probs],
            xlabel=r"P(X > dense)", left_ylabel="X", right_ylabel="Y", labelsize="medium",
            ticklabelsize="small")
        ax.set_xlim(0, 1)
        ax.axvline(0.5, color="k", lw=0.8, ls=":")
        ax.set_title(f"{agent.upper()}, sparsity {_fmt_sparsity(s)}: probability of improvement "
                     "over dense", fontsize=10, pad=22)
        fig.tight_layout()
        _save(fig, f"poi_{stem}", report, formats)


# ----------------------------------------------------------------------------- tables

def _f(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def write_scores_csv(scores: Sequence[CellScore], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["agent", "env", "method", "sparsity", "n", "mean", "ci_low", "ci_high", "params",
                    "width_multiplier", "seeds", "scores"])
        for c in scores:
            w.writerow([c.agent, c.env, c.method, f"{c.sparsity:g}", c.n, repr(c.mean), repr(c.ci_low),
                        repr(c.ci_high), "" if c.params is None else f"{c.params:g}",
                        f"{c.width_multiplier:g}", " ".join(map(str, c.seeds)),
                        " ".join(repr(float(x)) for x in c.scores)])
    return path


def write_aggregates_csv(rows: Sequence[dict], path: Path) -> Path:
    fields = ["agent", "suite", "metric", "method", "sparsity", "value", "ci_low", "ci_high", "tasks", "runs"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return path


_SUITES = {"atari": "human (Atari)", "dense": "dense"}


def write_results_md(report: PlotReport, sweep_dir: Path, path: Path) -> Path:
    runs, scores = report.runs, report.scores
    counts = {s: sum(1 for r in runs if r.status == s) for s in ("complete", "failed", "incomplete")}
    n_missing = sum(1 for m in report.missing if m.status == "missing")
    lines = [f"# Results of sweep `{sweep_dir.name}`", "",
             f"{len(runs)} run directories: {counts['complete']} complete, {counts['failed']} failed, "
             f"{counts['incomplete']} incomplete; {n_missing} listed in sweep.json but missing.", "",
             "Final score: mean over seeds of each run's final evaluation return (mean of the last 10% "
             "of evaluations, `summary.json` `final_eval_return`); 95% CI: percentile bootstrap over "
             "seeds (none for a single seed); n: complete seeds.", "",
             "| agent | env | method | sparsity | params | final return | 95% CI | n |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for c in scores:
        params = "" if c.params is None else f"{c.params:,.0f}"
        # One seed has no spread to bootstrap: an interval [x, x] would look like certainty.
        ci = f"[{_f(c.ci_low)}, {_f(c.ci_high)}]" if c.n > 1 else "n/a (1 seed)"
        lines.append(f"| {c.agent} | {c.env} | {c.method} | {_fmt_sparsity(c.sparsity)} | {params} | "
                     f"{_f(c.mean)} | {ci} | {c.n} |")
    if report.aggregates:
        lines += ["", "## Aggregates over tasks (normalised scores)", "",
                  "Atari: human-normalised; other tasks: normalised by the sweep's dense return "
                  "(1 = dense). Stratified bootstrap 95% CIs.", "",
                  "| agent | normalised by | sparsity | method | IQM | 95% CI | median | mean | tasks | runs |",
                  "|---|---|---:|---|---:|---|---:|---:|---:|---:|"]
        table = {}
        for row in report.aggregates:
            table.setdefault((row["agent"], row["suite"], row["sparsity"], row["method"]), {})[row["metric"]] = row
        for (agent, suite, s, m), metrics in sorted(table.items(), key=lambda kv: (
                kv[0][0], kv[0][1], kv[0][2], method_sort_key(kv[0][3]))):
            iqm = metrics["IQM"]
            lines.append(f"| {agent} | {_SUITES.get(suite, suite)} | {_fmt_sparsity(s)} | {m} | {_f(iqm['value'])} | "
                         f"[{_f(iqm['ci_low'])}, {_f(iqm['ci_high'])}] | {_f(metrics['Median']['value'])} | "
                         f"{_f(metrics['Mean']['value'])} | {iqm['tasks']} | {iqm['runs']} |")
    if report.missing:
        lines += ["", f"## Missing, failed or incomplete ({len(report.missing)})", ""]
        lines += [f"- {m.describe(sweep_dir)}" for m in report.missing]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    figures = [p for p in report.files if p.suffix == f".{report.formats[0]}"]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- entry point

def plot_sweep(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None,
               formats: Sequence[str] = ("png", "pdf"), reps: int = 2000, x: str = "env_steps",
               echo: Callable[[str], None] | None = print) -> PlotReport:
    """Every figure and table of a sweep directory (see the module docstring)."""
    formats = tuple(formats)
    check(len(formats) > 0, "formats", "must name at least one format", ", ".join(FORMATS))
    for fmt in formats:
        check(fmt in FORMATS, "formats", f"unknown format {fmt!r}", ", ".join(FORMATS))
    check(isinstance(reps, int) and not isinstance(reps, bool) and reps >= 1, "reps",
          f"must be an int >= 1, got {reps!r}", ">= 1 (e.g. 2000)")
    check(x in X_AXES, "x", f"unknown x axis {x!r}", ", ".join(X_AXES))
    echo = echo or (lambda _msg: None)
    runs = load_runs(sweep_dir)
    sweep_path = Path(sweep_dir).resolve()
    out = Path(out) if out is not None else sweep_path / "plots"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError("out", f"cannot create {str(out)!r}: {error.strerror}") from None
    missing = missing_report(sweep_path, runs)
    report = PlotReport(out=out, runs=runs, missing=missing, formats=formats)
    counts = {s: sum(1 for r in runs if r.status == s) for s in ("complete", "failed", "incomplete")}
    echo(f"{len(runs)} runs in {sweep_dir}: {counts['complete']} complete, {counts['failed']} failed, "
         f"{counts['incomplete']} incomplete")
    for m in missing:
        echo(f"  {m.describe(sweep_path)}")
    if missing:
        echo(f"{len(missing)} cell(s) without a final score (missing, failed or incomplete); "
             "plotting what exists")

    report.scores = final_scores(runs, reps=reps)
    learning_curves(runs, report, formats, reps, x)
    if report.scores:
        final_vs_sparsity(report.scores, report, formats)
        final_vs_params(report.scores, report, formats)
        aggregates(runs, report, formats, reps)
    else:
        report.notes.append("no complete run: no final scores, score plots or aggregates")
    report.files.append(write_results_csv(runs, out / "results.csv"))
    report.files.append(write_scores_csv(report.scores, out / "scores.csv"))
    if report.aggregates:
        report.files.append(write_aggregates_csv(report.aggregates, out / "aggregates.csv"))
    report.files.append(write_results_md(report, sweep_path, out / "results.md"))
    for note in report.notes:
        echo(f"note: {note}")
    n_fig = len({p.stem for p in report.files if p.suffix in {f'.{f}' for f in formats}})
    echo(f"wrote {n_fig} figures ({', '.join(formats)}) and results.md / results.csv to {out}")
    return report
