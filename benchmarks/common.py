"""Shared benchmark plumbing: run each measured configuration in a child process.

A child of its own makes its peak resident memory (the worker reports its own `ru_maxrss`) and its
compile time its own, and lets the peer library run from another interpreter when needed.
"""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run_worker(argv: list[str], python: str | None = None, env: dict | None = None) -> dict:
    """Run a worker command; return the last JSON line it printed plus its wall time."""
    cmd = [python or sys.executable, *argv]
    child_env = dict(os.environ, **(env or {}))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env)
    out, err = proc.communicate()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}",
                "cmd": " ".join(cmd)}
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    result = json.loads(line)
    result["process_seconds"] = elapsed
    return result


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
    import jax

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "date": time.strftime("%Y-%m-%d"),
    }


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def add_ratios(rows: list[dict]) -> None:
    """SPS relative to our dense run and to the peer library, and memory relative to the peer."""
    dense = next((r for r in rows if r.get("library") == "sparse_rl" and r.get("method") == "dense"), None)
    peer = next((r for r in rows if r.get("library") == "sbx" and "sps" in r), None)
    for row in rows:
        if "sps" in row and dense and "sps" in dense:
            row["vs_dense"] = row["sps"] / dense["sps"]
        if "sps" in row and peer:
            row["vs_sbx"] = row["sps"] / peer["sps"]
            row["memory_vs_sbx"] = row["peak_rss_mib"] / peer["peak_rss_mib"]


def benchmark_parser(doc: str, env: str, steps: int | None, methods: tuple[str, ...]):
    """The options every speed benchmark takes (and the hidden ones of its worker processes)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=env)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--methods", default=",".join(methods))
    parser.add_argument("--sbx-python", default=sys.executable, help="interpreter that has sbx installed")
    parser.add_argument("--no-sbx", action="store_true")
    parser.add_argument("--worker", choices=("ours", "sbx"), help=argparse.SUPPRESS)
    parser.add_argument("--method", default="dense", help=argparse.SUPPRESS)
    return parser
