"""Schedules (jnp, step may be traced), plus the host-side calendar of mask updates."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sparse_rl.sparsity.config import DYNAMIC_METHODS, SparsityConfig


def pruning_sparsity(step, final, start, end, initial=0.0):
    """Cubic (Zhu & Gupta): s_f + (s_i - s_f) (1 - p)^3 with p = clip((t - start) / (end - start))."""
    t = jnp.asarray(step, jnp.float32)
    p = jnp.clip((t - start) / jnp.float32(end - start), 0.0, 1.0)
    final = jnp.asarray(final, jnp.float32)
    return final + (initial - final) * (1.0 - p) ** 3


def drop_fraction(step, a, end):
    """Cosine-decayed drop fraction a/2 * (1 + cos(pi * min(t, end) / end))."""
    t = jnp.minimum(jnp.asarray(step, jnp.float32), jnp.float32(end))
    return 0.5 * a * (1.0 + jnp.cos(jnp.pi * t / jnp.float32(end)))


def is_update_step(step, config: SparsityConfig):
    """Whether the masks change at `step` (bool jnp scalar).

    prune: start <= t <= end and ((t - start) % every == 0 or t == end). SET/RigL: t % every == 0
    and t <= end (t = 0 included). dense/static: never.

    The extra pruning step at t == end makes every run reach its final sparsity even when the window
    is not a multiple of the interval (a short run whose window was rescaled from fractions); at the
    paper's settings the window is a multiple, so this adds no step there.
    """
    t = jnp.asarray(step, jnp.int32)
    if config.method == "prune":
        s, e = config.start_step, config.end_step
        return (t >= s) & (t <= e) & (((t - s) % config.update_every == 0) | (t == e))
    if config.method in DYNAMIC_METHODS:
        return (t % config.update_every == 0) & (t <= config.end_step)
    return jnp.zeros((), bool)


def mask_update_steps(config: SparsityConfig) -> np.ndarray:
    """Sorted step counts at which `is_update_step` is true (numpy int64; empty for dense/static).

    The host-side twin of `is_update_step`: env loops use it to know, without reading the device,
    whether an update call can change masks (`mask_update_due`), and run a program without the
    mask-update branch otherwise.
    """
    if config.method == "prune":
        s, e = int(config.start_step), int(config.end_step)
        if e < s:
            return np.zeros((0,), np.int64)
        return np.union1d(np.arange(s, e + 1, int(config.update_every)), [e]).astype(np.int64)
    if config.method in DYNAMIC_METHODS:
        e = int(config.end_step)
        return np.arange(0, max(e, -1) + 1, int(config.update_every), dtype=np.int64)
    return np.zeros((0,), np.int64)


def next_mask_update(steps: np.ndarray, first: int, count: int = 1) -> int | None:
    """The first of the sorted `steps` in [first, first + count) (None if none): the step count of
    the first mask update in an update call that runs `count` gradient steps from `first`."""
    i = int(np.searchsorted(steps, first))
    return int(steps[i]) if i < len(steps) and int(steps[i]) < first + count else None


def mask_update_due(steps: np.ndarray, first: int, count: int = 1) -> bool:
    """Whether an update call that runs `count` gradient steps from step count `first` may change
    masks (any of the sorted `steps` in [first, first + count))."""
    return next_mask_update(steps, first, count) is not None
