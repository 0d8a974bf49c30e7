"""`sparse-rl train | sweep | plot | analyze`.

`train` is parsed in two stages: the agent, environment and preset are read first (they decide
the defaults), then tyro parses every field of the run and of that agent's config, with the preset's
values as defaults, so `--help` shows the defaults that will actually be used.
"""

import argparse
import dataclasses
import importlib
import signal
import sys
import threading
from typing import Annotated

import tyro

from sparse_rl.errors import check_choice, exit_status, one_line, through_parser

COMMANDS = {
    "train": "sparse_rl.cli:train_main",
    "sweep": "sparse_rl.sweep.cli:main",
    "plot": "sparse_rl.sweep.plot_cli:main",
    "analyze": "sparse_rl.analysis.cli:main",
}

USAGE = """usage: sparse-rl {train,sweep,plot,analyze} [options]

  train     train one agent (default: DQN, RigL 90% ERK, CartPole-v1)
  sweep     run a grid of agents x envs x methods x sparsities x seeds
  plot      learning curves, score vs sparsity and aggregates of a sweep
  analyze   gradient flow, sensitivity and topology analyses of a run or sweep

`sparse-rl COMMAND --help` documents each option."""

def _shortcuts(agent: str):
    """Top-level flags that set every network's sparsity config of the agent at once."""

    @dataclasses.dataclass(frozen=True)
    class Shortcuts:
        method: str | None = None
        """Sparsity method for every network: dense, static, prune, set, rigl (default: the preset's)."""
        sparsity: float | None = None
        """Target sparsity in [0, 1) for every network (default: the preset's)."""
        distribution: str | None = None
        """Per-layer distribution for every network: erk or uniform."""
        update_every: int | None = None
        """Topology update interval in gradient steps (default: the paper's for the method)."""
        drop_fraction: float | None = None
        """Initial drop fraction of SET/RigL (default: the paper's for the method)."""
        preset: str | None = None
        """Named preset of the agent's settings (see README); default by environment family."""

    Shortcuts.__name__ = f"{agent.upper()}Shortcuts"
    return Shortcuts


def apply_shortcuts(spec, preset: str, config, shortcuts):
    """Agent config with the shortcut flags applied to each of its sparsity configs (the agent
    spec's `sparsity_fields`).

    A method chosen on the command line takes the paper's schedule defaults for that method and
    preset (update interval, drop fraction) unless they are given too.
    """
    defaults = spec.method_defaults.get(preset, {})
    changes = {}
    for field in spec.sparsity_fields:
        sparsity_config = getattr(config, field)
        update = {}
        if shortcuts.method is not None:
            update["method"] = shortcuts.method
            if shortcuts.method != sparsity_config.method:
                update.update(defaults.get(shortcuts.method, {}))
        for name in ("sparsity", "distribution", "update_every", "drop_fraction"):
            value = getattr(shortcuts, name)
            if value is not None:
                update[name] = value
        if update:
            changes[field] = dataclasses.replace(sparsity_config, **update)
    return dataclasses.replace(config, **changes) if changes else config


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
    """Directory of the persistent XLA compilation cache, or `off` (default: $SPARSE_RL_COMPILE_CACHE, else ~/.cache/sparse_rl/xla). Later runs with the same programs load them instead of compiling; results are the same."""


def build_train_args(argv):
    """(RunConfig, agent config) from command-line arguments."""
    run, config, _ = parse_train_args(argv)
    return run, config


def parse_train_args(argv):
    """(RunConfig, agent config, ProcessOptions) from command-line arguments."""
    from sparse_rl import agents, envs
    from sparse_rl.train.runner import RunConfig

    pre = _pre_parse(argv)
    spec = agents.spec(pre.agent)
    family = envs.env_family(pre.env)
    preset = pre.preset or spec.default_preset(family)
    check_choice(preset, "preset", tuple(spec.presets))
    Shortcuts = _shortcuts(pre.agent)

    @dataclasses.dataclass(frozen=True)
    class TrainArgs:
        run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes]
        shortcuts: Annotated[Shortcuts, tyro.conf.OmitArgPrefixes]
        config: Annotated[spec.config, tyro.conf.arg(name=pre.agent)]
        process: Annotated[ProcessOptions, tyro.conf.OmitArgPrefixes]

    default = TrainArgs(
        run=RunConfig(agent=pre.agent, env=pre.env),
        shortcuts=Shortcuts(preset=preset),
        config=spec.presets[preset],
        process=ProcessOptions(),
    )
    with through_parser():
        args = tyro.cli(
            TrainArgs, default=default, args=argv, prog="sparse-rl train",
            description="Train one sparse agent and write its run directory (config.json, metrics.csv, summary.json, checkpoints).",
        )
    config = apply_shortcuts(spec, preset, args.config, args.shortcuts)
    return args.run, config, args.process


def train_main(argv=None) -> int:
    from sparse_rl.train.compile_cache import enable_compile_cache
    from sparse_rl.train.runner import train

    argv = list(sys.argv[1:] if argv is None else argv)
    run, config, process = parse_train_args(argv)
    enable_compile_cache(process.compile_cache)
    summary = train(run, config)
    final = summary.get("final_eval_return")
    print(
        f"done: {summary['agent']} on {summary['env']}, {summary['method']} "
        f"sparsity {summary['sparsity']:.3f}, final eval return "
        f"{'n/a' if final is None else f'{final:.2f}'}, {summary['steps_per_second']:.0f} steps/s"
    )
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
    handlers = _interrupt_on_sigterm()
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
        _restore_signals(handlers, finished=console)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _interrupt_on_sigterm():
    """SIGTERM interrupts like Ctrl-C (issue 16): runs stay resumable and a sweep records its cells
    as interrupted instead of leaving them "pending". Returns the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {sig: signal.signal(sig, handler) for sig, handler in
            ((signal.SIGTERM, _raise_interrupt), (signal.SIGINT, signal.getsignal(signal.SIGINT)))}


def _restore_signals(handlers, finished: bool) -> None:
    """Put the signal handlers back; in the `sparse-rl` process itself (`finished`), ignore
    SIGINT and SIGTERM instead: a signal landing after the command has finished must not replace
    its exit status (and message) with a bare 130."""
    if handlers is None:
        return
    for sig, handler in handlers.items():
        signal.signal(sig, signal.SIG_IGN if finished else handler)


if __name__ == "__main__":
    sys.exit(main())
