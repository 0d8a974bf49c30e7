"""Cubic pruning schedule, cosine drop fraction, update-step predicate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_rl.sparsity import SparsityConfig, drop_fraction, is_update_step, pruning_sparsity


@pytest.mark.parametrize("t, expected", [
    (0, 0.0), (20_000, 0.0), (47_500, 0.9 * (1 - 0.5**3)), (75_000, 0.9), (100_000, 0.9),
    (31_000, 0.9 * (1 - 0.8**3)),
])
def test_cubic(t, expected):
    assert float(pruning_sparsity(t, 0.9, 20_000, 75_000)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("t, expected", [
    (0, 0.5), (37_500, 0.25), (75_000, 0.0), (90_000, 0.0), (18_750, 0.25 * (1 + np.sqrt(0.5))),
])
def test_cosine_drop_fraction(t, expected):
    assert float(drop_fraction(t, 0.5, 75_000)) == pytest.approx(expected, abs=1e-6)


def test_update_steps():
    steps = jnp.arange(0, 12)
    prune = SparsityConfig(method="prune", start_step=3, end_step=9, update_every=2)
    flags = jax.vmap(lambda t: is_update_step(t, prune))(steps)
    assert np.flatnonzero(flags).tolist() == [3, 5, 7, 9]
    rigl = SparsityConfig(method="rigl", end_step=8, update_every=4)
    assert np.flatnonzero(jax.vmap(lambda t: is_update_step(t, rigl))(steps)).tolist() == [0, 4, 8]
    for m in ("static", "dense"):
        assert not bool(is_update_step(0, SparsityConfig(method=m)))
    # traced step inside jit
    assert bool(jax.jit(lambda t: is_update_step(t, rigl))(jnp.int32(4)))


def test_prune_updates_at_end_step_when_window_is_not_a_multiple():
    from sparse_rl.sparsity import SparsityConfig, is_update_step

    cfg = SparsityConfig(method="prune", sparsity=0.9, update_every=4, start_step=0, end_step=10)
    steps = [t for t in range(15) if bool(is_update_step(t, cfg))]
    assert steps == [0, 4, 8, 10]
