"""Topology dynamics of sparse networks: churn, positions ever active, dormant neurons, fan-in.

Pure functions over mask pytrees (bool, the structure of the params) and captured activations.

- `topology_stats(masks_before, masks_after, ever_active)`: per kernel and in total, the churn (the
  fraction of active connections after an update that were inactive before), the sparsity after,
  and the fraction of positions ever active; returns the updated `ever_active` tree too.
- tau-dormant neurons (Sokar et al., 2023): neuron i of a layer has score
  s_i = E|h_i| / ((1/H) sum_k E|h_k|) over a batch (expectations over the batch, and over spatial
  positions for convolutions; h the post-activation output; H the layer's width); it is tau-dormant
  when s_i <= tau. tau = 0 counts neurons that never fire on the batch. Activations are captured by
  intercepting `hk.Linear` / `hk.ConvND` calls (`capture_activations`), so any Haiku network works;
  the last such layer called (the output head) is left out by default.
- `fan_in(masks)`: active inputs of every output unit of every kernel; a unit with fan-in 0 is dead.
"""

from __future__ import annotations

from typing import Callable, Mapping

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl.sparsity import leaf_paths

__all__ = ["topology_stats", "ever_active_fraction", "capture_activations", "neuron_scores",
           "dormant_ratio", "dormant_stats", "tau_name", "fan_in", "dead_units", "DEFAULT_TAUS"]

DEFAULT_TAUS = (0.025, 0.0)


def tau_name(tau: float) -> str:
    """Column suffix of a dormancy threshold: 0.025 -> "tau0.025", 0 -> "tau0"."""
    return f"tau{float(tau):g}"


def _kernels(tree):
    paths = jax.tree_util.tree_leaves(leaf_paths(tree))
    return [(p, x) for p, x in zip(paths, jax.tree_util.tree_leaves(tree)) if jnp.ndim(x) >= 2]


def ever_active_fraction(ever_active) -> dict:
    """`{"layers": {path: fraction of positions ever active}, "total": over all kernels}`."""
    layers, on, size = {}, jnp.zeros((), jnp.float32), 0
    for path, e in _kernels(ever_active):
        n = jnp.sum(jnp.asarray(e, bool), dtype=jnp.float32)
        layers[path] = n / max(int(np.size(e)), 1)
        on, size = on + n, size + int(np.size(e))
    return {"layers": layers, "total": on / max(size, 1)}


def topology_stats(masks_before, masks_after, ever_active=None):
    """(stats, new ever_active) for one mask update.

    stats = `{"layers": {path: {"churn", "sparsity", "ever_active"}}, "total": {...}}` over kernels
    (ndim >= 2). `ever_active` (bool tree, default `masks_before`) is or-ed with both masks.
    """
    if ever_active is None:
        ever_active = masks_before
    ever = jax.tree_util.tree_map(lambda e, a, b: jnp.asarray(e, bool) | jnp.asarray(a, bool)
                                  | jnp.asarray(b, bool), ever_active, masks_before, masks_after)
    before = dict(_kernels(masks_before))
    frac = ever_active_fraction(ever)
    layers = {}
    grown_t = active_t = jnp.zeros((), jnp.float32)
    size_t = 0
    for path, new in _kernels(masks_after):
        new = jnp.asarray(new, bool)
        old = jnp.asarray(before[path], bool)
        grown = jnp.sum(new & ~old, dtype=jnp.float32)
        active = jnp.sum(new, dtype=jnp.float32)
        grown_t, active_t, size_t = grown_t + grown, active_t + active, size_t + int(np.size(new))
        layers[path] = {"churn": grown / jnp.maximum(active, 1.0),
                        "sparsity": 1.0 - active / max(int(np.size(new)), 1),
                        "ever_active": frac["layers"][path]}
    total = {"churn": grown_t / jnp.maximum(active_t, 1.0),
             "sparsity": 1.0 - active_t / max(size_t, 1), "ever_active": frac["total"]}
    return {"layers": layers, "total": total}, ever


# --- activations and dormant neurons --------------------------------------------------------------

def _activation_fn(activation):
    if callable(activation):
        return activation
    from sparse_rl.nets import get_activation
    return get_activation(activation)


def capture_activations(forward: Callable, params, *inputs, activation="relu",
                        include_output: bool = False) -> dict:
    """`{module name: activation(output)}` of every `hk.Linear` / `hk.ConvND` called by
    `forward(params, *inputs)` (a Haiku apply function, e.g. `network.apply` or a lambda around
    it), in call order. `activation` (name or callable) turns the layer's output into the neuron's
    activation (its post-activation value). The last layer called (the output head) is left out
    unless `include_output`. Works under `jax.jit`.
    """
    act = _activation_fn(activation)
    captured: dict[str, jax.Array] = {}

    def interceptor(next_f, args, kwargs, context):
        out = next_f(*args, **kwargs)
        if (context.method_name == "__call__"
                and isinstance(context.module, (hk.Linear, hk.ConvND))):
            name = context.module.module_name
            captured.pop(name, None)  # keep call order of the last call
            captured[name] = out
        return out

    with hk.intercept_methods(interceptor):
        forward(params, *inputs)
    names = list(captured)
    if not include_output and names:
        names = names[:-1]
    return {n: act(captured[n]) for n in names}


def neuron_scores(activations) -> jax.Array:
    """Normalised score s_i = E|h_i| / mean_k E|h_k| of each neuron (last axis) of a layer."""
    a = jnp.abs(jnp.asarray(activations, jnp.float32))
    per = jnp.mean(a.reshape(-1, a.shape[-1]), axis=0)
    mean = jnp.mean(per)
    return jnp.where(mean > 0, per / jnp.where(mean > 0, mean, 1.0), jnp.zeros_like(per))


def dormant_ratio(activations, tau: float) -> jax.Array:
    """Fraction of a layer's neurons that are tau-dormant (score <= tau) on the batch."""
    return jnp.mean((neuron_scores(activations) <= tau).astype(jnp.float32))


def dormant_stats(activations: Mapping[str, jax.Array], taus=DEFAULT_TAUS) -> dict:
    """`{"layers": {layer: {tau_name: ratio}}, "total": {tau_name: ratio over all neurons}}`."""
    layers, total = {}, {}
    counts = {t: [] for t in taus}
    for name, a in activations.items():
        s = neuron_scores(a)
        layers[name] = {}
        for t in taus:
            d = (s <= t).astype(jnp.float32)
            layers[name][tau_name(t)] = jnp.mean(d)
            counts[t].append(d)
    for t in taus:
        total[tau_name(t)] = (jnp.mean(jnp.concatenate(counts[t])) if counts[t]
                              else jnp.zeros((), jnp.float32))
    return {"layers": layers, "total": total}


# --- fan-in --------------------------------------------------------------------------------------

def fan_in(masks) -> dict[str, np.ndarray]:
    """`{kernel path: active inputs of each output unit}` (kernels are [..., in, out]: the sum over
    every axis but the last)."""
    out = {}
    for path, m in _kernels(masks):
        m = np.asarray(m, bool)
        out[path] = m.reshape(-1, m.shape[-1]).sum(axis=0).astype(np.int64)
    return out


def dead_units(masks) -> dict[str, dict]:
    """`{kernel path: {"units", "dead", "dead_fraction"}}`: output units with fan-in 0."""
    out = {}
    for path, f in fan_in(masks).items():
        dead = int(np.sum(f == 0))
        out[path] = {"units": int(f.size), "dead": dead, "dead_fraction": dead / max(f.size, 1)}
    return out
