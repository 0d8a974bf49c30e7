"""SparsityConfig validation, serialisation and parameter paths."""

import json

import numpy as np
import pytest

from sparse_rl.errors import ConfigError
from sparse_rl.sparsity import METHODS, SparsityConfig, leaf_paths


def test_defaults_and_roundtrip():
    cfg = SparsityConfig(method="rigl", dense=["linear_0"], overrides=[["linear_1", 0.5]],
                         structure="unstructured")
    assert cfg.dense == ("linear_0",) and cfg.overrides == (("linear_1", 0.5),)
    hash(cfg)  # hashable: usable as a static jit argument
    d = json.loads(json.dumps(cfg.to_dict()))
    assert SparsityConfig.from_dict(d) == cfg
    for m in METHODS:
        SparsityConfig(method=m)


def test_nm_config():
    cfg = SparsityConfig(method="static", sparsity=0.5, structure="2:4")
    assert cfg.nm == (2, 4)
    SparsityConfig(method="prune", sparsity=0.75, structure="1:4")


@pytest.mark.parametrize("kwargs, field", [
    (dict(sparsity=1.0), "sparsity"),
    (dict(sparsity=-0.1), "sparsity"),
    (dict(sparsity=True), "sparsity"),
    (dict(drop_fraction=0.0), "drop_fraction"),
    (dict(drop_fraction=1.5), "drop_fraction"),
    (dict(start_step=10, end_step=10), "end_step"),
    (dict(start_step=20, end_step=10), "end_step"),
    (dict(start_step=-1), "start_step"),
    (dict(update_every=0), "update_every"),
    (dict(update_every=1.5), "update_every"),
    (dict(method="lottery"), "method"),
    (dict(distribution="er"), "distribution"),
    (dict(dense=["("]), "dense"),
    (dict(overrides=[("w", 1.0)]), "overrides"),
    (dict(overrides=[("w",)]), "overrides"),
    (dict(overrides=[("[", 0.5)]), "overrides"),
    (dict(sparse_init="yes"), "sparse_init"),
    (dict(method="static", structure="4:2", sparsity=0.5), "structure"),
    (dict(method="static", structure="2-4", sparsity=0.5), "structure"),
    (dict(method="rigl", structure="2:4", sparsity=0.5), "structure"),
    (dict(method="static", structure="2:4", sparsity=0.9), "sparsity"),
])
def test_bad_config_names_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        SparsityConfig(**kwargs)
    assert str(e.value).startswith(field + ":")
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_from_dict_unknown_key():
    with pytest.raises(ConfigError, match="spars"):
        SparsityConfig.from_dict({"spars": 0.5})


def test_leaf_paths():
    tree = {"mlp/~/linear_0": {"w": np.zeros((2, 3)), "b": np.zeros(3)}, "x": [np.zeros(1)]}
    paths = leaf_paths(tree)
    assert paths["mlp/~/linear_0"]["w"] == "mlp/~/linear_0/w"
    assert paths["x"][0] == "x/0"
