"""Checkpoints: a safe, verified, atomic on-disk format for pytrees of arrays.

One checkpoint at step S is three files in the checkpoint directory::

    ckpt_<S:012d>.npz    the arrays: an uncompressed npz (a zip of .npy files); leaf i of the
                         flattened tree is the entry "leaf/<i>", extra array NAME is "extra/NAME"
    ckpt_<S:012d>.json   the manifest: format version, library version, step, tree key paths,
                         treedef string, per-array kind / dtype / shape / sha256, mask
                         statistics, and the caller's own manifest (config, counters, RNG state...)
    ckpt_<S:012d>.done   the completion marker, written last: sha256 of the manifest file and
                         the size of the npz file

Nothing is unpickled: arrays are read with `allow_pickle=False` and the manifest is JSON, so loading a
checkpoint executes no code. Each file is written to a temporary name, fsynced and renamed; the
marker comes last, so a checkpoint without a marker (a crash mid-write) is ignored by `latest()`.
`save` keeps the newest `keep` complete checkpoints.

`load(ckpt_dir, like)` rebuilds a tree with the structure of the template `like` (e.g. a freshly
initialised agent state) and verifies everything before returning: the marker, the manifest's
checksum, the format version, the key paths (another agent or network), the shapes and dtypes
(other env spaces or settings), the npz file's size (truncation) and every array's sha256 (a
flipped byte). Each failure raises `CheckpointError` (a `ValueError`) with a one-line message:
`CorruptCheckpointError` for damaged files, `IncompatibleCheckpointError` for a checkpoint of
another agent / configuration / newer format. `load_latest_valid` falls back to older checkpoints
when the newest is corrupt, never when it is incompatible.

Leaves may be JAX or numpy arrays (any dtype numpy can describe, bfloat16 included), numpy scalars,
Python bool / int / float / str, and typed JAX PRNG keys (`jax.random.key`); `None` is an empty
subtree. Arrays come back as numpy arrays (numpy scalars for numpy-scalar template leaves), Python
scalars as Python scalars, typed keys as JAX key arrays. Arrays are streamed into the zip in chunks,
so writing a multi-GB replay buffer does not double memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from sparse_rl.errors import ConfigError, RunFileError
from sparse_rl.train.faults import kill_point
from sparse_rl.train.rundir import fsync_dir, write_text_atomic
from sparse_rl.train.serialize import to_jsonable

__all__ = [
    "FORMAT_VERSION", "CheckpointError", "CorruptCheckpointError", "IncompatibleCheckpointError",
    "Restored", "save", "load", "load_flat", "load_latest_valid", "latest", "steps",
    "read_manifest", "checkpoint_paths",
]

FORMAT_VERSION = 1
_DONE_RE = re.compile(r"^ckpt_(\d+)\.done$")
_FILE_RE = re.compile(r"^ckpt_(\d+)\.(npz|json)$")
_LEAF = "leaf/{}"
_EXTRA = "extra/"


class CheckpointError(RunFileError, ValueError):
    """A checkpoint cannot be loaded; the message is one line and names the file. The CLI prints
    it and exits with status 1 (2 for an incompatible one: the request cannot be met)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))


class CorruptCheckpointError(CheckpointError):
    """The files are damaged, truncated or incomplete."""


class IncompatibleCheckpointError(CheckpointError):
    """The files are intact but belong to another agent, network, env or newer library."""

    exit_status = 2


class Restored(tuple):
    """What `load` returns: unpacks as `(tree, manifest)`, where `manifest` is the caller's own
    manifest as saved (JSON values); also has `.tree`, `.manifest`, `.extra` (dict of the extra
    arrays, empty if none or not loaded), `.step` and `.info` (the full stored manifest:
    format and library version, key paths, checksums, mask statistics, ...)."""

    def __new__(cls, tree, manifest, *, extra, step, info):
        self = super().__new__(cls, (tree, manifest))
        self.extra = extra
        self.step = step
        self.info = info
        return self

    @property
    def tree(self):
        return self[0]

    @property
    def manifest(self) -> dict:
        return self[1]

    def __repr__(self) -> str:
        return f"Restored(step={self.step}, extra={sorted(self.extra)})"


# ----------------------------------------------------------------------------- files

def checkpoint_paths(ckpt_dir: str | os.PathLike, step: int) -> tuple[Path, Path, Path]:
    """(npz, json, done) paths of the checkpoint at `step`."""
    base = Path(ckpt_dir) / f"ckpt_{int(step):012d}"
    return base.with_suffix(".npz"), base.with_suffix(".json"), base.with_suffix(".done")


def steps(ckpt_dir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints (marker, manifest and arrays present), ascending."""
    try:
        names = set(os.listdir(ckpt_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        m = _DONE_RE.match(name)
        if m:
            stem = name[: -len(".done")]
            if stem + ".npz" in names and stem + ".json" in names:
                out.append(int(m.group(1)))
    return sorted(out)


def latest(ckpt_dir: str | os.PathLike) -> int | None:
    """Step of the newest complete checkpoint, or None. Does not verify its contents."""
    found = steps(ckpt_dir)
    return found[-1] if found else None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _sha256(arr: np.ndarray) -> str:
    flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return hashlib.sha256(flat).hexdigest()


def _path_str(path: Iterable[Any]) -> str:
    parts = []
    for k in path:
        name = type(k).__name__
        if name == "GetAttrKey":
            parts.append(f".{k.name}")
        elif name == "DictKey":
            parts.append(f"[{k.key!r}]")
        elif name == "SequenceKey":
            parts.append(f"[{k.idx}]")
        elif name == "FlattenedIndexKey":
            parts.append(f"[{k.key}]")
        else:
            parts.append(f"[{k}]")
    return "".join(parts) or "<root>"


def _is_key_dtype(dtype) -> bool:
    import jax

    try:
        return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        return False


def _storable(arr: np.ndarray, where: str) -> tuple[np.ndarray, str | None]:
    """The array as written to the npz (dtypes numpy has no file format for, such as bfloat16,
    are stored as unsigned ints of the same width) and the name of that storage dtype."""
    dtype = arr.dtype
    if dtype.hasobject:
        raise TypeError(f"checkpoint: {where} has dtype {dtype}; object arrays cannot be saved "
                        "safely")
    if (dtype.kind in "biufc" and dtype.isbuiltin == 1) or dtype.kind == "U":
        return arr, None
    if dtype.itemsize in (1, 2, 4, 8) and dtype.names is None and not dtype.subdtype:
        stored = np.dtype(f"<u{dtype.itemsize}")
        return np.ascontiguousarray(arr).view(stored), stored.name
    raise TypeError(f"checkpoint: {where} has dtype {dtype}, which cannot be saved")


def _encode_leaf(leaf: Any, where: str) -> tuple[np.ndarray, dict]:
    meta: dict[str, Any] = {}
    if isinstance(leaf, bool):
        kind, arr = "bool", np.asarray(leaf, dtype=np.bool_)
    elif isinstance(leaf, int):
        kind = "int"
        try:
            arr = np.asarray(leaf, dtype=np.int64)
        except OverflowError:
            raise TypeError(f"checkpoint: {where} is an int too large for int64") from None
    elif isinstance(leaf, float):
        kind, arr = "float", np.asarray(leaf, dtype=np.float64)
    elif isinstance(leaf, str):
        kind, arr = "str", np.asarray(leaf, dtype=str)
    elif _is_key_dtype(getattr(leaf, "dtype", None)):
        import jax

        kind = "key"
        meta["key_impl"] = str(jax.random.key_impl(leaf))
        meta["key_shape"] = list(leaf.shape)
        arr = np.asarray(jax.random.key_data(leaf))
    else:
        kind = "array"
        try:
            arr = np.asarray(leaf)
        except Exception as e:
            raise TypeError(f"checkpoint: {where} ({type(leaf).__name__}) is not an array: "
                            f"{e}") from None
    real_dtype = arr.dtype
    stored, stored_as = _storable(arr, where)
    meta.update(kind=kind, dtype=real_dtype.name if kind != "str" else "str",
                shape=list(arr.shape), sha256=_sha256(stored))
    if stored_as:
        meta["stored_as"] = stored_as
    return stored, meta


def _write_npz(path: Path, entries: list[tuple[str, np.ndarray]]) -> None:
    with open(path, "wb") as f:
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in entries:
                with zf.open(name + ".npy", mode="w", force_zip64=True) as fp:
                    np.lib.format.write_array(fp, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- save

def save(ckpt_dir: str | os.PathLike, step: int, tree: Any, manifest: Mapping | None = None,
         keep: int = 3, *, extra_arrays: Mapping[str, Any] | None = None,
         mask_stats: Any = None) -> Path:
    """Write the checkpoint of `tree` at `step` into `ckpt_dir` and return its npz path.

    `tree`: any pytree (NamedTuples, dicts, lists, tuples, None) of arrays and Python scalars.
    `manifest`: the caller's JSON-able metadata (config dict, counters, RNG state, env seeds...),
    given back by `load`. `extra_arrays`: named arrays kept outside the tree (the replay buffer's
    `state_dict()`), checksummed too and given back by `load` as `.extra`. `mask_stats`: per-layer
    mask statistics (e.g. `sparsity_summary(...)`), stored in the manifest for inspection.
    Saving a step that already has a checkpoint replaces it. Afterwards only the newest `keep`
    complete checkpoints remain, and leftovers of interrupted writes are removed. One writer per
    directory (the run directory's lock sees to that).
    """
    import jax

    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ConfigError("step", f"must be a non-negative integer, got {step!r}")
    step = int(step)
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1:
        raise ConfigError("keep", f"must be an integer >= 1, got {keep!r}")
    ckpt_dir = Path(ckpt_dir)

    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    entries: list[tuple[str, np.ndarray]] = []
    leaves_meta = []
    for i, (path, leaf) in enumerate(leaves_with_paths):
        where = f"leaf {i} ({_path_str(path)})"
        arr, meta = _encode_leaf(leaf, where)
        meta = {"path": _path_str(path), **meta}
        leaves_meta.append(meta)
        entries.append((_LEAF.format(i), arr))
    extra_meta = {}
    for name, value in (extra_arrays or {}).items():
        if not isinstance(name, str) or not name or name.startswith("/") or ".." in name:
            raise ConfigError("extra_arrays", f"bad array name {name!r}",
                              "non-empty strings without '..'")
        arr = np.asarray(value)
        stored, stored_as = _storable(arr, f"extra array {name!r}")
        meta = {"dtype": arr.dtype.name if arr.dtype.kind != "U" else "str",
                "shape": list(arr.shape), "sha256": _sha256(stored)}
        if stored_as:
            meta["stored_as"] = stored_as
        extra_meta[name] = meta
        entries.append((_EXTRA + name, stored))

    try:
        from sparse_rl import __version__ as library_version
    except ImportError:  # pragma: no cover
        library_version = "unknown"
    full_manifest = {
        "format_version": FORMAT_VERSION,
        "library": "sparse_rl",
        "library_version": library_version,
        "step": step,
        "created_unix": time.time(),
        "treedef": str(treedef),
        "num_leaves": len(leaves_meta),
        "leaves": leaves_meta,
        "extra": extra_meta,
        "mask_stats": to_jsonable(mask_stats),
        "user": to_jsonable(dict(manifest or {})),
    }
    manifest_bytes = (json.dumps(full_manifest, indent=1, allow_nan=True) + "\n").encode("utf-8")

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    npz_path, json_path, done_path = checkpoint_paths(ckpt_dir, step)
    if done_path.exists():  # replacing a checkpoint: make it incomplete first
        _unlink(done_path)
        fsync_dir(ckpt_dir)
    pid = os.getpid()
    npz_tmp = npz_path.with_name(f"{npz_path.name}.tmp-{pid}")
    json_tmp = json_path.with_name(f"{json_path.name}.tmp-{pid}")
    try:
        _write_npz(npz_tmp, entries)
        kill_point("checkpoint_npz", step)  # test hook (faults.py): crash mid-write
        with open(json_tmp, "wb") as f:
            f.write(manifest_bytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(npz_tmp, npz_path)
        os.replace(json_tmp, json_path)
    except BaseException:
        _unlink(npz_tmp)
        _unlink(json_tmp)
        raise
    fsync_dir(ckpt_dir)
    kill_point("checkpoint_marker", step)  # test hook (faults.py): crash before the marker
    marker = {"manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
              "npz_bytes": npz_path.stat().st_size}
    write_text_atomic(done_path, json.dumps(marker) + "\n")
    kill_point("checkpoint_done", step)  # test hook (faults.py): crash before pruning
    _prune(ckpt_dir, keep, current=step)
    return npz_path


def _prune(ckpt_dir: Path, keep: int, current: int) -> None:
    # The checkpoint just written is always kept, with the newest keep - 1 others.
    others = [s for s in steps(ckpt_dir) if s != current]
    n_delete = max(0, len(others) - (keep - 1))
    for s in others[:n_delete]:
        _unlink(checkpoint_paths(ckpt_dir, s)[2])  # incomplete first, then gone
    if n_delete:
        fsync_dir(ckpt_dir)
    kept = set(others[n_delete:]) | {current}
    for name in os.listdir(ckpt_dir):
        m = _FILE_RE.match(name)
        if m and int(m.group(1)) not in kept and int(m.group(1)) != current:
            _unlink(ckpt_dir / name)
        elif ".tmp-" in name and name.lstrip(".").startswith("ckpt_"):
            _unlink(ckpt_dir / name)


# ----------------------------------------------------------------------------- load

def _resolve_step(ckpt_dir: Path, step: int | None) -> int:
    if step is None:
        found = latest(ckpt_dir)
        if found is None:
            raise CheckpointError(f"{ckpt_dir}: no complete checkpoint")
        return found
    npz, js, done = checkpoint_paths(ckpt_dir, step)
    if not done.exists():
        if npz.exists() or js.exists():
            raise CorruptCheckpointError(f"{npz}: checkpoint at step {step} is incomplete "
                                         "(no completion marker): its writing was interrupted")
        raise CheckpointError(f"{ckpt_dir}: no checkpoint at step {step}")
    return int(step)


def read_manifest(ckpt_dir: str | os.PathLike, step: int | None = None) -> dict:
    """The full stored manifest of the checkpoint at `step` (default: the newest complete one),
    verified against its completion marker and the format version; arrays are not read."""
    ckpt_dir = Path(ckpt_dir)
    step = _resolve_step(ckpt_dir, step)
    npz, js, done = checkpoint_paths(ckpt_dir, step)
    try:
        marker = json.loads(done.read_text())
        raw = js.read_bytes()
    except FileNotFoundError as e:
        raise CorruptCheckpointError(f"{js}: checkpoint file missing ({e.filename})") from None
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(f"{done}: completion marker unreadable ({e})") from None
    try:
        info = json.loads(raw)
        version = info["format_version"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"{js}: manifest unreadable ({type(e).__name__}: {e}): "
                                     "file corrupted") from None
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptCheckpointError(f"{js}: manifest has an invalid format_version "
                                     f"{version!r}: file corrupted")
    if version > FORMAT_VERSION:
        raise IncompatibleCheckpointError(
            f"{js}: checkpoint format version {version} is newer than this library supports "
            f"({FORMAT_VERSION}); upgrade sparse_rl to load it")
    if not isinstance(marker, dict) or hashlib.sha256(raw).hexdigest() != marker.get(
            "manifest_sha256"):
        raise CorruptCheckpointError(f"{js}: manifest checksum mismatch: file corrupted")
    for key in ("step", "leaves", "extra", "user"):
        if key not in info:
            raise CorruptCheckpointError(f"{js}: manifest lacks {key!r}: file corrupted")
    try:
        size = npz.stat().st_size
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{npz}: arrays file missing") from None
    if size != marker.get("npz_bytes"):
        raise CorruptCheckpointError(
            f"{npz}: arrays file has {size} bytes, expected {marker.get('npz_bytes')}: "
            "file truncated or corrupted")
    return info


def _shape_str(shape) -> str:
    return str(tuple(int(s) for s in shape))


def _expected(leaf: Any) -> dict:
    """What the template leaf asks for: kind, and dtype / data shape for arrays."""
    if isinstance(leaf, bool):
        return {"kind": "bool"}
    if isinstance(leaf, int):
        return {"kind": "int"}
    if isinstance(leaf, float):
        return {"kind": "float"}
    if isinstance(leaf, str):
        return {"kind": "str"}
    dtype = getattr(leaf, "dtype", None)
    if _is_key_dtype(dtype):
        import jax

        data = jax.eval_shape(jax.random.key_data, leaf)
        return {"kind": "key", "dtype": np.dtype(data.dtype).name, "shape": tuple(data.shape),
                "key_impl": str(jax.random.key_impl(leaf)) if not isinstance(
                    leaf, jax.ShapeDtypeStruct) else None}
    if dtype is None or not hasattr(leaf, "shape"):
        leaf = np.asarray(leaf)
    return {"kind": "array", "dtype": np.dtype(leaf.dtype).name, "shape": tuple(leaf.shape),
            "np_dtype": np.dtype(leaf.dtype), "scalar": isinstance(leaf, np.generic)}


def _read_entries(npz: Path, wanted: list[tuple[str, str, dict]]) -> dict[str, np.ndarray]:
    """Read and verify the npz entries `wanted` = [(entry name, description, meta)]."""
    out = {}
    try:
        zf = zipfile.ZipFile(npz)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{npz}: arrays file missing") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CorruptCheckpointError(f"{npz}: arrays file unreadable ({e}): file truncated or "
                                     "corrupted") from None
    with zf:
        for entry, desc, meta in wanted:
            try:
                with zf.open(entry + ".npy") as fp:
                    arr = np.lib.format.read_array(fp, allow_pickle=False)
            except KeyError:
                raise CorruptCheckpointError(f"{npz}: {desc} missing from the arrays file: file "
                                             "corrupted") from None
            except zipfile.BadZipFile as e:
                if "CRC" in str(e):
                    raise CorruptCheckpointError(f"{npz}: checksum mismatch in {desc}: file "
                                                 "corrupted") from None
                raise CorruptCheckpointError(f"{npz}: {desc} unreadable ({e}): file "
                                             "corrupted") from None
            except (OSError, ValueError, EOFError, zipfile.LargeZipFile) as e:
                raise CorruptCheckpointError(f"{npz}: {desc} unreadable ({e}): file "
                                             "corrupted") from None
            stored_dtype = meta.get("stored_as") or meta["dtype"]
            dtype_ok = (arr.dtype.kind == "U") if stored_dtype == "str" else (
                arr.dtype.name == stored_dtype)
            if not dtype_ok or list(arr.shape) != list(meta["shape"]):
                raise CorruptCheckpointError(
                    f"{npz}: {desc} is {arr.dtype.name}{_shape_str(arr.shape)} in the arrays file "
                    f"but {stored_dtype}{_shape_str(meta['shape'])} in the manifest: file "
                    "corrupted")
            if _sha256(arr) != meta["sha256"]:
                raise CorruptCheckpointError(f"{npz}: checksum mismatch in {desc}: file corrupted")
            out[entry] = arr
    return out


def _decode_extra(npz: Path, info: dict, load_extra: bool) -> list[tuple[str, str, dict]]:
    if not load_extra:
        return []
    return [(_EXTRA + name, f"extra array {name!r}", meta)
            for name, meta in sorted(info["extra"].items())]


def _finish_extra(arrays: dict[str, np.ndarray], info: dict, load_extra: bool) -> dict:
    extra = {}
    if load_extra:
        for name, meta in info["extra"].items():
            arr = arrays[_EXTRA + name]
            if meta.get("stored_as"):
                try:
                    arr = arr.view(np.dtype(meta["dtype"]))
                except TypeError:
                    pass  # dtype unknown here (e.g. ml_dtypes not imported): raw ints
            extra[name] = arr
    return extra


def load(ckpt_dir: str | os.PathLike, like: Any, step: int | None = None, *,
         load_extra: bool = True) -> Restored:
    """Load the checkpoint at `step` (default: the newest complete one) into the structure of the
    template pytree `like` (same structure, shapes and dtypes; values unused, so
    `jax.ShapeDtypeStruct` leaves are fine). Returns a `Restored`: `tree, manifest = load(...)`,
    plus `.extra`, `.step`, `.info`. Raises `CheckpointError` (see the module docstring) unless
    every check passes; nothing is returned from a damaged or mismatched checkpoint."""
    import jax

    ckpt_dir = Path(ckpt_dir)
    info = read_manifest(ckpt_dir, step)
    step = int(info["step"])
    npz, js, _ = checkpoint_paths(ckpt_dir, step)
    stored = info["leaves"]

    like_leaves, like_def = jax.tree_util.tree_flatten_with_path(like)
    expected_paths = [_path_str(p) for p, _ in like_leaves]
    stored_paths = [m.get("path") for m in stored]
    if stored_paths != expected_paths:
        first = next((i for i, (a, b) in enumerate(zip(stored_paths, expected_paths)) if a != b),
                     min(len(stored_paths), len(expected_paths)))
        got = stored_paths[first] if first < len(stored_paths) else "nothing"
        want = expected_paths[first] if first < len(expected_paths) else "nothing"
        raise IncompatibleCheckpointError(
            f"{npz}: checkpoint is from a different agent or network: it holds "
            f"{len(stored_paths)} arrays, the template {len(expected_paths)}; array {first} is "
            f"{got} in the checkpoint, expected {want}")

    wanted = []
    expectations = []
    for i, ((path, leaf), meta) in enumerate(zip(like_leaves, stored)):
        desc = f"array {i} ({meta['path']})"
        exp = _expected(leaf)
        expectations.append(exp)
        kind = meta.get("kind", "array")
        if kind != exp["kind"]:
            raise IncompatibleCheckpointError(f"{npz}: {desc}: kind {kind} != expected "
                                              f"{exp['kind']}: checkpoint from a different "
                                              "agent version?")
        if kind in ("array", "key"):
            if tuple(meta["shape"]) != exp["shape"]:
                raise IncompatibleCheckpointError(
                    f"{npz}: {desc}: shape {_shape_str(meta['shape'])} != expected "
                    f"{_shape_str(exp['shape'])}: checkpoint from different env spaces or "
                    "network sizes?")
            if meta["dtype"] != exp["dtype"]:
                raise IncompatibleCheckpointError(
                    f"{npz}: {desc}: dtype {meta['dtype']} != expected {exp['dtype']}: checkpoint "
                    "from a different configuration (e.g. observation dtype or x64 mode)?")
            if kind == "key" and exp.get("key_impl") and meta.get("key_impl") != exp["key_impl"]:
                raise IncompatibleCheckpointError(
                    f"{npz}: {desc}: PRNG key implementation {meta.get('key_impl')} != expected "
                    f"{exp['key_impl']}")
        wanted.append((_LEAF.format(i), desc, meta))
    wanted += _decode_extra(npz, info, load_extra)

    arrays = _read_entries(npz, wanted)

    values = []
    for i, (meta, exp) in enumerate(zip(stored, expectations)):
        arr = arrays[_LEAF.format(i)]
        kind = exp["kind"]
        if kind == "bool":
            values.append(bool(arr))
        elif kind == "int":
            values.append(int(arr))
        elif kind == "float":
            values.append(float(arr))
        elif kind == "str":
            values.append(str(arr[()]))
        elif kind == "key":
            impl = meta.get("key_impl") or exp.get("key_impl")
            values.append(jax.random.wrap_key_data(arr, impl=impl))
        else:
            if meta.get("stored_as"):
                arr = arr.view(exp["np_dtype"])
            values.append(arr[()] if exp["scalar"] else arr)
    tree = jax.tree_util.tree_unflatten(like_def, values)
    return Restored(tree, info["user"], extra=_finish_extra(arrays, info, load_extra),
                    step=step, info=info)


def load_flat(ckpt_dir: str | os.PathLike, step: int | None = None, *,
              load_extra: bool = True) -> Restored:
    """Load without a template (for inspection and analysis): the tree is a dict
    `{key path: numpy array}` in stored order (Python scalars as 0-d arrays, PRNG keys as their
    raw key data). Verified like `load`, except for structure, which there is nothing to compare
    with."""
    ckpt_dir = Path(ckpt_dir)
    info = read_manifest(ckpt_dir, step)
    step = int(info["step"])
    npz, _, _ = checkpoint_paths(ckpt_dir, step)
    wanted = [(_LEAF.format(i), f"array {i} ({m.get('path')})", m)
              for i, m in enumerate(info["leaves"])]
    wanted += _decode_extra(npz, info, load_extra)
    arrays = _read_entries(npz, wanted)
    tree = {}
    for i, meta in enumerate(info["leaves"]):
        arr = arrays[_LEAF.format(i)]
        if meta.get("stored_as"):
            try:
                arr = arr.view(np.dtype(meta["dtype"]))
            except TypeError:
                pass
        tree[meta["path"]] = arr
    return Restored(tree, info["user"], extra=_finish_extra(arrays, info, load_extra),
                    step=step, info=info)


def load_latest_valid(ckpt_dir: str | os.PathLike, like: Any, *, accept=None,
                      **kwargs) -> Restored | None:
    """Load the newest complete checkpoint that passes verification; a corrupt one is skipped
    with a warning and the next older one tried. Returns None when there is no complete
    checkpoint at all. Raises `IncompatibleCheckpointError` at once when a checkpoint belongs to
    another agent / configuration (older ones would too), and `CorruptCheckpointError` when every
    complete checkpoint is corrupt (rather than silently starting over).

    `accept(restored)`, when given, checks a loaded checkpoint against the other files of its run
    (see `run_files.check`); a `RunFileError` from it skips to the next older checkpoint too, and
    when no checkpoint is accepted the newest one's `RunFileError` is raised."""
    found = steps(ckpt_dir)
    errors = []
    refused = None
    for step in reversed(found):
        try:
            restored = load(ckpt_dir, like, step, **kwargs)
        except IncompatibleCheckpointError:
            raise
        except CheckpointError as e:
            warnings.warn(f"skipping the checkpoint at step {step}: {e}", RuntimeWarning,
                          stacklevel=2)
            errors.append(str(e))
            continue
        if accept is not None:
            try:
                accept(restored)
            except RunFileError as e:
                refused = refused or e
                continue
        return restored
    if refused is not None:
        raise refused
    if errors:
        raise CorruptCheckpointError(
            f"{ckpt_dir}: all {len(errors)} complete checkpoints are corrupt (newest: "
            f"{errors[0]}); delete the directory to start the run over")
    return None
