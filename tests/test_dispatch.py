"""How a training process sizes XLA's CPU thread pool (sparse_rl.train.dispatch, issue 15)."""

import csv
import json
import subprocess
import sys

import pytest

from sparse_rl import agents
from sparse_rl.agents import dqn, ppo, sac
from sparse_rl.nets import largest_layer_macs
from sparse_rl.train import dispatch
from sparse_rl.train.dispatch import SMALL_LAYER_MACS, auto_cpu_threads, environment_threads, use_cpu_threads


def test_largest_layer_macs_takes_the_largest_product_of_consecutive_hidden_widths():
    assert largest_layer_macs((256, 256), 1.0, 32) == 32 * 256 * 256
    assert largest_layer_macs((64, 512, 128), 1.0, 10) == 10 * 512 * 128
    assert largest_layer_macs((100,), 1.0, 4) == 4 * 100 * 100  # one hidden layer: w x w
    assert largest_layer_macs((100, 100), 0.5, 2) == 2 * 50 * 50  # scaled widths


def test_each_agent_states_its_largest_layer_from_its_config():
    sbx_dqn = dqn.Config(widths=(256, 256), batch_size=32)
    assert dqn.SPEC.update_layer_macs(sbx_dqn) == 32 * 256 * 256
    assert dqn.SPEC.update_layer_macs(dqn.Config(network="nature_cnn")) is None  # convolutions: unknown
    assert sac.SPEC.update_layer_macs(sac.Config()) == 2 * 256 * 256 * 256  # twin critics: twice the rows
    assert ppo.SPEC.update_layer_macs(ppo.Config()) == 64 * 64 * 64
    for name in agents.AGENTS:  # every preset answers without building anything
        spec = agents.spec(name)
        for config in spec.presets.values():
            macs = spec.update_layer_macs(config)
            assert macs is None or macs > 0


def test_small_networks_get_one_thread_and_others_every_core():
    assert auto_cpu_threads(32 * 256 * 256, cores=8) == 1  # sbx's DQN: 2.1M
    assert auto_cpu_threads(64 * 64 * 64, cores=8) == 1  # PPO 64-64
    assert auto_cpu_threads(2 * 256 * 256 * 256, cores=8) == 8  # SAC 256-256, batch 256
    assert auto_cpu_threads(128 * 512 * 512, cores=8) == 8  # the paper's DQN
    assert auto_cpu_threads(None, cores=8) == 8  # a CNN: unknown, treated as large
    assert auto_cpu_threads(SMALL_LAYER_MACS - 1, cores=2) == 1
    assert auto_cpu_threads(SMALL_LAYER_MACS, cores=2) == 2


def test_the_choice_is_capped_by_the_environment_and_an_explicit_count_wins(monkeypatch):
    monkeypatch.setattr(dispatch, "available_cores", lambda: 8)
    for var in dispatch.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    assert use_cpu_threads(None, 10**9) == 8
    assert dispatch.pool_threads() == 8
    monkeypatch.setenv("PJRT_NPROC", "3")  # a sweep worker's share, or the user's setting
    assert use_cpu_threads(None, 10**9) == 3
    assert use_cpu_threads(None, 1000) == 1
    assert environment_threads() == 1
    assert use_cpu_threads(5, 1000) == 5  # --cpu-threads 5
    assert environment_threads() == 5
    monkeypatch.delenv("PJRT_NPROC")
    monkeypatch.setenv("NPROC", "2")  # XLA's other variable
    assert use_cpu_threads(None, 10**9) == 2
    assert environment_threads({"PJRT_NPROC": "x"}) is None
    assert environment_threads({"PJRT_NPROC": " ", "NPROC": "4"}) == 4
    assert environment_threads({"PJRT_NPROC": "0"}) == 1


def _run_cli(tmp_path, name, *extra, env=None):
    import os

    argv = ["-m", "sparse_rl.cli", "train", "--agent", "dqn", "--env", "CartPole-v1", "--steps", "120",
            "--out", str(tmp_path / name), "--eval-every", "120", "--eval-episodes", "1", "--checkpoint-every",
            "0", "--progress", "False", "--dqn.learning-starts", "100", "--dqn.batch-size", "8", *extra]
    clean = {k: v for k, v in os.environ.items() if k not in dispatch.THREAD_VARS}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300,
                          env={**clean, **(env or {})})


def test_sparse_rl_train_sizes_the_pool_from_the_network_and_records_it(tmp_path):
    small = _run_cli(tmp_path, "small", "--dqn.widths", "8")
    assert small.returncode == 0, small.stderr
    assert json.loads((tmp_path / "small" / "summary.json").read_text())["startup"]["cpu_threads"] == 1
    chosen = _run_cli(tmp_path, "chosen", "--dqn.widths", "8", "--cpu-threads", "2")
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads((tmp_path / "chosen" / "summary.json").read_text())["startup"]["cpu_threads"] == 2
    # a network this small is not split across threads: the same numbers on one thread or two
    rows = {name: [{k: v for k, v in r.items() if k not in ("wall_time", "sps")}
                   for r in csv.DictReader(open(tmp_path / name / "metrics.csv"))] for name in ("small", "chosen")}
    assert rows["small"] and rows["small"] == rows["chosen"]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_thread_count_is_one_line_naming_the_flag(tmp_path, value):
    out = _run_cli(tmp_path, "bad", "--cpu-threads", value)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cpu" in lines[0] and "thread" in lines[0], out.stderr
    assert not (tmp_path / "bad").exists()


def test_a_sweep_worker_sizes_its_pool_from_its_task():
    code = ("import os, sparse_rl.sweep.local as w\nw.execute_task = lambda task: []\n"
            "w.main([{task!r}])\nprint('THREADS', os.environ['PJRT_NPROC'])")
    cell = {"id": "c", "path": "/nonexistent", "argv": ["--agent", "dqn", "--env", "CartPole-v1",
                                                         "--dqn.widths", "8"]}
    big = dict(cell, argv=["--agent", "dqn", "--env", "CartPole-v1", "--dqn.widths", "2048", "2048"])
    for task, env, want in [({"cells": [cell]}, {"PJRT_NPROC": "2"}, "1"),   # small: one thread
                            ({"cells": [big]}, {"PJRT_NPROC": "2"}, "2"),    # large: its share
                            ({"cells": []}, {"PJRT_NPROC": "2"}, "2")]:      # nothing to read: its share
        out = subprocess.run([sys.executable, "-c", code.format(task=json.dumps(task))], capture_output=True,
                             text=True, timeout=120, env={**__import__("os").environ, **env})
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[-1] == want, (task, out.stdout)
