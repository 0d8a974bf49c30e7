"""`sparse-rl sweep`: grids, the local backend, skip/resume/failure semantics, dense-matched
baselines and vectorised seeds. Runs are tiny (16-unit MLPs, 200 steps) and run in worker
processes, as in real use."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from sparse_rl.errors import ConfigError
from sparse_rl.sweep import cli as sweep_cli
from sparse_rl.sweep import grid as G
from sparse_rl.sweep import local
from sparse_rl.train.metrics import read_metrics
from sparse_rl.train.rundir import run_status

TRAIN = ["--steps", "200", "--eval-every", "100", "--eval-episodes", "2", "--log-every", "50",
         "--checkpoint-every", "100", "--analysis-every", "0", "--set", "dqn.widths=16,16",
         "--dqn.learning-starts", "100", "--dqn.batch-size", "32"]
GRID = ["--agent", "dqn", "--env", "CartPole-v1", "--methods", "static,rigl", "--sparsities", "0.5,0.9",
        "--seeds", "0,1", "--workers", "2", "--no-progress"]
BROKEN = "dqn/CartPole-v1/static-0.9/seed1"
TIMING = ("wall_time", "sps")


def _sweep(*argv):
    return sweep_cli.main([*argv])


def _mtimes(root: Path, ids, names=("summary.json", "metrics.csv", "COMPLETE")):
    return {(i, n): os.stat(root / i / n).st_mtime_ns for i in ids for n in names}


def _same_metrics(a: Path, b: Path, rtol=1e-4, exact_returns=True):
    ma, mb = read_metrics(a / "metrics.csv"), read_metrics(b / "metrics.csv")
    assert list(ma) == list(mb)
    returns = ("train_return", "eval_return_mean", "eval_return_std")
    for name in ma:
        if name in TIMING:
            continue
        exact = name in ("step", "train_episodes") or (exact_returns and name in returns)
        if exact:  # trajectories and evaluations are the same
            np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)
        else:      # losses etc.: equal up to floating-point reassociation
            np.testing.assert_allclose(ma[name], mb[name], rtol=rtol, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def base_sweep(tmp_path_factory):
    """The tiny grid (2 methods x 2 sparsities x 2 seeds), with one cell that stops at train time:
    its directory holds an unreadable config.json (as a damaged disk would leave), so the run
    is refused when it tries to resume (a file error: the cell stays resumable, issue 16)."""
    out = tmp_path_factory.mktemp("sweep") / "s1"
    broken = out / BROKEN
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    (out / "sweep.lock").touch()  # a sweep directory, as a sweep leaves it (issue 16: others are refused)
    argv = [*GRID, *TRAIN, "--out", str(out)]
    rc = _sweep(*argv)
    return out, argv, rc


def test_sweep_runs_reports_skips_and_retries(base_sweep, capsys):
    out, argv, rc = base_sweep
    cells = json.loads((out / "sweep.json").read_text())["cells"]
    ids = [c["id"] for c in cells]
    assert len(ids) == 8 and BROKEN in ids
    # The damaged cell is reported and left as it was (not FAILED); the others complete.
    assert rc == 1
    assert run_status(out / BROKEN) == "incomplete" and not (out / BROKEN / "FAILED").exists()
    assert "unreadable" in (out / "logs" / f"{BROKEN}.log").read_text()
    good = [i for i in ids if i != BROKEN]
    assert all(run_status(out / i) == "complete" for i in good)
    statuses = {c["id"]: c["status"] for c in cells}
    assert statuses[BROKEN] == "incomplete" and all(statuses[i] == "complete" for i in good)
    for i in good:
        summary = json.loads((out / i / "summary.json").read_text())
        assert summary["steps"] == 200 and summary["final_eval_return"] is not None
        assert summary["networks"]["q"]["layers"]["mlp/~/linear_0/w"]["total"] == 4 * 16
        config = json.loads((out / i / "config.json").read_text())
        assert config["agent"]["widths"] == [16, 16] and config["run"]["eval_every"] == 100
    assert (out / "logs" / f"{good[0]}.log").is_file()

    # Re-running the same command re-trains nothing, tries the damaged cell again and reports it.
    before = _mtimes(out, good)
    capsys.readouterr()
    assert _sweep(*argv) == 1
    text = capsys.readouterr().out
    assert BROKEN in text and "not finished" in text and "static-0.9" in text
    assert _mtimes(out, good) == before
    assert run_status(out / BROKEN) == "incomplete"

    # A FAILED cell (e.g. a diverged run) is skipped and reported until --retry-failed, which
    # re-runs only that cell.
    (out / BROKEN / "config.json").unlink()  # the damage repaired
    (out / BROKEN / "FAILED").write_text("NumericalError: diverged\n")
    failed_text = (out / BROKEN / "FAILED").read_text()
    assert _sweep(*argv) == 1
    text = capsys.readouterr().out
    assert BROKEN in text and "retry-failed" in text
    assert (out / BROKEN / "FAILED").read_text() == failed_text and _mtimes(out, good) == before
    assert _sweep(*argv, "--retry-failed") == 0
    assert run_status(out / BROKEN) == "complete"
    assert _mtimes(out, good) == before
    cells = json.loads((out / "sweep.json").read_text())["cells"]
    assert all(c["status"] == "complete" for c in cells)
    # Seeds 0 and 1 of a cell are different runs; the cell directory is an ordinary run.
    a = json.loads((out / "dqn/CartPole-v1/rigl-0.9/seed0/summary.json").read_text())
    b = json.loads((out / "dqn/CartPole-v1/rigl-0.9/seed1/summary.json").read_text())
    assert a["seed"] == 0 and b["seed"] == 1 and a["method"] == "rigl" and a["target_sparsity"] == 0.9


def test_interrupted_cell_is_resumed_from_its_checkpoint(base_sweep):
    """A cell stopped after its step-100 checkpoint (no summary, no COMPLETE) is resumed by
    re-running the sweep, and ends with the metrics of the uninterrupted run."""
    out, argv, _ = base_sweep
    cid = "dqn/CartPole-v1/static-0.5/seed0"
    cell = out / cid
    if run_status(cell) != "complete":
        pytest.skip("needs the base sweep's finished cell")
    reference = (cell / "metrics.csv").read_text()
    for name in ("COMPLETE", "summary.json"):
        (cell / name).unlink()
    for path in (cell / "checkpoints").glob("ckpt_000000000200.*"):
        path.unlink()
    assert run_status(cell) == "incomplete"
    others = [c["id"] for c in json.loads((out / "sweep.json").read_text())["cells"]
              if c["id"] != cid and run_status(out / c["id"]) == "complete"]
    before = _mtimes(out, others)
    assert _sweep(*argv, "--retry-failed") in (0, 1)
    assert run_status(cell) == "complete"
    assert _mtimes(out, others) == before
    resumed = read_metrics(cell / "metrics.csv")
    ref_path = cell.parent / "reference.csv"
    ref_path.write_text(reference)
    original = read_metrics(ref_path)
    ref_path.unlink()
    for name in original:
        if name not in TIMING:
            np.testing.assert_array_equal(resumed[name], original[name], err_msg=name)


def test_changed_grid_on_existing_cells_is_refused(base_sweep):
    out, argv, _ = base_sweep
    changed = [a if a != "200" else "300" for a in argv]  # --steps 300
    with pytest.raises(ConfigError, match="different configuration.*run.steps"):
        _sweep(*changed, "--dry-run")


def test_vectorized_seeds_equal_separate_runs_and_dense_matched(base_sweep, tmp_path):
    """One process with the seeds (and here the sparsity levels) of a method vmapped gives the
    separate runs' results; a dense-matched cell has its width multiplier and counts in
    summary.json."""
    base, _, _ = base_sweep
    out = tmp_path / "vec"
    argv = ["--agent", "dqn", "--env", "CartPole-v1", "--methods", "rigl", "--sparsities", "0.5,0.9",
            "--seeds", "0,1", "--workers", "2", "--no-progress", "--vectorize-sparsities", *TRAIN,
            "--out", str(out)]
    grid, options, _ = sweep_cli.build_grid(argv)
    tasks = sweep_cli.make_tasks(G.plan(grid), {c.id: "run" for c in G.plan(grid)}, True, levels=True)
    assert len(tasks) == 1 and len(tasks[0]["cells"]) == 4  # one process for the four runs
    # dense-matched levels have different widths: one process per level, seeds vmapped
    matched = ["--methods", "dense-matched", "--sparsities", "0.9", "--vectorize-seeds"]
    assert _sweep(*argv, "--workers", "1") == 0 and _sweep(*argv, *matched, "--workers", "1") == 0
    for seed, level in ((0, 0.5), (1, 0.5), (0, 0.9), (1, 0.9)):
        cid = f"dqn/CartPole-v1/rigl-{level}/seed{seed}"
        _same_metrics(out / cid, base / cid)
        vec = json.loads((out / cid / "summary.json").read_text())
        sep = json.loads((base / cid / "summary.json").read_text())
        assert vec["eval_returns"] == sep["eval_returns"]
        assert vec["nonzero_params"] == sep["nonzero_params"]
        assert vec["vectorized"]["runs"] == 4 and vec["vectorized"]["seeds"] == [0, 1, 0, 1]
        assert json.loads((out / cid / "config.json").read_text())["run"] == \
            json.loads((base / cid / "config.json").read_text())["run"]
    assert (out / "logs" / "dqn/CartPole-v1/rigl-0.5-to-rigl-0.9-seeds-0-to-1.log").is_file()
    assert (out / "logs" / "dqn/CartPole-v1/dense-matched-0.9/seeds-0-1.log").is_file()

    cells = {c["id"]: c for c in json.loads((out / "sweep.json").read_text())["cells"]}
    info = cells["dqn/CartPole-v1/dense-matched-0.9/seed0"]["dense_matched"]
    summary = json.loads((out / "dqn/CartPole-v1/dense-matched-0.9/seed0/summary.json").read_text())
    assert summary["dense_matched"] == info and summary["method"] == "dense"
    assert summary["total_params"] == info["params"]
    assert abs(info["params"] - info["target_params"]) / info["target_params"] < 0.1  # 16-unit layers: coarse
    config = json.loads((out / "dqn/CartPole-v1/dense-matched-0.9/seed0/config.json").read_text())
    assert config["agent"]["width_multiplier"] == info["width_multiplier"] < 1.0


def test_dense_matched_count_matches_sparse_network():
    """The param count of the matched dense network is within a few % of the sparse network's
    non-zeros, which are those a static ERK run actually has."""
    import jax

    from sparse_rl import envs
    from sparse_rl.cli import build_train_args
    from sparse_rl.sparsity import sparsity_summary
    from sparse_rl.sweep.matched import match_dense
    from sparse_rl import agents

    base = ["--agent", "dqn", "--env", "CartPole-v1", "--dqn.widths", "64", "64"]
    for sparsity in (0.5, 0.9):
        info = match_dense(base + ["--method", "dense"], sparsity)
        assert abs(info["params"] - info["target_params"]) / info["target_params"] < 0.03
        assert info["width_multiplier"] < 1.0
        run, config = build_train_args(base + ["--method", "static", "--sparsity", str(sparsity)])
        agent = agents.spec("dqn").make(config, envs.env_spec("CartPole-v1"), run.steps)
        params, masks = agent.networks(agent.init(jax.random.PRNGKey(0)))["q"]
        assert sparsity_summary(params, masks)["nonzero"] == info["target_params"]


def test_malformed_grid_files_are_refused_naming_the_line(tmp_path, capsys):
    from sparse_rl.cli import main

    out = tmp_path / "never"
    bad_toml = tmp_path / "grid.toml"
    bad_toml.write_text(f'agents = ["dqn"]\nout = "{out}"\nmethods = ["static", "rigl"\nseeds = 2\n')
    assert main(["sweep", "--grid", str(bad_toml)]) == 2
    err = capsys.readouterr().err
    assert "grid.toml line" in err and "invalid TOML" in err
    bad_yaml = tmp_path / "grid.yaml"
    bad_yaml.write_text(f"agents: [dqn]\nout: {out}\nmethods: [static, rigl\nseeds: 2\n")
    assert main(["sweep", "--grid", str(bad_yaml)]) == 2
    assert "grid.yaml line" in capsys.readouterr().err
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(f'out = "{out}"\n\nmethod = ["rigl"]\nsparsitys = [0.5]\n')
    assert main(["sweep", "--grid", str(unknown)]) == 2
    assert "unknown.toml line 4: unknown key 'sparsitys'" in capsys.readouterr().err
    bad_value = tmp_path / "value.yaml"
    bad_value.write_text(f"out: {out}\nmethods: [rigl]\nsparsities: [0.5]\nset:\n  dqn.batch-size: many\n")
    assert main(["sweep", "--grid", str(bad_value)]) == 2
    assert "value.yaml line 5" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was created


def test_grid_file_and_command_line(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('agents = ["dqn"]\nenvs = ["CartPole-v1", "Acrobot-v1"]\nmethods = ["dense", "static"]\n'
                    'sparsities = [0.5, 0.9]\nseeds = 3\nsteps = 500\nout = "x"\nworkers = 1\n'
                    '[set]\n"dqn.widths" = [8, 8]\neval-every = 250\ndqn.double-q = true\n')
    grid, options, _ = sweep_cli.build_grid(["--grid", str(path), "--seeds", "5-6", "--out", str(tmp_path / "o")])
    assert grid.seeds == (5, 6) and grid.steps == 500 and options["workers"] == 1
    cells = G.plan(grid)
    # dense has no sparsity level: 2 envs x (1 + 2) levels x 2 seeds
    assert len(cells) == 12
    ids = {c.id for c in cells}
    assert "dqn/Acrobot-v1/dense/seed5" in ids and "dqn/CartPole-v1/static-0.9/seed6" in ids
    cell = next(c for c in cells if c.id == "dqn/CartPole-v1/static-0.5/seed5")
    from sparse_rl.cli import build_train_args

    run, config = build_train_args(cell.argv)
    assert (run.seed, run.steps, run.eval_every, run.out) == (5, 500, 250, cell.path)
    assert config.widths == (8, 8) and config.double_q and config.sparsity.method == "static"
    assert config.sparsity.sparsity == 0.5
    assert not (tmp_path / "o").exists()


def test_bad_command_lines_are_refused():
    def refused(*argv, match):
        with pytest.raises(ConfigError, match=match):
            grid, options, _ = sweep_cli.build_grid(list(argv))
            G.plan(grid)

    refused("--methods", "rigl", match="sparsities: required")
    refused("--methods", "bogus", "--sparsities", "0.5", match="methods: unknown value 'bogus'")
    refused("--methods", "rigl", "--sparsities", "1.5", match="sparsities: 1.5 is out of range")
    refused("--seeds", "a", match="seeds: not a seed")
    refused("--methods", "dense", "--set", "seed=3", match="seed: .*set per cell")
    refused("--methods", "dense", "--set", "dqn.widths=abc", match="dqn.widths")
    refused("--methods", "dense", "--dqn.nonsense", "1", match="nonsense")
    refused("--methods", "dense", "--env", "NoSuchEnv-v0", match="env: unknown environment")
    refused("--methods", "dense", "--env", "Pendulum-v1", match="Discrete action space")
    refused("--methods", "dense", "--workers", "0", match="workers")
    refused("--methods", "dense", "--backend", "slurm", match="backend: unknown value")
    refused("--methods", "dense", "--set", "sac.actor-widths=8", match="agent sac, which is not in the grid")


def test_crashed_worker_is_recorded_as_failed(tmp_path):
    """A worker killed by a signal (e.g. the OOM killer) gets FAILED written for it; the others
    run on."""
    cells = [{"id": f"c{i}", "path": str(tmp_path / f"c{i}"), "argv": [], "resume": False, "steps": 1}
             for i in range(3)]
    tasks = [{"cells": [c], "vectorized": False} for c in cells]
    script = ("import os, signal, sys, json, pathlib; c = json.loads(sys.argv[1])['cells'][0]; "
              "p = pathlib.Path(c['path']); p.mkdir(parents=True, exist_ok=True); "
              "(p / 'COMPLETE').write_text('{}') if c['id'] != 'c1' else os.kill(os.getpid(), signal.SIGKILL)")
    results = local.run_local(tasks, str(tmp_path), workers=2,
                              command=lambda task: [sys.executable, "-c", script, json.dumps(task)])
    status = {r["id"]: r["status"] for r in results}
    assert status == {"c0": "complete", "c1": "failed", "c2": "complete"}
    assert "killed by SIGKILL" in (tmp_path / "c1" / "FAILED").read_text()


def test_parsers():
    assert G.parse_seeds("0,2,4-6") == (0, 2, 4, 5, 6)
    assert G.parse_seeds(3) == (0, 1, 2)
    assert G.parse_sparsities("0.5, 0.9,0.5") == (0.5, 0.9)
    o = G.parse_set("dqn.double-q=true")
    assert o.boolean is True and o.tokens(flag_form=True) == ["--dqn.double-q"]
    assert G.parse_set("dqn.double_q=false").tokens(flag_form=True) == ["--dqn.no-double_q"]
    assert G.parse_set("dqn.widths=64,64").tokens() == ["--dqn.widths", "64", "64"]
    assert G.parse_set("eval-every=5").agent is None and G.parse_set("dqn.widths=5").agent == "dqn"
    assert G.level_name("dense", None) == "dense" and G.level_name("rigl", 0.95) == "rigl-0.95"
    assert G.level_name("dense-matched", 0.9) == "dense-matched-0.9"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        G.parse_set("dqn.widths")


@pytest.mark.slow
def test_vectorized_sac_equals_separate_runs(tmp_path):
    """SAC (continuous actions, three networks) through the same vectorised loop."""
    from sparse_rl.cli import build_train_args
    from sparse_rl.train.runner import train
    from sparse_rl.train.runner import train_group

    base = ["--agent", "sac", "--env", "Pendulum-v1", "--steps", "300", "--sac.actor-widths", "16", "16",
            "--sac.critic-widths", "16", "16", "--eval-every", "150", "--sac.learning-starts", "100",
            "--analysis-every", "0", "--eval-episodes", "2", "--method", "rigl", "--sparsity", "0.8",
            "--checkpoint-every", "150", "--log-every", "50", "--sac.batch-size", "32", "--progress", "False"]
    runs, configs = [], []
    for seed in (0, 1):
        run, config = build_train_args(base + ["--seed", str(seed), "--out", str(tmp_path / f"vec{seed}")])
        runs.append(run)
        configs.append(config)
    train_group(runs, configs)
    for seed in (0, 1):
        run, config = build_train_args(base + ["--seed", str(seed), "--out", str(tmp_path / f"sep{seed}")])
        train(run, config)
        # continuous actions: returns equal up to reassociation too
        _same_metrics(tmp_path / f"vec{seed}", tmp_path / f"sep{seed}", rtol=1e-4, exact_returns=False)


@pytest.mark.parametrize("first, second, key", [
    ("erk_uniform_dqn_erk_small", "erk_uniform_dqn_uniform_small", "distribution"),
    ("sensitivity_ppo_actor_small", "sensitivity_ppo_value_small", "dense"),
])
def test_reduced_study_recipes_plan_and_differ_only_in_what_they_compare(first, second, key):
    """The halves of each reduced study (scripts/*_small.toml, README "Reduced studies") are valid
    grids, and their cells train the same settings apart from the compared one (and dense, which
    only the first half runs)."""
    from sparse_rl.sweep.grid import grid_from_file, plan

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    halves = []
    for name in (first, second):
        grid, _ = grid_from_file(scripts / f"{name}.toml")
        cells = plan(grid, check_existing=False)
        halves.append({(c.method, c.sparsity, c.seed): c for c in cells if c.method != "dense"})
    assert halves[0].keys() == halves[1].keys() and len(halves[0]) >= 6

    def settings(cell):  # argv without the compared flag and --out, each with its one value
        argv = list(cell.argv)
        dropped = {i + d for i, t in enumerate(argv) if t.startswith("--") and (key in t or t == "--out")
                   for d in (0, 1)}
        return [t for i, t in enumerate(argv) if i not in dropped]

    for k, cell in halves[0].items():
        assert settings(cell) == settings(halves[1][k])
        assert cell.argv != halves[1][k].argv
