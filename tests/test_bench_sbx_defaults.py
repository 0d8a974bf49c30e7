"""benchmarks/bench_sbx_defaults.py and its table: the flags that set our agents to sbx's defaults
still parse to those settings, ratios are taken within a pair, and a missing or corrupt results
file gives no table rather than a traceback. (No timing here: speed lives in benchmarks/.)"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the scripts import their sibling `common`
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load("bench_sbx_defaults")


@pytest.fixture()
def table(tmp_path, monkeypatch):
    module = load("table")
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    return module


def parsed(bench, workload: str, scale: float = 1.0):
    from sparse_rl.cli import build_train_args

    steps = bench.scaled_steps(workload, scale)
    cmd = bench.our_command(workload, steps, scale, "rigl", "/nonexistent")
    return build_train_args(cmd[cmd.index("train") + 1:])


def test_dqn_flags_are_sbx_defaults(bench):
    run, config = parsed(bench, "dqn")
    assert run.steps == 30_000
    assert (config.widths, config.batch_size, config.train_every, config.learning_starts) == ((256, 256), 32, 4, 100)
    assert (config.learning_rate, config.adam_eps, config.weight_decay, config.loss) == (1e-4, 1e-8, 0.0, "huber")
    # sbx: target copy every 1000 env steps = 250 gradient steps at one per 4 env steps;
    # epsilon 1 -> 0.05 over the first 10% of the run, ours counted from learning_starts.
    assert config.target_update_every * config.train_every == 1000
    assert (config.epsilon_start, config.epsilon_end) == (1.0, 0.05)
    assert config.learning_starts + config.epsilon_decay_steps == 3000
    assert config.sparsity.method == "rigl" and config.sparsity.sparsity == 0.9


def test_sac_flags_are_sbx_defaults(bench):
    run, config = parsed(bench, "sac")
    assert (run.steps, config.learning_starts) == (6_000, 1_000)
    assert (config.actor_widths, config.critic_widths, config.batch_size) == ((256, 256), (256, 256), 256)
    assert (config.reward_scale, config.weight_decay, config.adam_eps) == (1.0, 0.0, 1e-8)
    assert (config.log_std_min, config.log_std_max, config.tau, config.train_every) == (-20.0, 2.0, 0.005, 1)


def test_ppo_flags_are_sbx_defaults(bench):
    run, config = parsed(bench, "ppo")
    assert run.steps == 20_480
    assert (config.actor_widths, config.value_widths, config.activation, config.value_activation) == (
        (64, 64), (64, 64), "tanh", "tanh")
    assert (config.rollout_length, config.minibatch_size, config.epochs) == (2048, 64, 10)
    assert not (config.anneal_learning_rate or config.normalize_observations or config.normalize_rewards
                or config.squash_mean)
    assert (config.std_transform, config.init_std, config.weight_decay) == ("exp", 1.0, 0.0)


def test_quick_steps_keep_whole_rollouts_and_a_learning_phase(bench):
    assert bench.scaled_steps("ppo", 0.1) % 2048 == 0
    assert bench.scaled_steps("sac", 0.01) > bench.sac_random_steps(0.01)


def test_ratios_within_pairs(bench):
    def run(wall, rss):
        return {"cold": {"wall_s": wall, "peak_rss_mib": rss}, "warm": {"wall_s": wall / 2, "peak_rss_mib": rss}}

    runs = [{"rows": {"sparse_rl/dense": run(10.0, 100.0), "sparse_rl/rigl": run(20.0, 100.0),
                      "sbx/dense": run(30.0, 400.0)}},
            {"rows": {"sparse_rl/dense": run(20.0, 100.0), "sparse_rl/rigl": {"cold": {"error": "boom"}},
                      "sbx/dense": run(20.0, 200.0)}}]
    rows = {(r["library"], r["method"]): r for r in bench.summarize(runs, ["dense", "rigl"])}
    dense = rows["sparse_rl", "dense"]["cold"]
    assert dense["speedup_vs_sbx"] == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 2}
    assert dense["memory_vs_sbx"]["max"] == 0.5
    rigl = rows["sparse_rl", "rigl"]["cold"]  # the failed run is left out, not counted as zero
    assert rigl["speed_vs_our_dense"] == {"median": 0.5, "min": 0.5, "max": 0.5, "n": 1}
    assert rows["sparse_rl", "rigl"]["warm"]["wall_s"]["n"] == 1


def test_table_rows_from_results(bench, table, tmp_path):
    runs = [{"rows": {"sparse_rl/dense": {"cold": {"wall_s": 5.0, "peak_rss_mib": 100.0},
                                          "warm": {"wall_s": 4.0, "peak_rss_mib": 90.0}},
                      "sbx/dense": {"cold": {"wall_s": 10.0, "peak_rss_mib": 300.0},
                                    "warm": {"wall_s": 8.0, "peak_rss_mib": 300.0}}}}]
    payload = {"pairs": 1, "workloads": [{"workload": "dqn", "env": "CartPole-v1", "steps": 30_000, "sparsity": 0.9,
                                          "summary": bench.summarize(runs, ["dense"])}]}
    (tmp_path / "sbx_defaults.json").write_text(json.dumps(payload))
    lines = table.sbx_defaults_rows()
    ours = next(line for line in lines if "| sparse_rl | dense |" in line)
    assert "| 2.00 / 2.00 |" in ours and "| 0.33 / 0.30 |" in ours


def test_flop_table_reads_act_results(table, tmp_path):
    case = {"settings": "sbx defaults", "agent": "dqn", "env": "CartPole-v1", "update_mflop": 10.0, "update_us": 500.0,
            "gradient_steps_per_update": 1, "update_gflops": 20.0, "matmul_shape": [32, 256, 256],
            "matmul_gflops": 40.0, "fraction_of_matmul_rate": 0.5}
    (tmp_path / "update_flops.json").write_text(json.dumps({"cases": [case]}))
    assert table.flops_rows()[-1].endswith("| 0.50 |  |")  # no act.json: blank
    (tmp_path / "act.json").write_text(json.dumps({"dqn CartPole-v1": {"act_us": 41.6, "act_us_before": 130.2}}))
    assert table.flops_rows()[-1].endswith("| 0.50 | 42 (130) |")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_corrupt_results_give_no_rows(table, tmp_path, content):
    for name in ("sbx_defaults.json", "update_flops.json", "act.json"):
        (tmp_path / name).write_text(content)
    assert table.sbx_defaults_rows() == [] and table.flops_rows() == []


def test_thread_table_reads_its_results(table, tmp_path):
    case = {"settings": "sbx defaults", "agent": "dqn", "env": "CartPole-v1", "largest_layer_macs": 2097152,
            "update_us": {"1": 430.0, "2": 640.0}, "one_thread_speedup": 1.49, "rule_threads": 1}
    (tmp_path / "cpu_threads.json").write_text(json.dumps({"cores": 2, "cases": [case]}))
    assert table.threads_rows()[-1] == "| dqn CartPole-v1 | sbx defaults | 2.1 | 430 / 640 | 1.49x | 1 |"
    (tmp_path / "cpu_threads.json").write_text("{not json")
    assert table.threads_rows() == []
