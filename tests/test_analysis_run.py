"""Analyses of a real (tiny) CartPole DQN run: training-time recording, sensitivity, CLI."""

import json

import numpy as np
import pytest

from sparse_rl.analysis import cli as analysis_cli
from sparse_rl.analysis import sensitivity as S
from sparse_rl.cli import build_train_args
from sparse_rl.errors import ConfigError
from sparse_rl.train.metrics import read_metrics
from sparse_rl.train.runner import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis") / "run"
    argv = ["--steps", "600", "--out", str(out), "--dqn.widths", "16", "16",
            "--dqn.learning-starts", "100", "--dqn.batch-size", "32", "--eval-every", "300",
            "--eval-episodes", "2", "--log-every", "300", "--method", "rigl", "--sparsity", "0.8",
            "--update-every", "100", "--analysis-every", "100", "--analysis-snr-every", "3"]
    from sparse_rl.train.recorder import GradientFlowRecorder

    with pytest.MonkeyPatch.context() as mp:  # see recorder errors instead of a warning
        mp.setattr(GradientFlowRecorder, "raise_errors", True)
        train(*build_train_args(argv))
    return out


def test_training_writes_analysis(run_dir):
    m = read_metrics(run_dir / "analysis.csv")
    periodic = m["event"] == "periodic"
    topology = m["event"] == "topology"
    assert periodic.sum() == 5 and topology.sum() >= 3  # 500 gradient steps; RigL every 100 up to 75%
    assert np.all(np.isfinite(m["gf/q/total/dist_from_init"][periodic]))
    snr = m["snr/q/total/median"][periodic]
    assert np.all(np.isfinite(snr[[0, 3]])) and np.all(np.isnan(snr[[1, 2, 4]]))  # rows 1, 4
    assert np.all(m["topo/q/total/churn"][topology] >= 0)
    meta = json.loads((run_dir / "analysis.json").read_text())
    assert meta["records"]["periodic"] == 5 and meta["records"]["snr"] == 2
    assert meta["snr_every"] == 3 and meta["overhead_fraction"] >= 0
    assert "error" not in meta
    assert (run_dir / "init_params.npz").exists()


def test_snr_interval_is_validated():
    from sparse_rl.train.runner import RunConfig

    assert RunConfig().analysis_snr_every == 10
    with pytest.raises(ConfigError, match="analysis_snr_every"):
        RunConfig(analysis_snr_every=-1)


def test_layer_sensitivity_curves(run_dir):
    loaded = S.load_run(run_dir)
    assert loaded.step == 600
    rows = S.layer_sensitivity(loaded, levels=(0.0, 0.5, 0.99), episodes=2)
    targets = {r["target"] for r in rows}
    assert targets == {"q", "q/mlp/~/linear_0/w", "q/mlp/~/linear_1/w", "q/q_head/~/linear/w"}
    base = S.evaluate(loaded.agent, loaded.state, "CartPole-v1", 2)[0]
    for t in targets:
        curve = [r for r in rows if r["target"] == t]
        assert [r["level"] for r in curve] == [0.0, 0.5, 0.99]
        assert curve[0]["return_mean"] == base  # first point: the unpruned agent
        sp = [r["sparsity"] for r in curve]
        assert sp[0] < sp[1] < sp[2] and sp[2] > 0.9
    # absolute levels below the layer's own sparsity change nothing
    rows = S.layer_sensitivity(loaded, levels=(0.0, 0.1), layers=["linear_1"], episodes=2, mode="absolute")
    assert rows[0]["sparsity"] == rows[1]["sparsity"] and rows[1]["return_mean"] == base
    with pytest.raises(ConfigError, match="layers"):
        S.layer_sensitivity(loaded, layers=["no_such_layer"])


def test_prune_state_only_touches_target(run_dir):
    loaded = S.load_run(run_dir)
    state, sp = S.prune_state(loaded.agent, loaded.state, [("q", "mlp/~/linear_0/w")], 0.5)
    before = loaded.agent.networks(loaded.state)["q"][0]
    after = loaded.agent.networks(state)["q"][0]
    w0, w1 = np.asarray(before["mlp/~/linear_0"]["w"]), np.asarray(after["mlp/~/linear_0"]["w"])
    assert np.count_nonzero(w1) == np.count_nonzero(w0) - np.count_nonzero(w0) // 2
    kept = w1 != 0
    assert np.abs(w0[kept]).min() >= np.abs(w0[(w0 != 0) & ~kept]).max()  # by magnitude
    np.testing.assert_array_equal(before["mlp/~/linear_1"]["w"], after["mlp/~/linear_1"]["w"])


def test_cli_writes_plots_and_tables(run_dir, tmp_path, capsys):
    out = tmp_path / "a"
    assert analysis_cli.main(["sensitivity", str(run_dir), "--levels", "0,0.9", "--episodes", "2",
                              "--layers", "linear_1", "--noise", "0,0.5", "--out", str(out)]) == 0
    for name in ("sensitivity.csv", "sensitivity.md", "sensitivity.png", "sensitivity.pdf",
                 "robustness.csv", "robustness.md", "robustness.png"):
        assert (out / name).stat().st_size > 0, name
    assert "| `q/mlp/~/linear_1/w` |" in (out / "sensitivity.md").read_text()
    assert analysis_cli.main(["gradient-flow", str(run_dir), "--out", str(out)]) == 0
    for name in ("gradient_flow.png", "gradient_flow_layers.png", "gradient_snr.png",
                 "gradient_flow_updates.pdf"):
        assert (out / name).stat().st_size > 0, name
    assert analysis_cli.main(["topology", str(run_dir.parent), "--out", str(out)]) == 0
    assert (out / "topology.png").exists() and (out / "fan_in.md").exists()
    assert analysis_cli.main(["components", str(run_dir), "--out", str(out)]) == 0
    rows = (out / "components.csv").read_text().splitlines()
    assert len(rows) == 2 and ",q," in rows[1]
    assert str(out / "topology.png") in capsys.readouterr().out


def test_cli_errors_name_the_argument(tmp_path):
    with pytest.raises(ConfigError, match="RUN_DIR: .* does not exist"):
        analysis_cli.main(["sensitivity", str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="RUN_OR_SWEEP_DIR"):
        analysis_cli.main(["gradient-flow", str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="RUN_OR_SWEEP_DIR: no run with an analysis.csv"):
        analysis_cli.main(["topology", str(tmp_path)])
    with pytest.raises(ConfigError, match="RUN_DIR: .* has no config.json"):
        analysis_cli.main(["sensitivity", str(tmp_path)])
    with pytest.raises(ConfigError, match="levels"):
        analysis_cli.main(["sensitivity", str(tmp_path), "--levels", "a,b"])


def test_dispatcher_reports_error(tmp_path, capsys):
    from sparse_rl.cli import main

    assert main(["analyze", "topology", str(tmp_path / "nope")]) == 2
    assert "RUN_OR_SWEEP_DIR" in capsys.readouterr().err
