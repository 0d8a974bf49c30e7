"""A run's summary.json: final evaluation, measured sparsity per network, speed and versions."""

import math

import jax
import numpy as np

import sparse_rl
from sparse_rl.sparsity import sparsity_summary
from sparse_rl.train.rundir import RunDir, write_json_checked


def network_sparsity(networks: dict) -> dict[str, float]:
    """Measured sparsity per network (`networks`: name -> (params, masks)) and over all of them."""
    out, zeros, total = {}, 0, 0
    for name, (params, _) in networks.items():
        summary = sparsity_summary(params)
        out[f"sparsity_{name}"] = summary["sparsity"]
        zeros += summary["total"] - summary["nonzero"]
        total += summary["total"]
    out["sparsity"] = zeros / max(total, 1)
    return out


def write_summary(rundir: RunDir, run, main_sparsity, networks: dict, eval_history: list, sps: float,
                  compile_seconds: float, wall_time: float, extra: dict | None = None) -> dict:
    """Write summary.json (with a checksum, issue 16) and return it. `main_sparsity`: the
    SparsityConfig of the agent's main network; the final return is the mean of the last 10% of
    evaluations."""
    evals = [mean for _, mean, _ in eval_history]
    tail = max(1, int(math.ceil(0.1 * len(evals)))) if evals else 0
    per_network = {}
    nonzero = total = 0
    for name, (params, masks) in networks.items():
        summary = sparsity_summary(params, masks)
        per_network[name] = summary
        nonzero += summary["nonzero"]
        total += summary["total"]
    summary = {
        "agent": run.agent,
        "env": run.env,
        "seed": run.seed,
        "steps": run.steps,
        "method": main_sparsity.method,
        "target_sparsity": 0.0 if main_sparsity.method == "dense" else float(main_sparsity.sparsity),
        "final_eval_return": float(np.mean(evals[-tail:])) if evals else None,
        "eval_returns": evals,
        "sparsity": 1.0 - nonzero / max(total, 1),
        "nonzero_params": nonzero,
        "total_params": total,
        "networks": per_network,
        "steps_per_second": sps,
        "compile_seconds": compile_seconds,
        "wall_time": wall_time,
        "library_version": sparse_rl.__version__,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0].platform),
    }
    summary.update(extra or {})
    write_json_checked(rundir.summary_path, summary)
    return summary
