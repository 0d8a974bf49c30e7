"""Sparsity-aware re-initialisation (sparse Glorot over the non-zero fans)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sparse_rl.sparsity.config import SparsityConfig
from sparse_rl.sparsity.distributions import leaf_plan


def nonzero_fans(mask):
    """(fan_in [out], fan_out [in]) of a kernel mask [..., in, out] (Dense [in, out], conv HWIO).

    As rigl_tf2 init_utils.unit_scaled_init_tf1 (and Glorot) count them: an output unit's fan-in
    sums its non-zeros over (spatial..., in); an input unit's fan-out over (spatial..., out).
    """
    m = jnp.asarray(mask, jnp.float32)
    per_pair = jnp.sum(m, axis=tuple(range(m.ndim - 2))) if m.ndim > 2 else m  # [in, out]
    return jnp.sum(per_pair, axis=0), jnp.sum(per_pair, axis=1)


def _sparse_glorot(key, p, m):
    fan_in, fan_out = nonzero_fans(m)
    fan_avg = (fan_in[None, :] + fan_out[:, None]) / 2.0          # [in, out]
    limit = jnp.broadcast_to(jnp.sqrt(3.0 / jnp.maximum(1.0, fan_avg)), p.shape)
    w = jax.random.uniform(key, p.shape, jnp.float32, -1.0, 1.0) * limit
    return jnp.where(m, w, 0.0).astype(p.dtype)


def sparse_init(key, params, masks, config: SparsityConfig | None = None):
    """Re-draw surviving weights of sparsified kernels from U(+-sqrt(3 / max(1, fan_avg))).

    fan_avg = (fan_in + fan_out) / 2 counted over the mask's non-zeros, per connection from its
    output unit's non-zero fan-in and its input unit's non-zero fan-out (`nonzero_fans`; rigl_tf2
    init_utils.unit_scaled_init_tf1, "fanavg_uniform", which rigl/rl/sparse_utils.py init_masks
    applies under `fixed_sparse_init`). Masked entries come out 0; leaves with ndim < 2 are kept.

    With `config`, every kernel the config sparsifies is re-drawn, also one that ERK left dense
    (the reference re-initialises every wrapped layer, so such a layer gets dense Glorot uniform).
    Without it, kernels whose mask is all True keep their own init.
    """
    leaves = jax.tree_util.tree_leaves(params)
    if config is None:
        eligible = [None] * len(leaves)
    else:
        _, infos = leaf_plan(params, config)
        eligible = [info.sparsified for info in infos]
    return _sparse_init(key, params, masks, tuple(eligible))


def _sparse_init_impl(key, params, masks, eligible):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    mleaves = treedef.flatten_up_to(masks)
    keys = jax.random.split(key, max(1, len(leaves)))
    out = []
    for p, m, k, e in zip(leaves, mleaves, keys, eligible):
        p = jnp.asarray(p)
        m = jnp.asarray(m, bool)
        if p.ndim < 2 or e is False:
            out.append(p)
        elif e is None:
            out.append(jnp.where(jnp.all(m), p, _sparse_glorot(k, p, m)))
        else:
            out.append(_sparse_glorot(k, p, m))
    return jax.tree_util.tree_unflatten(treedef, out)


_sparse_init = jax.jit(_sparse_init_impl, static_argnums=3)
