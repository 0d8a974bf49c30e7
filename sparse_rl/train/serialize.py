"""Configs to JSON and back, and a stable hash of a config.

* `to_jsonable(obj)` turns (nested) frozen dataclasses, NamedTuples, tuples, dicts, numpy / JAX
  scalars and small arrays, paths and enums into plain JSON values.
* `dataclass_from_dict(cls, d)` rebuilds a (nested) dataclass from such a dict, using the field type
  hints: tuple fields come back as tuples, nested dataclass fields as dataclasses, enums and paths
  as themselves. An unknown key raises `ConfigError` naming the key.
* `config_hash(obj)` is the sha256 of the canonical JSON of `to_jsonable(obj)`: the same for a config
  object and for the dict read back from its `config.json`, so a resumed run can check that it
  continues the same configuration. `config_diff(a, b)` names the keys that differ.

Nothing here imports JAX: JAX arrays are handled through `__array__`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

from sparse_rl.errors import ConfigError

__all__ = ["to_jsonable", "dataclass_from_dict", "config_hash", "config_diff", "canonical_json"]


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def to_jsonable(obj: Any, *, _path: str = "") -> Any:
    """Return `obj` as plain JSON values (dict with str keys, list, str, int, float, bool, None).

    Dataclasses and NamedTuples become dicts of their fields, tuples / lists / sets become lists,
    enums their value, paths strings, numpy / JAX scalars Python numbers, arrays nested lists (their
    dtype is not kept: put arrays that matter into a checkpoint, not a manifest). Functions and
    classes become `"module:qualname"` strings. Non-finite floats stay floats (Python's `json`
    writes them as NaN / Infinity and reads them back). Anything else raises `TypeError` naming the
    path of the offending value.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, _path=_path)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.str_):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name), _path=_join(_path, f.name))
                for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # NamedTuple
        return {name: to_jsonable(value, _path=_join(_path, name))
                for name, value in zip(obj._fields, obj)}
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if isinstance(key, enum.Enum):
                key = key.value
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TypeError(f"{_join(_path, key)}: dict key of type {type(key).__name__} "
                                "cannot be written as JSON")
            out[key if isinstance(key, str) else json.dumps(key)] = to_jsonable(
                value, _path=_join(_path, key))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, _path=_join(_path, i)) for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v, _path=_join(_path, "<item>")) for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=canonical_json)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (np.ndarray, np.generic)) or hasattr(obj, "__array__"):
        try:
            arr = np.asarray(obj)
        except Exception as e:  # e.g. typed JAX PRNG keys
            raise TypeError(f"{_path or '<root>'}: cannot convert {type(obj).__name__} to JSON "
                            f"({e})") from None
        if arr.dtype.kind not in "biufcU":
            raise TypeError(f"{_path or '<root>'}: cannot convert array of dtype {arr.dtype} "
                            "to JSON")
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
        return f"{obj.__module__}:{obj.__qualname__}"
    raise TypeError(f"{_path or '<root>'}: cannot convert {type(obj).__name__} to JSON")


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys of `to_jsonable(obj)`: equal values give equal strings."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=True)


def config_hash(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of `obj`; a config object and the dict loaded from its
    JSON file hash the same."""
    return hashlib.sha256(canonical_json(obj).encode("ascii")).hexdigest()


def config_diff(a: Any, b: Any, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted paths at which the JSON forms of `a` and `b` differ (sorted); `ignore` lists dotted
    paths (and their sub-paths) that are left out of the comparison."""
    out: list[str] = []

    def ignored(path: str) -> bool:
        return any(path == p or path.startswith(p + ".") for p in ignore)

    def walk(x, y, path):
        if ignored(path):
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                sub = _join(path, key)
                if key not in x or key not in y:
                    if not ignored(sub):
                        out.append(sub)
                else:
                    walk(x[key], y[key], sub)
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (xi, yi) in enumerate(zip(x, y)):
                walk(xi, yi, _join(path, i))
        elif canonical_json(x) != canonical_json(y):
            out.append(path or "<root>")

    walk(to_jsonable(a), to_jsonable(b), "")
    return sorted(set(out))


# ----------------------------------------------------------------------------- from dict

def _is_namedtuple_type(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def dataclass_from_dict(cls: type, d: Mapping[str, Any], *, _path: str = "") -> Any:
    """Rebuild the dataclass `cls` (nested dataclasses included) from the dict `d`.

    Uses the type hints of the fields: lists become tuples for tuple fields (element types too, e.g.
    `tuple[tuple[str, float], ...]`), dicts become dataclasses / NamedTuples for such fields, enums
    and paths are rebuilt, ints become floats for float fields. Keys missing from `d` take the
    field's default. An unknown key raises `ConfigError` naming the (dotted) key and listing the
    known ones; a value of the wrong kind raises `ConfigError` naming the key. Validation beyond
    types is left to the dataclass itself (its `__post_init__`).
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"dataclass_from_dict: {cls!r} is not a dataclass type")
    if isinstance(d, cls):
        return d
    if not isinstance(d, Mapping):
        raise ConfigError(_path or cls.__name__,
                          f"expected a mapping for {cls.__name__}, got {type(d).__name__}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    init_fields = {name for name, f in fields.items() if f.init}
    kwargs = {}
    for key, value in d.items():
        sub = _join(_path, key)
        if key not in fields:
            raise ConfigError(sub, "unknown key", ", ".join(fields))
        if key not in init_fields:  # derived field written by to_jsonable; recomputed by cls
            continue
        kwargs[key] = _convert(hints.get(key, Any), value, sub)
    missing = [name for name in init_fields if name not in kwargs
               and fields[name].default is dataclasses.MISSING
               and fields[name].default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(_join(_path, missing[0]), "missing required key")
    return cls(**kwargs)


def _type_hints(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: use what is there
        return {f.name: (f.type if not isinstance(f.type, str) else Any)
                for f in dataclasses.fields(cls)}


def _fits(tp, value) -> bool:
    """Whether `value` (a JSON value) plausibly is of type `tp` (for choosing a Union arm)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if dataclasses.is_dataclass(tp) or _is_namedtuple_type(tp):
        return isinstance(value, Mapping) or isinstance(value, tp)
    if origin in (tuple, list, set, frozenset) or tp in (tuple, list):
        return isinstance(value, (list, tuple))
    if origin in (dict, Mapping) or tp is dict:
        return isinstance(value, Mapping)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return any(value == m.value or value == m.name for m in tp)
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return isinstance(value, (str, PurePath))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _convert(tp, value, path: str):
    if value is None or tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        arms = [a for a in args if a is not type(None)]
        for arm in arms:
            if _fits(arm, value):
                return _convert(arm, value, path)
        return value  # let the dataclass's own validation report it
    if origin is typing.Annotated:
        return _convert(args[0], value, path)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return dataclass_from_dict(tp, value, _path=path)
    if _is_namedtuple_type(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            hints = typing.get_type_hints(tp)
            unknown = [k for k in value if k not in tp._fields]
            if unknown:
                raise ConfigError(_join(path, unknown[0]), "unknown key", ", ".join(tp._fields))
            return tp(**{k: _convert(hints.get(k, Any), v, _join(path, k))
                         for k, v in value.items()})
        if isinstance(value, (list, tuple)):
            return tp(*value)
        raise ConfigError(path, f"expected a mapping for {tp.__name__}, got {value!r}")
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        if not args:
            return tuple(_convert(Any, v, _join(path, i)) for i, v in enumerate(value))
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, _join(path, i)) for i, v in enumerate(value))
        if args == ((),):  # tuple[()]
            args = ()
        if len(value) != len(args):
            raise ConfigError(path, f"expected {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, _join(path, i)) for i, (a, v) in enumerate(zip(args, value)))
    if origin in (list, set, frozenset) or tp in (list, set, frozenset):
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        elem = args[0] if args else Any
        items = [_convert(elem, v, _join(path, i)) for i, v in enumerate(value)]
        container = origin or tp
        return container(items)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        ktype, vtype = args if len(args) == 2 else (Any, Any)
        out = {}
        for k, v in value.items():
            if ktype in (int, float) and isinstance(k, str):
                try:
                    k = ktype(k)
                except ValueError:
                    raise ConfigError(_join(path, k), f"expected a {ktype.__name__} key") from None
            out[k] = _convert(vtype, v, _join(path, k))
        return out
    if origin is typing.Literal:
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for member in tp:
            if value == member.value:
                return member
        for member in tp:
            if value == member.name:
                return member
        raise ConfigError(path, f"unknown value {value!r}", ", ".join(str(m.value) for m in tp))
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if not isinstance(value, (str, PurePath)):
            raise ConfigError(path, f"expected a path, got {value!r}")
        return tp(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    return value  # callables and anything else: as stored
