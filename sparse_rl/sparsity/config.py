"""`SparsityConfig`: what to sparsify and how, validated where it enters."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax

from sparse_rl.errors import ConfigError, check, check_choice

METHODS = ("dense", "static", "prune", "set", "rigl")
DISTRIBUTIONS = ("erk", "uniform")
DYNAMIC_METHODS = ("set", "rigl")
NM_METHODS = ("static", "prune")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _compile(pattern, field: str) -> re.Pattern:
    check(isinstance(pattern, str), field, f"expected a regex string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(field, f"invalid regex {pattern!r} ({e})") from None


def parse_structure(structure: str) -> tuple[int, int] | None:
    """`"unstructured"` -> None; `"N:M"` -> (N, M); anything else raises ConfigError."""
    allowed = "'unstructured' or 'N:M' with positive ints N < M, e.g. '2:4'"
    check(isinstance(structure, str), "structure", f"expected a string, got {structure!r}", allowed)
    if structure == "unstructured":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", structure)
    check(m is not None, "structure", f"cannot parse {structure!r}", allowed)
    n, mm = int(m.group(1)), int(m.group(2))
    check(0 < n < mm, "structure", f"{structure!r} needs 0 < N < M", allowed)
    return n, mm


@dataclasses.dataclass(frozen=True)
class SparsityConfig:
    """How one network is sparsified.

    method: one of METHODS. sparsity: overall target fraction of zeros among sparsified leaves.
    distribution: per-layer split of the budget ("erk" or "uniform"). update_every, drop_fraction,
    start_step, end_step: mask-update schedule (prune: cubic window start->end; SET/RigL: updates
    every `update_every` steps up to `end_step`, cosine-decayed drop fraction).
    dense: regexes (re.search on "mod/~/linear_0/w" style paths) of kernels kept dense.
    overrides: (regex, sparsity) pairs: matched kernels get that sparsity, outside the ERK budget.
    sparse_init: callers should re-initialise surviving weights with `sparse_init`.
    structure: "unstructured" or "N:M" (static/prune only; sparsity must equal 1 - N/M).
    """

    method: str = "dense"
    """Sparse training method: dense, static, prune (gradual magnitude pruning), set or rigl."""
    sparsity: float = 0.9
    """Target fraction of zeros among the sparsified kernels, in [0, 1) (biases and kept-dense layers stay dense)."""
    distribution: str = "erk"
    """How the budget is split over layers: erk (Erdos-Renyi-Kernel) or uniform."""
    update_every: int = 1000
    """Gradient steps between mask updates (prune, SET, RigL)."""
    drop_fraction: float = 0.5
    """Fraction of active weights SET/RigL drop and regrow at the first update (cosine-decayed)."""
    start_step: int = 0
    """First gradient step of the pruning window (used when the agent's schedule fractions are None)."""
    end_step: int = 75_000
    """Last mask update, in gradient steps (used when the agent's schedule fractions are None)."""
    dense: tuple[str, ...] = ()
    """Regexes of parameter paths (e.g. mlp/~/linear_0/w) kept dense."""
    overrides: tuple[tuple[str, float], ...] = ()
    """(regex, sparsity) pairs: matching kernels get that sparsity, outside the ERK budget."""
    sparse_init: bool = False
    """Re-initialise the surviving weights for their fan-in (sparse initialisation)."""
    structure: str = "unstructured"
    """unstructured, or N:M (static and prune only; sparsity must equal 1 - N/M), e.g. 2:4."""

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        check_choice(self.method, "method", METHODS)
        check(_is_real(self.sparsity) and 0.0 <= self.sparsity < 1.0, "sparsity",
              f"got {self.sparsity!r}", "a float in [0, 1)")
        set_("sparsity", float(self.sparsity))
        check_choice(self.distribution, "distribution", DISTRIBUTIONS)
        check(_is_int(self.update_every) and self.update_every > 0, "update_every",
              f"got {self.update_every!r}", "an int > 0")
        check(_is_real(self.drop_fraction) and 0.0 < self.drop_fraction <= 1.0, "drop_fraction",
              f"got {self.drop_fraction!r}", "a float in (0, 1]")
        set_("drop_fraction", float(self.drop_fraction))
        check(_is_int(self.start_step) and self.start_step >= 0, "start_step",
              f"got {self.start_step!r}", "an int >= 0")
        check(_is_int(self.end_step) and self.end_step > self.start_step, "end_step",
              f"got {self.end_step!r} with start_step={self.start_step}", "an int > start_step")
        check(isinstance(self.sparse_init, bool), "sparse_init", f"got {self.sparse_init!r}",
              "True or False")

        dense = self.dense
        if isinstance(dense, str):
            dense = (dense,)
        check(isinstance(dense, (list, tuple)), "dense", f"got {dense!r}", "a list of regexes")
        for p in dense:
            _compile(p, "dense")
        set_("dense", tuple(dense))

        overrides = self.overrides
        if isinstance(overrides, dict):
            overrides = tuple(overrides.items())
        check(isinstance(overrides, (list, tuple)), "overrides", f"got {overrides!r}",
              "a list of (regex, sparsity) pairs")
        out = []
        for item in overrides:
            check(isinstance(item, (list, tuple)) and len(item) == 2, "overrides",
                  f"bad entry {item!r}", "(regex, sparsity) pairs")
            pat, s = item
            _compile(pat, "overrides")
            check(_is_real(s) and 0.0 <= s < 1.0, "overrides",
                  f"sparsity {s!r} for {pat!r}", "a float in [0, 1)")
            out.append((pat, float(s)))
        set_("overrides", tuple(out))

        nm = parse_structure(self.structure)
        if nm is not None:
            check(self.method in NM_METHODS, "structure",
                  f"{self.structure!r} with method {self.method!r}", "N:M only with static, prune")
            n, m = nm
            check(abs(self.sparsity - (1.0 - n / m)) <= 1e-6, "sparsity",
                  f"{self.sparsity} does not match structure {self.structure}",
                  f"{1.0 - n / m:g} (= 1 - N/M)")
            check(not self.overrides, "overrides", "not supported with N:M structure", "()")

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) for N:M structure, else None."""
        return parse_structure(self.structure)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["dense"] = list(self.dense)
        d["overrides"] = [[p, s] for p, s in self.overrides]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SparsityConfig":
        check(isinstance(d, dict), "sparsity config", f"expected a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            check(k in names, str(k), "unknown sparsity config field", ", ".join(sorted(names)))
        return cls(**d)


# --- parameter paths -------------------------------------------------------------------------

def _key_str(k) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    return str(k)


def path_str(path) -> str:
    """Key path -> "a/b/c" (dict keys joined by "/", as Haiku names params)."""
    return "/".join(_key_str(k) for k in path)


def leaf_paths(tree):
    """Pytree of the same structure whose leaves are their path strings ("mlp/~/linear_0/w")."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return jax.tree_util.tree_unflatten(treedef, [path_str(p) for p, _ in flat])
