"""`sparsify(tx, config)`: an optax wrapper whose state holds the masks.

Per update: mask the gradient, run the inner optimiser, on mask-update steps apply the method's
rule (to the weights before or after the step, or instead of the step: `timing`), start grown
connections at 0 with zeroed optimiser moments, and return updates that leave params exactly
masked after `optax.apply_updates`.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparse_rl.errors import ConfigError
from sparse_rl.sparsity.config import SparsityConfig
from sparse_rl.sparsity.distributions import target_sparsities
from sparse_rl.sparsity.masks import masks_from_targets
from sparse_rl.sparsity.schedules import is_update_step
from sparse_rl.sparsity.topology import update_masks


class SparseState(NamedTuple):
    inner: Any      # the wrapped transformation's state
    masks: Any      # bool pytree like params
    targets: Any    # per-leaf final target sparsities (float32 scalars)
    step: Any       # int32 count of update calls
    key: Any        # PRNG key for mask updates


def _check_masks(masks, params):
    ms, ps = jax.tree_util.tree_structure(masks), jax.tree_util.tree_structure(params)
    if ms != ps:
        raise ConfigError("masks", f"structure {ms} differs from params {ps}",
                          "masks with the structure of params")
    for m, p in zip(jax.tree_util.tree_leaves(masks), jax.tree_util.tree_leaves(params)):
        if np.shape(m) != np.shape(p):
            raise ConfigError("masks", f"shape {np.shape(m)} differs from param shape "
                              f"{np.shape(p)}", "masks with the shapes of params")


def _reset_moments(inner_state, params, keep):
    """Multiply every subtree of `inner_state` shaped like params by `keep` (bool pytree)."""
    treedef = jax.tree_util.tree_structure(params)
    shapes = [np.shape(p) for p in jax.tree_util.tree_leaves(params)]
    keep_leaves = jax.tree_util.tree_leaves(keep)

    def like_params(x):
        if jax.tree_util.tree_structure(x) != treedef:
            return False
        return [np.shape(v) for v in jax.tree_util.tree_leaves(x)] == shapes

    def reset(x):
        if not like_params(x):
            return x
        leaves = jax.tree_util.tree_leaves(x)
        return jax.tree_util.tree_unflatten(
            treedef, [jnp.where(k, v, jnp.zeros_like(v)) for v, k in zip(leaves, keep_leaves)])

    # A params-shaped single array would make every same-shaped leaf "match"; that is what we want
    # for moments and harmless elsewhere (scalars such as counts never match a kernel).
    return jax.tree_util.tree_map(reset, inner_state, is_leaf=like_params)


# When a step's mask update happens relative to its gradient step (the paper's code differs by agent):
#   "after":   gradient step, then masks from the updated weights (tf-agents SAC: sac_train_eval.py
#              SparseSacAgent._train applies critic and actor gradients, then runs the mask updaters);
#   "before":  masks from the weights before the step, then the gradient step under the new masks
#              (tf-agents DQN and PPO: dqn_train_eval.py SparseDqnAgent._train and
#              ppo_train_eval.py SparsePPOAgent._train update masks before apply_gradients);
#   "instead": SET/RigL mask updates replace that step's gradient step (Dopamine Atari DQN: rigl
#              sparse_optimizers_base apply_gradients takes tf.cond(is_mask_update_iter, mask
#              update, gradient step)); pruning there updates masks before the step ("before").
MASK_TIMINGS = ("after", "before", "instead")


def sparsify(tx: optax.GradientTransformation, config: SparsityConfig, key=None,
             sparsity=None, timing: str = "after") -> optax.GradientTransformationExtraArgs:
    """Wrap `tx` so params stay sparse under `config`.

    key: PRNG key for initial masks and mask updates (may be traced). Only `init` reads it;
        later updates use the key carried in the state. Without one, a method that draws random
        masks (static, set, rigl) warns (UserWarning) and uses PRNGKey(0): every seed of a study
        would otherwise get the same mask without a word.
    sparsity: optional (possibly traced) scalar replacing `config.sparsity`.
    `update(grads, state, params, topology=True, **extra)` needs params; `grads` should be the
    dense gradient at the masked params (RigL grows by it); extra args reach `tx` when it accepts
    them. `topology` is a trace-time switch: False builds a program without the mask-update branch
    (no `lax.cond`, which on CPU cost 5-15% of a small network's update even when not taken, more
    on a loaded machine, and ~2x under vmap); the caller guarantees no mask update is due at this step (`mask_update_due`).
    timing: one of MASK_TIMINGS, where the mask update sits relative to the gradient step.
    `update(..., grow_grads=g)`: RigL grows by `g` instead of `grads` (when the step's gradient is
    regularised or clipped but growth should follow the loss gradient alone).
    Use it as the outermost transformation: anything applied after it would break the exact
    masking. Params not yet masked (e.g. the caller skipped `apply_masks`) are zeroed by the first
    update.
    """
    if not isinstance(config, SparsityConfig):
        raise ConfigError("config", f"expected SparsityConfig, got {type(config).__name__}")
    if timing not in MASK_TIMINGS:
        raise ConfigError("timing", f"unknown mask-update timing {timing!r}", ", ".join(MASK_TIMINGS))
    skip_step = timing == "instead" and config.method in ("set", "rigl")
    inner = optax.with_extra_args_support(tx)
    if key is None and config.method in ("static", "set", "rigl"):
        warnings.warn("sparsify: no key given, so the initial masks come from PRNGKey(0), the same "
                      "for every seed; pass key=jax.random.PRNGKey(seed)", UserWarning, stacklevel=2)
    base_key = jax.random.PRNGKey(0) if key is None else key
    dynamic = config.method in ("prune", "set", "rigl")

    def init_fn(params):
        k_mask, k_state = jax.random.split(base_key)
        targets = target_sparsities(params, config, sparsity)
        masks = masks_from_targets(k_mask, params, config, targets)
        return SparseState(inner=inner.init(params), masks=masks, targets=targets,
                           step=jnp.zeros((), jnp.int32), key=k_state)

    def update_fn(grads, state: SparseState, params=None, topology: bool = True, grow_grads=None, **extra):
        if config.method == "dense":
            updates, inner_state = inner.update(grads, state.inner, params, **extra)
            return updates, state._replace(inner=inner_state, step=state.step + 1)
        if params is None:
            raise ConfigError("params", "sparsify(...).update needs params",
                              "tx.update(grads, opt_state, params)")
        _check_masks(state.masks, params)
        masks = state.masks
        masked_grads = jax.tree_util.tree_map(
            lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), grads, masks)
        updates, inner_state = inner.update(masked_grads, state.inner, params, **extra)
        key, sub = jax.random.split(state.key)

        if not dynamic or not topology:
            new_masks = masks
            keep = masks
        else:
            def do_update(inner_state):
                weights = optax.apply_updates(params, updates) if timing == "after" else params
                grow = grads if grow_grads is None else grow_grads
                new = update_masks(sub, masks, weights, grow, state.targets, state.step, config)
                both = jax.tree_util.tree_map(jnp.logical_and, new, masks)
                # A skipped gradient step leaves the optimiser state as it was (moments, count).
                base = state.inner if skip_step else inner_state
                return new, both, _reset_moments(base, params, both)

            def no_update(inner_state):
                return masks, masks, inner_state

            due = is_update_step(state.step, config)
            new_masks, keep, inner_state = jax.lax.cond(due, do_update, no_update, inner_state)
            if skip_step:
                updates = jax.tree_util.tree_map(lambda u: jnp.where(due, jnp.zeros_like(u), u), updates)

        # Kept connections take the inner update; grown ones start at 0 (params there are already
        # 0) and dropped ones go to 0. `-p` makes the sum exactly 0 after apply_updates.
        out = jax.tree_util.tree_map(
            lambda u, p, k: jnp.where(k, u, -p).astype(u.dtype), updates, params, keep)
        return out, SparseState(inner=inner_state, masks=new_masks, targets=state.targets,
                                step=state.step + 1, key=key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_sparse_state(opt_state) -> SparseState:
    """The `SparseState` found anywhere inside a (nested) optax state."""
    found = _find(opt_state)
    if found is None:
        raise ConfigError("opt_state", "no sparsify(...) state found",
                          "an optimizer state produced by sparsify(tx, config).init")
    return found


def _find(x):
    if isinstance(x, SparseState):
        return x
    if isinstance(x, dict):
        children = list(x.values())
    elif isinstance(x, (tuple, list)):
        children = list(x)
    else:
        return None
    for c in children:
        r = _find(c)
        if r is not None:
            return r
    return None


def get_masks(opt_state):
    """Masks held by the `sparsify` state inside `opt_state`."""
    return get_sparse_state(opt_state).masks
