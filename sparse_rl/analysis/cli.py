"""`sparse-rl analyze gradient-flow | topology | sensitivity | components`.

    sparse-rl analyze gradient-flow runs/sweep1            # every run below the directory
    sparse-rl analyze topology runs/dqn-CartPole-v1-rigl-0.9-s0
    sparse-rl analyze sensitivity runs/dqn-CartPole-v1-rigl-0.9-s0 --episodes 10 --noise
    sparse-rl analyze components runs/sens-sac-actor runs/sens-sac-critic

Figures (PNG and PDF) and tables go to `<dir>/analysis/` (or `--out`); the command prints them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sparse_rl.errors import ConfigError, check

USAGE = "sparse-rl analyze {gradient-flow,topology,sensitivity,components} DIR [options]"


def _floats(text: str, field: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip() != "")
    except ValueError:
        raise ConfigError(field, f"not a list of numbers: {text!r}", "e.g. 0,0.5,0.9") from None
    check(len(values) > 0, field, "is empty", "e.g. 0,0.5,0.9")
    return values


def _dir(path: str, field: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(field, f"{path} does not exist", "an existing run or sweep directory")
    if not p.is_dir():
        raise ConfigError(field, f"{path} is not a directory", "an existing run or sweep directory")
    return p


def _out(args, base: Path) -> Path:
    return Path(args.out).expanduser() if args.out else base / "analysis"


def _runs_with_analysis(root: Path, field: str):
    from sparse_rl.analysis.plots import load_analysis
    from sparse_rl.analysis.sensitivity import find_runs

    runs = [r for r in (load_analysis(p) for p in find_runs(root)) if r is not None]
    if not runs:
        raise ConfigError(field, f"no run with an analysis.csv below {root}",
                          "runs trained with --analysis-every > 0 (the default) by the off-policy loop")
    return runs


def _report(files, what: str) -> None:
    print(f"{what}: wrote {len(files)} files")
    for f in files:
        print(f"  {f}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparse-rl analyze", allow_abbrev=False,
                                description="Analyses of trained sparse agents; figures and tables go to <dir>/analysis/.")
    sub = p.add_subparsers(dest="command", metavar="{gradient-flow,topology,sensitivity,components}")

    g = sub.add_parser("gradient-flow", help="gradient norms, distance from init, SNR over training",
                       description="Plot the gradient flow recorded during training (analysis.csv) of a run, "
                                   "or of every run below a sweep directory grouped by method and sparsity.")
    g.add_argument("dir", metavar="RUN_OR_SWEEP_DIR")
    g.add_argument("--out", help="output directory (default <dir>/analysis)")

    t = sub.add_parser("topology", help="churn, positions ever active, dormant neurons, fan-in",
                       description="Plot topology dynamics recorded during training; for a single run also the "
                                   "fan-in of every unit at the last checkpoint.")
    t.add_argument("dir", metavar="RUN_OR_SWEEP_DIR")
    t.add_argument("--out", help="output directory (default <dir>/analysis)")

    s = sub.add_parser("sensitivity", help="post-hoc layer pruning and observation-noise robustness",
                       description="Prune one layer (or network) at a time by magnitude without retraining and "
                                   "evaluate the return; optionally evaluate under Gaussian observation noise.")
    s.add_argument("dir", metavar="RUN_DIR")
    s.add_argument("--layers", nargs="+", metavar="REGEX",
                   help="targets to prune (regexes on names like 'q/mlp/~/linear_0/w' or 'q'); default all")
    s.add_argument("--levels", default="0,0.5,0.8,0.9,0.95,0.99",
                   help="pruning levels, comma-separated (default 0,0.5,0.8,0.9,0.95,0.99)")
    s.add_argument("--mode", default="relative", choices=("relative", "absolute"),
                   help="relative: a level removes that fraction of the layer's remaining weights "
                        "(default); absolute: a level is the layer's sparsity")
    s.add_argument("--episodes", type=int, default=10, help="evaluation episodes per point (default 10)")
    s.add_argument("--seed", type=int, default=0, help="evaluation env seed (default 0)")
    s.add_argument("--step", type=int, default=None, help="checkpoint step (default the newest)")
    s.add_argument("--noise", nargs="?", const="0,0.01,0.05,0.1,0.2,0.5", default=None, metavar="SCALES",
                   help="also evaluate under Gaussian observation noise of these scales "
                        "(default when given without value: 0,0.01,0.05,0.1,0.2,0.5)")
    s.add_argument("--noise-mode", default="std", choices=("std", "absolute"),
                   help="std: sigma = scale x each observation dimension's std over clean episodes "
                        "(default); absolute: sigma = scale")
    s.add_argument("--no-pruning", action="store_true", help="skip the pruning study (only --noise)")
    s.add_argument("--out", help="output directory (default <dir>/analysis)")

    c = sub.add_parser("components", help="final return vs each component's sparsity (sweeps)",
                       description="Training-time per-component sensitivity: final return vs the sparsity of "
                                   "the sparse network(s) of every finished run below the directories "
                                   "(e.g. sweeps of scripts/sensitivity_*.toml).")
    c.add_argument("dirs", nargs="+", metavar="SWEEP_DIR")
    c.add_argument("--out", help="output directory (default <first dir>/analysis)")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv:
        parser.print_help()
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "gradient-flow":
        return _gradient_flow(args)
    if args.command == "topology":
        return _topology(args)
    if args.command == "sensitivity":
        return _sensitivity(args)
    return _components(args)


def _gradient_flow(args) -> int:
    from sparse_rl.analysis import plots

    root = _dir(args.dir, "RUN_OR_SWEEP_DIR")
    runs = _runs_with_analysis(root, "RUN_OR_SWEEP_DIR")
    files = plots.plot_gradient_flow(runs, _out(args, root))
    _report(files, f"gradient flow of {len(runs)} run(s)")
    return 0


def _topology(args) -> int:
    from sparse_rl.analysis import plots, topology
    from sparse_rl.analysis.sensitivity import load_run

    root = _dir(args.dir, "RUN_OR_SWEEP_DIR")
    runs = _runs_with_analysis(root, "RUN_OR_SWEEP_DIR")
    out = _out(args, root)
    fan = None
    files = []
    if len(runs) == 1:
        try:
            loaded = load_run(runs[0].path)
        except ConfigError as e:
            print(f"note: no fan-in histogram ({e})", file=sys.stderr)
        else:
            fan = {}
            rows = []
            for name, (_, masks) in loaded.agent.networks(loaded.state).items():
                for layer, f in topology.fan_in(masks).items():
                    fan[f"{name}/{layer}"] = f
                for layer, d in topology.dead_units(masks).items():
                    rows.append({"network": name, "layer": layer, **d})
            from sparse_rl.analysis.sensitivity import write_table
            files += write_table(rows, out / "fan_in.csv", out / "fan_in.md",
                                 title=f"Dead units (fan-in 0) at step {loaded.step}")
    files += plots.plot_topology(runs, out, fan_in=fan)
    _report(files, f"topology of {len(runs)} run(s)")
    return 0


def _sensitivity(args) -> int:
    from sparse_rl.analysis import plots, sensitivity as S

    root = _dir(args.dir, "RUN_DIR")
    levels = _floats(args.levels, "levels")
    check(args.episodes > 0, "episodes", f"must be > 0, got {args.episodes}")
    scales = _floats(args.noise, "noise") if args.noise is not None else None
    check(not args.no_pruning or scales is not None, "no-pruning", "leaves nothing to do", "add --noise")
    loaded = S.load_run(root, args.step)
    out = _out(args, root)
    title = f"{loaded.run.agent} {loaded.run.env}, checkpoint at step {loaded.step}"
    files = []
    if not args.no_pruning:
        rows = S.layer_sensitivity(loaded, levels, args.layers, args.episodes, args.seed, args.mode)
        files += S.write_table(rows, out / "sensitivity.csv", out / "sensitivity.md",
                               pivot=("target", "level"),
                               title=f"Return after magnitude pruning ({args.mode} levels), {title}")
        files += plots.plot_sensitivity(rows, out, title=title)
    if scales is not None:
        rows = S.noise_robustness(loaded, scales, args.episodes, args.seed, args.noise_mode)
        files += S.write_table(rows, out / "robustness.csv", out / "robustness.md",
                               title=f"Return under Gaussian observation noise ({args.noise_mode}), {title}")
        files += plots.plot_robustness(rows, out, title=title)
    _report(files, "sensitivity")
    return 0


def _components(args) -> int:
    from sparse_rl.analysis import plots, sensitivity as S

    roots = [_dir(d, "SWEEP_DIR") for d in args.dirs]
    rows = S.component_table(roots)
    if not [r for r in rows if r.get("final_return") is not None]:
        raise ConfigError("SWEEP_DIR", f"no finished run (summary.json) below {', '.join(args.dirs)}")
    out = _out(args, roots[0])
    files = S.write_table(rows, out / "components.csv")
    files += S.write_table(S.component_summary(rows), out / "components_summary.csv", out / "components_summary.md",
                           title="Final return per component and sparsity (mean, std over seeds, n)")
    files += plots.plot_components(rows, out)
    _report(files, f"per-component sensitivity of {len(rows)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
