"""`sparse-rl plot`: loading a sweep, scores and CIs, normalisation, aggregates, figures, tables."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from sparse_rl.errors import ConfigError
from sparse_rl.sweep import normalize, results
from sparse_rl.sweep.plot_cli import main as plot_main

ENVS = {"CartPole-v1": 200.0, "Acrobot-v1": -100.0}
SPARSITIES = (0.5, 0.9)
SEEDS = (0, 1, 2)
TOTAL = 10_000
FACTOR = {("static", 0.5): 0.8, ("static", 0.9): 0.5, ("rigl", 0.5): 0.95, ("rigl", 0.9): 0.85,
          ("dense-matched", 0.5): 0.9, ("dense-matched", 0.9): 0.7}


def final_return(env: str, method: str, sparsity: float, seed: int) -> float:
    base = ENVS[env]
    quality = 1.0 if method == "dense" else FACTOR[(method, sparsity)]
    # Acrobot: returns are negative; worse = more negative
    value = base * quality if base > 0 else base * (2.0 - quality)
    return round(value + 3.0 * seed - 3.0, 3) + 0.125


def _write_run(run_dir: Path, env: str, method: str, sparsity: float, seed: int, status: str = "complete",
               distribution=None):
    run_dir.mkdir(parents=True)
    sparse_method = "dense" if method == "dense-matched" else method
    width = {0.5: 0.72, 0.9: 0.33}.get(sparsity, 1.0) if method == "dense-matched" else 1.0
    config = {"run": {"agent": "dqn", "env": env, "steps": TOTAL, "seed": seed, "eval_every": 1000},
              "agent": {"width_multiplier": width,
                        "sparsity": {"method": sparse_method,
                                     "sparsity": 0.0 if method == "dense" else sparsity,
                                     **({} if distribution is None else {"distribution": distribution})}},
              "out": str(run_dir), "library_version": "0.1.0"}
    (run_dir / "config.json").write_text(json.dumps(config))
    final = final_return(env, method, sparsity, seed)
    steps = np.arange(1000, TOTAL + 1, 1000)
    evals = [float(v) for v in final * steps / TOTAL]
    evals[-1] = final   # last 10% of evaluations = the last one
    rows = ["step,wall_time,train_return,train_episodes,eval_return_mean,eval_return_std,sparsity,sps,loss"]
    for i, step in enumerate(steps):
        rows.append(f"{step - 500},{i + 0.5},1.0,{i},,,0.5,100.0,0.1")   # row without evaluation
        if status != "complete" and i >= 4:
            break
        rows.append(f"{step},{i + 1.0},1.0,{i},{evals[i]!r},1.0,0.5,100.0,0.1")
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    if status == "failed":
        (run_dir / "FAILED").write_text("RuntimeError: boom\ntraceback ...\n")
        return
    if status == "incomplete":
        return
    total = 1000 if method != "dense-matched" else int(1000 * width)
    nonzero = total if method in ("dense", "dense-matched") else int(1000 * (1 - sparsity))
    summary = {"agent": "dqn", "env": env, "seed": seed, "steps": TOTAL, "method": sparse_method,
               "target_sparsity": 0.0 if sparse_method == "dense" else sparsity,
               "final_eval_return": final, "eval_returns": evals,
               "sparsity": 1 - nonzero / total, "nonzero_params": nonzero, "total_params": total}
    if method == "dense-matched":
        summary["dense_matched"] = {"sparsity": sparsity, "width_multiplier": width,
                                    "total_params": total}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "COMPLETE").write_text("")


def make_sweep(root: Path) -> Path:
    """2 envs x (dense + static, rigl, dense-matched at 2 sparsities) x 3 seeds, plus: one failed
    run, one incomplete run, one cell in sweep.json that was never started."""
    cells = []
    for env in ENVS:
        grid = [("dense", 0.0)] + [(m, s) for m in ("static", "rigl", "dense-matched") for s in SPARSITIES]
        for method, sparsity in grid:
            for seed in SEEDS:
                rel = f"dqn/{env}/{method}-{sparsity:g}/seed{seed}"
                cells.append({"agent": "dqn", "env": env, "method": method, "sparsity": sparsity,
                              "seed": seed, "run_dir": rel})
                _write_run(root / rel, env, method, sparsity, seed)
    extra = [("failed", 3), ("incomplete", 4), ("missing", 5)]
    for status, seed in extra:
        rel = f"dqn/CartPole-v1/rigl-0.9/seed{seed}"
        cells.append({"agent": "dqn", "env": "CartPole-v1", "method": "rigl", "sparsity": 0.9,
                      "seed": seed, "run_dir": rel})
        if status != "missing":
            _write_run(root / rel, "CartPole-v1", "rigl", 0.9, seed, status=status)
    (root / "sweep.json").write_text(json.dumps({"cells": cells}))
    return root


@pytest.fixture(scope="module")
def plotted(tmp_path_factory):
    """The fake sweep plotted once: (sweep dir, plots dir, printed output)."""
    root = make_sweep(tmp_path_factory.mktemp("sweep"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = plot_main([str(root), "--reps", "300"])
    assert code == 0
    return root, root / "plots", printed.getvalue()


def _expected_mean(env, method, sparsity):
    return float(np.mean([final_return(env, method, sparsity, s) for s in SEEDS]))


# ----------------------------------------------------------------------------- loading

def test_load_runs_reads_cells_and_status(tmp_path):
    root = make_sweep(tmp_path)
    runs = results.load_runs(root)
    assert len(runs) == 2 * 7 * 3 + 2
    by_status = {s: sum(r.status == s for r in runs) for s in ("complete", "failed", "incomplete")}
    assert by_status == {"complete": 42, "failed": 1, "incomplete": 1}
    dm = [r for r in runs if r.method == "dense-matched"]
    assert len(dm) == 12 and {r.sparsity for r in dm} == {0.5, 0.9}
    assert {r.width_multiplier for r in dm} == {0.72, 0.33}
    dense = [r for r in runs if r.method == "dense"]
    assert {r.sparsity for r in dense} == {0.0} and len(dense) == 6
    r = next(r for r in runs if r.method == "rigl" and r.sparsity == 0.9 and r.seed == 1
             and r.env == "CartPole-v1")
    assert r.final_eval_return == final_return("CartPole-v1", "rigl", 0.9, 1)
    assert r.steps.tolist() == list(range(1000, TOTAL + 1, 1000))  # rows without evaluation skipped
    failed = next(r for r in runs if r.status == "failed")
    assert failed.final_eval_return is None and failed.steps.size == 4 and "boom" in failed.error


def test_missing_report_lists_failed_incomplete_missing(tmp_path):
    root = make_sweep(tmp_path)
    missing = results.missing_report(root)
    assert sorted((m.status, m.seed) for m in missing) == [("failed", 3), ("incomplete", 4), ("missing", 5)]
    assert all(m.method == "rigl" and m.sparsity == 0.9 for m in missing)


def test_bad_sweep_dir(tmp_path, capsys):
    with pytest.raises(ConfigError, match="sweep_dir"):
        results.load_runs(tmp_path / "nope")
    with pytest.raises(ConfigError, match="sweep_dir"):
        results.load_runs(tmp_path)  # exists, no runs
    from sparse_rl.cli import main as dispatch
    assert dispatch(["plot", str(tmp_path / "nope")]) == 2
    assert "sweep_dir" in capsys.readouterr().err


# ----------------------------------------------------------------------------- statistics

def test_bootstrap_ci_contains_mean():
    values = [1.0, 2.0, 4.0, 8.0]
    mean, low, high = results.bootstrap_mean_ci(values, reps=500)
    assert mean == pytest.approx(3.75) and low <= mean <= high and low >= 1.0 and high <= 8.0
    assert results.bootstrap_mean_ci([5.0], reps=10) == (5.0, 5.0, 5.0)


def test_iqm_of_identical_scores_is_that_score():
    tasks = [np.full(4, 0.7), np.full(4, 0.7), np.full(4, 0.7)]
    point, low, high = results.stratified_bootstrap(tasks, results.agg_iqm, reps=100)
    assert point == pytest.approx(0.7) and low == pytest.approx(0.7) and high == pytest.approx(0.7)


def test_aggregates_match_rliable_metrics():
    from rliable import metrics

    rng = np.random.default_rng(1)
    m = rng.normal(size=(5, 3))          # runs x tasks
    tasks = [m[:, j] for j in range(3)]
    for ours, theirs in ((results.agg_iqm, metrics.aggregate_iqm),
                         (results.agg_mean, metrics.aggregate_mean),
                         (results.agg_median, metrics.aggregate_median)):
        assert results.stratified_bootstrap(tasks, ours, reps=10)[0] == pytest.approx(theirs(m))
    y = rng.normal(size=(4, 3))
    y[:, 0] = m[:4, 0]  # a tie
    poi = results.probability_of_improvement(tasks, [y[:, j] for j in range(3)], reps=50)
    assert poi[0] == pytest.approx(metrics.probability_of_improvement(m, y))
    assert poi[1] <= poi[0] <= poi[2]


# ----------------------------------------------------------------------------- normalisation

def test_atari_table():
    table = normalize.atari_table()
    assert len(table) == 57
    for score in table.values():
        assert score.random < score.human, score
    assert (table["pong"].random, table["pong"].human) == (-20.7, 14.6)
    assert (table["breakout"].random, table["breakout"].human) == (1.7, 30.5)
    assert (table["ms_pacman"].random, table["ms_pacman"].human) == (307.3, 6951.6)
    assert (table["qbert"].random, table["qbert"].human) == (163.9, 13455.0)
    text = (Path(normalize.__file__).parent.parent / "data" / "atari_scores.csv").read_text()
    assert "Mnih et al. 2015" in text and "Badia et al. 2020" in text


def test_atari_normalisation():
    assert normalize.human_normalized("ALE/Pong-v5", 14.6) == pytest.approx(1.0)
    assert normalize.human_normalized("ALE/Pong-v5", -20.7) == pytest.approx(0.0)
    assert normalize.human_normalized("ALE/Pong-v5", 15.5) == pytest.approx((15.5 + 20.7) / 35.3)
    assert normalize.human_normalized("PongNoFrameskip-v4", -3.05) == pytest.approx(0.5)
    assert normalize.atari_game("ALE/MsPacman-v5").game == "ms_pacman"
    assert normalize.atari_game("CartPole-v1") is None
    assert normalize.atari_game("HalfCheetah-v5") is None


def test_dense_normalisation():
    assert normalize.dense_normalized(150.0, 200.0) == pytest.approx(0.75)  # = score / dense
    assert normalize.dense_normalized(-67.0, -67.0) == pytest.approx(1.0)
    assert normalize.dense_normalized(-134.0, -67.0) == pytest.approx(0.0)  # worse than dense: < 1
    norms, notes = normalize.build_normalizers({("sac", "Hopper-v5"): 3000.0},
                                               [("sac", "Hopper-v5"), ("sac", "Ant-v5"), ("dqn", "ALE/Pong-v5")])
    assert set(norms) == {("sac", "Hopper-v5"), ("dqn", "ALE/Pong-v5")}
    assert len(notes) == 1 and "Ant-v5" in notes[0] and "no complete dense" in notes[0]
    assert norms[("dqn", "ALE/Pong-v5")](14.6) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- end to end (fake sweep)

def test_plot_writes_figures(plotted):
    _, out, _ = plotted
    stems = ["curves_dqn_s0.5", "curves_dqn_s0.9", "sparsity_dqn", "params_dqn", "iqm_dqn",
             "intervals_dqn_s0.9", "profiles_dqn_s0.9", "poi_dqn_s0.5"]
    for stem in stems:
        for fmt in ("png", "pdf"):
            path = out / f"{stem}.{fmt}"
            assert path.is_file() and path.stat().st_size > 1000, path
    assert (out / "curves_dqn_s0.9.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "sparsity_dqn.pdf").read_bytes()[:4] == b"%PDF"


def test_results_md_and_csv_equal_summary_means(plotted):
    root, out, _ = plotted
    text = (out / "results.md").read_text()
    row = re.compile(r"^\| dqn \| (\S+) \| (\S+) \| (\S+) \| [\d,]* \| (-?[\d.]+) \| "
                     r"\[(-?[\d.]+), (-?[\d.]+)\] \| (\d+) \|$")
    seen = 0
    for line in text.splitlines():
        m = row.match(line)
        if not m:
            continue
        env, method, sparsity = m.group(1), m.group(2), float(m.group(3))
        mean, low, high, n = float(m.group(4)), float(m.group(5)), float(m.group(6)), int(m.group(7))
        assert mean == pytest.approx(_expected_mean(env, method, sparsity), abs=5e-4)
        assert low <= mean <= high and low < high
        assert n == 3
        seen += 1
    assert seen == 2 * 7
    # results.csv: one row per run, final returns equal the summaries
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 44
    for r in rows:
        if r["status"] == "complete":
            assert float(r["final_eval_return"]) == final_return(r["env"], r["method"],
                                                                 float(r["sparsity"]), int(r["seed"]))
        else:
            assert r["final_eval_return"] == ""
    # scores.csv: full-precision means
    with open(out / "scores.csv") as f:
        for r in csv.DictReader(f):
            assert float(r["mean"]) == pytest.approx(_expected_mean(r["env"], r["method"], float(r["sparsity"])),
                                                     rel=1e-12)
            assert float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"])
    # missing cells in the table and the aggregates are the dense-normalised ones
    assert "## Missing, failed or incomplete (3)" in text
    assert "failed: dqn CartPole-v1 rigl sparsity 0.9 seed 3" in text and "boom" in text
    assert "missing: dqn CartPole-v1 rigl sparsity 0.9 seed 5" in text
    agg = {(r["method"], float(r["sparsity"]), r["metric"]): r for r in csv.DictReader(open(out / "aggregates.csv"))}
    # dense normalised: every dense run of CartPole is 200 + {-3,0,3} -> IQM of dense ~1
    assert float(agg[("dense", 0.0, "IQM")]["value"]) == pytest.approx(1.0, abs=0.02)
    assert float(agg[("rigl", 0.9, "IQM")]["value"]) == pytest.approx(0.85, abs=0.03)


def test_plot_prints_missing(plotted):
    _, _, printed = plotted
    lines = [l for l in printed.splitlines() if l.startswith("  ")]
    assert sorted(l.split(":")[0].strip() for l in lines) == ["failed", "incomplete", "missing"]
    assert "3 cell(s) without a final score" in printed
    assert "44 runs in" in printed and "42 complete, 1 failed, 1 incomplete" in printed


def test_single_method_and_no_dense(tmp_path, capsys):
    """One sparse method, no dense runs: curves per sparsity level, no normalised aggregates (note)."""
    for s in SPARSITIES:
        for seed in (0, 1):
            _write_run(tmp_path / f"rigl-{s}" / f"s{seed}", "CartPole-v1", "rigl", s, seed)
    assert plot_main([str(tmp_path), "--reps", "50", "--formats", "png"]) == 0
    out = tmp_path / "plots"
    assert (out / "curves_dqn.png").stat().st_size > 1000
    assert (out / "sparsity_dqn.png").is_file()
    assert not list(out.glob("iqm_*"))
    assert not list(out.glob("*.pdf"))
    assert "no complete dense runs" in capsys.readouterr().out


def test_bad_options(tmp_path):
    root = make_sweep(tmp_path)
    with pytest.raises(ConfigError, match="formats"):
        plot_main([str(root), "--formats", "gif"])
    with pytest.raises(ConfigError, match="reps"):
        plot_main([str(root), "--reps", "0"])
    with pytest.raises(ConfigError, match="x"):
        plot_main([str(root), "--x", "episodes"])


def test_atari_aggregates_are_human_normalised(tmp_path):
    """Atari tasks need no dense runs: the IQM of identical human-normalised scores is that score."""
    for env, raw in (("ALE/Pong-v5", -3.05), ("ALE/Breakout-v5", 16.1)):   # both 0.5 human-normalised
        for seed in (0, 1, 2):
            d = tmp_path / env.replace("/", "_") / "static-0.9" / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "config.json").write_text(json.dumps({"run": {"agent": "dqn", "env": env, "seed": seed},
                                                       "agent": {"sparsity": {"method": "static", "sparsity": 0.9}}}))
            (d / "metrics.csv").write_text(f"step,eval_return_mean\n100,{raw}\n")
            (d / "summary.json").write_text(json.dumps({"final_eval_return": raw, "method": "static",
                                                        "target_sparsity": 0.9, "nonzero_params": 10,
                                                        "total_params": 100}))
            (d / "COMPLETE").write_text("")
    assert plot_main([str(tmp_path), "--reps", "50", "--formats", "png"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "plots" / "aggregates.csv")))
    iqm = next(r for r in rows if r["metric"] == "IQM" and r["method"] == "static")
    assert iqm["suite"] == "atari" and int(iqm["tasks"]) == 2
    assert float(iqm["value"]) == pytest.approx(0.5)
    assert float(iqm["ci_low"]) == pytest.approx(0.5) and float(iqm["ci_high"]) == pytest.approx(0.5)
    assert (tmp_path / "plots" / "iqm_dqn.png").stat().st_size > 1000


def test_real_sweep_then_plot(tmp_path):
    """A 2-cell `sparse-rl sweep` of a few hundred steps, then `sparse-rl plot` on it."""
    from sparse_rl.cli import main as dispatch

    out = tmp_path / "sweep"
    code = dispatch(["sweep", "--agent", "dqn", "--env", "CartPole-v1", "--methods", "dense,static",
                     "--sparsities", "0.8", "--seeds", "0", "--steps", "200", "--workers", "2",
                     "--no-progress", "--out", str(out),
                     "--set", "eval-every=100", "--set", "eval-episodes=1",
                     "--set", "dqn.widths=16,16", "--set", "dqn.learning-starts=50"])
    assert code == 0
    assert dispatch(["plot", str(out), "--reps", "50"]) == 0
    plots = out / "plots"
    for stem in ("curves_dqn", "sparsity_dqn", "params_dqn"):
        assert (plots / f"{stem}.png").stat().st_size > 1000 and (plots / f"{stem}.pdf").stat().st_size > 1000
    summaries = {json.loads(p.read_text())["method"]: json.loads(p.read_text())["final_eval_return"]
                 for p in out.rglob("summary.json")}
    assert set(summaries) == {"dense", "static"}
    rows = {r["method"]: r for r in csv.DictReader(open(plots / "scores.csv"))}
    for method, final in summaries.items():
        assert float(rows[method]["mean"]) == pytest.approx(final, rel=1e-12)
        assert int(rows[method]["n"]) == 1
    assert float(rows["static"]["sparsity"]) == 0.8


def test_erk_and_uniform_runs_are_separate_cells(tmp_path, capsys):
    """An ERK-vs-uniform study plotted from one directory (scripts/erk_uniform_dqn_*_small.toml):
    uniform runs are their own method, `rigl-uniform`, and never pooled with ERK's `rigl`; a
    corrupt distribution value is read as the default, not trusted as a name."""
    uniform_factor = 0.5
    for seed in SEEDS:
        _write_run(tmp_path / f"erk/dense/seed{seed}", "CartPole-v1", "dense", 0.0, seed)
        _write_run(tmp_path / f"erk/rigl/seed{seed}", "CartPole-v1", "rigl", 0.9, seed, distribution="erk")
        _write_run(tmp_path / f"uniform/rigl/seed{seed}", "CartPole-v1", "rigl", 0.9, seed,
                   distribution="uniform")
        summary = tmp_path / f"uniform/rigl/seed{seed}/summary.json"
        data = json.loads(summary.read_text())
        data["final_eval_return"] *= uniform_factor
        summary.write_text(json.dumps(data))
    _write_run(tmp_path / "odd/rigl/seed0", "CartPole-v1", "rigl", 0.9, 0, distribution=["not", "a name"])
    runs = results.load_runs(tmp_path)
    assert sorted({r.method for r in runs}) == ["dense", "rigl", "rigl-uniform"]
    scores = {(c.method, c.sparsity): c for c in results.final_scores(runs, reps=200)}
    assert [m for m, _ in scores] == ["dense", "rigl", "rigl-uniform"]   # each variant after its method
    erk = [final_return("CartPole-v1", "rigl", 0.9, s) for s in SEEDS]
    assert scores[("rigl", 0.9)].n == 4   # the 3 ERK seeds and the corrupt one
    assert scores[("rigl-uniform", 0.9)].n == 3
    assert scores[("rigl-uniform", 0.9)].mean == pytest.approx(uniform_factor * np.mean(erk))
    assert plot_main([str(tmp_path), "--reps", "200", "--formats", "png", "--quiet"]) == 0
    table = (tmp_path / "plots" / "results.md").read_text()
    assert re.search(r"\| rigl-uniform \| 0\.9 \|", table), table
    assert (tmp_path / "plots" / "sparsity_dqn.png").is_file()


def test_method_label_and_order():
    assert results.method_label("rigl", "uniform") == "rigl-uniform"
    assert results.method_label("rigl", "erk") == "rigl"
    assert results.method_label("dense", "uniform") == "dense"
    assert results.base_method("rigl-uniform") == "rigl"
    assert results.base_method("dense-matched") == "dense-matched"
    assert results.base_method("mine") == "mine"
    order = ["rigl-uniform", "static", "dense", "rigl", "static-uniform", "dense-matched", "mine"]
    assert sorted(order, key=results.method_sort_key) == [
        "dense", "dense-matched", "static", "static-uniform", "rigl", "rigl-uniform", "mine"]
