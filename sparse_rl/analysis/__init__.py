"""Analyses of sparse agents: gradient flow, topology dynamics, sensitivity, and their plots.

- `gradient_flow`: per-layer norms of dense / masked gradients, weights and distance from
  initialisation, gradient SNR from per-sample gradients, the effect of mask updates (pure
  functions); `AnalysisHook`, what an agent exposes for them. The recorder the env loops use to
  write `<run>/analysis.csv` every `RunConfig.analysis_every` gradient steps is
  `sparse_rl.train.recorder`.
- `topology`: churn, positions ever active, tau-dormant neurons, fan-in / dead units.
- `sensitivity`: post-hoc per-layer pruning and observation-noise robustness of a checkpoint;
  per-component tables of training-time sweeps.
- `plots`: the figures; `cli`: `sparse-rl analyze ...`.

Submodules are imported lazily (`sparse_rl.analysis.topology` etc.), so that agents can import the
hook type without pulling in matplotlib.
"""

import importlib

__all__ = ["gradient_flow", "topology", "sensitivity", "plots", "cli"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"sparse_rl.analysis.{name}")
    raise AttributeError(name)
