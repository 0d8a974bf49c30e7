"""Mask update rules (masks -> masks) for prune, SET and RigL; static/dense never change.

Rules are pure per-leaf functions of traced values; `update_masks` applies the method's rule to the
sparsified leaves and leaves the others untouched. Whether to call it is the caller's business
(`schedules.is_update_step`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl.sparsity.config import SparsityConfig
from sparse_rl.sparsity.distributions import leaf_plan
from sparse_rl.sparsity.masks import nm_rank_topk, num_zeros, rank_topk
from sparse_rl.sparsity.schedules import drop_fraction, pruning_sparsity


def _prune(mask, weights, target, step, config: SparsityConfig, tie):
    s_t = pruning_sparsity(step, target, config.start_step, config.end_step)
    score = jnp.where(mask, jnp.abs(weights).astype(jnp.float32), -jnp.inf)
    nm = config.nm
    if nm is not None:
        n, m = nm
        k = jnp.clip(jnp.round(m * (1.0 - s_t)), n, m).astype(jnp.int32)
        return nm_rank_topk(score, k, m, tie)
    k = jnp.round(mask.size * (1.0 - s_t)).astype(jnp.int32)
    return rank_topk(score, k, tie)


def _drop_grow(mask, weights, grow_score, fraction, tie_drop, tie_grow):
    n_active = jnp.sum(mask, dtype=jnp.int32)
    n = num_zeros(fraction, n_active)
    score = jnp.where(mask, jnp.abs(weights).astype(jnp.float32), -jnp.inf)
    keep = rank_topk(score, n_active - n, tie_drop)
    grown = rank_topk(jnp.where(keep, -jnp.inf, grow_score.astype(jnp.float32)), n, tie_grow)
    return keep | grown


@functools.partial(jax.jit, static_argnames=("config",))
def prune_leaf(key, mask, weights, target, step, config: SparsityConfig):
    """Keep k = round(N (1 - s(t))) largest |w| among the active ones (cubic s(t) toward `target`).

    With N:M structure: per group of M keep round(M (1 - s(t))) clipped to [N, M]. Random ties.
    """
    return _prune(mask, weights, target, step, config,
                  jax.random.bits(key, jnp.shape(mask), jnp.uint32))


@jax.jit
def drop_grow_leaf(key, mask, weights, grow_score, fraction):
    """Drop n = floor(n_active * fraction) smallest-|w| active; grow n by largest `grow_score`.

    Growth candidates are all positions not kept (just-dropped included), so the active count is
    unchanged. Ties are broken at random.
    """
    bits = jax.random.bits(key, (2,) + jnp.shape(mask), jnp.uint32)
    return _drop_grow(mask, weights, grow_score, fraction, bits[0], bits[1])


@functools.partial(jax.jit, static_argnames=("config",))
def update_masks(key, masks, weights, grads, targets, step, config: SparsityConfig):
    """New masks by the method's rule.

    weights: the candidate params (drop by |w|, prune by |w|); grads: the dense gradient (RigL
    grows by |grad|); targets: per-leaf final sparsities; step: the (traced) step count.
    """
    if config.method in ("dense", "static"):
        return masks
    treedef, infos = leaf_plan(masks, config)
    ml = treedef.flatten_up_to(masks)
    wl = treedef.flatten_up_to(weights)
    gl = treedef.flatten_up_to(grads) if grads is not None else [None] * len(ml)
    tl = treedef.flatten_up_to(targets)
    # One random draw for the whole update (3 rows: drop ties, grow ties, SET scores), sliced per
    # leaf: a threefry instance per leaf would multiply compile time.
    sizes = [info.size if info.sparsified else 0 for info in infos]
    bits = jax.random.bits(key, (3, max(1, sum(sizes))), jnp.uint32)
    offsets = np.cumsum([0] + sizes)
    f = drop_fraction(step, config.drop_fraction, config.end_step)
    out = []
    for i, (info, m, w, g, t) in enumerate(zip(infos, ml, wl, gl, tl)):
        if not info.sparsified:
            out.append(m)
            continue
        r = bits[:, offsets[i]:offsets[i + 1]].reshape((3,) + info.shape)
        if config.method == "prune":
            out.append(_prune(m, w, t, step, config, r[0]))
        else:
            # SET: uniform random growth; 24 high bits keep float32 conversion exact.
            score = jnp.abs(g) if config.method == "rigl" else (r[2] >> 8).astype(jnp.float32)
            out.append(_drop_grow(m, w, score, f, r[0], r[1]))
    return jax.tree_util.tree_unflatten(treedef, out)
