"""Start-up of a training process (issue 15): import time, and time to the first environment step
cold (empty compilation cache) and warm (a second process on the cache the first one filled).

    python benchmarks/bench_startup.py                      # all three workloads, 3 pairs of imports
    python benchmarks/bench_startup.py --workloads dqn --pairs 5

Each figure comes from a child process of its own:
- imports: `import sparse_rl.train.runner` and the agent's module in a fresh interpreter, timed in
  the child; "eager" first imports distrax (what `import rlax` did before `sparse_rl.agents.rlax_import`
  deferred it), "deferred" does not. The two are alternated, `--pairs` times.
- start-up: `sparse-rl train` with sbx's default hyperparameters (as in issue 15) for a few steps past
  the first update, cold then warm; from summary.json's `startup` (inside: process start to the first
  env step and its parts) and `compile_seconds`, and the child's whole wall time (outside).
Writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sbx_defaults import ENVS, our_flags, sac_random_steps  # noqa: E402
from common import machine, write_results  # noqa: E402

# Steps: a little past the first update; for DQN far enough for one analysis row (gradient step
# 1000, with the gradient SNR) at the default analysis settings. Settings: sbx's defaults, as
# bench_sbx_defaults.py sets them.
STEPS = {"dqn": 5000, "sac": sac_random_steps(1.0) + 200, "ppo": 2048}
WORKLOADS = {name: {"env": ENVS[name], "steps": steps, "args": our_flags(name, steps, 1.0)}
             for name, steps in STEPS.items()}
IMPORT_CODE = """
import time
t = time.perf_counter()
{first}
import sparse_rl.train.runner, sparse_rl.agents.{agent}
import json, sys
print(json.dumps({{"seconds": time.perf_counter() - t, "tfp": "tensorflow_probability" in sys.modules}}))
"""


def child_json(cmd: list[str], env: dict | None = None) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def import_pairs(agent: str, pairs: int) -> dict:
    """Seconds to import the training path, distrax eager vs deferred, alternated."""
    times = {"eager": [], "deferred": []}
    for _ in range(pairs):
        for mode, first in (("eager", "import distrax"), ("deferred", "")):
            row = child_json([sys.executable, "-c", IMPORT_CODE.format(first=first, agent=agent)])
            times[mode].append(row["seconds"])
    ratios = [e / d for e, d in zip(times["eager"], times["deferred"])]
    return {"eager_seconds": times["eager"], "deferred_seconds": times["deferred"],
            "eager_over_deferred": ratios, "median_saved_seconds":
                statistics.median(e - d for e, d in zip(times["eager"], times["deferred"]))}


def train_once(agent: str, spec: dict, cache: str, out: str) -> dict:
    """One `sparse-rl train` process; its start-up, compile seconds and whole wall time."""
    cmd = [sys.executable, "-m", "sparse_rl.cli", "train", "--agent", agent, "--env", spec["env"],
           "--steps", str(spec["steps"]), "--checkpoint-every", "0", "--eval-every", str(spec["steps"]),
           "--eval-episodes", "1", "--no-progress", "--out", out, *spec["args"]]
    env = dict(os.environ, SPARSE_RL_COMPILE_CACHE=cache)
    started = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - started
    summary = json.loads((Path(out) / "summary.json").read_text())
    row = {"process_seconds": wall, "compile_seconds": summary["compile_seconds"], **summary["startup"]}
    analysis = Path(out) / "analysis.json"
    if analysis.is_file():
        meta = json.loads(analysis.read_text())
        row["analysis_seconds"] = meta["seconds"]
        row["analysis_compile_seconds"] = meta["compile_seconds"]
        row["analysis_compile_by"] = meta["compile_by"]
    return row


def cold_and_warm(agent: str) -> dict:
    spec = WORKLOADS[agent]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        cache = str(Path(tmp) / "xla")
        cold = train_once(agent, spec, cache, str(Path(tmp) / "cold"))
        warm = train_once(agent, spec, cache, str(Path(tmp) / "warm"))
    return {"agent": agent, "env": spec["env"], "steps": spec["steps"], "args": spec["args"],
            "cold": cold, "warm": warm}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="dqn,sac,ppo")
    parser.add_argument("--pairs", type=int, default=3, help="alternated eager/deferred import pairs")
    parser.add_argument("--note", default="", help="conditions, e.g. 'loaded 2-core machine'")
    args = parser.parse_args()
    agents = [a for a in args.workloads.split(",") if a]
    unknown = sorted(set(agents) - set(WORKLOADS))
    if unknown:
        parser.error(f"--workloads: unknown {unknown}; allowed: {sorted(WORKLOADS)}")
    payload = {"benchmark": "startup", "machine": machine(), "note": args.note, "imports": {}, "rows": []}
    for agent in agents:
        payload["imports"][agent] = import_pairs(agent, args.pairs)
        print(json.dumps({"imports": agent, **payload["imports"][agent]}), flush=True)
    for agent in agents:
        payload["rows"].append(cold_and_warm(agent))
        print(json.dumps(payload["rows"][-1]), flush=True)
    print(write_results("startup", payload))


if __name__ == "__main__":
    main()
