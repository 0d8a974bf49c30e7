"""Mask construction (random, magnitude, N:M), application and statistics.

Counts (`k`, number of zeros) may be traced: masks come from ranks compared against the count,
never from a static top-k, so one program serves every sparsity level.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl.sparsity.config import SparsityConfig, leaf_paths
from sparse_rl.sparsity.distributions import leaf_plan, target_sparsities


def num_zeros(sparsity, n):
    """floor(sparsity * n) as int32, exact for sparsities given to 6 decimals, for any n < 2**31.

    `n` may be traced. float32(0.9) * 1000 is 899.99998 and float32 products of a million-weight
    layer are off by up to ~0.1, so a sparsity within float32 error of a multiple of 1e-6 (every
    level the paper uses, uniform and override targets) is counted as that decimal in exact int32
    arithmetic (issue 14: a growing snap tolerance gave floor(s*N) + 1 or + 2 above ~1M weights).
    Any other value (ERK shares, schedule values) is floored from its float32 product.
    """
    s = jnp.asarray(sparsity, jnp.float32)
    n = jnp.asarray(n, jnp.int32)
    scaled = s * jnp.float32(1e6)
    micro = jnp.round(scaled)
    # float32 error of s * 1e6 for s in [0, 1]: <= 1e6 * 2**-25 (s) + 2**-5 (product) < 0.0625.
    is_decimal = jnp.abs(scaled - micro) < jnp.float32(0.0625)
    u = jnp.clip(micro, 0, 1e6).astype(jnp.int32)
    # floor(u * n / 1e6) with n = q 1e6 + r1 1e3 + r0; every partial product stays below 2**31.
    q, r = n // 1_000_000, n % 1_000_000
    a, b = u * (r // 1000), u * (r % 1000)
    exact = u * q + a // 1000 + ((a % 1000) * 1000 + b) // 1_000_000
    rough = jnp.floor(s * n.astype(jnp.float32)).astype(jnp.int32)
    return jnp.clip(jnp.where(is_decimal, exact, rough), 0, n)


def _threshold(key, k, within=None):
    """Largest uint32 v with count(key >= v [and within]) >= k: the k-th largest key.

    Bitwise descent from the top bit: 32 counting passes, O(32 N) with no sort. On CPU this is
    ~10x faster than sorting a 4M-entry kernel, and `k` may be traced.
    """
    def body(i, v):
        cand = v | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        hit = key >= cand if within is None else within & (key >= cand)
        return jnp.where(jnp.sum(hit, dtype=jnp.int32) >= k, cand, v)

    return jax.lax.fori_loop(0, 32, body, jnp.uint32(0))


def _select_top(key, k, tie=None):
    """Flat bool mask of exactly min(k, n) entries with the largest (key, tie) (uint32 arrays);
    remaining equalities go to the lowest indices."""
    n = key.shape[0]
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, n)
    v1 = _threshold(key, k)
    gt, eq = key > v1, key == v1
    r = k - jnp.sum(gt, dtype=jnp.int32)
    if tie is not None:
        v2 = _threshold(tie, r, within=eq)
        gt2 = eq & (tie > v2)
        gt, eq = gt | gt2, eq & (tie == v2)
        r = r - jnp.sum(gt2, dtype=jnp.int32)
    return gt | (eq & (jnp.cumsum(eq, dtype=jnp.int32) <= r))


def _float_key(scores):
    """Order-preserving map float32 -> uint32 (NaN counts as -inf, -0.0 as 0.0)."""
    s = jnp.ravel(scores).astype(jnp.float32)
    s = jnp.where(jnp.isnan(s), -jnp.inf, jnp.where(s == 0, 0.0, s))
    b = jax.lax.bitcast_convert_type(s, jnp.uint32)
    return jnp.where((b >> 31) == 1, ~b, b | jnp.uint32(0x80000000))


# Above this many entries select by counting passes; below, one sort is as fast and compiles
# faster (a while loop costs more XLA compile time than a small sort).
SORT_MAX = 1 << 18


def _select_top_sorted(key, k, tie=None):
    """Same result as `_select_top`, by one lexicographic sort (for small arrays)."""
    n = key.shape[0]
    iota = jnp.arange(n, dtype=jnp.int32)
    keys = (~key,) if tie is None else (~key, ~tie)  # ascending on ~x = descending on x
    order = jax.lax.sort(keys + (iota,), num_keys=len(keys) + 1)[-1]
    ranks = jnp.zeros((n,), jnp.int32).at[order].set(iota)
    return ranks < k


def select_top(key, k, tie=None):
    """Flat bool mask of exactly min(k, n) entries with the largest (key, tie, -index)."""
    fn = _select_top_sorted if key.shape[0] <= SORT_MAX else _select_top
    return fn(key, k, tie)


def rank_topk(scores, k, tie=None):
    """Keep exactly `k` largest `scores`; ties broken by the uint32 array `tie` (else by index)."""
    t = None if tie is None else jnp.ravel(tie).astype(jnp.uint32)
    return select_top(_float_key(scores), k, t).reshape(jnp.shape(scores))


@jax.jit
def topk_mask(scores, k, key=None):
    """Bool mask keeping exactly `k` (may be traced) largest entries of `scores` (any shape).

    Ties are broken at random when `key` is given, else by position.
    """
    tie = None if key is None else jax.random.bits(key, jnp.shape(scores), jnp.uint32)
    return rank_topk(scores, k, tie)


def random_mask(key, shape, zeros):
    """Bool mask of `shape` with exactly `zeros` (may be traced) False entries at random places."""
    n = int(np.prod(shape)) if shape else 1
    # Keep the n - zeros largest random draws (index breaks the rare equal draws): exact count for
    # any traced `zeros`, and cheaper than jax.random.permutation's repeated sorts.
    bits = jax.random.bits(key, (n,), jnp.uint32)
    return select_top(bits, n - jnp.asarray(zeros, jnp.int32)).reshape(shape)


# --- N:M: groups of M consecutive entries along axis -2 (input axis of [.., in, out] kernels) ----

def _to_groups(x, m):
    y = jnp.moveaxis(x, -2, -1)
    return y.reshape(y.shape[:-1] + (y.shape[-1] // m, m))


def _from_groups(y, shape):
    moved = shape[:-2] + (shape[-1], shape[-2])
    return jnp.moveaxis(y.reshape(moved), -1, -2)


def nm_rank_topk(scores, k, m, tie=None):
    """Keep the `k` largest `scores` in every group of `m` along axis -2 (ties by `tie`, index)."""
    shape = jnp.shape(scores)
    g = _to_groups(jnp.asarray(scores, jnp.float32), m)
    g = jnp.where(jnp.isnan(g), -jnp.inf, g)
    tie = jnp.zeros(g.shape, jnp.uint32) if tie is None else _to_groups(tie, m)
    # Groups are tiny: rank by pairwise comparison instead of a sort.
    xi, xj = g[..., :, None], g[..., None, :]
    ti, tj = tie[..., :, None], tie[..., None, :]
    idx = jnp.arange(m)
    first = idx[None, :] < idx[:, None]  # j < i
    beats = (xj > xi) | ((xj == xi) & ((tj > ti) | ((tj == ti) & first)))
    return _from_groups(jnp.sum(beats, axis=-1) < k, shape)


@functools.partial(jax.jit, static_argnums=(2,))
def nm_topk_mask(scores, k, m, key=None):
    """Keep the `k` (may be traced) largest entries in every group of `m` along axis -2."""
    tie = None if key is None else jax.random.bits(key, jnp.shape(scores), jnp.uint32)
    return nm_rank_topk(scores, k, m, tie)


def nm_random_mask(key, shape, n, m):
    """Exactly `n` True at random in every group of `m` along axis -2."""
    return nm_rank_topk(jnp.zeros(shape, jnp.float32), n, m,
                        jax.random.bits(key, shape, jnp.uint32))


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
            out.append(_nm_random_mask_jit(k, info.shape, nm[0], nm[1]))
        else:
            out.append(_random_mask_jit(k, info.shape, num_zeros(t, info.size)))
    return jax.tree_util.tree_unflatten(treedef, out)


# Per-leaf jits: compiled once per shape, reused across networks (eager dispatch is slow).
_random_mask_jit = jax.jit(random_mask, static_argnums=(1,))
_nm_random_mask_jit = jax.jit(nm_random_mask, static_argnums=(1, 2, 3))


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
    return _magnitude_masks(params, sparsities, key)


@jax.jit
def _magnitude_masks(params, sparsities, key):
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
