"""Golden results of short runs: the metrics rows and evaluations that a refactor of the training
loops must reproduce (issue 12). `python -m tests.golden_regen` (from the repository root) trains
every case below and rewrites tests/data/golden.json; `tests/test_golden.py` trains them again
and compares. Regenerate only when results change on purpose (e.g. a paper-fidelity fix), and
say so in the commit message.

Cases: DQN with RigL and with gradual pruning whose mask updates fall inside the run, SAC on
Pendulum with its random warm-up, PPO on CartPole with reward and observation normalisation, and
a `--vectorize-seeds` group of two DQN seeds. Tiny networks and a few thousand steps at most, so
that the whole set trains in seconds on CPU.
"""

import json
import sys
import tempfile
from pathlib import Path

from sparse_rl.cli import build_train_args
from sparse_rl.train.metrics import read_metrics

GOLDEN = Path(__file__).parent / "data" / "golden.json"
TIMING = ("wall_time", "sps")
COMMON = ["--env", "CartPole-v1", "--eval-episodes", "2", "--progress", "False", "--analysis-every", "0"]

DQN = ["--agent", "dqn", *COMMON, "--steps", "1500", "--eval-every", "500", "--log-every", "250",
       "--checkpoint-every", "0", "--dqn.widths", "16", "16", "--dqn.learning-starts", "200",
       "--dqn.batch-size", "32", "--sparsity", "0.8", "--update-every", "50"]
CASES = {
    "dqn_rigl": DQN + ["--method", "rigl"],
    "dqn_prune": DQN + ["--method", "prune"],
    "sac_pendulum": ["--agent", "sac", "--env", "Pendulum-v1", "--eval-episodes", "1", "--progress", "False",
                     "--analysis-every", "0", "--steps", "400", "--eval-every", "200", "--log-every", "100",
                     "--checkpoint-every", "0", "--sac.actor-widths", "16", "16", "--sac.critic-widths", "16", "16",
                     "--sac.learning-starts", "200", "--sac.batch-size", "32", "--method", "set",
                     "--sparsity", "0.5", "--update-every", "50"],
    "ppo_cartpole": ["--agent", "ppo", *COMMON, "--steps", "1024", "--eval-every", "512", "--log-every", "256",
                     "--checkpoint-every", "0", "--ppo.num-envs", "2", "--ppo.rollout-length", "128",
                     "--ppo.minibatch-size", "64", "--ppo.epochs", "2", "--ppo.actor-widths", "16", "16",
                     "--ppo.value-widths", "16", "16", "--ppo.actor-sparsity.method", "rigl",
                     "--ppo.value-sparsity.method", "prune", "--update-every", "4",
                     "--ppo.normalize-observations", "--ppo.normalize-rewards"],
}
GROUP = ("dqn_seeds", DQN + ["--method", "rigl"], (0, 1))


def _result(out: Path, summary: dict) -> dict:
    rows = read_metrics(out / "metrics.csv")
    return {
        "metrics": {name: [None if v != v else float(v) for v in values.tolist()]
                    for name, values in rows.items() if name not in TIMING},
        "eval_returns": summary["eval_returns"],
        "nonzero_params": summary["nonzero_params"],
    }


def run_case(argv: list[str], out: Path) -> dict:
    from sparse_rl.train.runner import train

    run, config = build_train_args(argv + ["--seed", "0", "--out", str(out)])
    return _result(out, train(run, config))


def run_group(argv: list[str], seeds, root: Path) -> list[dict]:
    from sparse_rl.train.runner import train_group

    pairs = [build_train_args(argv + ["--seed", str(s), "--out", str(root / f"s{s}")]) for s in seeds]
    summaries = train_group([r for r, _ in pairs], [c for _, c in pairs])
    return [_result(root / f"s{s}", summary) for s, summary in zip(seeds, summaries)]


def compute(root: Path) -> dict:
    results = {name: run_case(argv, root / name) for name, argv in CASES.items()}
    name, argv, seeds = GROUP
    results[name] = run_group(argv, seeds, root / name)
    return results


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = compute(Path(tmp))
    GOLDEN.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
