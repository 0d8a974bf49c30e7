"""Paired speed comparison of two checkouts of sparse_rl (e.g. a release and a branch): the same
configurations alternately with each, several pairs, in child processes, so that a shared, noisy
machine affects both alike. Reports steady-state steps/s (summary `steps_per_second`: no
compilation, no evaluation), compile seconds and wall time per run.

    python benchmarks/bench_paired.py --old /path/to/release --new . --pairs 3 > paired.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CASES = {
    "dqn": ["--agent", "dqn", "--env", "CartPole-v1", "--steps", "5000", "--method", "rigl", "--sparsity", "0.9"],
    "sac": ["--agent", "sac", "--env", "Pendulum-v1", "--steps", "2000", "--method", "rigl", "--sparsity", "0.9",
            "--sac.learning-starts", "500"],
    "ppo": ["--agent", "ppo", "--env", "CartPole-v1", "--steps", "16384", "--method", "rigl", "--sparsity", "0.9"],
    "sweep": ["--agent", "dqn", "--env", "CartPole-v1", "--steps", "3000", "--method", "rigl", "--sparsity", "0.9"],
}
SWEEP_SEEDS = 4
COMMON = ["--eval-episodes", "1", "--checkpoint-every", "0", "--analysis-every", "0", "--progress", "False"]

CHILD = r"""
import json, sys, time
from sparse_rl.cli import build_train_args
argv, out, seeds = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
pairs = [build_train_args(argv + ["--seed", str(s), "--out", f"{out}/s{s}"]) for s in range(seeds)]
start = time.perf_counter()
if seeds == 1:
    from sparse_rl.train.runner import train
    summaries = [train(*pairs[0])]
else:
    try:
        from sparse_rl.train.runner import train_group as group
    except ImportError:
        from sparse_rl.train.vectorized import train_vectorized as group
    summaries = group([r for r, _ in pairs], [c for _, c in pairs])
wall = time.perf_counter() - start
s = summaries[0]
print(json.dumps({"steady_sps": s["steps_per_second"] * seeds, "compile_seconds": s["compile_seconds"],
                  "wall": wall, "final_eval_return": s["final_eval_return"]}))
"""


def run_one(root: str, argv: list[str], seeds: int) -> dict:
    steps = int(argv[argv.index("--steps") + 1])
    evaluate = ["--eval-every", str(steps), "--log-every", str(max(steps // 10, 1))]
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
        done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv + COMMON + evaluate), out, str(seeds)],
                              env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    results = {}
    for name in args.cases.split(","):
        seeds = SWEEP_SEEDS if name == "sweep" else 1
        rows = []
        for i in range(args.pairs):
            order = [("old", args.old), ("new", args.new)] if i % 2 == 0 else [("new", args.new), ("old", args.old)]
            for label, root in order:
                row = {"case": name, "pair": i, "version": label, **run_one(root, CASES[name], seeds)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        results[name] = rows
    json.dump({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": results}, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
