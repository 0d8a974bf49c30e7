"""Numerical faults (issue 7): NaN or Inf in the loss, gradients or parameters stops the run with a
one-line message naming the step and the first offending parameter, keeps the metrics written so
far and the last good checkpoint (a non-finite state is never checkpointed), marks the run FAILED,
and the CLI exits with status 1 (not 2: the input was valid)."""

import csv
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_rl.errors import NumericalError
from sparse_rl.sparsity import leaf_paths
from sparse_rl.train import checkpoint as ckpt
from sparse_rl.train.faults import first_nonfinite
from sparse_rl.train.rundir import run_status


def test_first_nonfinite_names_first_bad_leaf_in_order():
    params = {
        "mlp/~/linear_0": {"b": jnp.zeros(3), "w": jnp.ones((2, 3))},
        "mlp/~/linear_1": {"b": jnp.zeros(2), "w": jnp.array([[1.0, jnp.inf], [0.0, 1.0]])},
        "q_head/~/linear": {"b": jnp.zeros(2), "w": jnp.full((2, 2), jnp.nan)},
    }
    assert first_nonfinite(params) == "mlp/~/linear_1/w"
    params["mlp/~/linear_1"]["w"] = jnp.ones((2, 2))
    assert first_nonfinite(params) == "q_head/~/linear/w"
    params["q_head/~/linear"]["w"] = jnp.ones((2, 2), jnp.bfloat16)
    # Integer counters, bools and PRNG keys are not floating point and are never flagged.
    extra = {"count": jnp.array(2**31 - 1, jnp.int32), "mask": jnp.ones(3, bool),
             "key": jax.random.key(0), "raw": jax.random.PRNGKey(1), "x": np.float32(1.0), "f": 2.0}
    assert first_nonfinite({"params": params, "extra": extra}) is None
    assert first_nonfinite({"f": float("nan")}) == "f"


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """A RunContext of a tiny DQN with an initialised state (no training)."""
    from sparse_rl import envs
    from sparse_rl.agents import dqn
    from sparse_rl.train.context import RunConfig, RunContext
    from sparse_rl.train.rundir import RunDir

    out = tmp_path_factory.mktemp("numerics") / "run"
    run = RunConfig(steps=100, out=str(out))
    config = dqn.Config(widths=(8, 8), batch_size=4, replay_capacity=16)
    agent = dqn.make(config, envs.env_spec("CartPole-v1"), run.steps)
    rundir = RunDir(out)
    ctx = RunContext(run, config, rundir, envs.env_spec("CartPole-v1"), agent, dqn.SPEC)
    ctx.open_metrics(["loss", "grad_norm", "q_mean"], None)
    state = agent.init(jax.random.PRNGKey(0))
    yield ctx, state
    ctx.close()
    rundir.release()


def _with_leaf(tree, path_contains, value):
    paths = jax.tree_util.tree_leaves(leaf_paths(tree))
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    hit = [i for i, p in enumerate(paths) if path_contains in p][0]
    leaves[hit] = leaves[hit].at[(0,) * leaves[hit].ndim].set(value)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def test_log_point_names_step_and_first_bad_layer_after_writing_the_row(context):
    ctx, state = context
    ctx.log({"step": 10, "loss": 0.5, "grad_norm": 1.0}, state=state)  # finite: fine
    bad = state._replace(params=_with_leaf(state.params, "linear_1/w", jnp.inf))
    with pytest.raises(NumericalError) as info:
        ctx.log({"step": 20, "loss": 0.5, "grad_norm": 1.0}, state=bad)
    message = str(info.value)
    assert "\n" not in message and "step 20" in message and "q/mlp/~/linear_1/w" in message, message
    assert info.value.step == 20 and info.value.parameter == "q/mlp/~/linear_1/w"
    assert not isinstance(info.value, ValueError)  # not a usage error
    # A NaN loss alone (parameters still finite) is a fault too, named as such.
    with pytest.raises(NumericalError, match=r"step 30: non-finite loss=nan; parameters are finite"):
        ctx.log({"step": 30, "loss": math.nan, "grad_norm": 1.0, "q_mean": 0.0}, state=state)
    with open(ctx.rundir.path / "metrics.csv") as f:
        steps = [r["step"] for r in csv.DictReader(f)]
    assert steps == ["10", "20", "30"]  # the offending rows are written before stopping


def test_non_finite_state_is_never_checkpointed(context):
    ctx, state = context
    ctx.save_checkpoint(5, {"agent": state}, {}, {"step": 5}, state=state)
    # An Inf hidden in the optimizer state (not in the params) is found by the full scan.
    bad = state._replace(opt_state=_with_leaf(state.opt_state, "linear_0/w", jnp.nan))
    with pytest.raises(NumericalError, match=r"step 6: .*first non-finite parameter: state/agent/opt_state/.*linear_0/w"):
        ctx.save_checkpoint(6, {"agent": bad}, {}, {"step": 6}, state=bad)
    assert ckpt.steps(ctx.checkpoints.directory) == [5]
    assert not [p for p in ctx.checkpoints.directory.iterdir() if "000000006" in p.name]


def test_diverging_run_stops_fails_and_exits_1(tmp_path, capsys):
    from sparse_rl.cli import main  # the `sparse-rl` entry point, in this process

    out = tmp_path / "nan"
    args = ["train", "--steps", "400", "--out", str(out), "--dqn.widths", "16", "16",
            "--dqn.learning-starts", "100", "--dqn.batch-size", "16", "--dqn.learning-rate", "1e30",
            "--eval-every", "400", "--eval-episodes", "1", "--log-every", "50", "--checkpoint-every", "100",
            "--analysis-every", "0", "--no-progress"]
    code = main(args)
    stderr = capsys.readouterr().err
    # besides the line that announces the run directory, the fault is the only line
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("training ")]
    assert code == 1, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    line = lines[0]
    assert line.startswith("error: numerical fault at step ") and "first non-finite parameter: q/" in line, line
    step = int(line.split("at step ")[1].split(":")[0])
    assert 100 < step < 400

    # FAILED holds the message; the sweep sees a failed (not a finished) run.
    assert run_status(out) == "failed"
    assert (out / "FAILED").read_text().splitlines()[0] == "NumericalError: " + line[len("error: "):]
    assert not (out / "COMPLETE").exists()
    # The metrics so far, the offending row last.
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["step"]) == step and [int(r["step"]) for r in rows] == list(range(50, step + 1, 50))
    assert not math.isfinite(float(rows[-1]["loss"]))
    # The last good checkpoint is kept, and every checkpoint left is finite.
    saved = ckpt.steps(out / "checkpoints")
    assert saved and max(saved) < step and f"last good checkpoint: step {max(saved)}" in line
    for s in saved:
        assert first_nonfinite(ckpt.load_flat(out / "checkpoints", step=s, load_extra=False).tree) is None, s
