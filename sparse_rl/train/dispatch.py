"""Synchronous dispatch of CPU programs in a training process.

JAX runs CPU programs asynchronously by default: a jitted call returns at once and the program runs
on another thread. The env loops gain nothing from that. They read every act call's result at once,
and the act that follows an update waits for that update, so no host work overlaps a program. What
is left is the hand-off between threads on every call. Measured on a 2-core VM (issue 15), a
4-256-256-2 forward pass took 55-67 us per call asynchronously and 13.7 us synchronously, and a DQN
run makes an act call every env step.

JAX reads the setting when it starts its CPU client, at the process's first computation. So our
own processes set it first thing: `sparse-rl train` and sweep workers, local or Ray. Results do not
change: the programs are the same; only the thread that runs them does. The Python API leaves the
user's process as it is. A user who wants the same there sets it before any JAX computation (README).
"""

OPTION = "jax_cpu_enable_async_dispatch"


def use_synchronous_cpu_dispatch() -> None:
    """Run this process's CPU programs on the calling thread. It takes effect only if JAX's CPU
    client has not started yet, i.e. before the process's first computation, and has no effect on
    other platforms."""
    import jax

    jax.config.update(OPTION, False)
