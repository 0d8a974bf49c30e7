"""Parameter-matched dense baselines (`dense-matched`).

The paper compares a sparse network with a dense one whose hidden widths are scaled so that it has
as many parameters as the sparse one has non-zeros. For a cell of sparsity S:

* target = the non-zero count of the agent's networks when every sparsity config of the agent is
  set to sparsity S (its distribution, dense layers and overrides as configured; ERK by default),
  counted per leaf as `size - num_zeros(target_sparsity_l, size)` with the per-leaf targets of
  `sparse_rl.sparsity.target_sparsities` (biases and other dense leaves count in full). This is
  exactly the count a static run has, and the count prune/SET/RigL runs reach.
* the dense network's width multiplier m is found by bisection on the actual parameter count of
  the dense agent's networks (shapes from `jax.eval_shape` of its `init`, nothing compiled); widths
  are integers, so the count is a step function of m and the step closest to the target wins.

Networks are those of `agent.networks(state)` (DQN: the online Q-network; SAC: actor and both
critics; PPO: actor and value). Target networks are copies and are not counted.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from sparse_rl.errors import ConfigError

def _shapes(spec, config, env_spec, steps):
    """{network: params (ShapeDtypeStructs)} of the agent built from `config`, nothing compiled."""
    import jax

    agent = spec.make(config, env_spec, steps)
    state = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    return {name: params for name, (params, _) in agent.networks(state).items()}


def _size(leaf) -> int:
    return int(math.prod(leaf.shape))


def param_count(spec, config, env_spec, steps) -> int:
    """Total parameter count of the agent's networks under `config` (dense)."""
    import jax

    return sum(_size(leaf) for params in _shapes(spec, config, env_spec, steps).values()
               for leaf in jax.tree_util.tree_leaves(params))


def sparse_count(spec, config, env_spec, steps, sparsity: float) -> tuple[int, int]:
    """(non-zeros, total) of the agent's networks with every sparsity config at `sparsity`."""
    import jax
    import numpy as np

    from sparse_rl.sparsity import SparsityConfig, num_zeros, target_sparsities

    nonzero = total = 0
    for name, params in _shapes(spec, config, env_spec, steps).items():
        base: SparsityConfig = getattr(config, spec.networks[name])
        sparse_cfg = dataclasses.replace(base, method="static", sparsity=float(sparsity))
        targets = target_sparsities(params, sparse_cfg)
        for leaf, target in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(targets)):
            size = _size(leaf)
            zeros = int(np.asarray(num_zeros(float(target), size))) if float(target) > 0 else 0
            nonzero += size - zeros
            total += size
    return nonzero, total


def match_dense(base_argv: Sequence[str], sparsity: float, *, env_spec=None, tolerance: float = 1e-4,
                max_iter: int = 40, parse=None) -> dict:
    """Width multiplier of the dense agent configured by `base_argv` (a `sparse-rl train` argv with
    `--method dense`) whose parameter count is closest to the sparse count at `sparsity`.

    Returns `{"width_multiplier", "params", "target_params", "sparsity", "relative_error",
    "base_width_multiplier", "base_params"}`.
    """
    from sparse_rl import agents, envs
    from sparse_rl.cli import build_train_args

    run, config = (parse or build_train_args)(list(base_argv) + ["--seed", "0"])
    agent_spec = agents.spec(run.agent)
    spec = env_spec if env_spec is not None else envs.env_spec(run.env)
    if not hasattr(config, "width_multiplier"):
        raise ConfigError("dense-matched", f"agent {run.agent}'s config has no width_multiplier")
    target, base_params = sparse_count(agent_spec, config, spec, run.steps, sparsity)

    cache: dict[float, int] = {}

    def count(m: float) -> int:
        if m not in cache:
            cache[m] = param_count(agent_spec, dataclasses.replace(config, width_multiplier=m), spec, run.steps)
        return cache[m]

    base_m = float(config.width_multiplier)
    lo, hi = 0.0, base_m
    if count(hi) < target:  # only for sparsity 0 with odd rounding: grow the range
        while count(hi) < target:
            hi *= 2.0
    # Invariant: count(lo) < target <= count(hi) (count(0+) is the smallest possible network).
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        if mid <= 0.0 or hi - lo <= tolerance * base_m:
            break
        if count(mid) >= target:
            hi = mid
        else:
            lo = mid
    candidates = [hi] + ([lo] if lo > 0.0 else [])
    best = min(candidates, key=lambda m: (abs(count(m) - target), -m))
    params = count(best)
    return {
        "width_multiplier": best,
        "params": params,
        "target_params": target,
        "sparsity": float(sparsity),
        "relative_error": (params - target) / max(target, 1),
        "base_width_multiplier": base_m,
        "base_params": base_params,
    }
