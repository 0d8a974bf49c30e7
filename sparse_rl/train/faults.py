"""Faults: finiteness checks of training state, and the crash points used by the kill -9 tests.

Numerical faults
----------------
`first_nonfinite(tree)` is the path ("mlp/~/linear_0/w") of the first floating-point leaf of `tree`
(in pytree order) that holds a NaN or Inf, or None. Each leaf is reduced on its device to one bool
(`isfinite(x).all()`), so only a few bytes leave the accelerator. The runner calls it on every
network's parameters at each log point and on the whole agent state before each checkpoint;
`check_finite` turns what it finds (or a NaN/Inf loss or gradient metric) into
`sparse_rl.errors.NumericalError`.

Test hook: crash points
-----------------------
`kill_point(point, step)` does nothing unless the environment variable `SPARSE_RL_TEST_KILL_AT`
was set when this module was imported; it exists only so that tests can stop a training
process at an exact moment, deterministically (tests/test_reliability_kill.py)::

    SPARSE_RL_TEST_KILL_AT="checkpoint_marker@600"     # comma-separated "<point>[@<step>]"
    SPARSE_RL_TEST_KILL_SIGNAL=SIGSTOP                 # optional; default SIGKILL

On reaching a listed point (at that step; any step if none is given) the process sends itself the
signal: SIGKILL dies on the spot like `kill -9`; SIGSTOP freezes it there (holding its run lock)
so that a test can inspect the run directory and then kill it. Points:

* `log`: a metrics row for `step` has just been written (`MetricsLog.write`);
* `checkpoint_npz`: the checkpoint's arrays are written to a temporary file, not yet renamed;
* `checkpoint_marker`: arrays and manifest are in place, the completion marker is not;
* `checkpoint_done`: the checkpoint is complete (marker written), older ones not yet pruned;
* `complete`: the final summary is written, the run directory's `COMPLETE` marker is not.
"""

from __future__ import annotations

import functools
import math
import os
import signal
from typing import Callable

from sparse_rl.errors import NumericalError

__all__ = ["check_finite", "first_nonfinite", "kill_point", "KILL_ENV", "SIGNAL_ENV", "POINTS"]

KILL_ENV = "SPARSE_RL_TEST_KILL_AT"
SIGNAL_ENV = "SPARSE_RL_TEST_KILL_SIGNAL"
POINTS = ("log", "checkpoint_npz", "checkpoint_marker", "checkpoint_done", "complete")


def _parse(spec: str | None) -> dict[str, set[int | None]]:
    out: dict[str, set[int | None]] = {}
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        point, _, step = item.partition("@")
        if point not in POINTS:
            raise ValueError(f"{KILL_ENV}: unknown point {point!r} (allowed: {', '.join(POINTS)})")
        out.setdefault(point, set()).add(int(step) if step else None)
    return out


_KILL_AT = _parse(os.environ.get(KILL_ENV))


def kill_point(point: str, step: int | None = None) -> None:
    """Test hook (see the module docstring): a no-op unless SPARSE_RL_TEST_KILL_AT names `point`."""
    if not _KILL_AT:
        return
    steps = _KILL_AT.get(point)
    if steps is None or (None not in steps and step not in steps):
        return
    name = os.environ.get(SIGNAL_ENV, "SIGKILL")
    os.kill(os.getpid(), getattr(signal, name))


# --------------------------------------------------------------------------- finiteness

def first_nonfinite(tree) -> str | None:
    """Path of the first floating-point leaf of `tree` holding NaN or Inf (pytree order), or None."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sparse_rl.sparsity import leaf_paths

    leaves = jax.tree_util.tree_leaves(tree)
    paths = jax.tree_util.tree_leaves(leaf_paths(tree))
    arrays, where, bad_floats = [], [], []
    for path, leaf in zip(paths, leaves):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            if isinstance(leaf, float) and not np.isfinite(leaf):
                bad_floats.append(path)
            continue
        try:
            inexact = jnp.issubdtype(dtype, jnp.inexact)
        except TypeError:  # e.g. typed PRNG keys
            inexact = False
        if inexact:
            arrays.append(leaf)
            where.append(path)
    finite = jax.device_get(_all_finite()(arrays)) if arrays else []
    bad = {path for path, ok in zip(where, finite) if not bool(ok)} | set(bad_floats)
    return next((path for path in paths if path in bad), None)


def _leaves_finite(arrays):
    import jax.numpy as jnp

    return [jnp.isfinite(x).all() for x in arrays]


@functools.cache
def _all_finite():
    """One flag per array, in one program per list of shapes: checking leaf by leaf eagerly
    compiled two small programs per distinct leaf shape (about 1 s per SAC run) and made 2N calls."""
    import jax

    return jax.jit(_leaves_finite)


def check_finite(step: int, networks: dict | None = None, metrics: dict | None = None, whole_state=None,
                 last_checkpoint: Callable[[], int | None] = lambda: None) -> None:
    """Raise `NumericalError` (step, first non-finite parameter path, last good checkpoint) if a
    loss/gradient metric or a parameter of `networks` (name -> (params, masks)) is NaN or Inf.
    `whole_state`: also scan every other float leaf (optimizer moments, target networks) -- done
    before each checkpoint. `last_checkpoint` is asked only on a fault."""
    bad = {k: v for k, v in (metrics or {}).items()
           if ("loss" in k or "grad" in k) and isinstance(v, float) and not math.isfinite(v)}
    where = None
    for name, (params, _) in (networks or {}).items():
        path = first_nonfinite(params)
        if path is not None:
            where = f"{name}/{path}"
            break
    if where is None and whole_state is not None:
        path = first_nonfinite(whole_state)
        where = None if path is None else f"state/{path}"
    if bad or where is not None:
        last = last_checkpoint()
        note = ("no checkpoint written" if last is None else
                f"last good checkpoint: step {last}; metrics up to step {step} are in metrics.csv")
        raise NumericalError(step, where, bad, note)
