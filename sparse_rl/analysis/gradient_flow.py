"""Gradient flow of sparse networks: norms, distance from initialisation, gradient SNR.

Pure functions over params / grads / masks pytrees (the mask pytree has the structure of the
params, as everywhere in sparse_rl). They are JAX code under `jax.jit`; given only numpy arrays
they run in numpy (nothing to compile). The training-time recorder that writes them to
`<run>/analysis.csv` is `sparse_rl.train.recorder.GradientFlowRecorder`.

Statistics are nested dicts `{"layers": {path: {stat: value}}, "total": {stat: value}}`: "layers"
holds the kernels (ndim >= 2, the leaves that can be sparse, paths like "mlp/~/linear_0/w"),
"total" covers every leaf (biases included). `flatten_stats` turns them into CSV columns
`<prefix>/<network>/<path>/<stat>`, e.g. `gf/q/mlp/~/linear_0/w/dense_grad_norm`.

analysis.csv columns: `step` (env steps done), `grad_step`, `event` ("periodic" or "topology"),
then `gf/<net>/<kernel or total>/{dense_grad_norm, masked_grad_norm, weight_norm,
dist_from_init}`, `dormant/<net>/<layer or total>/tau0.025|tau0`, `snr/<net>/<kernel or
total>/{mean, median, mean_all}` and `topo/<net>/<kernel or total>/{churn, sparsity, ever_active,
dense_grad_norm, masked_grad_norm_before, masked_grad_norm_after, weight_norm_before,
weight_norm_after, post_masked_grad_norm}`; a row leaves the columns of the other events empty.

The agent side is an `AnalysisHook` (the optional `analysis` entry of an `Agent`):
  grads(state, batch) -> {network: (dense_grads, masks, params)}
      the dense gradient of the network's loss at its current (masked) params on `batch`;
      per-sample gradients for the SNR are this function vmapped over single-item batches
      (`chunked_snr_values`: `snr_chunk` items at a time).
  forward: {network: f(params, batch)} (optional) runs the network, for dormant neurons.
  sparsity: {network: SparsityConfig} with the schedule resolved to gradient steps (optional),
      so that the recorder knows at which gradient steps the masks change.
  activation: the torso's activation (name or callable), applied to captured layer outputs.
  steps_per_update: gradient steps one `agent.update` call runs (optional; else the recorder
      learns it from the sparsify step counter after the first call).

The loop may pass, instead of a batch, a zero-argument callable returning one (PPO builds its
analysis batch from the rollout with `agent.analysis_batch`): the recorder calls it only when it
computes something, inside `before_update` / `after_update`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl.sparsity import leaf_paths

__all__ = [
    "AnalysisHook", "layer_norms", "gradient_flow_stats", "per_sample_grads", "gradient_snr",
    "topology_update_effect", "snr_values", "chunked_snr_values", "summarize_snr", "flatten_stats",
    "should_record", "update_steps", "leaves_with_paths", "GF_STATS", "TOPO_STATS", "SNR_STATS",
]

GF_STATS = ("dense_grad_norm", "masked_grad_norm", "weight_norm", "dist_from_init")
SNR_STATS = ("mean", "median", "mean_all")
TOPO_STATS = ("churn", "sparsity", "ever_active", "dense_grad_norm", "masked_grad_norm_before",
              "masked_grad_norm_after", "weight_norm_before", "weight_norm_after",
              "post_masked_grad_norm")
SNR_EPS = 1e-10


class AnalysisHook(NamedTuple):
    """What an agent exposes for analysis (see the module docstring)."""

    grads: Callable[[Any, Any], dict]
    forward: Mapping[str, Callable] | None = None
    sparsity: Mapping[str, Any] | None = None
    activation: str | Callable = "relu"
    steps_per_update: int | None = None


# --- pure statistics ----------------------------------------------------------------------------
# Written once for both array libraries: under `jax.jit` (or with any JAX array among the inputs)
# they are JAX code; given only numpy arrays they run in numpy, with nothing to compile (the
# recorder reduces gradients it has already fetched this way).

def _xp(*trees):
    """jax.numpy if any leaf is a JAX array (or tracer), else numpy."""
    for tree in trees:
        if tree is None:
            continue
        for x in jax.tree_util.tree_leaves(tree):
            if isinstance(x, jax.Array):
                return jnp
    return np


def leaves_with_paths(tree):
    return list(zip(jax.tree_util.tree_leaves(leaf_paths(tree)), jax.tree_util.tree_leaves(tree)))


def _sq(xp, x):
    x = xp.asarray(x, dtype=xp.float32)
    if xp is np:  # Inf/NaN of a diverging run are reported by the run's own check (issue 16), not as warnings
        with np.errstate(over="ignore", invalid="ignore"):
            return np.sum(x * x)
    return xp.sum(x * x)


def layer_norms(tree, kernels_only: bool = False) -> dict:
    """`{path: L2 norm}` of every leaf (or only kernels, ndim >= 2) plus `"total"` over all leaves."""
    xp = _xp(tree)
    out, total = {}, xp.float32(0.0)
    for path, x in leaves_with_paths(tree):
        s = _sq(xp, x)
        total = total + s
        if not kernels_only or xp.ndim(x) >= 2:
            out[path] = xp.sqrt(s)
    out["total"] = xp.sqrt(total)
    return out


def _stats_from_squares(xp, per_leaf: dict[str, list], names) -> dict:
    """per_leaf: {stat: [(path, ndim, squared sum)]} -> {"layers": ..., "total": ...} of L2 norms."""
    layers: dict[str, dict] = {}
    total = {}
    for name in names:
        acc = xp.float32(0.0)
        for path, ndim, s in per_leaf[name]:
            acc = acc + s
            if ndim >= 2:
                layers.setdefault(path, {})[name] = xp.sqrt(s)
        total[name] = xp.sqrt(acc)
    return {"layers": layers, "total": total}


def gradient_flow_stats(dense_grads, masks, params, init_params=None) -> dict:
    """Per-kernel and total L2 norms of the dense gradient, the masked gradient (what the optimiser
    sees), the weights, and the distance of the weights from `init_params` (omitted when None).
    `masks` None means all active."""
    xp = _xp(dense_grads, masks, params, init_params)
    paths = jax.tree_util.tree_leaves(leaf_paths(params))
    g = jax.tree_util.tree_leaves(dense_grads)
    p = jax.tree_util.tree_leaves(params)
    m = jax.tree_util.tree_leaves(masks) if masks is not None else [None] * len(p)
    init = jax.tree_util.tree_leaves(init_params) if init_params is not None else None
    names = list(GF_STATS if init is not None else GF_STATS[:3])
    per: dict[str, list] = {n: [] for n in names}
    for i, path in enumerate(paths):
        nd = xp.ndim(p[i])
        gi = xp.asarray(g[i], dtype=xp.float32)
        per["dense_grad_norm"].append((path, nd, _sq(xp, gi)))
        masked = gi if m[i] is None else xp.where(xp.asarray(m[i], dtype=bool), gi, 0.0)
        per["masked_grad_norm"].append((path, nd, _sq(xp, masked)))
        per["weight_norm"].append((path, nd, _sq(xp, p[i])))
        if init is not None:
            diff = xp.asarray(p[i], dtype=xp.float32) - xp.asarray(init[i], dtype=xp.float32)
            per["dist_from_init"].append((path, nd, _sq(xp, diff)))
    return _stats_from_squares(xp, per, names)


def per_sample_grads(loss_fn: Callable, params, batch):
    """Gradients of `loss_fn(params, one_item_batch)` for every item of `batch` (leading axis).

    Each item is passed as a batch of one (leading axis of size 1), so a `loss_fn` written for
    minibatches (a mean over the batch) gives the per-sample loss. The result has the structure of
    `params` with a leading axis of the batch size.
    """
    def one(item):
        return jax.grad(loss_fn)(params, jax.tree_util.tree_map(lambda x: x[None], item))

    return jax.vmap(one)(batch)


def snr_values(per_sample):
    """Per-parameter |mean| / (std + 1e-10) over the leading (batch) axis, float32, population
    std (two-pass, so identical samples give std 0 up to rounding). A tree like one sample."""
    def one(x):
        xp = _xp(x)
        x = xp.asarray(x, dtype=xp.float32)
        mean = xp.mean(x, axis=0)
        std = xp.sqrt(xp.mean(xp.square(x - mean), axis=0))
        return xp.abs(mean) / (std + SNR_EPS)

    return jax.tree_util.tree_map(one, per_sample)


def chunked_snr_values(grad_fn: Callable, batch, chunk: int = 32):
    """`snr_values` of the per-sample gradients over `batch`, computed `chunk` items at a time.

    grad_fn(one_item_batch) -> gradient tree is vmapped over the items of each chunk, each item
    passed as a batch of one (leading axis of size 1), so memory is chunk x params rather than
    batch x params. One pass over the chunks (`lax.scan`): each chunk's mean and sum of squared
    deviations (two-pass within the chunk) are merged into the running ones with the parallel
    formula of Chan et al., which stays stable (no sum of squares minus squared sum). A batch
    size that is not a multiple of `chunk` is padded with copies of its last item that carry
    weight 0. Equals `snr_values(per_sample_grads(...))` up to float32 rounding.
    """
    n = int(jax.tree_util.tree_leaves(batch)[0].shape[0])
    chunk = max(1, min(int(chunk), n))
    num = -(-n // chunk)
    flat = np.arange(num * chunk)
    index = jnp.asarray(np.minimum(flat, n - 1).reshape(num, chunk), jnp.int32)
    weight = jnp.asarray((flat < n).reshape(num, chunk), jnp.float32)

    def per_sample(idx):
        items = jax.tree_util.tree_map(lambda x: jnp.take(jnp.asarray(x), idx, axis=0), batch)
        return jax.vmap(lambda item: grad_fn(jax.tree_util.tree_map(lambda x: x[None], item)))(items)

    shapes = jax.eval_shape(per_sample, index[0])
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape[1:], jnp.float32), shapes)

    def step(carry, xs):
        count, mean, m2 = carry
        idx, w = xs
        c = jnp.sum(w)
        total = count + c

        def merge(g, mean_a, m2_a):
            g = g.astype(jnp.float32)
            wb = w.reshape((-1,) + (1,) * (g.ndim - 1))
            mean_b = jnp.sum(wb * g, axis=0) / c
            dev = jnp.where(wb > 0, g - mean_b, 0.0)
            m2_b = jnp.sum(dev * dev, axis=0)
            delta = mean_b - mean_a
            return (mean_a + delta * (c / total),
                    m2_a + m2_b + delta * delta * (count * c / total))

        pairs = jax.tree_util.tree_map(merge, per_sample(idx), mean, m2)  # (mean, m2) per leaf
        mean = jax.tree_util.tree_map(lambda _, p: p[0], mean, pairs)
        m2 = jax.tree_util.tree_map(lambda _, p: p[1], m2, pairs)
        return (total, mean, m2), None

    (count, mean, m2), _ = jax.lax.scan(step, (jnp.float32(0.0), zeros, zeros), (index, weight))
    return jax.tree_util.tree_map(lambda m, s: jnp.abs(m) / (jnp.sqrt(s / count) + SNR_EPS), mean, m2)


def summarize_snr(values, masks=None) -> dict:
    """Summaries of per-parameter SNR `values` per kernel and over all leaves.

    mean, median: over the active parameters (all when `masks` is None; NaN for a kernel with none
    active). mean_all: the mean over every parameter with the inactive ones counted as 0 (the SNR
    of their masked gradient, which is exactly 0); it is `mean` times the density, the convention
    under which the paper's values (~1e-2 at 80% sparsity, ~1e-3 at 95%, PAPER.md) come out.
    """
    xp = _xp(values, masks)
    paths = jax.tree_util.tree_leaves(leaf_paths(values))
    leaves = jax.tree_util.tree_leaves(values)
    mleaves = jax.tree_util.tree_leaves(masks) if masks is not None else [None] * len(leaves)
    layers, flat = {}, []
    for path, v, m in zip(paths, leaves, mleaves):
        v = xp.asarray(v, dtype=xp.float32)
        if m is not None:
            v = xp.where(xp.asarray(m, dtype=bool), v, xp.nan)
        kernel = xp.ndim(v) >= 2
        v = xp.ravel(v)
        flat.append(v)
        if kernel:
            layers[path] = _snr_summary(xp, v)
    return {"layers": layers, "total": _snr_summary(xp, xp.concatenate(flat))}


def _snr_summary(xp, v):
    """mean / median over the finite (active) entries of v, mean_all over all entries (NaN as 0)."""
    mean_all = xp.sum(xp.where(xp.isnan(v), 0.0, v)) / max(int(v.shape[0]), 1)
    if xp is np:
        if not np.any(np.isfinite(v)):
            return {"mean": np.float32(np.nan), "median": np.float32(np.nan), "mean_all": mean_all}
        return {"mean": np.nanmean(v), "median": np.nanmedian(v), "mean_all": mean_all}
    return {"mean": jnp.nanmean(v), "median": jnp.nanmedian(v), "mean_all": mean_all}


def gradient_snr(per_sample, masks=None) -> dict:
    """Gradient signal-to-noise ratio as PAPER.md measures it.

    per_sample: gradients with a leading batch axis (`per_sample_grads`). Per parameter
    SNR = |mean| / (std + 1e-10) over the batch; summarised per kernel and over all leaves:
    `{"layers": {path: {"mean", "median", "mean_all"}}, "total": {...}}`. With `masks`, mean and
    median count only active parameters (a kernel with none gives NaN) and mean_all counts the
    inactive ones as 0 (see `summarize_snr`).
    """
    return summarize_snr(snr_values(per_sample), masks)


def topology_update_effect(params_before, masks_before, params_after, masks_after, grads) -> dict:
    """What a mask update did, per kernel and in total.

    Norms (L2; "total" over every leaf): dense_grad_norm of `grads` (the dense gradient before the
    update), masked_grad_norm_before / _after (`grads` under the old / new masks: RigL grows where
    the gradient is large, so _after > _before), weight_norm_before / _after. Counts ("total" over
    the kernels, the leaves that can be sparse): churn = fraction of the connections active after
    the update that were inactive before (the fraction replaced, for SET / RigL), sparsity after.
    """
    xp = _xp(params_before, masks_before, params_after, masks_after, grads)
    paths = jax.tree_util.tree_leaves(leaf_paths(params_before))
    pb, mb = jax.tree_util.tree_leaves(params_before), jax.tree_util.tree_leaves(masks_before)
    pa, ma = jax.tree_util.tree_leaves(params_after), jax.tree_util.tree_leaves(masks_after)
    g = jax.tree_util.tree_leaves(grads)
    names = ("dense_grad_norm", "masked_grad_norm_before", "masked_grad_norm_after",
             "weight_norm_before", "weight_norm_after")
    per: dict[str, list] = {n: [] for n in names}
    counts: dict[str, dict] = {}
    grown_total = active_total = xp.float32(0.0)
    size_total = 0
    for i, path in enumerate(paths):
        nd = xp.ndim(pb[i])
        old, new = xp.asarray(mb[i], dtype=bool), xp.asarray(ma[i], dtype=bool)
        gi = xp.asarray(g[i], dtype=xp.float32)
        per["dense_grad_norm"].append((path, nd, _sq(xp, gi)))
        per["masked_grad_norm_before"].append((path, nd, _sq(xp, xp.where(old, gi, 0.0))))
        per["masked_grad_norm_after"].append((path, nd, _sq(xp, xp.where(new, gi, 0.0))))
        per["weight_norm_before"].append((path, nd, _sq(xp, pb[i])))
        per["weight_norm_after"].append((path, nd, _sq(xp, pa[i])))
        if nd >= 2:
            grown = xp.sum(new & ~old, dtype=xp.float32)
            active = xp.sum(new, dtype=xp.float32)
            grown_total, active_total = grown_total + grown, active_total + active
            size = int(np.size(new))
            size_total += size
            counts[path] = {"churn": grown / xp.maximum(active, 1.0),
                            "sparsity": 1.0 - active / max(size, 1)}
    out = _stats_from_squares(xp, per, names)
    for path, extra in counts.items():
        out["layers"][path].update(extra)
    out["total"]["churn"] = grown_total / xp.maximum(active_total, 1.0)
    out["total"]["sparsity"] = 1.0 - active_total / max(size_total, 1)
    return out


def flatten_stats(prefix: str, stats: Mapping) -> dict[str, float]:
    """`{"layers": {path: {stat: v}}, "total": {stat: v}}` -> `{prefix/path/stat: float}`."""
    out = {}
    for path, values in stats.get("layers", {}).items():
        for name, v in values.items():
            out[f"{prefix}/{path}/{name}"] = float(v)
    for name, v in stats.get("total", {}).items():
        out[f"{prefix}/total/{name}"] = float(v)
    return out


def should_record(grad_step: int, every: int) -> bool:
    """Whether gradient step `grad_step` (count of steps done) is a recording point (`every` 0: never)."""
    return every > 0 and grad_step % every == 0


def update_steps(config) -> np.ndarray:
    """Sorted step counts at which the sparsify wrapper changes the masks of `config` (empty for
    dense / static): `sparse_rl.sparsity.mask_update_steps`, the host-side twin of the core's
    `is_update_step` (masks change in the update call whose pre-increment step count is in the
    array). Methods that change masks stop at `end_step`."""
    from sparse_rl.sparsity import mask_update_steps

    return mask_update_steps(config)
