"""Shared benchmark plumbing: run each measured configuration in a child process.

A child of its own makes its peak resident memory (the worker reports its own `ru_maxrss`) and its
compile time its own, and lets the peer library run from another interpreter when needed.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
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


# Figures measured again on a warm compilation cache, stored as <field>_warm.
WARM_FIELDS = ("sps", "steady_sps", "compile_seconds", "peak_rss_mib", "process_seconds")


def compile_cache_env(path: str) -> dict:
    """Environment giving a JAX process (ours or the peer's) a persistent compilation cache at
    `path` that keeps every program, as `sparse-rl train` does by default."""
    return {"JAX_COMPILATION_CACHE_DIR": path, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def run_cold_and_warm(argv: list[str], python: str | None = None, warm: bool = True) -> dict:
    """Run a worker on a new, empty compilation cache (cold: everything is compiled, as in the
    first run of a configuration) and, with `warm`, once more on the cache it filled (as in every
    later run with the same programs: another seed, a resumed run); warm figures get `_warm`."""
    with tempfile.TemporaryDirectory(prefix="bench-xla-") as cache:
        env = compile_cache_env(cache)
        row = run_worker(argv, python, env)
        if warm and "error" not in row:
            again = run_worker(argv, python, env)
            if "error" in again:
                row["error_warm"] = again["error"]
            else:
                row.update({f"{key}_warm": again[key] for key in WARM_FIELDS if key in again})
    return row


def measure_rows(common: list[str], args, methods: list[str]) -> list[dict]:
    """Our worker for each method, then the peer's (unless --no-sbx), cold and warm; with ratios."""
    rows = []
    for method in methods:
        rows.append(run_cold_and_warm(common + ["--worker", "ours", "--method", method], warm=not args.no_warm))
        print(json.dumps(rows[-1]), flush=True)
    if not args.no_sbx:
        rows.append(run_cold_and_warm(common + ["--worker", "sbx"], python=args.sbx_python, warm=not args.no_warm))
        print(json.dumps(rows[-1]), flush=True)
    add_ratios(rows)
    return rows


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
        for suffix in ("", "_warm"):
            sps, rss = f"sps{suffix}", f"peak_rss_mib{suffix}"
            if sps in row and dense and sps in dense:
                row[f"vs_dense{suffix}"] = row[sps] / dense[sps]
            if sps in row and peer and sps in peer:
                row[f"vs_sbx{suffix}"] = row[sps] / peer[sps]
                row[f"memory_vs_sbx{suffix}"] = row[rss] / peer[rss]


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
    parser.add_argument("--no-warm", action="store_true",
                        help="measure only cold runs (empty compilation cache), not a second, warm run of each")
    parser.add_argument("--worker", choices=("ours", "sbx"), help=argparse.SUPPRESS)
    parser.add_argument("--method", default="dense", help=argparse.SUPPRESS)
    return parser
