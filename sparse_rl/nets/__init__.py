"""Haiku networks. They know nothing of sparsity: masks live beside the params.

Build them inside `hk.transform`:

    def f(obs):
        return QHead(num_actions)(make_torso("mlp", widths=(512, 512))(obs))
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import jax
import numpy as np

from sparse_rl.errors import ConfigError
from sparse_rl.nets.cnn import ImpalaResNet, NatureCNN
from sparse_rl.nets.heads import QHead
from sparse_rl.nets.mlp import ACTIVATIONS, MLP, get_activation, largest_layer_macs, scaled_widths


def _mlp_torso(**kw) -> MLP:
    kw.setdefault("activate_final", True)   # a torso feeds a head: its last layer is hidden
    return MLP(**kw)


NETWORKS: dict[str, Callable[..., Any]] = {
    "mlp": _mlp_torso,
    "nature_cnn": NatureCNN,
    "impala": ImpalaResNet,
}


def resolve_network(spec: str | Callable[..., Any]) -> str | Callable[..., Any]:
    """A network setting as a config holds it: a registered name, a callable, or the callable that
    a "module:Name" string names (how config.json stores a callable, and how the command line
    gives one: `--dqn.network mypkg.nets:MyTorso`)."""
    if callable(spec) or (isinstance(spec, str) and spec in NETWORKS):
        return spec
    allowed = ", ".join(NETWORKS) + ", module:Name of a callable returning a haiku module"
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError("network", f"unknown network {spec!r}", allowed)
    module_name, _, qualname = spec.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError("network", f"cannot import {spec!r} ({e})", allowed) from None
    if not callable(found):
        raise ConfigError("network", f"{spec!r} is not callable", allowed)
    return found


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


__all__ = ["MLP", "NatureCNN", "ImpalaResNet", "QHead", "NETWORKS", "make_torso", "resolve_network", "count_params",
           "scaled_widths", "ACTIVATIONS", "get_activation"]
