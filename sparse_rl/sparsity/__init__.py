"""Sparsity core: masks kept beside params, maintained by an optax wrapper (jax + optax only).

    cfg = SparsityConfig(method="rigl", sparsity=0.9)
    tx = sparsify(optax.adam(1e-3), cfg, key=jax.random.PRNGKey(0))
    opt_state = tx.init(params)
    params = apply_masks(params, get_masks(opt_state))
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)   # exactly masked
"""

from sparse_rl.sparsity.config import (DISTRIBUTIONS, METHODS, SparsityConfig, leaf_paths,
                                       parse_structure)
from sparse_rl.sparsity.distributions import target_sparsities
from sparse_rl.sparsity.init import sparse_init
from sparse_rl.sparsity.masks import (apply_masks, init_masks, magnitude_masks, nm_random_mask,
                                      nm_topk_mask, num_topology_changes, num_zeros, random_mask,
                                      sparsity_summary, topk_mask)
from sparse_rl.sparsity.optim import MASK_TIMINGS, SparseState, get_masks, get_sparse_state, sparsify
from sparse_rl.sparsity.schedules import (drop_fraction, is_update_step, mask_update_due, mask_update_steps,
                                         next_mask_update, pruning_sparsity)
from sparse_rl.sparsity.topology import drop_grow_leaf, prune_leaf, update_masks

__all__ = [
    "DISTRIBUTIONS", "METHODS", "SparsityConfig", "leaf_paths", "parse_structure",
    "target_sparsities", "sparse_init", "apply_masks", "init_masks", "magnitude_masks",
    "nm_random_mask", "nm_topk_mask", "num_topology_changes", "num_zeros", "random_mask",
    "sparsity_summary", "topk_mask", "MASK_TIMINGS", "SparseState", "get_masks", "get_sparse_state", "sparsify",
    "drop_fraction", "is_update_step", "mask_update_due", "mask_update_steps", "next_mask_update", "pruning_sparsity", "drop_grow_leaf", "prune_leaf",
    "update_masks",
]
