"""Mask update rules: RigL / SET drop-grow, gradual magnitude pruning, N:M pruning."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from sparse_rl.sparsity import SparsityConfig, drop_grow_leaf, prune_leaf, update_masks

KEY = jax.random.PRNGKey(0)


def test_rigl_hand_built():
    # 8 active of 12; f(0) = a = 0.5 -> drop 4 smallest |w|, grow 4 largest |g| among the rest.
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    w = np.array([[0.1, -5.0, 0.2, 3.0], [-0.3, 4.0, 0.05, 6.0], [0, 0, 0, 0]], np.float32)
    g = np.array([[9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, -8.0, 7.0, 0.5]], np.float32)
    cfg = SparsityConfig(method="rigl", sparsity=0.5, drop_fraction=0.5, update_every=10,
                         end_step=100)
    new = update_masks(KEY, {"w": jnp.asarray(mask)}, {"w": w}, {"w": g}, {"w": 0.5}, 0, cfg)["w"]
    want = np.array([[1, 1, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]], bool)
    # Dropped: 0.1, 0.2, -0.3, 0.05. Grown: 9.0 (the just-dropped 0.1 is regrown), -8, 7, 0.5.
    assert np.array_equal(np.asarray(new), want)


def test_rigl_drop_fraction_decays():
    mask = jnp.asarray(np.arange(40).reshape(8, 5) % 2 == 0)   # 20 active
    w = np.random.RandomState(0).randn(8, 5).astype(np.float32)
    grads = {"w": 1.0 - jnp.asarray(mask, jnp.float32)}       # every inactive beats every drop
    cfg = SparsityConfig(method="rigl", drop_fraction=0.5, update_every=10, end_step=100)
    changed = []
    for t in (0, 50, 100):
        new = update_masks(KEY, {"w": mask}, {"w": w}, grads, {"w": 0.5}, t, cfg)["w"]
        assert int(new.sum()) == 20
        changed.append(int((new & ~mask).sum()))
    assert changed == [10, 5, 0]  # floor(20 * f(t)), f = 0.5, 0.25, 0


def test_set_grows_at_random_and_keeps_counts():
    mask = jnp.asarray(np.random.RandomState(0).rand(16, 16) < 0.2)
    w = jnp.asarray(np.random.RandomState(1).randn(16, 16).astype(np.float32)) * mask
    cfg = SparsityConfig(method="set", drop_fraction=0.3, update_every=5, end_step=100)
    outs = [update_masks(jax.random.PRNGKey(i), {"w": mask, "b": jnp.ones(16, bool)},
                         {"w": w, "b": jnp.zeros(16)}, None, {"w": 0.8, "b": 0.0}, 0, cfg)
            for i in range(2)]
    for o in outs:
        assert int(o["w"].sum()) == int(mask.sum()) and bool(o["b"].all())
        n = int(np.floor(int(mask.sum()) * 0.3))
        kept = np.asarray(o["w"] & mask)
        assert int(kept.sum()) >= int(mask.sum()) - n
        # The survivors are the largest-|w| actives.
        thresh = np.sort(np.abs(np.asarray(w))[np.asarray(mask)])[n]
        assert (np.abs(np.asarray(w))[np.asarray(mask) & ~kept] <= thresh).all()
    assert not np.array_equal(outs[0]["w"], outs[1]["w"])


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), density=st.floats(0.05, 1.0), frac=st.floats(0.01, 1.0),
       shape=st.sampled_from([(6, 5), (3, 3, 2, 4)]))
def test_property_drop_grow_keeps_count(seed, density, frac, shape):
    rs = np.random.RandomState(seed)  # numpy data: eager jax.random compiles per shape
    mask = rs.rand(*shape) < density
    w = (rs.randn(*shape) * mask).astype(np.float32)
    g = np.round(rs.randn(*shape)).astype(np.float32)  # many ties
    new = drop_grow_leaf(jax.random.PRNGKey(seed), mask, w, np.abs(g), frac)
    n_active = int(mask.sum())
    n = int(np.floor(n_active * np.float32(frac) + 1e-4))
    assert int(new.sum()) == n_active
    assert int((mask & ~new).sum()) <= n


def test_prune_leaf_schedule():
    w = jnp.arange(1.0, 101.0).reshape(10, 10)
    cfg = SparsityConfig(method="prune", sparsity=0.9, start_step=0, end_step=100, update_every=10)
    m = jnp.ones((10, 10), bool)
    for t, keep in ((0, 100), (50, 100 - round(100 * 0.9 * (1 - 0.5**3))), (100, 10)):
        m = prune_leaf(KEY, m, w, 0.9, t, cfg)
        assert int(m.sum()) == keep
        assert bool(m.reshape(-1)[-keep:].all())  # the largest magnitudes survive


def test_prune_nm_schedule():
    w = np.random.RandomState(0).randn(8, 3).astype(np.float32)
    cfg = SparsityConfig(method="prune", sparsity=0.75, structure="1:4", end_step=100)
    m = jnp.ones((8, 3), bool)
    for t, per_group in ((0, 4), (25, 2), (100, 1)):
        m = prune_leaf(KEY, m, w, 0.75, t, cfg)
        assert (np.asarray(m).reshape(2, 4, 3).sum(axis=1) == per_group).all()
    absw = np.abs(np.asarray(w)).reshape(2, 4, 3)
    kept = np.asarray(m).reshape(2, 4, 3)
    assert (absw.argmax(axis=1) == kept.argmax(axis=1)).all()  # the largest of each group survives
