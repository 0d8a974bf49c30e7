"""Training entry points: `train(run, agent_config)` for one run, `train_group(runs, agent_configs)`
for several runs trained together (seeds, and sparsity levels of one method, vmapped). Both open
and lock every run directory, write config.json, dispatch to the agent's env loop (the spec's loop
kind: `offpolicy.run` or `onpolicy.run`, each over a group of N >= 1 runs) and mark each run
COMPLETE, or FAILED with the error, which is re-raised.
"""

import dataclasses
import traceback
from collections.abc import Sequence

from sparse_rl.errors import leaves_run_resumable, locate
from sparse_rl import agents, envs
from sparse_rl.envs.compat import check_agent_spaces, preset_family
from sparse_rl.train.callbacks import Callback
from sparse_rl.train import offpolicy, onpolicy
from sparse_rl.train.context import RunConfig, RunContext, default_out, recorded_config
from sparse_rl.train.faults import kill_point
from sparse_rl.train.group import check_group
from sparse_rl.train.rundir import RunDir

__all__ = ["RunConfig", "train", "train_group", "default_out", "recorded_config"]

LOOPS = {"offpolicy": offpolicy.run, "onpolicy": onpolicy.run}


def train(run: RunConfig, agent_config=None, callbacks: Sequence[Callback] = ()) -> dict:
    """Train one agent and return its summary. Writes the run directory described in the README.
    `callbacks` (`sparse_rl.train.callbacks.Callback`) see each metrics row and evaluation."""
    return train_group([run], None if agent_config is None else [agent_config], callbacks=callbacks)[0]


def train_group(runs: Sequence[RunConfig], agent_configs: Sequence | None = None,
                summary_extra: Sequence[dict | None] | None = None, *,
                chunk: int | None = None, threads: int | None = None,
                callbacks: Sequence[Callback] = ()) -> list[dict]:
    """Train `runs` together and return their summaries in order. They may differ only by seed,
    output directory and the sparsity level of one method (`group.check_group`); each run's
    results equal its separate run's (exactly for a group of one). `summary_extra[i]` is merged
    into run i's summary.json; `chunk` (runs per update call) and `threads` (host threads
    dispatching the chunks) default to `chunks.chunk_sizes`' choice and `chunks.default_threads()`.
    A group resumes from its runs' checkpoints when every run has one at the same step."""
    runs = list(runs)
    if not runs:
        check_group(runs, [], None)
    spec = agents.spec(runs[0].agent)
    env_spec = envs.env_spec(runs[0].env, **runs[0].env_options())
    check_agent_spaces(spec.name, spec.spaces, env_spec)
    configs = list(agent_configs) if agent_configs is not None else [spec.preset_for(preset_family(env_spec))] * len(runs)
    runs = [r if r.out else dataclasses.replace(r, out=default_out(r, c)) for r, c in zip(runs, configs)]
    check_group(runs, configs, spec)
    extras = list(summary_extra) if summary_extra is not None else [None] * len(runs)

    agent_list, by_config = [], {}
    for config in configs:
        key = repr(config)
        if key not in by_config:
            by_config[key] = spec.make(config, env_spec, runs[0].steps)
        agent_list.append(by_config[key])

    rundirs: list[RunDir] = []
    ctxs: list[RunContext] = []
    started = False
    try:
        for run, config, agent in zip(runs, configs, agent_list):
            rundir = RunDir(run.out, resume=run.resume)
            rundirs.append(rundir)
            ctx = RunContext(run, config, rundir, env_spec, agent, spec, callbacks)
            ctxs.append(ctx)
            ctx.checkpoints.write_config(run.out)
        # Issue 7: a resume refused for other settings is a usage error; it must not mark the runs
        # FAILED (a killed, resumable run would then look failed to a sweep).
        started = True
        for ctx in ctxs:
            for callback in ctx.callbacks:
                callback.on_start(str(ctx.rundir.path), ctx.checkpoints.config_dict())
        summaries = LOOPS[spec.loop](ctxs, agent_list, extras, chunk=chunk, threads=threads)
        for ctx, summary in zip(ctxs, summaries):
            for callback in ctx.callbacks:
                callback.on_end(summary)
        kill_point("complete")  # test hook (faults.py): killed after the summary, before COMPLETE
        for rundir in rundirs:
            rundir.mark_complete()
        return summaries
    except KeyboardInterrupt:
        raise
    except Exception as error:  # recorded for sweeps, then re-raised for the caller
        if rundirs:  # an OSError without a file name (a full disk) names the run directory
            locate(error, rundirs[0].path if len(rundirs) == 1 else rundirs[0].path.parent)
        if started and not leaves_run_resumable(error):  # issue 16: a failed resume stays resumable
            message = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
            for rundir in rundirs:
                try:
                    if not rundir.is_complete:
                        rundir.mark_failed(message)
                except Exception:
                    pass
        raise
    finally:
        for ctx in ctxs:
            ctx.close()
        for rundir in rundirs:
            rundir.release()
