"""Sensitivity of a trained agent: post-hoc layer pruning and observation-noise robustness.

Post-hoc, per layer (`layer_sensitivity`): restore a run's checkpoint, prune one target at a time by
weight magnitude to increasing levels WITHOUT retraining, and measure the evaluation return. Targets
are every kernel of every network ("q/mlp/~/linear_0/w") and every whole network ("q", "actor",
"critic1", ...: each of its kernels pruned at the level). Levels are, by default, *relative*: level
`s` removes the fraction `s` of the layer's remaining (non-zero) weights, so a 90%-sparse layer at
level 0.5 keeps the larger half of its surviving 10%. With `mode="absolute"` level `s` means a layer
sparsity of `s` (levels below the layer's own sparsity change nothing). Level 0 is the unpruned
agent, so every curve starts at the same return.

Robustness (`noise_robustness`): evaluation under Gaussian observation noise. With
`noise_mode="std"` (default) the noise of each observation dimension has standard deviation
`scale * std_d`, `std_d` that dimension's standard deviation over the clean evaluation episodes
(observation dimensions differ in scale by orders of magnitude on classic control); with
`noise_mode="absolute"` it is `scale` itself. Integer observations (Atari frames) are rounded and
clipped to their dtype's range after the noise is added.

Every evaluation of one call uses the same env seeds (common random numbers), so differences
between levels come from the pruning or the noise, not from different start states.

Training-time per-component sensitivity is a sweep: see `scripts/sensitivity_*.toml` and
`component_table` / `sparse-rl analyze components`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl.errors import ConfigError, RunFileError, check, check_choice
from sparse_rl.train.rundir import read_json_checked

__all__ = ["LoadedRun", "load_run", "read_run_config", "evaluate", "prune_targets", "prune_state",
           "layer_sensitivity", "noise_robustness", "write_table", "component_table",
           "DEFAULT_LEVELS", "DEFAULT_NOISE", "MODES", "NOISE_MODES"]

DEFAULT_LEVELS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)
DEFAULT_NOISE = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5)
MODES = ("relative", "absolute")
NOISE_MODES = ("std", "absolute")


# --- restoring a run ---------------------------------------------------------------------------

@dataclasses.dataclass
class LoadedRun:
    """A run directory's agent, rebuilt from its config.json and restored from a checkpoint."""

    path: Path
    run: Any            # RunConfig
    config: Any         # the agent's Config
    spec: Any           # the agent's AgentSpec
    agent: Any
    env_spec: Any
    state: Any
    step: int           # env step of the checkpoint


def read_run_config(run_dir: Path) -> dict:
    """config.json of a run directory (ConfigError naming RUN_DIR if missing or unreadable)."""
    file = run_dir / "config.json"
    if not file.is_file():
        raise ConfigError("RUN_DIR", f"{run_dir} has no config.json", "a run directory written by sparse-rl train")
    try:
        return json.loads(file.read_text())
    except ValueError as e:
        raise ConfigError("RUN_DIR", f"{file} is not valid JSON ({e})") from None


def load_run(run_dir, step: int | None = None, env_spec=None) -> LoadedRun:
    """Rebuild the agent of `run_dir` from its config.json and restore its newest checkpoint
    (or the one at env step `step`). Raises ConfigError naming RUN_DIR when something is missing.
    `env_spec`: the specs to build the agent for (default: those of the run's env id)."""
    from sparse_rl import envs
    from sparse_rl.train import checkpoint as ckpt
    from sparse_rl import agents
    from sparse_rl.train.runner import RunConfig
    from sparse_rl.train.serialize import dataclass_from_dict

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError("RUN_DIR", f"{run_dir} is not a directory", "a run directory")
    cfg = read_run_config(run_dir)
    run_dict = dict(cfg.get("run", {}))
    known = {f.name for f in dataclasses.fields(RunConfig)}
    run = dataclass_from_dict(RunConfig, {k: v for k, v in run_dict.items() if k in known})
    spec = agents.spec(run.agent)
    config = dataclass_from_dict(spec.config, cfg.get("agent", {}))
    if env_spec is None:
        env_spec = envs.env_spec(run.env, **run.env_options())
    agent = spec.make(config, env_spec, run.steps)
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt.steps(ckpt_dir):
        raise ConfigError("RUN_DIR", f"{run_dir} has no complete checkpoint",
                          "a run trained with --checkpoint-every > 0 (the default)")
    template = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    try:
        restored = ckpt.load(ckpt_dir, {"agent": template}, step, load_extra=False)
    except ckpt.CheckpointError as e:
        raise ConfigError("RUN_DIR", str(e)) from None
    state = jax.tree_util.tree_map(jnp.asarray, restored.tree["agent"])
    return LoadedRun(run_dir, run, config, spec, agent, env_spec, state, int(restored.step))


# --- evaluation ----------------------------------------------------------------------------------

def _noisy(obs, sigma, rng):
    obs = np.asarray(obs)
    noisy = obs.astype(np.float64) + rng.normal(size=obs.shape) * sigma
    if np.issubdtype(obs.dtype, np.integer):
        info = np.iinfo(obs.dtype)
        noisy = np.clip(np.round(noisy), info.min, info.max)
    return noisy.astype(obs.dtype)


def evaluate(agent, state, env_id: str, episodes: int, seed: int = 0, *, obs_sigma=0.0,
             noise_seed: int = 0, max_steps: int | None = None, collect_obs: bool = False,
             env_options: dict | None = None):
    """Run `episodes` episodes of the agent's evaluation policy (one per env of a vector env).

    obs_sigma: standard deviation of Gaussian noise added to every observation the agent sees
    (a scalar or one value per observation dimension). Returns `(mean, std, returns)` (and the
    clean observations seen when `collect_obs`).
    """
    from sparse_rl import envs

    check(isinstance(episodes, int) and episodes > 0, "episodes", f"must be a positive int, got {episodes!r}")
    env = envs.make_vector_env(env_id, episodes, seed, **(env_options or {}))
    space = env.single_action_space
    low = getattr(space, "low", None)
    high = getattr(space, "high", None)
    rng = np.random.default_rng(noise_seed)
    key = jax.random.PRNGKey(seed)
    seen = []
    sigma = np.asarray(obs_sigma, np.float64)
    try:
        obs = env.reset()
        returns = np.zeros(episodes)
        done = np.zeros(episodes, bool)
        t = 0
        while not done.all() and (max_steps is None or t < max_steps):
            if collect_obs:
                seen.append(np.asarray(obs)[~done])
            seen_obs = _noisy(obs, sigma, rng) if np.any(sigma > 0) else obs
            action = np.asarray(agent.act(state, seen_obs, jax.random.fold_in(key, t), 0,
                                          evaluation=True))
            if low is not None and high is not None:
                action = np.clip(action, low, high)
            obs, reward, terminated, truncated, _ = env.step(action)
            returns += np.where(done, 0.0, reward)
            done |= np.asarray(terminated) | np.asarray(truncated)
            t += 1
    finally:
        env.close()
    out = (float(returns.mean()), float(returns.std()), returns)
    if collect_obs:
        return out + (np.concatenate(seen) if seen else np.zeros((0,)),)
    return out


# --- pruning -----------------------------------------------------------------------------------

def prune_targets(networks: dict) -> dict[str, tuple[str, list[str]]]:
    """`{target: (kind, [(network, kernel path)...])}`: every kernel ("layer") and every network
    ("network"), for `networks` = `agent.networks(state)`."""
    from sparse_rl.sparsity import leaf_paths

    targets = {}
    for name, (params, _) in networks.items():
        paths = jax.tree_util.tree_leaves(leaf_paths(params))
        kernels = [p for p, x in zip(paths, jax.tree_util.tree_leaves(params)) if np.ndim(x) >= 2]
        targets[name] = ("network", [(name, p) for p in kernels])
        for p in kernels:
            targets[f"{name}/{p}"] = ("layer", [(name, p)])
    return targets


def _prune_leaf(w, level: float, mode: str):
    from sparse_rl.sparsity import num_zeros, topk_mask

    w = jnp.asarray(w)
    n = int(w.size)
    if mode == "relative":
        active = int(np.count_nonzero(np.asarray(w)))
        keep = active - int(num_zeros(level, active))
    else:
        keep = n - int(num_zeros(level, n))
    mask = topk_mask(jnp.abs(w), keep)
    return jnp.where(mask, w, jnp.zeros_like(w))


def prune_state(agent, state, targets: Sequence[tuple[str, str]], level: float,
                mode: str = "relative"):
    """(new state, {(network, path): sparsity after}) with each listed kernel magnitude-pruned.

    Kernels are found in the state as the very arrays `agent.networks(state)` returns, so any agent
    state layout works; every place holding that array (e.g. a target network never updated since)
    is replaced.
    """
    from sparse_rl.sparsity import leaf_paths

    check_choice(mode, "mode", MODES)
    wanted = set(targets)
    replace: dict[int, Any] = {}
    sparsity = {}
    for name, (params, _) in agent.networks(state).items():
        paths = jax.tree_util.tree_leaves(leaf_paths(params))
        for p, x in zip(paths, jax.tree_util.tree_leaves(params)):
            if (name, p) in wanted:
                new = _prune_leaf(x, level, mode)
                replace[id(x)] = new
                sparsity[(name, p)] = 1.0 - float(np.count_nonzero(np.asarray(new))) / max(int(np.size(new)), 1)
    missing = wanted - set(sparsity)
    if missing:
        raise ConfigError("layers", f"not in the agent's networks: {sorted(missing)[0]}")
    new_state = jax.tree_util.tree_map(lambda x: replace.get(id(x), x), state)
    return new_state, sparsity


def _select(targets: dict, patterns: Sequence[str] | None) -> dict:
    if not patterns:
        return targets
    out = {}
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ConfigError("layers", f"invalid regex {pattern!r} ({e})") from None
        hits = {k: v for k, v in targets.items() if regex.search(k)}
        if not hits:
            raise ConfigError("layers", f"{pattern!r} matches no layer or network", ", ".join(targets))
        out.update(hits)
    return {k: targets[k] for k in targets if k in out}


def _check_levels(levels, field="levels"):
    levels = tuple(float(x) for x in levels)
    check(len(levels) > 0, field, "is empty")
    for x in levels:
        check(0.0 <= x <= 1.0 and math.isfinite(x), field, f"{x} is out of range", "floats in [0, 1]")
    return levels


def layer_sensitivity(loaded: LoadedRun, levels=DEFAULT_LEVELS, layers: Sequence[str] | None = None,
                      episodes: int = 10, seed: int = 0, mode: str = "relative") -> list[dict]:
    """Rows `{target, kind, level, sparsity, return_mean, return_std}` for each selected target
    (regexes on target names; default all) and level. `sparsity` is the target's sparsity after
    pruning (over its kernels). Level 0 is evaluated once and shared by every target."""
    check_choice(mode, "mode", MODES)
    levels = _check_levels(levels)
    targets = _select(prune_targets(loaded.agent.networks(loaded.state)), layers)
    cache: dict[float, tuple[float, float]] = {}
    sizes = {}
    for name, (params, _) in loaded.agent.networks(loaded.state).items():
        from sparse_rl.sparsity import leaf_paths
        for p, x in zip(jax.tree_util.tree_leaves(leaf_paths(params)), jax.tree_util.tree_leaves(params)):
            sizes[(name, p)] = int(np.size(x))
    rows = []
    for target, (kind, leaves) in targets.items():
        for level in levels:
            state, after = prune_state(loaded.agent, loaded.state, leaves, level, mode)
            total = sum(sizes[k] for k in leaves)
            sp = sum(after[k] * sizes[k] for k in leaves) / max(total, 1)
            if level == 0.0:  # the unpruned agent, in either mode
                if 0.0 not in cache:
                    cache[0.0] = evaluate(loaded.agent, state, loaded.run.env, episodes, seed)[:2]
                mean, std = cache[0.0]
            else:
                mean, std = evaluate(loaded.agent, state, loaded.run.env, episodes, seed)[:2]
            rows.append({"target": target, "kind": kind, "level": level, "sparsity": sp,
                         "return_mean": mean, "return_std": std})
    return rows


def noise_robustness(loaded: LoadedRun, scales=DEFAULT_NOISE, episodes: int = 10, seed: int = 0,
                     noise_mode: str = "std") -> list[dict]:
    """Rows `{scale, noise_mode, sigma_mean, return_mean, return_std}` (see the module docstring)."""
    check_choice(noise_mode, "noise_mode", NOISE_MODES)
    scales = tuple(float(s) for s in scales)
    check(len(scales) > 0 and all(s >= 0 and math.isfinite(s) for s in scales), "noise",
          f"got {scales}", "non-negative floats, e.g. 0,0.05,0.1")
    agent, state, env = loaded.agent, loaded.state, loaded.run.env
    mean0, std0, _, seen = evaluate(agent, state, env, episodes, seed, collect_obs=True)
    obs_std = np.std(seen.reshape(len(seen), -1).astype(np.float64), axis=0).reshape(seen.shape[1:]) \
        if len(seen) else np.ones(())
    rows = []
    for i, scale in enumerate(scales):
        sigma = scale * (obs_std if noise_mode == "std" else 1.0)
        if scale == 0.0:
            mean, std = mean0, std0
        else:
            mean, std = evaluate(agent, state, env, episodes, seed, obs_sigma=sigma,
                                 noise_seed=1000 + i)[:2]
        rows.append({"scale": scale, "noise_mode": noise_mode,
                     "sigma_mean": float(np.mean(sigma)), "return_mean": mean, "return_std": std})
    return rows


# --- tables --------------------------------------------------------------------------------------

def write_table(rows: Sequence[dict], csv_path, md_path=None, *, pivot: tuple[str, str] | None = None,
                title: str | None = None) -> list[Path]:
    """Rows -> CSV (every field) and optionally Markdown. With `pivot=(row_key, col_key)` the
    Markdown is a table of `return_mean ± return_std` with one row per `row_key` value and one
    column per `col_key` value; otherwise it lists the rows."""
    import csv

    rows = list(rows)
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    written = [csv_path]
    if md_path is None:
        return written
    lines = [f"# {title}", ""] if title else []
    if pivot and rows:
        rk, ck = pivot
        row_vals = list(dict.fromkeys(r[rk] for r in rows))
        col_vals = list(dict.fromkeys(r[ck] for r in rows))
        cell = {(r[rk], r[ck]): r for r in rows}
        lines.append("| " + rk + " | " + " | ".join(f"{ck} {c:g}" if isinstance(c, float) else str(c)
                                                    for c in col_vals) + " |")
        lines.append("|" + "---|" * (len(col_vals) + 1))
        for rv in row_vals:
            cells = []
            for cv in col_vals:
                r = cell.get((rv, cv))
                cells.append("" if r is None else f"{r['return_mean']:.1f} ± {r['return_std']:.1f}")
            lines.append(f"| `{rv}` | " + " | ".join(cells) + " |")
    elif rows:
        lines.append("| " + " | ".join(fields) + " |")
        lines.append("|" + "---|" * len(fields))
        for r in rows:
            lines.append("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float)
                                           else str(r.get(k, "")) for k in fields) + " |")
    md_path = Path(md_path)
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written + [md_path]


# --- training-time, per component -----------------------------------------------------------------

def find_runs(root) -> list[Path]:
    """Run directories (holding config.json) at or below `root`, sorted."""
    root = Path(root)
    if (root / "config.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("config.json")
                  if "checkpoints" not in p.parts and "analysis" not in p.relative_to(root).parts)


def _kernel_name(path: str) -> str:
    """"mlp/~/linear_1/w" -> "linear_1" (the module's last name)."""
    parts = [p for p in path.split("/") if p != "~"]
    if parts and parts[-1] == "w":
        parts = parts[:-1]
    return parts[-1] if parts else path


def component_table(roots: Sequence, threshold: float = 0.01) -> list[dict]:
    """One row per finished run below `roots` (summary.json): what is sparse, how sparse, and the
    final evaluation return. Each root is one sweep (one recipe of `scripts/sensitivity_*.toml`).

    Within a root, a kernel is *swept* when its measured sparsity differs between runs; the others
    that are sparse (above `threshold`) are *fixed*. `component` names the swept kernels by network
    ("actor", "critic1+critic2", or "q[linear_1]" when only some of a network's kernels), followed by
    the fixed networks and their sparsity ("critic1+critic2 (actor 0.80)"); "dense" when nothing is
    sparse. `sparsity` is the joint sparsity of the swept kernels. `series` (the line of the plot) is
    the root's name, plus the method when the root holds several, or "dense". Rows: `{run, series,
    agent, env, method, seed, component, sparsity, final_return, sparsity_<network>...}`.
    """
    rows = []
    for root in roots:
        root = Path(root)
        found = []
        for run in find_runs(root):
            file = run / "summary.json"
            if not file.is_file():
                continue
            try:
                s = read_json_checked(file)
            except RunFileError:  # issue 16: an unreadable or changed summary is left out
                continue
            kernels = {}
            for net, v in (s.get("networks") or {}).items():
                for path, c in ((v.get("layers") or {}) if isinstance(v, dict) else {}).items():
                    kernels[(net, path)] = (int(c["total"]), int(c["nonzero"]))
            found.append((run, s, kernels))
        sp = [{k: 1.0 - nz / t if t else 0.0 for k, (t, nz) in kern.items()} for _, _, kern in found]
        keys = list(dict.fromkeys(k for p in sp for k in p))
        swept = {k for k in keys if np.ptp([p.get(k, 0.0) for p in sp]) > 0.005} if sp else set()
        # a root's dense baseline (scripts/sensitivity_ppo_actor_small.toml) is its own series, so it
        # does not make the root's sparse runs look like several methods
        methods = {str(s.get("method")) for _, s, _ in found if s.get("method") != "dense"}
        by_net: dict[str, list] = {}
        for net, path in keys:
            by_net.setdefault(net, []).append(path)
        for (run, s, kern), per in zip(found, sp):
            sparse = [k for k in keys if per.get(k, 0.0) > threshold]
            moving = [k for k in sparse if k in swept] or sparse
            parts = []
            for net in by_net:
                mine = [p for n, p in moving if n == net]
                if not mine:
                    continue
                parts.append(net if set(mine) == set(by_net[net])
                             else f"{net}[{', '.join(_kernel_name(p) for p in mine)}]")
            label = "+".join(parts) if parts else "dense"
            fixed_nets = list(dict.fromkeys(n for n, p in sparse if (n, p) not in moving))
            if fixed_nets:
                def net_sparsity(net):
                    t = sum(kern[(n, p)][0] for n, p in sparse if n == net)
                    nz = sum(kern[(n, p)][1] for n, p in sparse if n == net)
                    return 1.0 - nz / t if t else 0.0
                label += " (" + ", ".join(f"{n} {net_sparsity(n):.2f}" for n in fixed_nets) + ")"
            tot = sum(kern[k][0] for k in moving)
            nz = sum(kern[k][1] for k in moving)
            series = "dense" if not sparse else root.name + (
                f" {s.get('method')}" if len(methods) > 1 else "")
            row = {"run": str(run), "series": series, "agent": s.get("agent"), "env": s.get("env"),
                   "method": s.get("method"), "seed": s.get("seed"), "component": label,
                   "sparsity": 1.0 - nz / tot if tot else 0.0,
                   "final_return": s.get("final_eval_return")}
            for net, paths in by_net.items():
                t = sum(kern.get((net, p), (0, 0))[0] for p in paths)
                z = sum(kern.get((net, p), (0, 0))[1] for p in paths)
                row[f"sparsity_{net}"] = 1.0 - z / t if t else 0.0
            rows.append(row)
    return rows


def component_summary(rows: Sequence[dict]) -> list[dict]:
    """`component_table` rows with a final return, summarised per (agent, env, series, component,
    sparsity rounded to 3 places) in first-seen order: `{agent, env, series, component, sparsity,
    return_mean, return_std, n}`; the std is over seeds (ddof 1; 0 for a single run), the figure a
    study's README table quotes."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        ret = r.get("final_return")
        if isinstance(ret, (int, float)) and math.isfinite(ret):
            key = (r.get("agent"), r.get("env"), r.get("series"), r.get("component"), round(r["sparsity"], 3))
            groups.setdefault(key, []).append(float(ret))
    return [{"agent": a, "env": e, "series": se, "component": c, "sparsity": sp,
             "return_mean": float(np.mean(v)), "return_std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
             "n": len(v)} for (a, e, se, c, sp), v in groups.items()]
