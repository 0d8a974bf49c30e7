"""DQN through the runner: smoke runs of every method, determinism, resume, measured sparsity."""

import csv
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from sparse_rl.cli import build_train_args
from sparse_rl.train.runner import train

TIMING = {"wall_time", "sps"}
FAST = ["--dqn.widths", "64", "64", "--dqn.learning-starts", "100", "--dqn.batch-size", "32",
        "--eval-episodes", "2", "--log-every", "100"]


def run_cli(tmp_path, *extra, name="run", steps=400):
    argv = ["--steps", str(steps), "--eval-every", "200", "--out", str(tmp_path / name), *FAST, *extra]
    run, config = build_train_args(argv)
    return train(run, config), tmp_path / name


def read_rows(path):
    with open(path / "metrics.csv") as f:
        return list(csv.DictReader(f))


def strip_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.mark.parametrize("method", ["dense", "static", "prune", "set", "rigl"])
def test_every_method_runs_and_writes_run_directory(tmp_path, method):
    summary, out = run_cli(tmp_path, "--method", method, "--sparsity", "0.8",
                           "--update-every", "50", steps=400)
    for name in ("config.json", "metrics.csv", "summary.json", "COMPLETE"):
        assert (out / name).exists(), name
    assert list((out / "checkpoints").glob("*.npz"))
    rows = read_rows(out)
    assert rows and rows[-1]["step"] == "400"
    assert any(r["eval_return_mean"] for r in rows)
    stored = json.loads((out / "summary.json").read_text())
    assert stored["final_eval_return"] == summary["final_eval_return"]
    assert stored["library_version"]
    q = stored["networks"]["q"]
    if method == "dense":
        assert stored["sparsity"] < 0.01
    else:
        # Measured from the parameters: within one weight per layer of the ERK targets.
        from sparse_rl.sparsity import SparsityConfig, target_sparsities  # noqa: F401

        assert 0.5 < q["sparsity"] < 0.9


def test_measured_sparsity_matches_targets_within_one_weight(tmp_path):
    import jax

    from sparse_rl import envs
    from sparse_rl.agents import dqn
    from sparse_rl.sparsity import get_masks, leaf_paths, sparsity_summary, target_sparsities

    summary, out = run_cli(tmp_path, "--method", "rigl", "--sparsity", "0.9", steps=300)
    run, config = build_train_args(["--out", str(out), *FAST, "--method", "rigl", "--sparsity", "0.9"])
    agent = dqn.make(config, envs.env_spec("CartPole-v1"), 300)
    state = agent.init(jax.random.PRNGKey(0))
    targets = target_sparsities(state.params, config.sparsity)
    paths = leaf_paths(state.params)
    layers = summary["networks"]["q"]["layers"]
    for path, target, leaf in zip(jax.tree_util.tree_leaves(paths), jax.tree_util.tree_leaves(targets),
                                  jax.tree_util.tree_leaves(state.params)):
        if leaf.ndim < 2:
            continue
        expected_zeros = int(np.floor(float(target) * leaf.size))
        measured_zeros = layers[path]["total"] - layers[path]["nonzero"]
        assert abs(measured_zeros - expected_zeros) <= 1, path


def test_same_seed_same_metrics(tmp_path):
    _, a = run_cli(tmp_path, "--method", "rigl", "--update-every", "50", name="a", steps=500)
    _, b = run_cli(tmp_path, "--method", "rigl", "--update-every", "50", name="b", steps=500)
    assert strip_timing(read_rows(a)) == strip_timing(read_rows(b))


def test_resume_equals_uninterrupted(tmp_path):
    args = ("--method", "set", "--update-every", "50", "--checkpoint-every", "200")
    _, full = run_cli(tmp_path, *args, name="full", steps=600)
    # An interrupted run: train 400 steps' worth (checkpoint at 400), then resume to 600.
    _, part = run_cli(tmp_path, *args, name="part", steps=600)
    # Simulate the interruption: drop the final checkpoint and COMPLETE, keep the step-400 one.
    (part / "COMPLETE").unlink()
    for f in (part / "checkpoints").glob("ckpt_000000000600*"):
        f.unlink()
    assert sorted(p.name for p in (part / "checkpoints").glob("*.npz"))
    run, config = build_train_args(["--steps", "600", "--eval-every", "200", "--out", str(part), *FAST,
                                    *args, "--resume"])
    train(run, config)
    assert strip_timing(read_rows(full)) == strip_timing(read_rows(part))
    s_full = json.loads((full / "summary.json").read_text())
    s_part = json.loads((part / "summary.json").read_text())
    assert s_full["final_eval_return"] == s_part["final_eval_return"]
    assert s_full["nonzero_params"] == s_part["nonzero_params"]


def test_resume_may_change_recording_only_settings(tmp_path):
    """A run written before a recording-only field existed (here: config.json without
    analysis_snr_every), or resumed with other analysis intervals, resumes; training settings
    still must match."""
    args = ("--checkpoint-every", "200")
    _, part = run_cli(tmp_path, *args, name="part", steps=400)
    (part / "COMPLETE").unlink()
    for f in (part / "checkpoints").glob("ckpt_000000000400*"):
        f.unlink()
    config_path = part / "config.json"
    written = json.loads(config_path.read_text())
    del written["run"]["analysis_snr_every"]
    config_path.write_text(json.dumps(written))
    # ... and its checkpoint carries the hash that version gave those settings (all of them).
    from sparse_rl.train.serialize import config_hash
    manifest_path = part / "checkpoints" / "ckpt_000000000200.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["user"]["config_hash"] = config_hash({"run": written["run"], "agent": written["agent"]})
    raw = (json.dumps(manifest, indent=1) + "\n").encode()
    manifest_path.write_bytes(raw)
    done_path = manifest_path.with_suffix(".done")
    done_path.write_text(json.dumps(json.loads(done_path.read_text()) | {"manifest_sha256": hashlib.sha256(raw).hexdigest()}))

    def resume(*extra):
        return train(*build_train_args(["--steps", "400", "--eval-every", "200", "--out", str(part), *FAST,
                                        *args, "--resume", *extra]))

    from sparse_rl.errors import ConfigError
    with pytest.raises(ConfigError, match="learning_rate"):
        resume("--dqn.learning-rate", "0.5")
    resume("--analysis-every", "50", "--analysis-snr-every", "0")
    assert (part / "COMPLETE").exists()
    assert max(int(row["step"]) for row in read_rows(part)) == 400
    assert json.loads(config_path.read_text()) == written  # the first run's settings stay recorded


def test_atari_smoke(tmp_path):
    summary, out = run_cli(
        tmp_path, "--env", "ALE/Pong-v5", "--dqn.learning-starts", "20", "--dqn.batch-size", "4",
        "--dqn.replay-capacity", "200", "--eval-episodes", "1", "--method", "rigl", "--dqn.train-every", "4",
        steps=60,
    )
    assert (out / "COMPLETE").exists()
    assert summary["networks"]["q"]["total"] > 1_000_000


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sparse_rl.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args, field",
    [
        (["--env", "Pendulum-v1"], "env"),
        (["--env", "NoSuchEnv-v0"], "env"),
        (["--method", "magic"], "method"),
        (["--sparsity", "1.0"], "sparsity"),
        (["--steps", "-5"], "steps"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_run(tmp_path, args, field):
    out = tmp_path / "bad"
    result = cli("train", "--out", str(out), *args)
    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and field in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "COMPLETE").exists()
