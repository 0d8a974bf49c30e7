"""Start-up: what the training path imports (issue 15)."""

import json
import os
import subprocess
import sys

import pytest


from sparse_rl.agents.rlax_import import DeferredModule
from sparse_rl.train.startup import process_seconds, report


def imported_after(code: str) -> set[str]:
    """Top-level module names imported by a fresh interpreter after running `code`."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_training_path_does_not_import_tensorflow_probability():
    mods = imported_after("import sparse_rl.train.runner, sparse_rl.agents.dqn, sparse_rl.agents.ppo, "
                          "sparse_rl.agents.sac")
    assert "rlax" in mods
    assert "tensorflow_probability" not in mods
    for heavy in ("matplotlib", "ray", "wandb", "tyro"):
        assert heavy not in mods, heavy


def test_rlax_functions_work_and_distrax_loads_on_first_use():
    mods = imported_after(
        "from sparse_rl.agents.rlax_import import rlax\nimport jax.numpy as jnp\n"
        "assert float(rlax.q_learning(jnp.ones(3), 1, 1.0, 0.5, jnp.ones(3))) == 0.5\n"
        "import distrax\nassert type(distrax).__name__ == 'DeferredModule'\n"
        "assert rlax.softmax().probs(jnp.zeros(2)).shape == (2,)\n"
        "assert distrax.Categorical(logits=jnp.zeros(2)).probs.shape == (2,)")
    assert "tensorflow_probability" in mods


def test_deferred_module_forwards_to_the_real_module():
    import sys

    stand_in = DeferredModule("colorsys")
    saved = sys.modules.pop("colorsys", None)
    sys.modules["colorsys"] = stand_in
    try:
        assert stand_in.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
        assert sys.modules["colorsys"] is not stand_in
    finally:
        if saved is not None:
            sys.modules["colorsys"] = saved


# --- time to the first environment step (sparse_rl.train.startup) ---------------------------------

def test_process_seconds_reads_the_start_time_after_the_command_name():
    # /proc/self/stat with a command name holding spaces and a ')': starttime is field 22
    fields = ["S"] + ["0"] * 18 + ["500"] + ["0"] * 10
    text = "123 (a b) c) " + " ".join(fields)
    tick = os.sysconf("SC_CLK_TCK")
    assert process_seconds(text, now=500 / tick + 2.5) == pytest.approx(2.5)
    assert process_seconds("garbage", now=1.0) is None
    assert process_seconds(text, now=0.0) is None  # a start after now: unreadable, not negative
    here = process_seconds()
    assert here is None or here > 0


def test_report_splits_process_start_to_first_step_into_parts():
    marks = {"context": 11.0, "init_start": 11.5, "init_done": 13.0, "first_step": 14.0}
    entry = report(marks, compile_seconds=1.25, since_start=10.0, now=20.0)  # the process began at 10
    assert entry == {"seconds": 4.0, "before_run_seconds": 1.0, "setup_seconds": 0.5, "init_seconds": 1.5,
                     "to_first_step_seconds": 1.0, "compile_seconds": 1.25}
    unknown = report(marks, compile_seconds=0.0, since_start=None, now=20.0)
    assert unknown["seconds"] is None and unknown["before_run_seconds"] is None
    assert unknown["init_seconds"] == 1.5


def test_a_run_records_its_startup_in_summary_json(tmp_path):
    import sparse_rl

    run = sparse_rl.train("dqn", "CartPole-v1", steps=120, out=str(tmp_path / "r"), eval_every=120,
                          checkpoint_every=0, widths=(16, 16), learning_starts=100, batch_size=16,
                          eval_episodes=1, progress=False)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    entry = summary["startup"]
    parts = [entry[k] for k in ("before_run_seconds", "setup_seconds", "init_seconds", "to_first_step_seconds")]
    assert all(p >= 0 for p in parts)
    if entry["seconds"] is not None:  # Linux
        assert entry["seconds"] == pytest.approx(sum(parts))
    assert entry["compile_seconds"] > 0
    assert run is not None


def test_a_deferred_module_that_cannot_be_imported_fails_where_it_is_used():
    import sys

    stand_in = DeferredModule("sparse_rl_no_such_module")
    sys.modules["sparse_rl_no_such_module"] = stand_in
    try:
        with pytest.raises(ModuleNotFoundError):
            stand_in.anything
        assert sys.modules["sparse_rl_no_such_module"] is stand_in  # and again on the next use
        with pytest.raises(ModuleNotFoundError):
            stand_in.anything
    finally:
        sys.modules.pop("sparse_rl_no_such_module", None)


def test_train_and_sweep_workers_dispatch_cpu_programs_synchronously(tmp_path):
    """`sparse-rl train` and a sweep worker turn JAX's asynchronous CPU dispatch off before their first
    computation (`sparse_rl.train.dispatch`); the Python API leaves the user's process as it is."""
    code = """
import sys, jax
from sparse_rl.train.dispatch import OPTION
import sparse_rl
print("ASYNC", jax.config.read(OPTION))
sparse_rl.train("dqn", "CartPole-v1", steps=120, out=sys.argv[1] + "/api", eval_every=120, checkpoint_every=0,
                widths=(8,), learning_starts=100, batch_size=8, eval_episodes=1, progress=False)
print("ASYNC", jax.config.read(OPTION))
from sparse_rl.cli import main
main(["train", "--agent", "dqn", "--env", "CartPole-v1", "--steps", "120", "--out", sys.argv[1] + "/cli",
      "--eval-every", "120", "--eval-episodes", "1", "--checkpoint-every", "0", "--progress", "False",
      "--dqn.widths", "8", "--dqn.learning-starts", "100", "--dqn.batch-size", "8"])
print("ASYNC", jax.config.read(OPTION))
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert [line.split()[1] for line in out.stdout.splitlines() if line.startswith("ASYNC")] == ["True", "True", "False"]
    worker = subprocess.run([sys.executable, "-c", "import jax, sparse_rl.sweep.local as w\n"
                             "w.execute_task = lambda task: []\nw.main(['{\"cells\": []}'])\n"
                             "from sparse_rl.train.dispatch import OPTION; print(jax.config.read(OPTION))"],
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode == 0, worker.stderr
    assert worker.stdout.split()[-1] == "False"
