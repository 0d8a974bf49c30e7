"""Mask update rules (masks -> masks) for prune, SET and RigL; static/dense never change.

Rules are pure per-leaf functions of traced values; `update_masks` applies the method's rule to the
sparsified leaves and leaves the others untouched. Whether to call it is the caller's business
(`schedules.is_update_step`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sparse_rl.sparsity.config import SparsityConfig
from sparse_rl.sparsity.distributions import leaf_plan
from sparse_rl.sparsity.masks import nm_topk_mask, topk_mask
from sparse_rl.sparsity.schedules import drop_fraction, pruning_sparsity


def _floor(x):
    # Same float32 snapping as masks.num_zeros: a few ulps below an integer counts as that integer.
    x = jnp.asarray(x, jnp.float32)
    return jnp.floor(x + jnp.abs(x) * jnp.float32(2.0**-21)).astype(jnp.int32)


def prune_leaf(key, mask, weights, target, step, config: SparsityConfig):
    """Keep k = round(N (1 - s(t))) largest |w| among the active ones (cubic s(t) toward `target`)."""
    s_t = pruning_sparsity(step, target, config.start_step, config.end_step)
    score = jnp.where(mask, jnp.abs(weights).astype(jnp.float32), -jnp.inf)
    nm = config.nm
    if nm is not None:
        n, m = nm
        k = jnp.clip(jnp.round(m * (1.0 - s_t)), n, m).astype(jnp.int32)
        return nm_topk_mask(score, k, m, key)
    k = jnp.round(mask.size * (1.0 - s_t)).astype(jnp.int32)
    return topk_mask(score, k, key)


def drop_grow_leaf(key, mask, weights, grow_score, fraction):
    """Drop n = floor(n_active * fraction) smallest-|w| active; grow n by largest `grow_score`.

    Growth candidates are all positions not kept (just-dropped included), so the active count is
    unchanged. Ties are broken at random.
    """
    k_drop, k_grow = jax.random.split(key)
    n_active = jnp.sum(mask, dtype=jnp.int32)
    n = _floor(n_active.astype(jnp.float32) * fraction)
    score = jnp.where(mask, jnp.abs(weights).astype(jnp.float32), -jnp.inf)
    keep = topk_mask(score, n_active - n, k_drop)
    grown = topk_mask(jnp.where(keep, -jnp.inf, grow_score.astype(jnp.float32)), n, k_grow)
    return keep | grown


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
    keys = jax.random.split(key, max(1, len(ml)))
    f = drop_fraction(step, config.drop_fraction, config.end_step)
    out = []
    for info, m, w, g, t, k in zip(infos, ml, wl, gl, tl, keys):
        if not info.sparsified:
            out.append(m)
        elif config.method == "prune":
            out.append(prune_leaf(k, m, w, t, step, config))
        else:
            k_score, k_rule = jax.random.split(k)
            if config.method == "rigl":
                score = jnp.abs(g)
            else:
                score = jax.random.uniform(k_score, m.shape)
            out.append(drop_grow_leaf(k_rule, m, w, score, f))
    return jax.tree_util.tree_unflatten(treedef, out)
