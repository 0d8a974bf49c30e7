"""`sparse-rl plot SWEEP_DIR`: learning curves, final score vs sparsity and vs parameter count,
rliable aggregates, and results tables of a sweep (see `sparse_rl.sweep.plots`)."""

from __future__ import annotations

import argparse
import sys

from sparse_rl.errors import ConfigError

DESCRIPTION = """Plot a sweep directory (written by `sparse-rl sweep`, or any directory of run
directories written by `sparse-rl train`). Run directories are found by walking SWEEP_DIR for
config.json files. Writes under --out: learning curves (curves_*), final return vs sparsity
(sparsity_*), final return vs parameter count (params_*), rliable aggregates over envs on normalised
scores (iqm_*, intervals_*, profiles_*, poi_*), results.csv (one row per run), scores.csv and
results.md (final scores per env/method/sparsity: mean, 95% bootstrap CI, n seeds). Failed,
incomplete or missing runs are listed and left out of the scores; what exists is still plotted."""


def build_parser() -> argparse.ArgumentParser:
    from sparse_rl.sweep.plots import FORMATS, X_AXES

    p = argparse.ArgumentParser(prog="sparse-rl plot", description=DESCRIPTION)
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="sweep directory (or any directory of runs)")
    p.add_argument("--out", default=None, help="output directory (default: SWEEP_DIR/plots)")
    p.add_argument("--formats", default="png,pdf",
                   help=f"comma-separated figure formats from {', '.join(FORMATS)} (default: png,pdf)")
    p.add_argument("--reps", default="2000",
                   help="bootstrap resamples for every confidence interval (default: 2000)")
    p.add_argument("--x", default="env_steps", help=f"x axis of the learning curves: "
                   f"{', '.join(X_AXES)} (default: env_steps)")
    p.add_argument("--quiet", action="store_true", help="print only the missing runs and errors")
    return p


def _reps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError("reps", f"not an integer: {text!r}", ">= 1 (e.g. 2000)") from None
    return value


def main(argv=None) -> int:
    from sparse_rl.sweep.plots import plot_sweep

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    formats = tuple(f.strip().lower().lstrip(".") for f in args.formats.split(",") if f.strip())
    echo = print
    if args.quiet:
        def echo(message: str) -> None:
            if message.startswith(("  ", "note:")) or "without a final score" in message:
                print(message)
    report = plot_sweep(args.sweep_dir, out=args.out, formats=formats, reps=_reps(args.reps),
                        x=args.x, echo=echo)
    if not args.quiet:
        print(f"table: {report.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    from sparse_rl.cli import main as _dispatch

    sys.exit(_dispatch(["plot", *sys.argv[1:]]))
