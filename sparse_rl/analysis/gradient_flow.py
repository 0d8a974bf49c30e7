"""Gradient flow of sparse networks: norms, distance from initialisation, gradient SNR.

Pure functions over params / grads / masks pytrees (the mask pytree has the structure of the
params, as everywhere in sparse_rl). They are JAX code under `jax.jit`; given only numpy arrays
they run in numpy (nothing to compile). Plus `GradientFlowRecorder`, which an env loop calls around
`agent.update` to write `<run>/analysis.csv` every `every` gradient steps and around every
topology update.

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

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl.sparsity import leaf_paths

__all__ = [
    "AnalysisHook", "layer_norms", "gradient_flow_stats", "per_sample_grads", "gradient_snr",
    "topology_update_effect", "snr_values", "chunked_snr_values", "summarize_snr", "flatten_stats",
    "should_record", "update_steps",
    "GradientFlowRecorder", "make_recorder", "save_tree_npz", "load_tree_npz",
    "GF_STATS", "TOPO_STATS", "SNR_STATS", "ANALYSIS_FILE", "INIT_PARAMS_FILE",
]

ANALYSIS_FILE = "analysis.csv"
INIT_PARAMS_FILE = "init_params.npz"
EVER_ACTIVE_FILE = "ever_active.npz"
NEVER = np.iinfo(np.int32).max  # ever_active.npz: positions not active yet
META_FILE = "analysis.json"
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


def _leaves_with_paths(tree):
    return list(zip(jax.tree_util.tree_leaves(leaf_paths(tree)), jax.tree_util.tree_leaves(tree)))


def _sq(xp, x):
    x = xp.asarray(x, dtype=xp.float32)
    return xp.sum(x * x)


def layer_norms(tree, kernels_only: bool = False) -> dict:
    """`{path: L2 norm}` of every leaf (or only kernels, ndim >= 2) plus `"total"` over all leaves."""
    xp = _xp(tree)
    out, total = {}, xp.float32(0.0)
    for path, x in _leaves_with_paths(tree):
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


# --- init params on disk --------------------------------------------------------------------------

def save_tree_npz(path, trees: Mapping[str, Any]) -> None:
    """`{network: params}` -> one npz with keys `<network>/<param path>` (temp file + rename)."""
    arrays = {}
    for name, tree in trees.items():
        for p, x in _leaves_with_paths(tree):
            arrays[f"{name}/{p}"] = np.asarray(x)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_tree_npz(path, like: Mapping[str, Any]) -> dict | None:
    """Inverse of `save_tree_npz` for trees shaped like `like`; None when a key or shape is missing."""
    try:
        data = np.load(path)
    except (OSError, ValueError):
        return None
    out = {}
    with data:
        for name, tree in like.items():
            leaves = []
            for p, x in _leaves_with_paths(tree):
                key = f"{name}/{p}"
                if key not in data.files or data[key].shape != np.shape(x):
                    return None
                leaves.append(data[key])
            out[name] = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), leaves)
    return out


# --- the recorder -----------------------------------------------------------------------------------

def _host_copy(tree):
    # A real copy: the agent's update donates its state, so device buffers may be reused.
    return jax.tree_util.tree_map(lambda x: np.array(x, copy=True), tree)


def _stat_keys(prefix: str, stats: Mapping) -> list[str]:
    """The column names `flatten_stats` would give (works on shape structs from eval_shape)."""
    keys = [f"{prefix}/{path}/{name}" for path, values in stats.get("layers", {}).items()
            for name in values]
    return keys + [f"{prefix}/total/{name}" for name in stats.get("total", {})]


class GradientFlowRecorder:
    """Writes gradient-flow, SNR, dormant-neuron and topology rows to `<run>/analysis.csv`.

    The env loop calls `before_update(state, batch)` and `after_update(state, batch, env_step)`
    around each `agent.update` call (which may run several gradient steps: `hook.steps_per_update`,
    else the recorder learns how many from the sparsify step counter once). `batch` may be a
    zero-argument callable returning the batch, called only when a row is computed.

    - Every `every` gradient steps (when an update call crosses a multiple of `every`), a row with
      event "periodic": `gradient_flow_stats` of each network at the new state on that batch
      (`gf/...`), the tau-dormant neuron ratios (`dormant/...`) when the hook has a forward
      function, and on every `snr_every`-th such row the gradient SNR over the batch's items
      (`snr/...`, at most `snr_max_batch` items, per-sample gradients `snr_chunk` at a time;
      `snr_chunk` 0: all at once).
    - Around every update call in which the masks of a network whose method changes masks (prune /
      SET / RigL) change, a row with event "topology" (`topo/...`): `topology_update_effect` (old
      state's dense gradient under the old and the new masks, churn, sparsity, weight norms), the
      masked gradient norm at the new params, and the fraction of positions that were ever active.
      Its grad_step is the step count at which the (first) mask update of the call ran; an update
      call of several gradient steps (PPO) is compared as a whole, from before to after the call.

    Initial params go to `<run>/init_params.npz` (read back on resume) for the distance from
    initialisation. Time spent here is kept in `seconds` (compilation in `compile_seconds`) and
    written to `<run>/analysis.json` by `close`.
    """

    def __init__(self, hook: AnalysisHook, networks: Callable, state, run_path, *,
                 every: int = 1000, snr_every: int = 10, resume_step: int | None = None,
                 snr_max_batch: int = 256, snr_chunk: int = 32, tau=(0.025, 0.0), ctx=None):
        from sparse_rl.sparsity import get_sparse_state

        started = time.perf_counter()
        self.ctx = ctx
        self.hook = hook
        self.networks = networks
        self.every = int(every)
        self.snr_every = int(snr_every)
        self.snr_max_batch = int(snr_max_batch)
        self.snr_chunk = int(snr_chunk)
        self.taus = tuple(float(t) for t in tau)
        self.path = Path(run_path)
        self.seconds = 0.0
        self.compile_seconds = 0.0
        self.counts = {"periodic": 0, "snr": 0, "topology": 0}
        self._compiled: set[str] = set()
        self.compile_by: dict[str, float] = {}
        self.seconds_by: dict[str, float] = {}
        self._pending = None
        self._pending_step = 0
        self._per_call: int | None = (int(hook.steps_per_update)
                                      if getattr(hook, "steps_per_update", None) else None)
        self.writer = None
        self.sparsity = {k: v for k, v in (hook.sparsity or {}).items()
                         if getattr(v, "method", "dense") in ("prune", "set", "rigl")}
        self._updates = np.unique(np.concatenate(
            [update_steps(c) for c in self.sparsity.values()] or [np.zeros((0,), np.int64)]))

        nets = networks(state)
        try:  # gradient steps done so far: the sparsify wrapper counts them (checkpointed)
            self.grad_step = int(get_sparse_state(state).step)
        except Exception:
            self.grad_step = 0
        like = {name: params for name, (params, _) in nets.items()}
        init_file = self.path / INIT_PARAMS_FILE
        if resume_step is None:
            self.init_params = _host_copy(like)
            save_tree_npz(init_file, self.init_params)
        else:
            self.init_params = load_tree_npz(init_file, like)
        # Masks only change at topology updates, all of which this recorder sees, so the union of
        # the masks it sees is the set of positions ever active. <run>/ever_active.npz keeps, per
        # position, the env step at which it first became active (NEVER if not yet): on resume from
        # a checkpoint at step S, positions first active after S are reset, so the statistics
        # continue exactly as in an uninterrupted run even after a kill.
        masks_now = {name: _host_copy(masks) for name, (_, masks) in nets.items()}
        first = None
        if resume_step is not None:
            like = {n: jax.tree_util.tree_map(lambda m: np.zeros(np.shape(m), np.int32), t)
                    for n, t in masks_now.items()}
            first = load_tree_npz(self.path / EVER_ACTIVE_FILE, like)
        step0 = 0 if resume_step is None else int(resume_step)
        self.first_active = {
            name: jax.tree_util.tree_map(
                lambda m, f: np.where(np.asarray(m, bool), np.minimum(f, step0), f).astype(np.int32),
                masks_now[name],
                jax.tree_util.tree_map(lambda m: np.full(np.shape(m), NEVER, np.int32), masks_now[name])
                if first is None else jax.tree_util.tree_map(
                    lambda f: np.where(np.asarray(f) > step0, NEVER, f).astype(np.int32), first[name]))
            for name in masks_now}
        self._truncate(resume_step)
        self._build()
        self._spend(time.perf_counter() - started, "setup")

    def _truncate(self, resume_step):
        """Cut an existing analysis.csv back to `resume_step` (fresh run: remove it)."""
        from sparse_rl.train.metrics import MetricsWriter

        file = self.path / ANALYSIS_FILE
        if resume_step is None:
            file.unlink(missing_ok=True)
            (self.path / EVER_ACTIVE_FILE).unlink(missing_ok=True)
            return
        if file.exists():
            import csv

            with open(file, encoding="utf-8", newline="") as f:
                header = next(csv.reader([f.readline()]), [])
            if "step" in header:
                with MetricsWriter(file, header, fsync=False) as w:
                    w.truncate_after(resume_step)
                self._existing_header = header

    _existing_header = None

    # --- jitted pieces -------------------------------------------------------------------------
    # One program computes the gradients (the expensive one to compile); small ones reduce them to
    # statistics, so periodic rows and both sides of a topology update share compiled code.
    def _build(self):
        from sparse_rl.analysis import topology

        hook, taus, networks, chunk = self.hook, self.taus, self.networks, self.snr_chunk
        fwd = dict(hook.forward or {})
        activation = hook.activation

        def grads(state, batch):
            """({network: (dense grads, masks, params)}, {network: dormant-neuron stats})."""
            g = hook.grads(state, batch)
            dormant = {}
            for name, f in fwd.items():
                if name in g:
                    acts = topology.capture_activations(f, g[name][2], batch, activation=activation)
                    dormant[name] = topology.dormant_stats(acts, taus)
            return g, dormant

        def snr(state, batch):
            """Per-parameter SNR values and masks (summarised on the host)."""
            def grad_fn(single):
                return {name: g for name, (g, _, _) in hook.grads(state, single).items()}

            if chunk > 0:
                values = chunked_snr_values(grad_fn, batch, chunk)
            else:
                values = snr_values(jax.vmap(
                    lambda item: grad_fn(jax.tree_util.tree_map(lambda x: x[None], item)))(batch))
            masks = {name: m for name, (_, m) in networks(state).items()}
            return {name: (v, masks.get(name)) for name, v in values.items()}

        self._fns = {"grads": grads, "snr": snr}
        self._grads = jax.jit(grads)
        self._snr = jax.jit(snr)

    @staticmethod
    def _effect(pre, post) -> dict:
        (g0, m0, p0), (g1, m1, p1) = pre, post
        stats = topology_update_effect(p0, m0, p1, m1, g0)
        after = gradient_flow_stats(g1, m1, p1)
        for path, v in after["layers"].items():
            stats["layers"][path]["post_masked_grad_norm"] = v["masked_grad_norm"]
        stats["total"]["post_masked_grad_norm"] = after["total"]["masked_grad_norm"]
        return stats

    def _host(self, fn, *args):
        """Run a numpy reduction of fetched arrays, counting its time."""
        start = time.perf_counter()
        out = fn(*args)
        self._spend(time.perf_counter() - start, "host")
        return out

    def _spend(self, seconds, name):
        self.seconds += seconds
        self.seconds_by[name] = self.seconds_by.get(name, 0.0) + seconds

    def _periodic_stats(self, g, dormant) -> dict:
        out = {}
        for name, (grads, masks, params) in g.items():
            init = self.init_params.get(name) if self.init_params is not None else None
            out[f"gf/{name}"] = self._host(gradient_flow_stats, grads, masks, params, init)
            if name in dormant:
                out[f"dormant/{name}"] = dormant[name]
        return out

    @staticmethod
    def _ever_stats(ever) -> dict:
        """Fraction of positions ever active per kernel and over all kernels (numpy)."""
        from sparse_rl.sparsity import leaf_paths

        layers, on, size = {}, 0, 0
        paths = jax.tree_util.tree_leaves(leaf_paths(ever))
        for path, e in zip(paths, jax.tree_util.tree_leaves(ever)):
            if np.ndim(e) >= 2:
                n = int(np.count_nonzero(e))
                layers[path] = n / max(int(np.size(e)), 1)
                on, size = on + n, size + int(np.size(e))
        return {"layers": layers, "total": on / max(size, 1)}

    def _open(self, state, batch):
        """Open analysis.csv with every column this run can write (shapes only, no compute)."""
        from sparse_rl.train.metrics import MetricsWriter

        f = self._fns
        cols = ["step", "grad_step", "event"]
        g, dormant = jax.eval_shape(f["grads"], state, batch)
        zeros = {name: jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), v)
                 for name, v in g.items()}
        for name, (grads, masks, params) in zeros.items():
            init = self.init_params.get(name) if self.init_params is not None else None
            cols += _stat_keys(f"gf/{name}", gradient_flow_stats(grads, masks, params, init))
            if name in dormant:
                cols += _stat_keys(f"dormant/{name}", dormant[name])
        if self.snr_every > 0:
            for name, (grads, masks, _) in zeros.items():
                cols += _stat_keys(f"snr/{name}", summarize_snr(grads, masks))
        for name in self.sparsity:
            s = self._effect(zeros[name], zeros[name])
            s["total"]["ever_active"] = 0.0
            for path in s["layers"]:
                s["layers"][path]["ever_active"] = 0.0
            cols += _stat_keys(f"topo/{name}", s)
        file = self.path / ANALYSIS_FILE
        if self._existing_header is not None and self._existing_header != cols and file.exists():
            # written by another version of this code: keep it aside rather than mix columns
            file.replace(file.with_name(f"analysis-{int(time.time())}.csv"))
        self.writer = MetricsWriter(file, cols, fsync=False)
        self._fields = set(cols)

    def _resolve(self, batch):
        """The batch itself, or what a zero-argument callable batch returns (timed as "batch")."""
        if not callable(batch):
            return batch
        start = time.perf_counter()
        out = jax.block_until_ready(batch())
        spent = time.perf_counter() - start
        if "batch" in self._compiled:
            self._spend(spent, "batch")
        else:  # the first call compiles
            self._compiled.add("batch")
            self._add_compile(spent, "batch")
        return out

    def _call(self, name, fn, *args):
        start = time.perf_counter()
        out = jax.device_get(fn(*args))
        spent = time.perf_counter() - start
        if name in self._compiled:
            self._spend(spent, name)
        else:  # the first call compiles
            self._compiled.add(name)
            self._add_compile(spent, name)
        return out

    def _add_compile(self, seconds, name="columns"):
        self.compile_seconds += seconds
        self.compile_by[name] = self.compile_by.get(name, 0.0) + seconds
        if self.ctx is not None:  # the run reports compilation apart from its steps per second
            self.ctx.compile_seconds += seconds

    def _write(self, row, state, batch):
        start = time.perf_counter()
        if self.writer is None:
            self._open(state, batch)
            self._add_compile(time.perf_counter() - start)
            start = time.perf_counter()
        self.writer.write({k: v for k, v in row.items() if k in self._fields})
        self._spend(time.perf_counter() - start, "write")

    # --- loop interface -------------------------------------------------------------------------
    def _topology_in_call(self) -> int | None:
        """The step count of the first mask update in the next update call (gradient steps
        grad_step .. grad_step + per_call - 1), None if there is none."""
        from sparse_rl.sparsity import next_mask_update

        return next_mask_update(self._updates, self.grad_step, self._per_call or 1)

    def _periodic_in(self, first: int, last: int) -> bool:
        """Whether the gradient steps first .. last cross a multiple of `every`."""
        return self.every > 0 and first // self.every != last // self.every

    def reads_state_next_call(self) -> bool:
        """Whether `before_update` / `after_update` of the next update call will read the state and
        batch (a topology or periodic row, or the first call, which counts its gradient steps).
        A loop may pass None for both on calls where this is False (e.g. not slicing a run's state
        out of a vectorised one)."""
        if self._per_call is None:
            return True
        due = bool(self.sparsity) and self._topology_in_call() is not None
        return bool(due or self._pending is not None
                    or self._periodic_in(self.grad_step, self.grad_step + self._per_call))

    def before_update(self, state, batch) -> None:
        """Call just before `agent.update(state, batch, ...)` (which may donate `state`). A callable
        `batch` is called (if at all) before this returns, so it may read `state`."""
        if self.error is None:
            self._guard(self._before_update, state, batch)

    def after_update(self, state, batch, env_step: int) -> None:
        """Call just after `agent.update`, with the new state, its batch (or a zero-argument
        callable returning it) and the env steps done so far."""
        if self.error is None:
            self._guard(self._after_update, state, batch, env_step)

    def _guard(self, fn, *args):
        # Analysis must never stop a training run: on an error, warn once and stop recording
        # (the error is kept in analysis.json).
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            if self.raise_errors:
                raise
            import traceback
            import warnings

            self.error = f"{type(e).__name__}: {e}"
            self._traceback = traceback.format_exc()
            warnings.warn(f"analysis recording stopped: {self.error}", RuntimeWarning, stacklevel=3)

    error: str | None = None
    raise_errors = False  # tests set this to see errors instead of a warning

    def _before_update(self, state, batch) -> None:
        self._pending = None
        update_step = self._topology_in_call() if self.sparsity else None
        if update_step is not None:
            jax.block_until_ready(state)
            batch = self._resolve(batch)
            g, _ = self._call("grads", self._grads, state, batch)
            # real host copies: the update donates `state`, whose buffers params / masks may share
            self._pending = self._host(lambda: {name: _host_copy(g[name]) for name in self.sparsity
                                                if name in g})
            self._pending_step = update_step

    def _after_update(self, state, batch, env_step: int) -> None:
        from sparse_rl.sparsity import get_sparse_state

        previous = self.grad_step
        if self._per_call is None:  # how many gradient steps one update call runs (read once)
            start = time.perf_counter()
            try:
                self._per_call = max(1, int(get_sparse_state(state).step) - previous)
            except Exception:
                self._per_call = 1
            self._spend(time.perf_counter() - start, "setup")
        self.grad_step = previous + self._per_call
        periodic = self._periodic_in(previous, self.grad_step)
        g = None
        if periodic or self._pending is not None:
            # The update runs asynchronously; its own time (a mask update can be slow) is training
            # time, not analysis time: wait for it before the clock starts.
            jax.block_until_ready(state)
            batch = self._resolve(batch)

        if self._pending is not None:
            pre, self._pending = self._pending, None
            g, dormant = self._call("grads", self._grads, state, batch)
            row = {"step": env_step, "grad_step": self._pending_step, "event": "topology"}
            for name, before in pre.items():
                stats = self._host(self._effect, before, g[name])
                start = time.perf_counter()
                first = jax.tree_util.tree_map(
                    lambda f, a, b: np.where((np.asarray(a, bool) | np.asarray(b, bool)) & (f == NEVER),
                                             np.int32(env_step), f),
                    self.first_active[name], before[1], g[name][1])
                self.first_active[name] = first
                frac = self._ever_stats(jax.tree_util.tree_map(lambda f: f != NEVER, first))
                for path, v in frac["layers"].items():
                    stats["layers"][path]["ever_active"] = v
                stats["total"]["ever_active"] = frac["total"]
                self._spend(time.perf_counter() - start, "host")
                row.update(flatten_stats(f"topo/{name}", stats))
            self._write(row, state, batch)
            self._host(save_tree_npz, self.path / EVER_ACTIVE_FILE, self.first_active)
            self.counts["topology"] += 1

        if periodic:
            index = self.grad_step // self.every
            if g is None:
                g, dormant = self._call("grads", self._grads, state, batch)
            row = {"step": env_step, "grad_step": self.grad_step, "event": "periodic"}
            for prefix, s in self._periodic_stats(g, dormant).items():
                row.update(flatten_stats(prefix, s))
            # SNR on periodic rows 1, 1 + snr_every, ... (or the row whose call crossed one)
            before = previous // self.every
            if self.snr_every > 0 and (index - 1) // self.snr_every != (before - 1) // self.snr_every:
                small = jax.tree_util.tree_map(lambda x: x[: self.snr_max_batch], batch)
                for name, (values, masks) in self._call("snr", self._snr, state, small).items():
                    row.update(flatten_stats(f"snr/{name}", self._host(summarize_snr, values, masks)))
                self.counts["snr"] += 1
            self._write(row, state, batch)
            self.counts["periodic"] += 1

    def close(self, loop_seconds: float | None = None) -> dict:
        """Close the CSV and write `<run>/analysis.json` (cadence, counts, time spent)."""
        if self.writer is not None:
            self.writer.close()
        meta = {"every": self.every, "snr_every": self.snr_every, "grad_steps": self.grad_step,
                "records": self.counts, "seconds": self.seconds,
                "seconds_by": self.seconds_by, "compile_seconds": self.compile_seconds,
                "compile_by": self.compile_by}
        if self.error is not None:
            meta["error"] = self.error
            meta["traceback"] = self._traceback
        if loop_seconds:
            meta["loop_seconds"] = float(loop_seconds)
            meta["overhead_fraction"] = self.seconds / max(float(loop_seconds), 1e-9)
        tmp = self.path / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(self.path / META_FILE)
        return meta


def make_recorder(agent, state, run_path, *, every: int, resume_step: int | None = None,
                  **kw) -> GradientFlowRecorder | None:
    """A recorder for `agent` when it has an `analysis` hook and `every` > 0, else None."""
    hook = getattr(agent, "analysis", None)
    if hook is None or not every or every <= 0:
        return None
    return GradientFlowRecorder(hook, agent.networks, state, run_path, every=every,
                                resume_step=resume_step, **kw)
