"""Sweep throughput: 8 seeds of one cell as separate processes vs vectorised processes.

    python benchmarks/bench_sweep.py                       # DQN CartPole, 8 seeds x 10k steps; MLP 64-64 and 512-512
    python benchmarks/bench_sweep.py --steps 2000 --widths 64,64   # a quick check
    python benchmarks/bench_sweep.py --agent ppo --steps 20000 --widths 64,64

Every mode runs the real command a user runs, `sparse-rl sweep`, on the same grid (e.g. DQN, RigL
90%, CartPole-v1, seeds 0-7) into fresh directories:

* separate: the local backend, `--workers 2` (one process per seed, two at a time, one compute
  thread each);
* vectorized: `--vectorize-seeds --workers 1 --cpus-per-run 2` (one process with two compute
  threads, the 8 seeds vmapped; its state chunks dispatched from two threads);
* vectorized_split: `--vectorize-seeds --workers 2` (the sweep splits the 8 seeds into two
  processes of 4, one compute thread each).

Reported per mode: total env steps per second (8 x steps / wall time of the whole sweep command,
process start, compilation and evaluation included), the steady-state throughput (without
compilation and evaluation: for the separate mode, `workers` runs at a time at their measured
SPS; for vectorised processes, their own total SPS, summed over processes running at once), total
compile time (summed over processes), and summed peak memory (the peak resident set of every
process of the sweep, sampled every 50 ms with psutil, summed over processes). Also whether the
modes gave the same evaluation returns. Results: benchmarks/results/sweep.json (--name).

Knobs of the one-process mode (environment of the benchmark, passed to the workers):
`OMP_NUM_THREADS=1` keeps one dispatching thread (and so, for small networks, one update call for
all seeds, parallelised by XLA's intra-op threads only); `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`
turns XLA's intra-op threads off (the chunks' dispatching threads only).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_sweep(argv: list[str]) -> dict:
    """Run `sparse-rl sweep argv`; wall time and summed per-process peak RSS."""
    import psutil

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "sparse_rl.cli", "sweep", *argv]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peaks: dict[int, int] = {}
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [parent] + parent.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            peaks[p.pid] = max(peaks.get(p.pid, 0), rss)
        time.sleep(0.05)
    output = proc.communicate()[0]
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}):\n{output[-3000:]}")
    # The sweep process itself only plans and waits; the workers do the training.
    worker_peaks = {pid: rss for pid, rss in peaks.items() if pid != proc.pid}
    return {"wall_seconds": wall, "peak_rss_mib_sum": sum(worker_peaks.values()) / 2**20,
            "sweep_process_peak_rss_mib": peaks.get(proc.pid, 0) / 2**20,
            "processes": len(worker_peaks), "output_tail": output[-600:]}


def summaries(out: Path, agent: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob(f"{agent}/*/*/seed*/summary.json"))]


# The width flags of each agent's networks (--set <flag>=<widths>) and its default environment.
WIDTH_FLAGS = {"dqn": ("dqn.widths",), "ppo": ("ppo.actor-widths", "ppo.value-widths"),
               "sac": ("sac.actor-widths", "sac.critic-widths")}
DEFAULT_ENV = {"dqn": "CartPole-v1", "ppo": "CartPole-v1", "sac": "Pendulum-v1"}
MODES = ("separate", "vectorized", "vectorized_split")


def measure(args, widths: str) -> dict:
    """Every mode for one network size."""
    base = tempfile.mkdtemp(prefix="bench-sweep-")
    env_id = args.env or DEFAULT_ENV[args.agent]
    sets = [a for flag in WIDTH_FLAGS[args.agent] for a in ("--set", f"{flag}={widths}")]
    grid = ["--agent", args.agent, "--env", env_id, "--methods", args.method, "--sparsities", args.sparsity,
            "--seeds", f"0-{args.seeds - 1}", "--steps", str(args.steps), *sets,
            "--eval-every", str(max(args.steps // 4, 1)), "--eval-episodes", "10", "--checkpoint-every", "0",
            "--analysis-every", "0", "--no-progress"]
    if args.no_compile_cache:
        grid.append("--no-compile-cache")
    modes = {
        "separate": ["--workers", str(args.workers)],
        # one process, allowed as many compute threads as the separate mode has workers
        "vectorized": ["--vectorize-seeds", "--workers", "1", "--cpus-per-run", str(args.workers)],
        # `workers` processes of seeds / workers seeds, one compute thread each
        "vectorized_split": ["--vectorize-seeds", "--workers", str(args.workers)],
    }
    results = {}
    returns = {}
    try:
        for name in args.modes:
            extra = modes[name]
            out = Path(base) / name
            print(f"{name}: sparse-rl sweep {' '.join(grid + extra)} --out {out}", flush=True)
            measured = run_sweep([*grid, *extra, "--out", str(out)])
            runs = summaries(out, args.agent)
            assert len(runs) == args.seeds, f"{name}: {len(runs)} of {args.seeds} runs finished"
            total_steps = sum(r.get("env_steps", r["steps"]) for r in runs)
            if name == "separate":
                compile_total = sum(r["compile_seconds"] for r in runs)
                # `workers` runs at a time, each at its own steady SPS
                steady = args.workers * total_steps / sum(r.get("env_steps", r["steps"]) / r["steps_per_second"]
                                                          for r in runs)
                chunks = None
            else:  # one entry per process (its runs share it; a sub-group of one seed runs alone)
                procs = {tuple(r["vectorized"]["out"]) if "vectorized" in r else (r["seed"],): r for r in runs}
                compile_total = sum(r["compile_seconds"] for r in procs.values())
                # the processes run at once (one per worker)
                steady = sum(r["vectorized"]["total_steps_per_second"] if "vectorized" in r else r["steps_per_second"]
                             for r in procs.values())
                chunks = [r["vectorized"].get("chunks") if "vectorized" in r else [1] for r in procs.values()]
            results[name] = {
                "total_env_steps": total_steps,
                "sps": total_steps / measured["wall_seconds"],
                "steady_sps": steady,
                "compile_seconds_total": compile_total,
                "peak_rss_mib_sum": measured["peak_rss_mib_sum"],
                "wall_seconds": measured["wall_seconds"],
                "processes": measured["processes"],
            }
            if chunks is not None:
                results[name]["state_chunks"] = chunks
            returns[name] = [r["eval_returns"] for r in sorted(runs, key=lambda r: r["seed"])]
            print(json.dumps(results[name]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    ratios = {}
    sep = results.get("separate")
    for name, vec in results.items():
        if name == "separate" or sep is None:
            continue
        ratios.update({f"throughput_{name}_vs_separate": vec["sps"] / sep["sps"],
                       f"steady_sps_{name}_vs_separate": vec["steady_sps"] / sep["steady_sps"],
                       f"memory_{name}_vs_separate": vec["peak_rss_mib_sum"] / sep["peak_rss_mib_sum"],
                       f"compile_{name}_vs_separate": vec["compile_seconds_total"] / max(sep["compile_seconds_total"], 1e-9)})
    first = returns[next(iter(returns))]
    return {
        "config": {"agent": args.agent, "env": env_id, "method": args.method, "sparsity": float(args.sparsity),
                   "seeds": args.seeds, "steps": args.steps, "widths": widths, "workers": args.workers,
                   "compile_cache": not args.no_compile_cache},
        "results": results,
        "ratios": ratios,
        # discrete actions: the same returns exactly; continuous: up to reassociation
        "same_eval_returns": all(r == first for r in returns.values()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", default="dqn", choices=sorted(WIDTH_FLAGS))
    p.add_argument("--env", help="environment (default: CartPole-v1; SAC: Pendulum-v1)")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--widths", nargs="+", default=["64,64", "512,512"],
                   help="MLP widths of every network to measure, one configuration each (the paper's "
                        "classic control: 512,512)")
    p.add_argument("--method", default="rigl")
    p.add_argument("--sparsity", default="0.9")
    p.add_argument("--workers", type=int, default=2, help="workers of the separate-process mode")
    p.add_argument("--no-compile-cache", action="store_true", help="disable the sweep's shared compile cache")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="modes to measure (the ratios are against separate)")
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    p.add_argument("--name", default="sweep", help="results file: benchmarks/results/<name>.json")
    args = p.parse_args(argv)

    configs = [measure(args, widths) for widths in args.widths]
    payload = {"benchmark": "sweep", "machine": machine(), "configs": configs,
               "targets": {"throughput_ratio_at_least": 1.3, "memory_ratio_at_most": 0.25}}
    path = write_results(args.name, payload)
    for c in configs:
        print(f"widths {c['config']['widths']}: " + json.dumps(c["ratios"]))
        print(f"  same evaluation returns in every mode: {c['same_eval_returns']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
