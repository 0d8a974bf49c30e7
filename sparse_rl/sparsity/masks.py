"""Mask construction (random, magnitude, N:M), application and statistics.

Counts (`k`, number of zeros) may be traced: masks come from ranks compared against the count,
never from a static top-k, so one program serves every sparsity level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl.sparsity.config import SparsityConfig, leaf_paths
from sparse_rl.sparsity.distributions import leaf_plan, target_sparsities


def num_zeros(sparsity, n: int):
    """floor(sparsity * n) as int32, robust to float32 rounding of the sparsity.

    float32(0.9) * 1000 evaluates to 899.99998; the intended count is 900, so values within a few
    ulps below an integer are snapped up before flooring.
    """
    x = jnp.asarray(sparsity, jnp.float32) * jnp.float32(n)
    z = jnp.floor(x + jnp.abs(x) * jnp.float32(2.0**-21))
    return jnp.clip(z, 0, n).astype(jnp.int32)


def _ranks(scores, key=None):
    """Descending rank (0 = largest) of each entry of a flat array; ties broken randomly by `key`."""
    scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    n = scores.shape[0]
    tie = (jnp.arange(n, dtype=jnp.uint32) if key is None
           else jax.random.bits(key, (n,), jnp.uint32))
    order = jnp.lexsort((tie, -scores))
    return jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))


def topk_mask(scores, k, key=None):
    """Bool mask keeping exactly `k` (may be traced) largest entries of `scores` (any shape)."""
    flat = jnp.ravel(scores).astype(jnp.float32)
    return (_ranks(flat, key) < k).reshape(jnp.shape(scores))


def random_mask(key, shape, zeros):
    """Bool mask of `shape` with exactly `zeros` (may be traced) False entries at random positions."""
    n = int(np.prod(shape)) if shape else 1
    perm = jax.random.permutation(key, n)
    return (perm >= zeros).reshape(shape)


# --- N:M: groups of M consecutive entries along axis -2 (input axis of [.., in, out] kernels) ----

def _to_groups(x, m):
    y = jnp.moveaxis(x, -2, -1)
    return y.reshape(y.shape[:-1] + (y.shape[-1] // m, m))


def _from_groups(y, shape):
    moved = shape[:-2] + (shape[-1], shape[-2])
    return jnp.moveaxis(y.reshape(moved), -1, -2)


def nm_topk_mask(scores, k, m, key=None):
    """Keep the `k` (may be traced) largest entries in every group of `m` along axis -2."""
    shape = scores.shape
    g = _to_groups(jnp.asarray(scores, jnp.float32), m)
    g = jnp.where(jnp.isnan(g), -jnp.inf, g)
    tie = (jnp.zeros(g.shape, jnp.uint32) if key is None
           else jax.random.bits(key, g.shape, jnp.uint32))
    xi, xj = g[..., :, None], g[..., None, :]
    ti, tj = tie[..., :, None], tie[..., None, :]
    idx = jnp.arange(m)
    first = idx[None, :] < idx[:, None]  # j < i
    beats = (xj > xi) | ((xj == xi) & ((tj > ti) | ((tj == ti) & first)))
    rank = jnp.sum(beats, axis=-1)
    return _from_groups(rank < k, shape)


def nm_random_mask(key, shape, n, m):
    """Exactly `n` True at random in every group of `m` along axis -2."""
    return nm_topk_mask(jax.random.uniform(key, shape), n, m, key=None)


# --- pytree-level ------------------------------------------------------------------------------

def masks_from_targets(key, params, config: SparsityConfig, targets):
    """Initial masks given per-leaf targets (the part of `init_masks` after the ERK solve)."""
    treedef, infos = leaf_plan(params, config)
    tleaves = treedef.flatten_up_to(targets)
    keys = jax.random.split(key, max(1, len(infos)))
    nm = config.nm
    out = []
    for info, t, k in zip(infos, tleaves, keys):
        if not info.sparsified or config.method == "prune":
            out.append(jnp.ones(info.shape, bool))
        elif nm is not None:
            out.append(nm_random_mask(k, info.shape, nm[0], nm[1]))
        else:
            out.append(random_mask(k, info.shape, num_zeros(t, info.size)))
    return jax.tree_util.tree_unflatten(treedef, out)


def init_masks(key, params, config: SparsityConfig, sparsity=None):
    """Initial bool masks: exactly floor(s_l * N_l) zeros per sparsified leaf at random positions.

    Dense leaves (and every leaf for method "prune", which starts dense) are all True. With N:M
    structure every group of M along axis -2 keeps exactly N at random.
    """
    targets = target_sparsities(params, config, sparsity)
    return masks_from_targets(key, params, config, targets)


def magnitude_masks(params, sparsities, key=None):
    """Per leaf keep the N - floor(s * N) largest |param| (s from the `sparsities` pytree).

    Leaves with ndim < 2 stay all True. Ties are broken at random when `key` is given.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    sl = treedef.flatten_up_to(sparsities)
    keys = jax.random.split(key, max(1, len(leaves))) if key is not None else [None] * len(leaves)
    out = []
    for p, s, k in zip(leaves, sl, keys):
        p = jnp.asarray(p)
        if p.ndim < 2:
            out.append(jnp.ones(p.shape, bool))
        else:
            out.append(topk_mask(jnp.abs(p), p.size - num_zeros(s, p.size), k))
    return jax.tree_util.tree_unflatten(treedef, out)


def apply_masks(params, masks):
    """Zero params where the mask is False (exact zeros; dtypes kept)."""
    return jax.tree_util.tree_map(
        lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def num_topology_changes(old_masks, new_masks):
    """Fraction of active connections in `new_masks` that were inactive in `old_masks` (jnp scalar).

    For SET/RigL (active counts fixed) this is the fraction of connections replaced.
    """
    old = jax.tree_util.tree_leaves(old_masks)
    new = jax.tree_util.tree_leaves(new_masks)
    grown = sum(jnp.sum(n & ~o) for o, n in zip(old, new))
    active = sum(jnp.sum(n) for n in new)
    return jnp.asarray(grown, jnp.float32) / jnp.maximum(jnp.asarray(active, jnp.float32), 1.0)


def sparsity_summary(params, masks=None) -> dict:
    """Counts from the actual arrays, as plain Python numbers.

    `{"layers": {path: {"total", "nonzero", "sparsity"}}, "total", "nonzero", "sparsity"}`; layers
    are leaves with ndim >= 2, totals cover every leaf. With `masks`, "nonzero" counts active
    (mask True) entries, since a just-grown connection is active but exactly 0.
    """
    paths = jax.tree_util.tree_leaves(leaf_paths(params))
    leaves = jax.tree_util.tree_leaves(params)
    mleaves = (jax.tree_util.tree_leaves(masks) if masks is not None else [None] * len(leaves))
    if len(mleaves) != len(leaves):
        from sparse_rl.errors import ConfigError
        raise ConfigError("masks", "structure differs from params", "a mask pytree like params")
    layers, total, nonzero = {}, 0, 0
    for path, p, m in zip(paths, leaves, mleaves):
        a = np.asarray(p)
        nz = int(np.count_nonzero(np.asarray(m))) if m is not None else int(np.count_nonzero(a))
        t = int(a.size)
        total += t
        nonzero += nz
        if a.ndim >= 2:
            layers[path] = {"total": t, "nonzero": nz, "sparsity": 1.0 - nz / t if t else 0.0}
    return {"layers": layers, "total": total, "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / total if total else 0.0}
