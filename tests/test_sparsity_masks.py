"""Mask construction, counts, N:M, application, statistics and sparse init."""

import json
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_rl.errors import ConfigError
from sparse_rl.sparsity import (SparsityConfig, apply_masks, init_masks, magnitude_masks,
                                nm_topk_mask, num_topology_changes, num_zeros, sparse_init,
                                sparsity_summary, target_sparsities, topk_mask)


def mlp(*sizes):
    return {f"mlp/~/linear_{i}": {"w": np.ones((a, b), np.float32), "b": np.zeros(b, np.float32)}
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def test_num_zeros_is_decimal_floor():
    levels = [round(x, 2) for x in np.arange(0.0, 1.0, 0.01)] + [0.995, 0.999]
    for n in (1, 7, 10, 100, 1000, 4096, 65536):
        got = jax.jit(jax.vmap(lambda s: num_zeros(s, n)))(jnp.asarray(levels, jnp.float32))
        want = [int(Fraction(str(s)) * n) for s in levels]
        assert np.asarray(got).tolist() == want, n


@pytest.mark.parametrize("dist", ["erk", "uniform"])
def test_static_masks_exact_counts(dist):
    params = mlp(4, 64, 64, 2)
    cfg = SparsityConfig(method="static", sparsity=0.9, distribution=dist)
    t = target_sparsities(params, cfg)
    m = init_masks(jax.random.PRNGKey(3), params, cfg)
    for k in params:
        n = params[k]["w"].size
        assert int(np.sum(~np.asarray(m[k]["w"]))) == int(num_zeros(t[k]["w"], n))
        assert bool(np.all(m[k]["b"]))
    if dist == "uniform":
        assert int(np.sum(~np.asarray(m["mlp/~/linear_1"]["w"]))) == int(0.9 * 4096)
    # Different keys give different positions; the same key the same masks.
    m2 = init_masks(jax.random.PRNGKey(4), params, cfg)
    m3 = init_masks(jax.random.PRNGKey(3), params, cfg)
    assert not np.array_equal(m["mlp/~/linear_1"]["w"], m2["mlp/~/linear_1"]["w"])
    assert np.array_equal(m["mlp/~/linear_1"]["w"], m3["mlp/~/linear_1"]["w"])


def test_prune_and_dense_start_all_true():
    params = mlp(4, 8, 2)
    for method in ("prune", "dense"):
        m = init_masks(jax.random.PRNGKey(0), params, SparsityConfig(method=method))
        assert all(bool(np.all(x)) for x in jax.tree.leaves(m))


def test_topk_mask_exact_with_ties():
    scores = jnp.array([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 1.0, -1.0]])
    m = topk_mask(scores, 2, jax.random.PRNGKey(0))
    assert m[1, 0] and int(m.sum()) == 2  # 5 first, then one of the four tied 1.0
    picks = {tuple(np.flatnonzero(topk_mask(scores, 3, jax.random.PRNGKey(i)))) for i in range(8)}
    assert len(picks) > 1  # ties broken at random
    assert all(4 in p for p in picks)  # flat index of the 5.0


def test_magnitude_masks():
    w = jnp.array([[0.1, -3.0], [2.0, 0.5], [-0.2, 1.0]])
    m = magnitude_masks({"w": w, "b": jnp.zeros(2)}, {"w": 0.5, "b": 0.0})
    assert np.asarray(m["w"]).tolist() == [[False, True], [True, False], [False, True]]
    assert bool(np.all(m["b"]))


def test_nm_static_masks():
    params = {"dense": np.ones((8, 6), np.float32), "conv": np.ones((3, 3, 8, 4), np.float32),
              "b": np.ones(6, np.float32)}
    cfg = SparsityConfig(method="static", sparsity=0.5, structure="2:4")
    m = init_masks(jax.random.PRNGKey(0), params, cfg)
    d = np.asarray(m["dense"]).reshape(2, 4, 6)       # groups of 4 along the input axis
    assert (d.sum(axis=1) == 2).all()
    c = np.asarray(m["conv"]).reshape(3, 3, 2, 4, 4)  # HWIO: groups along I
    assert (c.sum(axis=3) == 2).all()
    assert bool(np.all(m["b"]))
    with pytest.raises(ConfigError, match="^structure:"):
        init_masks(jax.random.PRNGKey(0), {"w": np.ones((6, 4))}, cfg)


def test_nm_topk_keeps_largest_per_group():
    w = jnp.array([[4.0], [1.0], [3.0], [2.0], [0.0], [9.0], [8.0], [7.0]])
    m = nm_topk_mask(jnp.abs(w), 2, 4)
    assert np.asarray(m)[:, 0].tolist() == [True, False, True, False, False, True, True, False]


def test_apply_masks_and_summary():
    params = {"l": {"w": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.ones(3, jnp.bfloat16)}}
    masks = {"l": {"w": jnp.array([[True, False, True], [False, False, True]]),
                   "b": jnp.ones(3, bool)}}
    p = apply_masks(params, masks)
    assert np.asarray(p["l"]["w"]).tolist() == [[1.0, 0.0, 3.0], [0.0, 0.0, 6.0]]
    assert p["l"]["b"].dtype == jnp.bfloat16
    s = sparsity_summary(p)
    assert s["layers"] == {"l/w": {"total": 6, "nonzero": 3, "sparsity": 0.5}}
    assert (s["total"], s["nonzero"]) == (9, 6) and s["sparsity"] == pytest.approx(1 / 3)
    json.dumps(s)
    # With masks, active-but-zero entries (just grown) count as non-zero connections.
    p2 = {"l": {"w": p["l"]["w"].at[0, 0].set(0.0), "b": p["l"]["b"]}}
    assert sparsity_summary(p2, masks)["layers"]["l/w"]["nonzero"] == 3
    assert sparsity_summary(p2)["layers"]["l/w"]["nonzero"] == 2


def test_num_topology_changes():
    old = {"w": jnp.array([True, True, False, False])}
    new = {"w": jnp.array([True, False, True, False])}
    assert float(num_topology_changes(old, new)) == pytest.approx(0.5)
    assert float(num_topology_changes(old, old)) == 0.0


def test_sparse_init():
    mask = np.zeros((4, 3), bool)
    mask[0, :] = True          # input unit 0 feeds all 3 outputs
    mask[1:, 0] = True         # output unit 0 receives all 4 inputs
    params = {"w": jnp.full((4, 3), 7.0), "dense": jnp.full((2, 2), 7.0), "b": jnp.full(3, 7.0)}
    masks = {"w": jnp.asarray(mask), "dense": jnp.ones((2, 2), bool), "b": jnp.ones(3, bool)}
    p = sparse_init(jax.random.PRNGKey(0), params, masks)
    w = np.asarray(p["w"])
    assert (w[~mask] == 0).all() and (w[mask] != 0).all()
    fan_in = mask.sum(0)[None, :]
    fan_out = mask.sum(1)[:, None]
    limit = np.sqrt(3 / np.maximum(1, (fan_in + fan_out) / 2))
    assert (np.abs(w) <= limit + 1e-6).all()
    assert np.asarray(p["dense"]).tolist() == [[7.0, 7.0], [7.0, 7.0]]
    assert np.asarray(p["b"]).tolist() == [7.0] * 3


def test_selection_paths_match_lexsort():
    # The counting-pass path (large kernels) and the sort path (small ones) agree with a
    # brute-force lexicographic order: (key desc, tie desc, index asc).
    from sparse_rl.sparsity import masks as M
    rs = np.random.RandomState(0)
    n = 33
    fast, small = jax.jit(M._select_top), jax.jit(M._select_top_sorted)
    values = np.array([0, 1, 0x80000000, 0xFFFFFFFF], np.uint32)
    for i in range(25):
        key = values[rs.randint(0, 4, n)]
        tie = rs.randint(0, 3, n).astype(np.uint32)
        k = [0, n][i] if i < 2 else rs.randint(0, n + 1)
        order = np.lexsort((np.arange(n), -tie.astype(np.int64), -key.astype(np.int64)))
        want = np.zeros(n, bool)
        want[order[:k]] = True
        assert np.array_equal(fast(key, k, tie), want)
        assert np.array_equal(small(key, k, tie), want)


def test_float_order_special_values():
    s = jnp.array([np.nan, -np.inf, -1.0, -0.0, 0.0, 1e-30, 2.0, np.inf], jnp.float32)
    m = [np.asarray(topk_mask(s, k)).tolist() for k in (1, 2, 3, 5)]
    assert m[0] == [False] * 7 + [True]
    assert m[1] == [False] * 6 + [True] * 2
    assert m[2] == [False] * 5 + [True] * 3
    assert m[3] == [False, False, False, True, True, True, True, True]  # -0.0 ties 0.0


def test_counting_path_under_vmap(monkeypatch):
    from sparse_rl.sparsity import masks as M
    scores = np.random.RandomState(1).randn(6, 5).astype(np.float32)
    ks = jnp.array([0, 7, 30])
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    want = [np.asarray(M.topk_mask(scores, int(k), kk)) for k, kk in zip(ks, keys)]  # sort path
    monkeypatch.setattr(M, "SORT_MAX", 8)
    got = jax.jit(jax.vmap(lambda k, kk: M.rank_topk(
        scores, k, jax.random.bits(kk, scores.shape, jnp.uint32))))(ks, keys)
    for w, g in zip(want, np.asarray(got)):
        assert np.array_equal(w, g)
