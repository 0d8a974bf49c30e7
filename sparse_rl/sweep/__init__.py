"""Sweeps: grids of training runs (agents x envs x methods x sparsities x seeds).

    sparse-rl sweep --agent dqn --env CartPole-v1 --methods static,rigl --sparsities 0.5,0.9 \
        --seeds 0,1 --steps 600 --out runs/sweep1

Python API:

    from sparse_rl.sweep import Grid, plan, run_sweep
    grid = Grid(agents=("dqn",), envs=("CartPole-v1",), methods=("static", "rigl"),
                sparsities=(0.5, 0.9), seeds=(0, 1), steps=600, out="runs/sweep1")
    cells = plan(grid)               # validated cells (run directories and their train argv)
    status = run_sweep(grid, {"workers": 2})   # 0 when every cell is complete

Modules: `grid` (grids, grid files, validation, cell layout), `local` (worker processes, the
default backend), `ray_backend` (Ray tasks), `matched` (param-matched dense widths), `cli`.
"""

from sparse_rl.sweep.grid import SWEEP_METHODS, Cell, Grid, Override, grid_from_file, level_name, plan

__all__ = ["Grid", "Cell", "Override", "plan", "grid_from_file", "level_name", "SWEEP_METHODS",
           "run_sweep", "build_grid", "main"]


def run_sweep(grid, options=None, argv=None) -> int:
    """Run `grid` (see `sparse_rl.sweep.cli.run_sweep`); `options` as the command-line flags."""
    from sparse_rl.sweep import cli

    return cli.run_sweep(grid, cli.default_options(options), argv)


def build_grid(argv):
    from sparse_rl.sweep import cli

    return cli.build_grid(argv)


def main(argv=None) -> int:
    from sparse_rl.sweep import cli

    return cli.main(argv)
