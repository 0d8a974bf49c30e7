"""How a training process runs its CPU programs: synchronously, on a thread pool sized to the work.

Synchronous dispatch. JAX runs CPU programs asynchronously by default: a jitted call returns at
once and the program runs on another thread. The env loops gain nothing from that. They read
every act call's result at once, and the act that follows an update waits for that update, so no
host work overlaps a program. What is left is the hand-off between threads on every call.
Measured on a 2-core VM (issue 15), a 4-256-256-2 forward pass took 55-67 us per call
asynchronously and 13.7 us synchronously, and a DQN run makes an act call every env step.

The thread pool. XLA's CPU client runs a program's kernels on a pool of one thread per core: it
splits loops across the threads and runs independent kernels at once. For a small network the
hand-offs cost more than they save. Measured on the 2-core VM (benchmarks/bench_cpu_threads.py,
median of 3 alternated rounds), one thread against two:
- DQN 256-256, batch 32 (largest layer 2.1M multiply-adds): update 517 vs 578 us;
- PPO 64-64, minibatch 64 (0.26M): a 320-step update 32 vs 42 ms;
- DQN 256-256, batch 64 (4.2M): 681 vs 709 us, about even;
- SAC 256-256, batch 256 (33.6M with the twin critics) and DQN 512-512, batch 128 (33.6M): two
  threads win (6.3 vs 4.8 ms, 3.1 vs 1.9 ms).
So a run whose largest layer is under SMALL_LAYER_MACS gets one thread, any other run every core.

JAX reads both settings when it starts its CPU client, at the process's first computation. So our
own processes set them first thing: `sparse-rl train` and sweep workers, local or Ray. Dispatch
does not change results. The thread count can, in the last bits: XLA splits large matmuls and
reductions across threads (as two machines with different core counts would); a network small
enough to get one thread is not split on two either (tested). The Python API leaves the user's
process as it is; a user who wants the same there sets both before any JAX computation (README).
"""

from __future__ import annotations

import os

OPTION = "jax_cpu_enable_async_dispatch"

# XLA's CPU client sizes its thread pool from the first of these that is set, else from the cores.
THREAD_VARS = ("PJRT_NPROC", "NPROC")

# Largest-layer multiply-adds per gradient step below which one thread is faster (see above: the
# crossover measured between 2.1M, one thread 12% faster, and 4.2M, about even).
SMALL_LAYER_MACS = 3_000_000


def use_synchronous_cpu_dispatch() -> None:
    """Run this process's CPU programs on the calling thread. It takes effect only if JAX's CPU
    client has not started yet, i.e. before the process's first computation, and has no effect on
    other platforms."""
    import jax

    jax.config.update(OPTION, False)


def available_cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def auto_cpu_threads(layer_macs: int | None, cores: int | None = None) -> int:
    """Threads for a run whose largest layer does `layer_macs` multiply-adds per gradient step
    (None: unknown, e.g. a convolutional torso): 1 below SMALL_LAYER_MACS, else every core."""
    cores = available_cores() if cores is None else max(int(cores), 1)
    return 1 if layer_macs is not None and layer_macs < SMALL_LAYER_MACS else cores


def environment_threads(env=None) -> int | None:
    """The thread count already set in the environment (`THREAD_VARS`), or None."""
    env = os.environ if env is None else env
    for var in THREAD_VARS:
        value = env.get(var, "").strip()
        if value:
            try:
                return max(int(value), 1)
            except ValueError:
                return None
    return None


def pool_threads() -> int:
    """The size of XLA's CPU thread pool in this process: the environment's count, else the cores."""
    present = environment_threads()
    return available_cores() if present is None else present


def use_cpu_threads(threads: int | None, layer_macs: int | None) -> int:
    """Size XLA's CPU thread pool before the CPU client starts; returns the count chosen.
    `threads` (a user's explicit choice, >= 1) is used as given. None chooses from the work
    (`auto_cpu_threads`), never above a count already in the environment (a sweep worker's share
    of the cores, or the user's PJRT_NPROC)."""
    if threads is None:
        threads = auto_cpu_threads(layer_macs)
        present = environment_threads()
        if present is not None:
            threads = min(threads, present)
    threads = max(int(threads), 1)
    os.environ[THREAD_VARS[0]] = str(threads)
    return threads


def configure_training_process(threads: int | None = None, layer_macs: int | None = None) -> int:
    """Synchronous dispatch and the thread pool (`use_cpu_threads`), for a process that trains."""
    use_synchronous_cpu_dispatch()
    return use_cpu_threads(threads, layer_macs)
