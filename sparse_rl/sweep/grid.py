"""Sweep grids: agents x envs x methods x sparsities x seeds, from the command line or a file.

A grid expands into *cells*. Each cell is one ordinary run directory

    <out>/<agent>/<env>/<level>/seed<k>

where `<env>` is the env id with "/" replaced by "_" (`ALE/Pong-v5` -> `ALE_Pong-v5`) and
`<level>` is `dense` for the dense method and `<method>-<sparsity>` otherwise (`rigl-0.9`,
`dense-matched-0.95`; the sparsity is written with Python's `g` format). Each cell's `argv` is a
complete `sparse-rl train` command line (`sparse_rl.cli.build_train_args` parses it), so every
training flag works in a sweep and `sparse-rl train <argv>` reproduces the cell by hand.

`plan(grid)` validates the whole grid before anything runs: every cell's arguments parse, env ids
exist, the agent supports the env, sparsities are in range, dense-matched widths are found, and an
existing cell directory was written with the same configuration (otherwise its results would be
mixed with a different experiment). Errors are `ConfigError`s naming the flag, the grid file line
or the cell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from sparse_rl.agents import AGENTS, spec as agent_spec
from sparse_rl.errors import ConfigError, check, check_choice

SPARSE_METHODS = ("static", "prune", "set", "rigl")
SWEEP_METHODS = ("dense", "dense-matched") + SPARSE_METHODS

# Train flags a sweep sets per cell; an override may not set them.
RESERVED_FLAGS = {
    "agent": "--agent", "env": "--env", "seed": "--seed", "out": "--out", "method": "--methods",
    "sparsity": "--sparsities", "resume": "(the sweep resumes unfinished cells itself)",
}

# Keys a grid file may hold (hyphens and underscores are the same).
FILE_KEYS = {
    "agent": "agents", "agents": "agents", "env": "envs", "envs": "envs", "method": "methods",
    "methods": "methods", "sparsity": "sparsities", "sparsities": "sparsities", "seed": "seeds",
    "seeds": "seeds", "steps": "steps", "out": "out", "set": "set", "workers": "workers",
    "backend": "backend", "ray_address": "ray_address", "cpus_per_run": "cpus_per_run",
    "vectorize_seeds": "vectorize_seeds", "retry_failed": "retry_failed", "compile_cache": "compile_cache",
    "vectorize_sparsities": "vectorize_sparsities",
}


# ----------------------------------------------------------------------------- data

@dataclasses.dataclass(frozen=True)
class Override:
    """One `sparse-rl train` flag applied to every cell (of `agent` only, when the flag starts
    with an agent name, e.g. `dqn.widths`). `source` says where it came from, for errors."""

    flag: str                 # without leading dashes, e.g. "dqn.widths" or "eval-every"
    values: tuple[str, ...]   # () for a bare flag
    source: str = "command line"
    boolean: bool | None = None  # value given as true/false (tyro writes these as --x / --no-x)

    @property
    def name(self) -> str:
        return self.flag.replace("_", "-")

    @property
    def agent(self) -> str | None:
        head = self.name.split(".", 1)[0]
        return head if head in AGENTS and "." in self.name else None

    def tokens(self, flag_form: bool = False) -> list[str]:
        """argv tokens: `--flag v1 v2`; booleans as `--flag` / `--no-flag` when `flag_form`."""
        if self.boolean is not None and flag_form:
            head, _, tail = self.flag.rpartition(".")
            name = tail if self.boolean else f"no-{tail}"
            return [f"--{head}.{name}" if head else f"--{name}"]
        return [f"--{self.flag}", *self.values]


@dataclasses.dataclass(frozen=True)
class Grid:
    """What to sweep. `train_args` are raw `sparse-rl train` flags given to every cell."""

    agents: tuple[str, ...] = ("dqn",)
    envs: tuple[str, ...] = ("CartPole-v1",)
    methods: tuple[str, ...] = ("rigl",)
    sparsities: tuple[float, ...] = ()
    seeds: tuple[int, ...] = (0,)
    steps: int | None = None
    out: str = "runs/sweep"
    overrides: tuple[Override, ...] = ()
    train_args: tuple[str, ...] = ()


@dataclasses.dataclass
class Cell:
    """One run of the grid."""

    agent: str
    env: str
    method: str               # a SWEEP_METHODS name (dense-matched included)
    sparsity: float | None    # None for dense
    seed: int
    path: str                 # absolute run directory
    id: str                   # path relative to the sweep directory
    argv: list[str]           # full `sparse-rl train` argv
    steps: int = 0
    dense_matched: dict | None = None

    @property
    def level(self) -> str:
        return level_name(self.method, self.sparsity)

    @property
    def group(self) -> str:
        """The cell without its seed: cells of one group differ only by seed."""
        return self.id.rsplit("/", 1)[0]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def level_name(method: str, sparsity: float | None) -> str:
    return "dense" if method == "dense" or sparsity is None else f"{method}-{sparsity:g}"


def env_dir(env: str) -> str:
    return env.replace("/", "_")


# ----------------------------------------------------------------------------- parsing lists

def split_list(text: str | Sequence | None, field: str) -> list[str]:
    """`"a,b, c"` -> `["a", "b", "c"]` (lists pass through); empty items refused."""
    if text is None:
        return []
    if isinstance(text, str):
        items = [t.strip() for t in text.split(",")]
    else:
        items = [str(t).strip() for t in text]
    check(all(items), field, f"has an empty item in {text!r}", "a comma-separated list")
    return items


# Issue 16: sizes that would exhaust the machine are refused with a clear error. 10,000 seeds or
# cells is far beyond the paper's sweeps (at most 5 seeds of ~20 levels on ~20 tasks per agent).
MAX_SEEDS = 10_000
MAX_CELLS = 10_000


def parse_seeds(value, field: str = "seeds") -> tuple[int, ...]:
    """Seeds from `"0,1,2"`, `"0-9"` (inclusive range), a list, or an int n (file form: 0..n-1)."""
    if isinstance(value, bool):
        raise ConfigError(field, f"must be seeds, got {value!r}", "e.g. 0,1,2 or 0-9")
    if isinstance(value, int):
        check(1 <= value <= MAX_SEEDS, field, f"a number of seeds must be 1 to {MAX_SEEDS}, got {value}")
        return tuple(range(value))
    seeds: list[int] = []
    for item in split_list(value, field):
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", item)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            check(lo <= hi, field, f"empty range {item!r}", "a range like 0-9")
            check(hi - lo < MAX_SEEDS, field, f"range {item!r} has {hi - lo + 1} seeds",
                  f"at most {MAX_SEEDS}")  # issue 16: counted before it is expanded
            seeds.extend(range(lo, hi + 1))
        else:
            try:
                seeds.append(int(item))
            except ValueError:
                raise ConfigError(field, f"not a seed: {item!r}",
                                  "non-negative integers, e.g. 0,1,2 or 0-9") from None
    seeds = list(dict.fromkeys(seeds))
    check(all(s >= 0 for s in seeds), field, f"seeds must be >= 0, got {seeds[:8]}")
    check(len(seeds) <= MAX_SEEDS, field, f"{len(seeds)} seeds", f"at most {MAX_SEEDS}")
    return tuple(seeds)


def parse_sparsities(value, field: str = "sparsities") -> tuple[float, ...]:
    out = []
    for item in split_list(value, field):
        try:
            s = float(item)
        except ValueError:
            raise ConfigError(field, f"not a number: {item!r}", "floats in [0, 1), e.g. 0.5,0.9") from None
        check(0.0 <= s < 1.0 and math.isfinite(s), field, f"{item} is out of range", "floats in [0, 1)")
        out.append(s)
    return tuple(dict.fromkeys(out))


def parse_set(text: str, source: str = "--set") -> Override:
    """`KEY=VALUE[,VALUE...]` (a train flag without dashes) -> Override."""
    if "=" not in text:
        raise ConfigError("set", f"{text!r} is not KEY=VALUE", "e.g. --set dqn.widths=64,64")
    key, value = text.split("=", 1)
    key = key.strip().lstrip("-")
    check(bool(key), "set", f"{text!r} has an empty key", "e.g. --set dqn.widths=64,64")
    value = value.strip()
    boolean = {"true": True, "false": False}.get(value.lower())
    values = tuple(v.strip() for v in value.split(",")) if value != "" else ()
    return Override(key, values, source, boolean)


def value_override(key: str, value: Any, source: str) -> Override:
    """An override from a grid file value: lists become several tokens, bools flags."""
    if isinstance(value, bool):
        return Override(key, (str(value),), source, value)
    if isinstance(value, (list, tuple)):
        check(all(not isinstance(v, (list, dict)) for v in value), key,
              f"{source}: nested lists are not supported", "a value or a flat list")
        return Override(key, tuple(_scalar(v) for v in value), source)
    if isinstance(value, dict):
        raise ConfigError(key, f"{source}: expected a value, got a table")
    return Override(key, (_scalar(value),), source)


def _scalar(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


# ----------------------------------------------------------------------------- grid files

class _Lines:
    """Line numbers of keys in a grid file, for error messages."""

    def __init__(self, path: str, text: str, marks: dict[str, int] | None = None):
        self.path, self.text, self.marks = path, text, marks or {}

    def line(self, key: str) -> int | None:
        if key in self.marks:
            return self.marks[key]
        last = key.rsplit(".", 1)[-1]
        patterns = [re.escape(key), re.escape(f'"{key}"'), re.escape(last), re.escape(f'"{last}"')]
        for pattern in patterns:
            regex = re.compile(rf"^\s*{pattern}\s*[=:]")
            for i, line in enumerate(self.text.splitlines(), 1):
                if regex.search(line):
                    return i
        return None

    def where(self, key: str) -> str:
        n = self.line(key)
        return f"{self.path} line {n}" if n else self.path


def _flatten(table: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in table.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.extend(_flatten(v, key))
        else:
            out.append((key, v))
    return out


def load_grid_file(path: str | Path) -> tuple[dict, _Lines]:
    """Read a TOML (`.toml`) or YAML (`.yaml`/`.yml`) grid file into a dict of known keys.

    A syntax error or an unknown key raises `ConfigError` naming the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("grid", f"cannot read {path}: {e.strerror or e}") from None
    suffix = path.suffix.lower()
    marks: dict[str, int] = {}
    if suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            lineno = getattr(e, "lineno", None)
            m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
            if lineno is None and m:
                lineno = int(m.group(1))
            msg = getattr(e, "msg", None) or re.sub(r"\s*\(at line .*\)$", "", str(e))
            where = f"{path} line {lineno}" if lineno else str(path)
            raise ConfigError("grid", f"{where}: invalid TOML: {msg}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError("grid", f"{where}: invalid YAML: {problem}") from None
        if data is None:
            data = {}
        _yaml_marks(node, "", marks)
    else:
        raise ConfigError("grid", f"{path}: unknown file type {suffix!r}", ".toml, .yaml, .yml")
    lines = _Lines(str(path), text, marks)
    if not isinstance(data, dict):
        raise ConfigError("grid", f"{path} line 1: expected a table of keys, got {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        norm = str(key).replace("-", "_")
        if norm not in FILE_KEYS:
            raise ConfigError("grid", f"{lines.where(str(key))}: unknown key {key!r}",
                              ", ".join(sorted(set(FILE_KEYS.values()))))
        canon = FILE_KEYS[norm]
        if canon in out:
            raise ConfigError("grid", f"{lines.where(str(key))}: {key!r} given twice")
        if canon == "set":
            if not isinstance(value, dict):
                raise ConfigError("grid", f"{lines.where(str(key))}: 'set' must be a table of train flags",
                                  "e.g. [set] with \"dqn.widths\" = [64, 64]")
            overrides = []
            for flag, v in _flatten(value):
                source = lines.where(f"set.{flag}") if f"set.{flag}" in marks else lines.where(flag)
                try:
                    overrides.append(value_override(flag, v, source))
                except ConfigError as e:
                    raise ConfigError("grid", f"{source}: {e}") from None
            value = overrides
        out[canon] = (value, lines.where(str(key)))
    return out, lines


def _yaml_marks(node, prefix: str, marks: dict[str, int]) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            marks[key] = key_node.start_mark.line + 1
            _yaml_marks(value_node, key, marks)


def grid_from_file(path: str | Path) -> tuple[Grid, dict]:
    """(Grid, sweep options) from a grid file; options hold workers/backend/... if given."""
    data, lines = load_grid_file(path)
    fields: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, (value, where) in data.items():
        try:
            if key == "agents":
                fields["agents"] = tuple(split_list(value, "agents"))
            elif key == "envs":
                fields["envs"] = tuple(split_list(value, "envs"))
            elif key == "methods":
                fields["methods"] = tuple(split_list(value, "methods"))
            elif key == "sparsities":
                fields["sparsities"] = parse_sparsities(
                    [value] if isinstance(value, (int, float)) else value, "sparsities")
            elif key == "seeds":
                fields["seeds"] = parse_seeds(value)
            elif key == "steps":
                check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                      "steps", f"must be a positive integer, got {value!r}")
                fields["steps"] = value
            elif key == "out":
                check(isinstance(value, str) and value != "", "out", "must be a directory name")
                fields["out"] = value
            elif key == "set":
                fields["overrides"] = tuple(value)
            else:
                options[key] = value
        except ConfigError as e:
            raise ConfigError("grid", f"{where}: {e}") from None
    return Grid(**fields), options


# ----------------------------------------------------------------------------- planning

def _train_parse(argv: Sequence[str]):
    """`build_train_args(argv)`, with tyro's usage errors turned into a one-line ConfigError."""
    from sparse_rl.cli import build_train_args

    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            return build_train_args(list(argv))
    except SystemExit as e:
        raise ConfigError("train arguments", _tyro_message(buf.getvalue()) or f"exit status {e.code}") from None


def _tyro_message(text: str) -> str:
    keep = []
    for line in text.splitlines():
        line = line.strip().strip("│╭╮╰╯─-|").strip()
        if not line or line.startswith(("For full helptext", "Argument helptext")):
            if keep and line.startswith(("For full helptext", "Argument helptext")):
                break
            continue
        keep.append(line)
    if len(keep) > 1:  # drop tyro's heading ("Value error", "Unrecognized options")
        keep = keep[1:]
    return " ".join(keep[:2])


def _message(error: ConfigError) -> str:
    """A ConfigError's text without its leading "field: "."""
    text = str(error)
    return text.split(": ", 1)[1] if text.startswith(f"{error.field}: ") else text


def _override_tokens(override: Override, agent: str, env: str) -> list[str]:
    """The argv form of `override` that parses (bools: `--x True` or tyro's `--x`/`--no-x`)."""
    base = ["--agent", agent, "--env", env]
    try:
        _train_parse(base + override.tokens())
        return override.tokens()
    except ConfigError as first:
        if override.boolean is not None:
            try:
                _train_parse(base + override.tokens(flag_form=True))
                return override.tokens(flag_form=True)
            except ConfigError:
                pass
        raise ConfigError("set", f"{override.source}: {_message(first)}") from None


def _check_reserved(flags: Iterable[str], source: str):
    for flag in flags:
        name = flag.lstrip("-").replace("_", "-")
        if name in RESERVED_FLAGS:
            raise ConfigError(name, f"{source}: is set per cell by the sweep",
                              f"use {RESERVED_FLAGS[name]}" if RESERVED_FLAGS[name].startswith("--")
                              else RESERVED_FLAGS[name])


def expected_config(run, agent_config) -> dict:
    """The `config.json` content (minus out/library_version) a run writes; see RunContext."""
    from sparse_rl.train.runner import recorded_config

    return recorded_config(run, agent_config)


CONFIG_IGNORE = ("out", "library_version", "run.resume", "run.progress", "run.out", "run.tensorboard")


def cell_count(grid: Grid) -> int:
    """How many cells `grid` expands to (counted, not expanded)."""
    levels = sum(1 if m == "dense" else len(grid.sparsities) for m in grid.methods)
    return len(grid.agents) * len(grid.envs) * levels * len(grid.seeds)


def plan(grid: Grid, *, check_existing: bool = True, log=None,
         max_cells: int | None = MAX_CELLS) -> list[Cell]:
    """Expand and validate `grid`; returns the cells in a stable order. Raises ConfigError, also
    for a grid of more than `max_cells` cells (None: no limit; `sparse-rl sweep --large-grid`)."""
    from sparse_rl import envs
    from sparse_rl.train.context import MAX_STEPS

    check(len(grid.agents) > 0, "agents", "is empty", ", ".join(AGENTS))
    for a in grid.agents:
        check_choice(a, "agents", AGENTS)
    check(len(grid.envs) > 0, "envs", "is empty", "environment ids, e.g. CartPole-v1")
    for e in grid.envs:
        envs.env_family(e)
    check(len(grid.methods) > 0, "methods", "is empty", ", ".join(SWEEP_METHODS))
    for m in grid.methods:
        check_choice(m, "methods", SWEEP_METHODS)
    for s in grid.sparsities:
        check(0.0 <= s < 1.0, "sparsities", f"{s} is out of range", "floats in [0, 1)")
    needs_level = [m for m in grid.methods if m != "dense"]
    check(not needs_level or len(grid.sparsities) > 0, "sparsities",
          f"required for methods {', '.join(needs_level)}", "e.g. --sparsities 0.5,0.9")
    check(len(grid.seeds) > 0, "seeds", "is empty", "e.g. --seeds 0,1,2")
    check(grid.steps is None or 0 < grid.steps <= MAX_STEPS, "steps", f"got {grid.steps}",
          f"1 to {MAX_STEPS:.0e}")
    n = cell_count(grid)
    check(max_cells is None or n <= max_cells, "grid", f"{n} cells (more than {max_cells})",
          "a smaller grid, or --large-grid to run it anyway")
    _check_reserved([o.flag for o in grid.overrides], "--set")
    _check_reserved([t for t in grid.train_args if t.startswith("--")], "train flag")
    for o in grid.overrides:
        if o.name.split(".", 1)[0] in AGENTS and "." in o.name and o.agent not in grid.agents:
            raise ConfigError("set", f"{o.source}: {o.flag} is for agent {o.agent}, which is not in the grid",
                              ", ".join(grid.agents))

    out = Path(grid.out).expanduser().resolve()
    # Overrides one by one, so that an error names the override (and its grid file line).
    tokens: dict[str, list[str]] = {}
    for agent in grid.agents:
        toks: list[str] = []
        for o in grid.overrides:
            if o.agent in (None, agent):
                toks += _override_tokens(o, agent, grid.envs[0])
        if grid.train_args:
            try:
                _train_parse(["--agent", agent, "--env", grid.envs[0], *grid.train_args])
            except ConfigError as e:
                raise ConfigError("train arguments", f"{' '.join(grid.train_args)}: {_message(e)}") from None
        tokens[agent] = toks + list(grid.train_args)

    cells: list[Cell] = []
    parsed: dict[tuple, tuple] = {}
    specs: dict[str, Any] = {}
    made: set = set()
    matched_cache: dict[tuple, dict] = {}
    for agent in grid.agents:
        spec = agent_spec(agent)
        for env in grid.envs:
            if env not in specs:
                specs[env] = envs.env_spec(env)
            for method in grid.methods:
                levels = [None] if method == "dense" else list(grid.sparsities)
                for sparsity in levels:
                    base = ["--agent", agent, "--env", env]
                    if grid.steps is not None:
                        base += ["--steps", str(grid.steps)]
                    base += tokens[agent]
                    base += ["--method", "dense" if method == "dense-matched" else method]
                    if method not in ("dense", "dense-matched"):
                        base += ["--sparsity", repr(float(sparsity))]
                    level = level_name(method, sparsity)
                    where = f"cell {agent}/{env_dir(env)}/{level}"
                    info = None
                    if method == "dense-matched":
                        key = (agent, env, tuple(base), sparsity)
                        if key not in matched_cache:
                            from sparse_rl.sweep.matched import match_dense

                            try:
                                matched_cache[key] = match_dense(base, sparsity, env_spec=specs[env], parse=_train_parse)
                            except ConfigError as e:
                                raise ConfigError(e.field, f"{where} (dense-matched): {_message(e)}") from None
                        info = matched_cache[key]
                        base += [f"--{agent}.width-multiplier", repr(info["width_multiplier"])]
                    key = tuple(base)
                    if key not in parsed:
                        try:
                            parsed[key] = _train_parse(base + ["--seed", str(grid.seeds[0])])
                        except ConfigError as e:
                            raise ConfigError(e.field, f"{where}: {_message(e)}") from None
                    run0, config = parsed[key]
                    config_key = (agent, env, run0.steps, repr(config))
                    if config_key not in made:
                        try:
                            spec.make(config, specs[env], run0.steps)
                        except ConfigError as e:
                            raise ConfigError(e.field, f"{where}: {_message(e)}") from None
                        made.add(config_key)
                    for seed in grid.seeds:
                        cid = f"{agent}/{env_dir(env)}/{level}/seed{seed}"
                        path = out / cid
                        argv = base + ["--seed", str(seed), "--out", str(path)]
                        cell = Cell(agent, env, method, sparsity, seed, str(path), cid, argv,
                                    steps=run0.steps, dense_matched=info)
                        if check_existing:
                            _check_existing(cell, dataclasses.replace(run0, seed=seed, out=str(path)), config)
                        cells.append(cell)
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids)), "duplicate cells"
    return cells


def _check_existing(cell: Cell, run, config) -> None:
    """Refuse a grid whose cell directory holds a run of a different configuration."""
    import json

    from sparse_rl.train.serialize import config_diff

    path = Path(cell.path) / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable: the run itself reports it (and fails) when resumed
    diff = config_diff(old, expected_config(run, config), ignore=CONFIG_IGNORE)
    if diff:
        shown = ", ".join(diff[:6]) + (", ..." if len(diff) > 6 else "")
        raise ConfigError("out", f"{cell.path} holds a run with a different configuration ({shown})",
                          "the same grid as before, or a new --out")
