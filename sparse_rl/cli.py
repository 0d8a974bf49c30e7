"""`sparse-rl train | sweep | plot | analyze`.

`train` is parsed in two stages: the agent, environment and preset are read first (they decide
the defaults), then tyro parses every field of the run and of that agent's config, with the preset's
values as defaults, so `--help` shows the defaults that will actually be used.
"""

import argparse
import dataclasses
import importlib
import sys
from typing import Annotated

import numpy as np
import tyro

from sparse_rl.errors import ConfigError, check, check_choice, exit_status, one_line, through_parser
from sparse_rl.signals import interrupt_on_sigterm, restore_signals
from sparse_rl.train.callbacks import Callback, WandbCallback

COMMANDS = {
    "train": "sparse_rl.cli:train_main",
    "eval": "sparse_rl.cli:eval_main",
    "sweep": "sparse_rl.sweep.cli:main",
    "plot": "sparse_rl.sweep.plot_cli:main",
    "analyze": "sparse_rl.analysis.cli:main",
}

USAGE = """usage: sparse-rl {train,eval,sweep,plot,analyze} [options]

  train     train one agent (default: DQN, RigL 90% ERK, CartPole-v1)
  eval      returns (and videos) of a trained run's policy
  sweep     run a grid of agents x envs x methods x sparsities x seeds
  plot      learning curves, score vs sparsity and aggregates of a sweep
  analyze   gradient flow, sensitivity and topology analyses of a run or sweep

`sparse-rl COMMAND --help` documents each option."""

@dataclasses.dataclass(frozen=True)
class PresetOption:
    """The preset: the paper's settings for a family of environments."""

    preset: str = "classic"
    """Named preset of the agent's settings (README table); the default shown is the one that fits --env."""


def _pre_parse(argv):
    """Agent, env and preset, which decide the defaults of everything else."""
    from sparse_rl.train.runner import RunConfig

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--agent", default=RunConfig.agent)
    parser.add_argument("--env", default=RunConfig.env)
    parser.add_argument("--preset", default=None)
    known, _ = parser.parse_known_args(argv)
    return known


@dataclasses.dataclass(frozen=True)
class ProcessOptions:
    """Settings of the training process that are not part of the run (not in config.json)."""

    compile_cache: str | None = None
    """Directory of the persistent XLA compilation cache, or `off` (None: $SPARSE_RL_COMPILE_CACHE, else ~/.cache/sparse_rl/xla). Later runs with the same programs load them instead of compiling; results are the same."""
    cpu_threads: int | None = None
    """Threads of XLA's CPU thread pool for this run (None: 1 when the networks are small, largest layer under 3M multiply-adds per gradient step, else every core, at most $PJRT_NPROC). Large networks can differ in the last bits between counts: pin it to compare machines."""
    wandb: str | None = None
    """--wandb [PROJECT]: also log metrics and evaluations to Weights & Biases (extra [wandb]; project sparse_rl unless named; WANDB_MODE=offline keeps it local)."""


def progress_flags(argv: list[str]) -> list[str]:
    """`--progress` / `--no-progress` as plain flags (RunConfig.progress is a tri-state whose
    None, the default, means "live on a terminal, plain lines elsewhere"), and `--wandb` without
    a project name."""
    out = []
    for i, arg in enumerate(argv):
        bare = i + 1 == len(argv) or argv[i + 1].startswith("--")
        if arg == "--no-progress":
            out += ["--progress", "False"]
        elif arg == "--progress" and bare:
            out += ["--progress", "True"]
        elif arg == "--wandb" and bare:
            out += ["--wandb", "sparse_rl"]
        else:
            out.append(arg)
    return out


def build_train_args(argv):
    """(RunConfig, agent config) from command-line arguments."""
    run, config, _ = parse_train_args(argv)
    return run, config


def parse_train_args(argv):
    """(RunConfig, agent config, ProcessOptions) from command-line arguments."""
    from sparse_rl.configure import Shortcuts, apply_shortcuts, choose_preset
    from sparse_rl import agents
    from sparse_rl.train.runner import RunConfig

    argv = progress_flags(list(argv))
    pre = _pre_parse(argv)
    spec = agents.spec(pre.agent)
    preset = choose_preset(pre.agent, pre.env, pre.preset)

    @dataclasses.dataclass(frozen=True)
    class TrainArgs:
        """Train one sparse agent and write its run directory."""

        run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes]
        shortcuts: Annotated[Shortcuts, tyro.conf.OmitArgPrefixes]
        preset: Annotated[PresetOption, tyro.conf.OmitArgPrefixes]
        config: Annotated[spec.config, tyro.conf.arg(name=pre.agent)]
        process: Annotated[ProcessOptions, tyro.conf.OmitArgPrefixes]

    default = TrainArgs(
        run=RunConfig(agent=pre.agent, env=pre.env),
        shortcuts=Shortcuts(),
        preset=PresetOption(preset=preset),
        config=spec.presets[preset],
        process=ProcessOptions(),
    )
    with through_parser():
        args = tyro.cli(
            TrainArgs, default=default, args=argv, prog="sparse-rl train",
            description="Train one sparse agent and write its run directory (config.json, metrics.csv, summary.json, checkpoints).",
        )
    config = apply_shortcuts(pre.agent, preset, args.config, args.shortcuts)
    return args.run, config, args.process


def kernel_sparsity(summary: dict) -> float:
    """Share of zeros among the kernels (ndim >= 2) of every network: what the sparsity
    methods target. summary["sparsity"] also counts the biases, which stay dense."""
    layers = [layer for network in summary["networks"].values() for layer in network["layers"].values()]
    total = sum(layer["total"] for layer in layers)
    return 1.0 - sum(layer["nonzero"] for layer in layers) / total if total else 0.0


def summary_line(summary: dict, out: str) -> str:
    """The line `sparse-rl train` ends with."""
    final = summary.get("final_eval_return")
    return (f"done: {summary['agent']} on {summary['env']}, {summary['method']}: kernel sparsity "
            f"{kernel_sparsity(summary):.3f} ({summary['sparsity']:.3f} of all parameters, biases "
            f"dense), final eval return {'n/a' if final is None else f'{final:.2f}'}, "
            f"{summary['steps_per_second']:.0f} steps/s\nrun directory: {out}")


class AnnounceStart(Callback):
    """Print the run directory once it is open (after every check passed), so that a refused run
    still says only its one error line."""

    def __init__(self, run):
        self.verb = "resuming" if run.resume else "training"
        self.what = f"{run.agent} on {run.env}"

    def on_start(self, run_dir: str, config: dict) -> None:
        print(f"{self.verb} {self.what}: run directory {run_dir}", file=sys.stderr, flush=True)


def train_main(argv=None) -> int:
    from sparse_rl import agents
    from sparse_rl.configure import run_warnings
    from sparse_rl.train.compile_cache import enable_compile_cache
    from sparse_rl.train.dispatch import configure_training_process
    from sparse_rl.train.rundir import run_status
    from sparse_rl.train.runner import default_out, train

    argv = list(sys.argv[1:] if argv is None else argv)
    run, config, process = parse_train_args(argv)
    check(process.cpu_threads is None or process.cpu_threads >= 1, "cpu_threads",
          f"got {process.cpu_threads}", "an int >= 1, or leave it out (chosen from the network sizes)")
    # Before any computation: JAX reads both settings when its CPU client starts.
    configure_training_process(process.cpu_threads, agents.spec(run.agent).update_layer_macs(config))
    for warning in run_warnings(run, config):
        print(f"warning: {warning}", file=sys.stderr)
    enable_compile_cache(process.compile_cache)
    out = run.out or default_out(run, config)
    callbacks = [AnnounceStart(run)] + ([WandbCallback(project=process.wandb)] if process.wandb else [])
    try:
        summary = train(run, config, callbacks=callbacks)
        print(summary_line(summary, out))
    except KeyboardInterrupt:
        if run_status(out) != "complete":
            raise
        # issue 16: the signal landed after COMPLETE was written; the run is finished, not resumable
        print(f"interrupted after the run completed: {out} holds the finished run", file=sys.stderr)
    return 0


def int_option(value: str | None, name: str, default: int | None, low: int = 0) -> int | None:
    """An integer command-line value, or a ConfigError naming the flag."""
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    check(number is not None and number >= low, name, f"got {value!r}", f"an int >= {low}")
    return number


def eval_main(argv=None) -> int:
    from sparse_rl import api

    parser = argparse.ArgumentParser(
        prog="sparse-rl eval", allow_abbrev=False,
        description="Evaluate the policy of a run directory's newest checkpoint.")
    parser.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a run directory written by sparse-rl train")
    parser.add_argument("--episodes", help="evaluation episodes (default: 10)")
    parser.add_argument("--seed", help="seed of the evaluation envs (default: 0)")
    parser.add_argument("--step", help="env step of the checkpoint to load (default: the newest)")
    parser.add_argument("--env", help="evaluate on this gymnasium id instead of the run's env (same spaces)")
    parser.add_argument("--video", metavar="DIR",
                        help="also record --episodes episodes as mp4 files in DIR (extra [video])")
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if rest:
        raise ConfigError("eval", f"unknown argument {rest[0]!r}", "see sparse-rl eval --help")
    check(args.run_dir is not None, "RUN_DIR", "missing", "a run directory written by sparse-rl train")
    episodes = int_option(args.episodes, "episodes", 10, low=1)
    seed = int_option(args.seed, "seed", 0)
    policy = api.load(args.run_dir, step=int_option(args.step, "step", None))
    returns = api.evaluate(policy, args.env, episodes=episodes, seed=seed)
    print(f"{policy.run_config.agent} on {args.env or policy.env_id}, checkpoint at step "
          f"{policy.step}: return {np.mean(returns):.2f} +- {np.std(returns):.2f} over "
          f"{len(returns)} episodes")
    print("returns: " + " ".join(f"{r:g}" for r in returns))
    if args.video:
        api.record_video(policy, args.video, episodes=episodes, seed=seed, env=args.env)
        print(f"videos: {args.video}")
    return 0


def main(argv=None) -> int:
    console = argv is None  # the `sparse-rl` process itself, not a caller in Python
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            argv = ["train"]
        else:
            print(USAGE)
            return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: command: unknown command {command!r} (allowed: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module_name, function = COMMANDS[command].split(":")
    handlers = interrupt_on_sigterm()
    try:
        entry = getattr(importlib.import_module(module_name), function)
        return int(entry(rest) or 0)
    except Exception as error:  # issues 7, 16: one line and a status for what a user can meet
        status = exit_status(error)
        if status is None:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print("interrupted: the run can be continued with --resume", file=sys.stderr)
        return 130
    finally:
        restore_signals(handlers, finished=console)


def console_main() -> None:
    """The `sparse-rl` command: `main` in this process, which then ends without the interpreter's
    teardown (`sparse_rl.process`)."""
    from sparse_rl.process import exit_process

    exit_process(main())


if __name__ == "__main__":
    console_main()
