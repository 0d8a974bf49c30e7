"""`sparse-rl sweep`: a grid of training runs, run locally in worker processes or on Ray.

    sparse-rl sweep --agent dqn --env CartPole-v1,Acrobot-v1 --methods static,rigl \\
        --sparsities 0.5,0.9 --seeds 0,1 --steps 600 --out runs/sweep1 --set dqn.widths=32,32

Every other `sparse-rl train` flag (e.g. `--eval-every 200`, `--dqn.batch-size 64`) is passed
to every cell as given. See `sparse_rl.sweep.grid` for the layout and the grid file format.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

from sparse_rl.errors import ConfigError, RunFileError, check, check_choice
from sparse_rl.sweep import grid as G

BACKENDS = ("local", "ray")
# Files sparse_rl writes first into a sweep directory of its own (see rundir.check_owned).
SWEEP_MARKS = ("sweep.json", "sweep.lock")
OPTION_DEFAULTS = {"workers": None, "backend": "local", "ray_address": None, "cpus_per_run": None,
                   "retry_failed": False, "vectorize_seeds": False, "vectorize_sparsities": False,
                   "dry_run": False, "progress": None,
                   "compile_cache": True, "large_grid": False}

EPILOG = """\
Cells are run directories <out>/<agent>/<env>/<level>/seed<k>, <level> = dense | <method>-<sparsity>
(e.g. rigl-0.9, dense-matched-0.9); <out>/sweep.json lists them with their train argv.
Re-running the same command skips complete cells, resumes interrupted ones and reports failed ones
(re-run them with --retry-failed). Any other `sparse-rl train` flag is passed to every cell.
Grid files (TOML or YAML) hold the same keys: agents, envs, methods, sparsities, seeds (a list or
a count), steps, out, workers, backend, cpus_per_run, vectorize_seeds and a [set] table of train
flags (e.g. "dqn.widths" = [64, 64]); command-line values take precedence.
Exit status: 0 all cells complete, 1 some cell failed or is in use, 2 bad input, 130 interrupted.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sparse-rl sweep", allow_abbrev=False, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a grid of agents x envs x methods x sparsities x seeds.")
    p.add_argument("--grid", help="grid file (.toml, .yaml); command-line values take precedence")
    p.add_argument("--agent", "--agents", dest="agents", help="agents, comma-separated (dqn, sac, ppo); default dqn")
    p.add_argument("--env", "--envs", dest="envs", help="environment ids, comma-separated; default CartPole-v1")
    p.add_argument("--methods", "--method", dest="methods",
                   help=f"methods, comma-separated ({', '.join(G.SWEEP_METHODS)}); default rigl")
    p.add_argument("--sparsities", "--sparsity", dest="sparsities",
                   help="sparsity levels, comma-separated, e.g. 0.5,0.9 (not used by dense)")
    p.add_argument("--seeds", "--seed", dest="seeds", help="seeds: 0,1,2 or a range 0-9; default 0")
    p.add_argument("--steps", type=int, help="environment steps per run (default: the train default)")
    p.add_argument("--out", help="sweep directory (default runs/sweep)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a train flag for every cell, e.g. dqn.widths=64,64 or eval-every=500 "
                        "(lists comma-separated; true/false for switches); repeatable")
    p.add_argument("--workers", type=int, help="parallel runs (default: number of CPU cores)")
    p.add_argument("--backend", choices=None, help="local (default) or ray")
    p.add_argument("--ray-address", help="address of an existing Ray cluster (default: a local instance on 127.0.0.1)")
    p.add_argument("--cpus-per-run", type=float,
                   help="CPUs per run: its compute threads (local and Ray) and its Ray resource request; default 1")
    p.add_argument("--retry-failed", action="store_true", default=None, help="re-run failed cells (resuming from their last checkpoint)")
    p.add_argument("--vectorize-seeds", action="store_true", default=None,
                   help="train the seeds of a cell in one process, vmapped (DQN, SAC, PPO); with fewer such groups "
                        "than workers, a group is split into one process per worker")
    p.add_argument("--vectorize-sparsities", action="store_true", default=None,
                   help="also train the sparsity levels of a method together (implies --vectorize-seeds)")
    p.add_argument("--large-grid", action="store_true",
                   help=f"run a grid of more than {G.MAX_CELLS} cells (refused without it)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, print the cells, their status and what the runs still to do will cost "
                        "(env steps, memory per run, CPU hours from measured throughput); run nothing")
    p.add_argument("--progress", action="store_true", help="a live progress line even when not on a terminal")
    p.add_argument("--no-progress", action="store_true", help="no progress line (default: live on a terminal only)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not share compiled programs between runs (<out>/.jax_cache)")
    return p


def build_grid(argv) -> tuple[G.Grid, dict, list[str]]:
    """(Grid, options, the sweep's own argv) from the command line (and its --grid file)."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    grid, options = (G.grid_from_file(args.grid) if args.grid else (G.Grid(), {}))
    fields = {}
    if args.agents is not None:
        fields["agents"] = tuple(G.split_list(args.agents, "agents"))
    if args.envs is not None:
        fields["envs"] = tuple(G.split_list(args.envs, "envs"))
    if args.methods is not None:
        fields["methods"] = tuple(G.split_list(args.methods, "methods"))
    if args.sparsities is not None:
        fields["sparsities"] = G.parse_sparsities(args.sparsities)
    if args.seeds is not None:
        fields["seeds"] = G.parse_seeds(args.seeds)
    if args.steps is not None:
        fields["steps"] = args.steps
    if args.out is not None:
        fields["out"] = args.out
    overrides = tuple(G.parse_set(s, source=f"--set {s}") for s in args.overrides)
    fields["overrides"] = grid.overrides + overrides
    for token in rest:
        if token.startswith("-") and not token.startswith("--"):
            raise ConfigError("sweep", f"unknown option {token!r}", "see sparse-rl sweep --help")
    fields["train_args"] = tuple(rest)
    grid = dataclasses.replace(grid, **fields)
    for name in ("workers", "backend", "ray_address", "cpus_per_run", "retry_failed", "vectorize_seeds",
                 "vectorize_sparsities"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    options["dry_run"] = args.dry_run
    options["large_grid"] = args.large_grid
    options["progress"] = False if args.no_progress else (True if args.progress else None)
    if args.no_compile_cache:
        options["compile_cache"] = False
    return grid, default_options(options), list(argv)


def default_options(options: dict | None = None) -> dict:
    """Sweep options with defaults filled in, validated."""
    options = dict(options or {})
    unknown = set(options) - set(OPTION_DEFAULTS)
    check(not unknown, "options", f"unknown {sorted(unknown)}", ", ".join(OPTION_DEFAULTS))
    for key, value in OPTION_DEFAULTS.items():
        options.setdefault(key, value)
    if options["workers"] is None:
        options["workers"] = os.cpu_count() or 1
    check_choice(options["backend"], "backend", BACKENDS)
    w = options["workers"]
    check(isinstance(w, int) and not isinstance(w, bool) and w >= 1, "workers", f"must be an integer >= 1, got {w!r}")
    c = options["cpus_per_run"]
    check(c is None or (isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0), "cpus_per_run",
          f"must be > 0, got {c!r}")
    check(options["ray_address"] is None or options["backend"] == "ray", "ray_address",
          "only used with --backend ray")
    for key in ("retry_failed", "vectorize_seeds", "vectorize_sparsities", "dry_run", "compile_cache",
                "large_grid"):
        check(isinstance(options[key], bool), key, f"must be true or false, got {options[key]!r}")
    return options


# ----------------------------------------------------------------------------- status and tasks

def classify(cells: list[G.Cell], retry_failed: bool) -> dict[str, str]:
    """Per cell id: complete | failed | busy | run (absent) | resume (incomplete, or failed+retry)."""
    from sparse_rl.train.rundir import RunDir, run_status

    out = {}
    for cell in cells:
        status = run_status(cell.path)
        if status == "complete":
            out[cell.id] = "complete"
        elif status == "failed":
            out[cell.id] = "resume" if retry_failed else "failed"
        elif status == "incomplete":
            out[cell.id] = "busy" if RunDir.in_use(cell.path) else "resume"
        else:
            out[cell.id] = "run"
    return out


def make_tasks(cells: list[G.Cell], states: dict[str, str], vectorize: bool,
               levels: bool = False, workers: int = 1) -> list[dict]:
    """Worker tasks for the cells to run: one cell each, or with `vectorize` the cells of a cell
    group (its seeds; with `levels` also the sparsity levels of a sparse method) together, cells
    to resume with those whose newest checkpoint is at the same step.
    With fewer vectorized tasks than `workers`, groups are split into consecutive sub-groups
    (e.g. 8 seeds, 2 workers: 2 processes of 4 seeds), so that every worker has one."""
    from sparse_rl.train import checkpoint as ckpt
    from sparse_rl.train.rundir import CHECKPOINTS

    def spec(c: G.Cell) -> dict:
        return {"id": c.id, "path": c.path, "argv": c.argv, "resume": states[c.id] == "resume",
                "dense_matched": c.dense_matched, "steps": c.steps}

    todo = [c for c in cells if states[c.id] in ("run", "resume")]
    if not vectorize:
        return [{"cells": [spec(c)], "vectorized": False} for c in todo]
    groups: OrderedDict[tuple, list[G.Cell]] = OrderedDict()
    for c in todo:
        # A group resumes as a group from checkpoints at one step (the runs of an interrupted
        # group stop together), so cells to resume are grouped by their newest checkpoint's step
        # as well; fresh cells (and those with no checkpoint yet) start together.
        key = f"{c.agent}/{c.env}/{c.method}" if levels and c.method in G.SPARSE_METHODS else c.group
        step = ckpt.latest(Path(c.path) / CHECKPOINTS) if states[c.id] == "resume" else None
        groups.setdefault((key, step), []).append(c)
    tasks = []
    parts = split_groups([len(g) for g in groups.values()], workers)
    for group, n in zip(groups.values(), parts):
        for i in range(n):
            sub = group[i * len(group) // n:(i + 1) * len(group) // n]
            tasks.append({"cells": [spec(c) for c in sub], "vectorized": len(sub) > 1})
    return tasks


def split_groups(sizes: list[int], workers: int) -> list[int]:
    """Into how many sub-groups each vectorized group of `sizes` runs is split: while there are
    fewer sub-groups than `workers`, the group with the largest sub-groups gets one more."""
    parts = [1] * len(sizes)
    while sizes and sum(parts) < workers:
        i = max(range(len(sizes)), key=lambda k: sizes[k] / parts[k])
        if sizes[i] <= parts[i]:
            break
        parts[i] += 1
    return parts


def fix_dense_matched(cells: list[G.Cell], states: dict[str, str]) -> None:
    """Complete dense-matched cells whose summary lacks `dense_matched` (a worker stopped between
    COMPLETE and the summary update) get it added; the training results are untouched."""
    from sparse_rl.sweep.local import add_dense_matched

    for c in cells:
        if c.dense_matched and states[c.id] == "complete":
            add_dense_matched(c.path, c.dense_matched)


def write_sweep_json(out: Path, grid: G.Grid, options: dict, argv: list[str], cells: list[G.Cell],
                     statuses: dict[str, str]) -> None:
    from sparse_rl.train.rundir import read_json_checked, write_json_checked

    path = out / "sweep.json"
    entries = OrderedDict()
    if path.is_file():  # keep cells of earlier grids swept into the same directory
        try:
            for e in read_json_checked(path).get("cells", []):
                entries[e["id"]] = e
        except (RunFileError, KeyError, TypeError) as error:  # rewritten from this grid's cells
            print(f"warning: {error}; sweep.json is rewritten from this grid's cells", file=sys.stderr)
    for c in cells:
        e = c.to_json()
        e["path"] = c.id
        e["status"] = statuses.get(c.id)
        entries[c.id] = e
    doc = {
        "format": 1,
        "command": ["sparse-rl", "sweep", *argv],
        "layout": "<agent>/<env>/<level>/seed<k>; level = dense | <method>-<sparsity>",
        "grid": {
            "agents": list(grid.agents), "envs": list(grid.envs), "methods": list(grid.methods),
            "sparsities": list(grid.sparsities), "seeds": list(grid.seeds), "steps": grid.steps,
            "overrides": [[o.flag, *o.values] for o in grid.overrides],
            "train_args": list(grid.train_args),
        },
        "backend": options["backend"],
        "vectorize_seeds": bool(options["vectorize_seeds"]),
        "vectorize_sparsities": bool(options["vectorize_sparsities"]),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cells": list(entries.values()),
    }
    write_json_checked(path, doc)  # issue 16: with a checksum


# ----------------------------------------------------------------------------- report

def summary_table(cells: list[G.Cell], statuses: dict[str, str]) -> str:
    """One row per (agent, env, level): complete/total seeds, failed, final eval return."""
    rows = OrderedDict()
    for c in cells:
        rows.setdefault((c.agent, c.env, c.level), []).append(c)
    from sparse_rl.train.rundir import read_json_checked

    header = ("agent", "env", "level", "complete", "failed", "final return (mean ± std)")
    lines = [header]
    unread = []
    for (agent, env, level), group in rows.items():
        finals = []
        for c in group:
            if statuses[c.id] == "complete":
                try:
                    value = read_json_checked(Path(c.path) / "summary.json").get("final_eval_return")
                except RunFileError as error:  # issue 16: reported below, never averaged
                    unread.append(str(error))
                    value = None
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    finals.append(float(value))
        done = sum(statuses[c.id] == "complete" for c in group)
        failed = sum(statuses[c.id] == "failed" for c in group)
        if finals:
            mean = sum(finals) / len(finals)
            std = math.sqrt(sum((f - mean) ** 2 for f in finals) / len(finals))
            ret = f"{mean:.2f} ± {std:.2f}"
            if len(finals) != done:  # a table never claims more seeds than it averaged
                ret += f" (n={len(finals)})"
        else:
            ret = "-"
        lines.append((agent, env, level, f"{done}/{len(group)}", str(failed), ret))
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    if unread:
        text += ["", f"{len(unread)} complete run(s) left out of the returns (delete the run directory "
                 "to train it again):"] + [f"  {line}" for line in unread]
    return "\n".join(text)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    grid, options, argv = build_grid(argv)
    return run_sweep(grid, options, argv)


def run_sweep(grid: G.Grid, options: dict, argv: list[str] | None = None) -> int:
    """Validate `grid`, run what is not finished, report; returns the exit status (see EPILOG)."""
    argv = list(argv or [])
    cells = G.plan(grid, max_cells=None if options["large_grid"] else G.MAX_CELLS)
    out = Path(grid.out).expanduser().resolve()
    from sparse_rl.train.rundir import check_owned

    check_owned(out, SWEEP_MARKS, "out", "a sweep directory",
                "a new or empty directory, or one written by sparse-rl sweep")
    states = classify(cells, options["retry_failed"])
    counts = {k: sum(1 for v in states.values() if v == k) for k in ("complete", "failed", "busy", "resume", "run")}
    print(f"sweep {out}: {len(cells)} cells: {counts['complete']} complete, {counts['run']} to run, "
          f"{counts['resume']} to resume, {counts['failed']} failed (not retried), {counts['busy']} in use elsewhere",
          file=sys.stderr)
    if options["dry_run"]:
        from sparse_rl.cli import build_train_args
        from sparse_rl.sweep.cost import estimate, format_estimate

        for c in cells:
            print(f"{states[c.id]:9s} {c.id}  sparse-rl train {' '.join(c.argv)}")
        todo = [c for c in cells if states[c.id] in ("run", "resume")]
        print(format_estimate(estimate(todo, build_train_args), options["workers"]))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    with _SweepLock(out):
        fix_dense_matched(cells, states)  # writes into cells: only under the sweep's lock
        tasks = make_tasks(cells, states, options["vectorize_seeds"] or options["vectorize_sparsities"],
                           levels=options["vectorize_sparsities"], workers=options["workers"])
        statuses = {cid: ("complete" if s == "complete" else "failed" if s == "failed" else
                          "busy" if s == "busy" else "pending") for cid, s in states.items()}
        write_sweep_json(out, grid, options, argv, cells, statuses)
        results = []
        interrupted = False
        if tasks:
            from sparse_rl.sweep.local import SweepProgress

            progress = SweepProgress(tasks, enabled=options["progress"])
            try:
                if options["backend"] == "ray":
                    from sparse_rl.sweep.ray_backend import run_ray

                    results = run_ray(tasks, str(out), address=options["ray_address"],
                                      cpus_per_run=options["cpus_per_run"] or 1.0,
                                      workers=options["workers"], progress=progress,
                                      compile_cache=options["compile_cache"])
                else:
                    from sparse_rl.sweep.local import run_local

                    cpus = options["cpus_per_run"]
                    results = run_local(tasks, str(out), workers=options["workers"],
                                        threads=None if cpus is None else max(1, math.ceil(cpus)),
                                        progress=progress, compile_cache=options["compile_cache"])
            except KeyboardInterrupt:
                interrupted = True
            finally:
                progress.close()
        from sparse_rl.train.rundir import run_status

        for c in cells:  # the run directories are the record
            s = run_status(c.path)
            if s in ("complete", "failed"):
                statuses[c.id] = s
            elif statuses[c.id] == "pending":
                statuses[c.id] = "interrupted" if interrupted else "incomplete"
        for r in results:
            if r["status"] == "busy":
                statuses[r["id"]] = "busy"
        write_sweep_json(out, grid, options, argv, cells, statuses)
    print(summary_table(cells, statuses))
    failed = [c for c in cells if statuses[c.id] == "failed"]
    others = [c for c in cells if statuses[c.id] not in ("complete", "failed")]
    if failed:
        from sparse_rl.sweep.local import failure_message, first_line

        print(f"\n{len(failed)} failed cell(s) (re-run with --retry-failed):")
        for c in failed:
            print(f"  {c.id}: {first_line(failure_message(c.path)) or 'FAILED'}")
            print(f"    {Path(c.path) / 'FAILED'}")
    if others:
        print(f"\n{len(others)} cell(s) not finished: " + ", ".join(f"{c.id} ({statuses[c.id]})" for c in others[:8])
              + (", ..." if len(others) > 8 else ""))
    if interrupted:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    return 0 if not failed and not others else 1


class _SweepLock:
    """`<out>/sweep.lock`: one sweep process per sweep directory at a time."""

    def __init__(self, out: Path):
        self.path = out / "sweep.lock"
        self.fd = None

    def __enter__(self):
        import fcntl

        from sparse_rl.train.rundir import open_lock

        self.fd = open_lock(self.path)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ConfigError("out", f"another sweep is running in {self.path.parent}",
                              "wait for it, or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
