"""ERK / uniform per-layer sparsities, overrides, dense regexes, traced sparsity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparse_rl.errors import ConfigError
from sparse_rl.sparsity import SparsityConfig, init_masks, num_zeros, target_sparsities


def mlp(*sizes, prefix="mlp/~/linear_"):
    return {f"{prefix}{i}": {"w": np.zeros((a, b), np.float32), "b": np.zeros(b, np.float32)}
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def nature_cnn(flat=7744, actions=6):
    return {"conv0": {"w": np.zeros((8, 8, 4, 32))}, "conv1": {"w": np.zeros((4, 4, 32, 64))},
            "conv2": {"w": np.zeros((3, 3, 64, 64))}, "fc": {"w": np.zeros((flat, 512))},
            "out": {"w": np.zeros((512, actions))}}


def kernel_sparsities(params, cfg, s=None):
    t = target_sparsities(params, cfg, s)
    return [round(float(t[k]["w"]), 3) for k in sorted(t)]


ERK = SparsityConfig(method="static", sparsity=0.9)


def test_erk_cartpole():
    t = target_sparsities(mlp(4, 512, 512, 2), ERK)
    assert [round(float(t[f"mlp/~/linear_{i}"]["w"]), 4) for i in range(3)] == [0.0, 0.9105, 0.0]
    assert all(float(t[k]["b"]) == 0.0 for k in t)


def test_erk_sac_actor():
    assert kernel_sparsities(mlp(17, 256, 256, 12), ERK) == [0.565, 0.946, 0.396]


def test_erk_nature_cnn():
    assert kernel_sparsities(nature_cnn(), ERK) == [0.702, 0.851, 0.829, 0.902, 0.0]
    assert kernel_sparsities(nature_cnn(), ERK, 0.99)[-1] == 0.247
    assert kernel_sparsities(nature_cnn(3136), ERK) == [0.733, 0.867, 0.847, 0.904, 0.0]


def _budget_error(params, cfg, s):
    t = target_sparsities(params, cfg)
    leaves = [(np.size(p), float(x)) for p, x in
              zip(jax.tree.leaves(params), jax.tree.leaves(t)) if np.ndim(p) >= 2]
    nonzero = sum(n - int(num_zeros(x, n)) for n, x in leaves)
    return abs(nonzero - (1 - s) * sum(n for n, _ in leaves)), len(leaves)


@pytest.mark.parametrize("s", [0.5, 0.9, 0.99])
def test_erk_budget(s):
    for params in (nature_cnn(), mlp(17, 256, 256, 12), mlp(4, 512, 512, 2)):
        err, layers = _budget_error(params, SparsityConfig(method="static", sparsity=s), s)
        assert err <= layers


def test_uniform_and_dense_leaves():
    cfg = SparsityConfig(method="set", sparsity=0.8, distribution="uniform",
                         dense=[r"linear_0/"])
    t = target_sparsities(mlp(4, 8, 8, 2), cfg)
    assert float(t["mlp/~/linear_0"]["w"]) == 0.0
    assert float(t["mlp/~/linear_1"]["w"]) == pytest.approx(0.8)
    assert float(t["mlp/~/linear_2"]["w"]) == pytest.approx(0.8)
    assert float(t["mlp/~/linear_2"]["b"]) == 0.0
    dense = target_sparsities(mlp(4, 8, 2), SparsityConfig(method="dense"))
    assert all(float(x) == 0.0 for x in jax.tree.leaves(dense))


def test_overrides_leave_erk_budget():
    params = mlp(17, 256, 256, 12)
    cfg = SparsityConfig(method="static", sparsity=0.9, overrides=[("linear_2", 0.5)])
    t = target_sparsities(params, cfg)
    assert float(t["mlp/~/linear_2"]["w"]) == pytest.approx(0.5)
    # The other two layers share an ERK budget of 90% over their own parameters.
    sizes = [17 * 256, 256 * 256]
    nz = sum(n * (1 - float(t[f"mlp/~/linear_{i}"]["w"])) for i, n in enumerate(sizes))
    assert nz == pytest.approx(0.1 * sum(sizes), rel=1e-4)
    with pytest.raises(ConfigError, match="^overrides:"):
        target_sparsities(params, SparsityConfig(method="static", overrides=[("conv", 0.5)]))


def test_bad_traced_sparsity_argument():
    with pytest.raises(ConfigError, match="^sparsity:"):
        target_sparsities(mlp(4, 8, 2), ERK, 1.2)


def test_jit_and_vmap_over_sparsity_match_eager():
    params = nature_cnn(3136)
    levels = jnp.array([0.5, 0.8, 0.9, 0.95, 0.99], jnp.float32)
    f = jax.jit(jax.vmap(lambda s: target_sparsities(params, ERK, s)))
    batched = f(levels)
    for i, s in enumerate([0.5, 0.8, 0.9, 0.95, 0.99]):
        eager = target_sparsities(params, ERK, s)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(batched)):
            assert float(a) == pytest.approx(float(b[i]), abs=1e-6)


# Few distinct dims: every new shape costs an XLA compile; the sparsity level varies freely.
dim_st = st.sampled_from([1, 3, 16])
shapes_st = st.lists(st.tuples(dim_st, dim_st), min_size=1, max_size=3)


@settings(max_examples=12, deadline=None)
@given(shapes=shapes_st, s=st.floats(0.0, 0.99), dist=st.sampled_from(["erk", "uniform"]))
def test_property_budget_and_range(shapes, s, dist):
    params = {f"l{i}": np.zeros(sh, np.float32) for i, sh in enumerate(shapes)}
    cfg = SparsityConfig(method="static", sparsity=s, distribution=dist)
    t = target_sparsities(params, cfg)
    vals = [float(x) for x in jax.tree.leaves(t)]
    assert all(0.0 <= v < 1.0 or v == pytest.approx(1.0) for v in vals)
    err, layers = _budget_error(params, cfg, s)
    assert err <= layers + 1e-3
    masks = init_masks(jax.random.PRNGKey(0), params, cfg)
    for m, p, x in zip(jax.tree.leaves(masks), jax.tree.leaves(params), vals):
        assert m.shape == p.shape and m.dtype == jnp.bool_
        assert int(np.sum(~np.asarray(m))) == int(num_zeros(x, p.size))
