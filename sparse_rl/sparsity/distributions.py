"""Per-leaf target sparsities: uniform and Erdos-Renyi-Kernel (ERK).

Which leaves are sparsified is decided statically from shapes and paths; the sparsity level itself
may be traced, so one compiled program serves every level (and vmaps over levels).
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl.errors import ConfigError, check
from sparse_rl.sparsity.config import SparsityConfig, path_str


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    path: str
    shape: tuple[int, ...]
    role: str  # "dense" (never masked), "override" (fixed sparsity), "budget" (ERK/uniform share)
    override: float = 0.0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def sparsified(self) -> bool:
        return self.role != "dense"


def leaf_plan(params, config: SparsityConfig):
    """Static classification of every leaf -> (treedef, [LeafInfo]). Validates overrides/N:M."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    dense_res = [re.compile(p) for p in config.dense]
    over_res = [(re.compile(p), s) for p, s in config.overrides]
    used = [False] * len(over_res)
    infos = []
    for kp, leaf in flat:
        path = path_str(kp)
        shape = tuple(np.shape(leaf))
        for i, (r, _) in enumerate(over_res):
            if r.search(path):
                used[i] = True
        role, ov = "budget", 0.0
        if config.method == "dense" or len(shape) < 2 or any(r.search(path) for r in dense_res):
            role = "dense"
        else:
            for r, s in over_res:
                if r.search(path):
                    role, ov = "override", s
                    break
        infos.append(LeafInfo(path, shape, role, ov))
    for (pat, _), u in zip(config.overrides, used):
        example = repr(infos[0].path) if infos else "'mlp/~/linear_0/w'"
        check(u, "overrides", f"regex {pat!r} matches no parameter path",
              "regexes matching paths like " + example)
    nm = config.nm
    if nm is not None:
        for info in infos:
            if info.sparsified and info.shape[-2] % nm[1] != 0:
                raise ConfigError("structure", f"{config.structure}: axis -2 of {info.path} "
                                  f"{info.shape} is not divisible by {nm[1]}",
                                  "N:M where M divides every sparsified kernel's input axis")
    return treedef, infos


@jax.jit
def _erk(n, r, sparsity):
    """ERK densities for layer sizes `n` and raw scores `r` ([L] arrays) at overall `sparsity`."""
    num = n.shape[0]
    budget = (1.0 - sparsity) * jnp.sum(n)
    idx = jnp.arange(num)

    def solve(dense):
        rem = budget - jnp.sum(jnp.where(dense, n, 0.0))
        denom = jnp.sum(jnp.where(dense, 0.0, r * n))
        return rem / jnp.where(denom > 0, denom, 1.0)

    # Fixed trip count (one per layer) with masks instead of branches, so `sparsity` may be traced.
    dense = jnp.zeros(num, bool)
    for _ in range(num):
        eps = solve(dense)
        over = jnp.any(~dense & (eps * r > 1.0))
        top = jnp.argmax(jnp.where(dense, -jnp.inf, r))
        dense = dense | (over & (idx == top))
    return jnp.where(dense, 1.0, jnp.clip(solve(dense) * r, 0.0, 1.0))


def erk_densities(shapes, sparsity):
    """ERK densities for a list of kernel shapes at (possibly traced) overall `sparsity` -> [L]."""
    n = np.asarray([math.prod(s) for s in shapes], np.float32)
    r = np.asarray([sum(s) / math.prod(s) for s in shapes], np.float32)
    return _erk(n, r, jnp.asarray(sparsity, jnp.float32))


def target_sparsities(params, config: SparsityConfig, sparsity=None):
    """Per-leaf target sparsity (float32 scalars, same structure as `params`); 0 for dense leaves.

    `sparsity` (may be traced) replaces `config.sparsity`. Overridden leaves take their fixed value
    and leave the ERK budget; N:M structure gives every sparsified leaf 1 - N/M.
    """
    treedef, infos = leaf_plan(params, config)
    nm = config.nm
    if sparsity is None:
        sparsity = config.sparsity
    elif nm is not None:
        raise ConfigError("sparsity", f"cannot override with structure {config.structure}",
                          "None (N:M fixes sparsity to 1 - N/M)")
    elif not isinstance(sparsity, jax.core.Tracer):
        check(not isinstance(sparsity, bool) and np.ndim(sparsity) == 0
              and 0.0 <= float(sparsity) < 1.0, "sparsity", f"got {sparsity!r}",
              "a float in [0, 1) (or a traced scalar)")
    s = jnp.asarray(sparsity, jnp.float32)
    out = [jnp.zeros((), jnp.float32) for _ in infos]
    budget = [i for i, info in enumerate(infos) if info.role == "budget"]
    for i, info in enumerate(infos):
        if info.role == "override":
            out[i] = jnp.asarray(info.override, jnp.float32)
    if budget:
        if nm is not None:
            vals = [jnp.asarray(1.0 - nm[0] / nm[1], jnp.float32)] * len(budget)
        elif config.distribution == "uniform":
            vals = [s] * len(budget)
        else:
            sp = 1.0 - erk_densities([infos[i].shape for i in budget], s)
            vals = [jnp.clip(sp[j], 0.0, 1.0) for j in range(len(budget))]
        for i, v in zip(budget, vals):
            out[i] = v
    return jax.tree_util.tree_unflatten(treedef, out)
