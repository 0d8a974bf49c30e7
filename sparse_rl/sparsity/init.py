"""Sparsity-aware re-initialisation (sparse Glorot over the non-zero fans)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _sparse_glorot(key, p, m):
    shape = p.shape
    m2 = m.reshape(-1, shape[-1]).astype(jnp.float32)  # [prod(leading) * in, out]
    fan_in = jnp.sum(m2, axis=0, keepdims=True)        # non-zero inputs of each output unit
    fan_out = jnp.sum(m2, axis=1, keepdims=True)       # non-zero outputs of each input unit
    limit = jnp.sqrt(3.0 / jnp.maximum(1.0, (fan_in + fan_out) / 2.0)).reshape(shape)
    w = jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0) * limit
    return jnp.where(m, w, 0.0).astype(p.dtype)


def sparse_init(key, params, masks):
    """Re-draw surviving weights of every sparsified kernel from U(+-sqrt(3 / max(1, fan_avg))).

    fan_avg = (fan_in + fan_out) / 2 counted over the mask's non-zeros, per connection from its
    output unit's non-zero fan-in and its input unit's non-zero fan-out. A kernel [..., in, out]
    (Dense [in, out], conv HWIO) is viewed as a [prod(...) * in, out] matrix, so conv spatial
    taps count towards fan-in. Kernels whose mask is all True and leaves with ndim < 2 are
    returned unchanged (their own init, e.g. orthogonal, is kept). Masked entries come out 0.
    """
    return _sparse_init(key, params, masks)


@jax.jit
def _sparse_init(key, params, masks):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    mleaves = treedef.flatten_up_to(masks)
    keys = jax.random.split(key, max(1, len(leaves)))
    out = []
    for p, m, k in zip(leaves, mleaves, keys):
        p = jnp.asarray(p)
        m = jnp.asarray(m, bool)
        if p.ndim < 2:
            out.append(p)
            continue
        out.append(jnp.where(jnp.all(m), p, _sparse_glorot(k, p, m)))
    return jax.tree_util.tree_unflatten(treedef, out)
