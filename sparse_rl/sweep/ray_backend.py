"""The Ray backend: the same sweep tasks as Ray tasks, on a local instance or a cluster.

Each task (one cell, or a vectorized group of cells) is a Ray task with `num_cpus=cpus_per_run`
(one by default) that calls `sparse_rl.sweep.local.execute_task` — the same code a local worker
process runs, so run directories, skip/resume and failure records are identical. A task runs in a
fresh worker process (`max_calls=1`: JAX starts clean, memory is returned after each run) and is not
retried by Ray (`max_retries=0`): a failed run is recorded in its run directory and reported, and
`--retry-failed` is how it is run again.

Without `--ray-address` a private local instance is started listening on 127.0.0.1 only, with the
dashboard off and `workers` CPUs (default: the number of cores). With an address, the driver connects to
that cluster; the sweep directory must then be on a file system that every node mounts at the same
path, and sparse_rl must be installed on every node.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

from sparse_rl.errors import ConfigError
from sparse_rl.sweep.local import (SweepProgress, execute_task, finalize_task, task_layer_macs, worker_env,
                                   worker_exit_status)
from sparse_rl.train.dispatch import configure_training_process


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("backend", "ray is not installed",
                          'pip install "sparse_rl[ray]" (or: pip install "ray[default]>=2.30,<3")') from None
    return ray


def _task(task: dict) -> list[dict]:  # runs inside a Ray worker
    # Takes effect in a worker's first task (before its first computation); Ray starts a worker
    # per task (max_calls=1).
    configure_training_process(None, task_layer_macs(task))
    return execute_task(task)


ENV_VARS = ("XLA_FLAGS", "PYTHONPATH", "XLA_PYTHON_CLIENT_PREALLOCATE", "OMP_NUM_THREADS", "PJRT_NPROC",
            "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "JAX_COMPILATION_CACHE_DIR",
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")


def start(address: str | None = None, workers: int | None = None) -> bool:
    """Connect to the cluster at `address`, or start a private local instance; returns whether
    this call initialised Ray (False when the caller had already done so)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    with _loopback_only(ray):
        ray.init(
            address="local",                # never attach to some other cluster by accident
            num_cpus=int(workers or os.cpu_count() or 1),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=96 * 1024 * 1024,
            log_to_driver=False,
            configure_logging=False,
        )
    return True


@contextlib.contextmanager
def _loopback_only(ray):
    """Make a local instance listen on 127.0.0.1 only.

    Ray turns a node address of 127.0.0.1 into the machine's reachable address and binds its
    servers to all interfaces, except when clusters are disabled (its setting for single-machine
    use, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read when ray is imported): then every process
    of the instance (started with this environment) uses the loopback address.
    """
    from ray._private import ray_constants

    var = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    old_env, old_const = os.environ.get(var), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[var] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old_env


def run_ray(tasks: list[dict], out: str, *, address: str | None = None, cpus_per_run: float = 1.0,
            workers: int | None = None, progress: SweepProgress | None = None,
            poll: float = 0.5, compile_cache: bool = True) -> list[dict]:
    """Run `tasks` as Ray tasks; returns per-cell results like `run_local`."""
    from sparse_rl.sweep.local import compile_cache_dir

    ray = _ray()
    workers = int(workers or os.cpu_count() or 1)
    threads = max(1, math.ceil(cpus_per_run))
    cache = (os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(compile_cache_dir(out))) if compile_cache else None
    started = start(address, workers)
    # The worker environment (thread limits, shared compilation cache; locally the package path)
    # travels with each task.
    env = {k: v for k, v in worker_env(threads, base={}, compile_cache=cache).items() if k in ENV_VARS}
    if address:
        env.pop("PYTHONPATH", None)  # a cluster has sparse_rl installed on its nodes
    remote = ray.remote(num_cpus=cpus_per_run, max_calls=1, max_retries=0)(_task)
    remote = remote.options(runtime_env={"env_vars": env})
    since = time.time()
    refs = {remote.remote(task): task for task in tasks}
    results: list[dict] = []
    try:
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=poll)
            for ref in ready:
                task = refs[ref]
                try:
                    returncode, error = worker_exit_status(ray.get(ref)), None
                except ray.exceptions.RayError as e:  # worker crashed, task cancelled, ...
                    returncode, error = 1, f"Ray task failed: {type(e).__name__}: {e}"
                for r in finalize_task(task, returncode, None, error):
                    results.append(r)
                    if progress:
                        progress.cell_done(r["id"], r["status"], r["error"])
            if progress:
                progress.update(_started_ids([refs[r] for r in pending], since))
    except KeyboardInterrupt:
        for ref in refs:
            try:
                ray.cancel(ref)  # KeyboardInterrupt in the worker: its run stays resumable
            except Exception:
                pass
        raise
    finally:
        if started:
            ray.shutdown()  # stops our local instance; for a cluster, only disconnects
    return results


def _started_ids(tasks: list[dict], since: float) -> set:
    """Cells of unfinished tasks whose run directory was written since the sweep started: what Ray
    is running, as far as the (shared) file system tells."""
    out = set()
    for task in tasks:
        for cell in task["cells"]:
            for name in ("metrics.csv", "config.json"):
                try:
                    if os.stat(Path(cell["path"]) / name).st_mtime >= since - 1:
                        out.add(cell["id"])
                        break
                except OSError:
                    pass
    return out
