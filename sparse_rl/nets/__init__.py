"""Haiku networks. They know nothing of sparsity: masks live beside the params.

Build them inside `hk.transform`:

    def f(obs):
        return QHead(num_actions)(make_torso("mlp", widths=(512, 512))(obs))
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from sparse_rl.errors import ConfigError
from sparse_rl.nets.cnn import ImpalaResNet, NatureCNN
from sparse_rl.nets.heads import QHead
from sparse_rl.nets.mlp import ACTIVATIONS, MLP, get_activation, scaled_widths


def _mlp_torso(**kw) -> MLP:
    kw.setdefault("activate_final", True)   # a torso feeds a head: its last layer is hidden
    return MLP(**kw)


NETWORKS: dict[str, Callable[..., Any]] = {
    "mlp": _mlp_torso,
    "nature_cnn": NatureCNN,
    "impala": ImpalaResNet,
}


def make_torso(spec: str | Callable[..., Any], **kw) -> Callable:
    """A torso module from a registered name (`NETWORKS`) or a user callable.

    Call inside `hk.transform`. `spec(**kw)` must return an `hk.Module` or any callable mapping
    observations to features. The "mlp" torso defaults to `activate_final=True`.
    """
    if callable(spec):
        return spec(**kw)
    if not isinstance(spec, str) or spec not in NETWORKS:
        raise ConfigError("network", f"unknown network {spec!r}",
                          ", ".join(NETWORKS) + ", or a callable returning a haiku module")
    return NETWORKS[spec](**kw)


def count_params(params) -> int:
    """Total number of scalars in a params pytree (arrays or `jax.ShapeDtypeStruct`s)."""
    return int(sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(params)))


__all__ = ["MLP", "NatureCNN", "ImpalaResNet", "QHead", "NETWORKS", "make_torso", "count_params",
           "scaled_widths", "ACTIVATIONS", "get_activation"]
