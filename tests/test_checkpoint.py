"""Checkpoint format: round trip, keep-N, atomicity, and a clear error for every kind of damage."""

import json
import os
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_rl import __version__
from sparse_rl.errors import ConfigError
from sparse_rl.train import checkpoint as ckpt
from sparse_rl.train.checkpoint import (CheckpointError, CorruptCheckpointError,
                                        IncompatibleCheckpointError)


class OptState(NamedTuple):
    count: jax.Array
    mu: dict
    nu: dict


class AgentState(NamedTuple):
    params: dict
    target: dict
    opt: OptState
    masks: dict
    key: jax.Array          # raw key data (uint32[2])
    typed_key: jax.Array    # new-style typed key
    steps: int              # Python scalars ride along
    epsilon: float
    training: bool
    name: str
    frames: np.ndarray      # uint8
    half: jax.Array         # bfloat16
    nothing: None


def make_state(seed=0, obs_dim=4, hidden=16, extra_layer=False):
    rng = np.random.default_rng(seed)

    def layer(i, n_in, n_out):
        return {f"mlp/~/linear_{i}": {"w": jnp.asarray(rng.normal(size=(n_in, n_out)), jnp.float32),
                                     "b": jnp.asarray(rng.normal(size=(n_out,)), jnp.float32)}}

    params = {**layer(0, obs_dim, hidden), **layer(1, hidden, 2)}
    if extra_layer:
        params.update(layer(2, 2, 2))
    masks = jax.tree.map(lambda x: jnp.asarray(rng.random(x.shape) < 0.5), params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    return AgentState(
        params=params,
        target=jax.tree.map(lambda x: x * 2, params),
        opt=OptState(count=jnp.asarray(seed * 7, jnp.int32), mu=zeros, nu=zeros),
        masks=masks,
        key=jax.random.key_data(jax.random.PRNGKey(seed)),
        typed_key=jax.random.key(seed + 1),
        steps=1000 + seed,
        epsilon=0.05 + seed,
        training=bool(seed % 2),
        name=f"run{seed}",
        frames=rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8),
        half=jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16),
        nothing=None,
    )


def assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if isinstance(x, (bool, int, float, str)):
            assert type(x) is type(y) and x == y
        elif jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            np.testing.assert_array_equal(jax.random.key_data(x), jax.random.key_data(y))
        else:
            assert np.dtype(x.dtype) == np.dtype(y.dtype)
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def saved(tmp_path):
    state = make_state(seed=3)
    d = tmp_path / "checkpoints"
    ckpt.save(d, 1000, state, {"config": {"lr": 1e-3}, "counters": {"episodes": 7}},
              extra_arrays={"replay/obs": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
                            "replay/reward": np.linspace(0, 1, 6, dtype=np.float32)},
              mask_stats={"total": 10, "nonzero": 5})
    return d, state


# ----------------------------------------------------------------------------- round trip

def test_round_trip_nested_tree(saved):
    d, state = saved
    template = make_state(seed=0)
    restored = ckpt.load(d, like=template)
    tree, manifest = restored                      # unpacks as (tree, manifest)
    assert_trees_equal(tree, state)
    assert isinstance(tree, AgentState) and isinstance(tree.opt, OptState) and tree.nothing is None
    assert isinstance(tree.params["mlp/~/linear_0"]["w"], np.ndarray)   # numpy back; caller converts
    assert tree.steps == 1003 and tree.training is True and tree.name == "run3"
    assert manifest == {"config": {"lr": 1e-3}, "counters": {"episodes": 7}}
    assert restored.step == 1000
    np.testing.assert_array_equal(restored.extra["replay/obs"],
                                  np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    assert restored.extra["replay/reward"].dtype == np.float32
    info = restored.info
    assert info["format_version"] == ckpt.FORMAT_VERSION == 1
    assert info["library_version"] == __version__
    assert info["mask_stats"] == {"total": 10, "nonzero": 5}
    assert all(len(m["sha256"]) == 64 for m in info["leaves"])
    assert info["leaves"][0]["path"].startswith(".params[")
    assert "AgentState" in info["treedef"]


def test_load_into_abstract_template_and_flat(saved):
    d, state = saved
    template = jax.tree.map(  # shapes and dtypes only; Python scalars stay as they are
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") else x,
        make_state(seed=0))
    assert isinstance(template.typed_key, jax.ShapeDtypeStruct)
    tree, _ = ckpt.load(d, like=template, load_extra=False)
    assert_trees_equal(tree, state)
    flat = ckpt.load_flat(d)
    np.testing.assert_array_equal(flat.tree[".frames"], state.frames)
    assert flat.tree[".half"].dtype == jnp.bfloat16
    assert set(flat.extra) == {"replay/obs", "replay/reward"}


def test_npz_is_plain_and_needs_no_pickle(saved):
    d, _ = saved
    with np.load(d / "ckpt_000000001000.npz", allow_pickle=False) as z:
        assert "leaf/0" in z.files and "extra/replay/obs" in z.files
        for name in z.files:
            z[name]
    json.loads((d / "ckpt_000000001000.json").read_text())
    with pytest.raises(TypeError, match="object"):
        ckpt.save(d, 5, {"bad": np.array([object()])})


def test_bad_step_and_keep(tmp_path):
    with pytest.raises(ConfigError, match="step"):
        ckpt.save(tmp_path, -1, {"a": np.zeros(1)})
    with pytest.raises(ConfigError, match="keep"):
        ckpt.save(tmp_path, 1, {"a": np.zeros(1)}, keep=0)


# ----------------------------------------------------------------------------- keep-N, atomicity

def test_keep_newest_n(tmp_path):
    tree = {"w": np.arange(4.0)}
    for step in range(0, 600, 100):
        ckpt.save(tmp_path, step, tree, keep=2)
    assert ckpt.steps(tmp_path) == [400, 500]
    assert ckpt.latest(tmp_path) == 500
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"ckpt_{s:012d}.{ext}" for s in (400, 500) for ext in ("npz", "json", "done"))
    # saving an older step (a resumed run's new timeline) never deletes the checkpoint just written
    ckpt.save(tmp_path, 450, tree, keep=2)
    assert ckpt.steps(tmp_path) == [450, 500]


def test_incomplete_checkpoints_are_ignored_and_cleaned(tmp_path):
    tree = {"w": np.arange(4.0)}
    ckpt.save(tmp_path, 100, tree)
    ckpt.save(tmp_path, 200, tree)
    # a crash after the arrays and manifest were renamed, before the marker was written
    (tmp_path / "ckpt_000000000200.done").unlink()
    # a crash mid-write of a temp file
    (tmp_path / "ckpt_000000000300.npz.tmp-12345").write_bytes(b"PK\x03\x04partial")
    assert ckpt.latest(tmp_path) == 100
    assert ckpt.load(tmp_path, like=tree).step == 100
    with pytest.raises(CorruptCheckpointError, match="incomplete"):
        ckpt.load(tmp_path, like=tree, step=200)
    with pytest.raises(CheckpointError, match="no checkpoint at step 300"):
        ckpt.load(tmp_path, like=tree, step=300)
    ckpt.save(tmp_path, 300, {"w": np.arange(4.0) + 1})
    names = os.listdir(tmp_path)
    assert not any(".tmp-" in n or n.startswith("ckpt_000000000200") for n in names)
    assert ckpt.steps(tmp_path) == [100, 300]


def test_resave_same_step_replaces(tmp_path):
    ckpt.save(tmp_path, 7, {"w": np.zeros(3)})
    ckpt.save(tmp_path, 7, {"w": np.ones(3)})
    tree, _ = ckpt.load(tmp_path, like={"w": np.zeros(3)})
    np.testing.assert_array_equal(tree["w"], np.ones(3))


def test_empty_directory(tmp_path):
    assert ckpt.latest(tmp_path / "missing") is None
    assert ckpt.load_latest_valid(tmp_path / "missing", like={"w": np.zeros(1)}) is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ckpt.load(tmp_path, like={"w": np.zeros(1)})


# ----------------------------------------------------------------------------- damage

def npz_of(d, step=1000):
    return d / f"ckpt_{step:012d}.npz"


def one_line(err):
    assert "\n" not in str(err.value)
    return str(err.value)


def test_truncated_npz(saved):
    d, _ = saved
    path = npz_of(d)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError) as err:
        ckpt.load(d, like=make_state())
    assert "truncated" in one_line(err) and str(path) in str(err.value)


def test_flipped_byte_in_array_data(saved):
    d, state = saved
    path = npz_of(d)
    data = bytearray(path.read_bytes())
    frames = state.frames.tobytes()
    at = data.find(frames)
    assert at > 0
    data[at + 17] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError) as err:
        ckpt.load(d, like=make_state())
    msg = one_line(err)
    index = [m["path"] for m in ckpt.read_manifest(d)["leaves"]].index(".frames")
    assert f"checksum mismatch in array {index} (.frames): file corrupted" in msg


def test_changed_array_with_valid_zip_fails_sha256(saved):
    """A rewritten (zip-valid, same-size) arrays file is caught by the per-array sha256."""
    d, _ = saved
    path = npz_of(d)
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(path, "r") as zf:
        arr = np.lib.format.read_array(zf.open("leaf/0.npy"))
    arr = arr.copy()
    arr.flat[0] += 1
    tmp = path.with_suffix(".rebuilt")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, raw in entries.items():
            with zf.open(name, "w", force_zip64=True) as fp:
                if name == "leaf/0.npy":
                    np.lib.format.write_array(fp, arr)
                else:
                    fp.write(raw)
    assert tmp.stat().st_size == path.stat().st_size
    os.replace(tmp, path)
    with pytest.raises(CorruptCheckpointError, match=r"checksum mismatch in array 0 \(.params"):
        ckpt.load(d, like=make_state())


def test_flipped_byte_in_manifest(saved):
    d, _ = saved
    path = d / "ckpt_000000001000.json"
    text = path.read_text()
    path.write_text(text.replace('"lr": 0.001', '"lr": 0.002'))
    with pytest.raises(CorruptCheckpointError, match="manifest checksum mismatch"):
        ckpt.load(d, like=make_state())
    path.write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match="manifest unreadable"):
        ckpt.load(d, like=make_state())


def test_different_env_spaces(saved):
    d, _ = saved
    with pytest.raises(IncompatibleCheckpointError) as err:
        ckpt.load(d, like=make_state(obs_dim=8))
    msg = one_line(err)
    assert "shape (4, 16) != expected (8, 16)" in msg and "env spaces" in msg
    assert "mlp/~/linear_0" in msg


def test_different_network(saved):
    d, _ = saved
    with pytest.raises(IncompatibleCheckpointError) as err:
        ckpt.load(d, like=make_state(extra_layer=True))
    msg = one_line(err)
    assert "checkpoint is from a different agent or network" in msg and "linear_2" in msg
    with pytest.raises(IncompatibleCheckpointError, match="different agent or network"):
        ckpt.load(d, like={"w": np.zeros(3)})


def test_different_dtype_and_kind(saved):
    d, _ = saved
    with pytest.raises(IncompatibleCheckpointError, match="dtype uint8 != expected float32"):
        ckpt.load(d, like=make_state()._replace(frames=np.zeros((3, 8, 8), np.float32)))
    with pytest.raises(IncompatibleCheckpointError, match="kind int != expected array"):
        ckpt.load(d, like=make_state()._replace(steps=np.int64(0)))


def test_newer_format_version(saved):
    d, _ = saved
    path = d / "ckpt_000000001000.json"
    info = json.loads(path.read_text())
    info["format_version"] = 2
    path.write_text(json.dumps(info))
    with pytest.raises(IncompatibleCheckpointError) as err:
        ckpt.load(d, like=make_state())
    assert "checkpoint format version 2 is newer than this library supports (1)" in one_line(err)


def test_load_latest_valid_falls_back(tmp_path):
    states = {step: make_state(seed=i) for i, step in enumerate((100, 200, 300))}
    for step, state in states.items():
        ckpt.save(tmp_path, step, state)
    data = npz_of(tmp_path, 300).read_bytes()
    npz_of(tmp_path, 300).write_bytes(data[:-100])
    with pytest.warns(RuntimeWarning, match="skipping the checkpoint at step 300"):
        restored = ckpt.load_latest_valid(tmp_path, like=make_state())
    assert restored.step == 200
    assert_trees_equal(restored.tree, states[200])
    # an incompatible checkpoint is not skipped: older ones would not fit either
    with pytest.warns(RuntimeWarning), pytest.raises(IncompatibleCheckpointError):
        ckpt.load_latest_valid(tmp_path, like=make_state(obs_dim=8))
    # all corrupt: refuse rather than silently start over
    for step in (100, 200):
        npz_of(tmp_path, step).write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning), pytest.raises(CorruptCheckpointError, match="all 3"):
        ckpt.load_latest_valid(tmp_path, like=make_state())

