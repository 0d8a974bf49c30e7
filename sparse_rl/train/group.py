"""What both env loops do for a group of N >= 1 runs besides stepping their envs: check that the
runs can share one program, derive every run's keys, initialise or restore the states, choose
each update's program, evaluate, record the training-time analysis and write the summaries.

Run i of a group uses exactly the keys, env seeds, replay seeds and evaluation seeds a run alone
with its seed would use, so a group of one *is* a single run and a run of a larger group equals
its separate run up to floating-point reassociation in the batched computations.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl import envs
from sparse_rl.errors import ConfigError, GroupResumeMismatch
from sparse_rl.sparsity import mask_update_due
from sparse_rl.train import startup
from sparse_rl.train.acting import NoiseBlocks, NoiseDrawer, step_noise
from sparse_rl.train.chunks import StateChunks, check_one_program, init_states
from sparse_rl.train.context import RunConfig, RunContext
from sparse_rl.train.dispatch import pool_threads
from sparse_rl.train.recorder import make_recorder
from sparse_rl.train.serialize import config_diff

# Episode steps of evaluation noise drawn at a time (episodes are often shorter than a training block).
EVAL_BLOCK = 256

# Run fields that may differ between the runs of one group.
RUN_VARYING = ("seed", "out", "resume", "progress")


def check_group(runs: Sequence[RunConfig], configs: Sequence, spec) -> None:
    """Refuse runs that cannot share one program: they may differ only by seed, output directory
    and the sparsity level of their sparsity configs (same method)."""
    if not runs:
        raise ConfigError("runs", "no runs to train")
    if len(configs) != len(runs):
        raise ConfigError("agent_configs", f"{len(configs)} configs for {len(runs)} runs")
    ref = dataclasses.replace(runs[0], **{k: RunConfig.__dataclass_fields__[k].default for k in RUN_VARYING})
    for run in runs[1:]:
        other = dataclasses.replace(run, **{k: RunConfig.__dataclass_fields__[k].default for k in RUN_VARYING})
        diff = config_diff(ref, other)
        if diff:
            raise ConfigError("runs", f"vectorized runs may differ only by seed; they differ in {', '.join(diff)}")
    outs = [str(r.out) for r in runs]
    if len(set(outs)) != len(outs):
        raise ConfigError("out", "vectorized runs need distinct output directories")
    levels = tuple(f"{f}.sparsity" for f in spec.sparsity_fields)
    for config in configs[1:]:
        diff = config_diff(configs[0], config, ignore=levels)
        if diff:
            raise ConfigError("agent_configs", "vectorized runs may differ only by sparsity level; "
                              f"their agent configs differ in {', '.join(diff)}")


def crossed(before: int, after: int, every: int) -> bool:
    """Whether (before, after] holds a multiple of `every` (> 0)."""
    return every > 0 and after // every > before // every


def stack_runs(items: Sequence):
    """Per-run pytrees (numpy) stacked along a leading run axis (a view for one run)."""
    if len(items) == 1:
        if isinstance(items[0], np.ndarray):  # a run's observation, every env step: no tree walk
            return items[0][None]
        return jax.tree_util.tree_map(lambda x: np.asarray(x)[None], items[0])
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *items)


class Start:
    """A group's start: every run's keys (`keys[k]`: numpy [N, 2], run i's `split(PRNGKey(seed_i),
    n_keys)[k]`, as a run alone derives them; [0] initialises), the states in `chunks`, run 0's
    state (`example`, for shapes), the seconds `init` took, and what each run's newest checkpoint
    holds (`restored[i] = (extra arrays, counters)`, or None for a fresh group)."""

    def __init__(self, ctxs: Sequence[RunContext], agents: Sequence, n_keys: int, example_batch, *,
                 chunk: int | None = None, threads: int | None = None):
        self.ctxs = ctxs
        self.marks = {"context": ctxs[0].created_at, "init_start": time.perf_counter()}  # startup.MARKS
        split = np.stack([jax.random.split(jax.random.PRNGKey(ctx.run.seed), n_keys) for ctx in ctxs])
        self.keys = tuple(split[:, k] for k in range(n_keys))
        started = time.perf_counter()
        if len(ctxs) == 1:
            state = agents[0].init(self.keys[0][0])
        else:
            state = init_states(agents, self.keys[0])
        jax.block_until_ready(state)
        self.marks["init_done"] = time.perf_counter()
        self.init_seconds = self.marks["init_done"] - started
        example = state if len(ctxs) == 1 else jax.tree_util.tree_map(lambda x: x[0], state)
        check_one_program(agents, lambda a: a.update, example, example_batch, self.keys[2][0])
        self.restored = None
        restored = [ctx.load_checkpoint({"agent": example}) if ctx.run.resume else None for ctx in ctxs]
        if any(r is not None for r in restored):
            steps = {None if r is None else int(r[2]["counters"]["step"]) for r in restored}
            if len(steps) > 1:
                raise GroupResumeMismatch("resume", "the runs of a group must resume from checkpoints at one step; "
                                  f"found {sorted(steps, key=str)}: resume them on their own")
            trees = [jax.tree_util.tree_map(jnp.asarray, r[0]["agent"]) for r in restored]
            state = trees[0] if len(trees) == 1 else jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)
            self.restored = [(r[1], r[2]["counters"]) for r in restored]
        self.example = example
        first = state if len(ctxs) == 1 else jax.tree_util.tree_map(lambda x: x[0], state)
        self.gradient_steps = int(first.gradient_steps)  # equal in every run of a group
        if len(ctxs) == 1:
            self.chunks = StateChunks.for_one(state)
        else:
            self.chunks = StateChunks.for_runs(state, threads=threads, chunk=chunk)

    def first_step(self) -> None:
        """Call after the group's first env step: records every run's `startup` (once)."""
        if "first_step" in self.marks:
            return
        now = time.perf_counter()
        self.marks["first_step"] = now
        entry = startup.report(self.marks, self.init_seconds + self.chunks.compile_seconds,
                               startup.process_seconds(), now)
        entry["cpu_threads"] = pool_threads()
        for ctx in self.ctxs:
            ctx.startup = dict(entry)

    def counters(self, i: int) -> dict:
        return self.restored[i][1]

    def arrays(self, i: int) -> dict:
        return self.restored[i][0]


class ScheduledUpdate:
    """An agent's update (a `StateChunks.updater`, which times each program's compilation), called
    with or without its mask-update branch as the mask-update calendar says (`topology=True` only
    for calls in which a mask update is due; always for agents without a calendar). Gradient steps
    are counted on the host, so choosing the program never reads the device."""

    def __init__(self, fn: Callable, calendar, per_call: int, grad_steps: int = 0):
        self.fn, self.calendar = fn, calendar
        self.per_call, self.grad_steps = int(per_call), int(grad_steps)

    def __call__(self, *args):
        topology = self.calendar is None or mask_update_due(self.calendar, self.grad_steps, self.per_call)
        out = self.fn(*args, topology=topology)
        self.grad_steps += self.per_call
        return out


# Below this many update calls left in a run, every call runs the program with the mask-update
# branch: one program to trace, lower and load (0.3-0.5 s, warm cache) instead of two. Measured
# (notes of issue 15, 2-core VM, RigL-90): the branch costs 0.1 ms a call for DQN 256-256 batch 32
# (a 30k-step run: 7.5k calls, 0.8 s) and 1.5 ms for PPO 64-64's 320-step update (a 20k-step run:
# 10 calls, 15 ms), so a second program pays off from a few thousand calls (DQN) or a few hundred
# (PPO). Results do not depend on it: the branch does nothing where no mask update is due.
ONE_PROGRAM_CALLS = 1000


def update_calendar(agents: Sequence, calls_left: int):
    """Gradient-step counts at which some run's masks may change (union over the runs' agents),
    or None when an agent does not say or the run has fewer than ONE_PROGRAM_CALLS update calls
    left (then every update runs the mask-update branch)."""
    calendars = [a.mask_update_steps for a in {id(a): a for a in agents}.values()]
    if any(c is None for c in calendars) or calls_left < ONE_PROGRAM_CALLS:
        return None
    return np.unique(np.concatenate([np.asarray(c, np.int64) for c in calendars]))


def eval_act_step(agent):
    """The evaluation's act for one step of every episode, `(acting view, obs, noise block, t) ->
    action` (over a `StateChunks.program`, called by `evaluate`): the step's noise is sliced from
    its block on the device."""
    return lambda view, obs, block, t: agent.policy(view, obs, step_noise(block, t), 0, evaluation=True)


def evaluate(ctxs: Sequence[RunContext], eval_act_all, eval_noise: NoiseDrawer, eval_keys, done: int) -> None:
    """Every run's evaluation, appended to its `eval_history`: `eval_episodes` episodes of the
    agent's evaluation mode in a fresh vector env seeded by the run's seed and the evaluation index
    (so it depends only on those and the agent state: a resumed run evaluates exactly as an
    uninterrupted one), noise from the key folded with the env step and the episode step
    (`eval_noise`, drawn in blocks); one batched act call per env step for all runs
    (`eval_act_all((obs, noise block), (t,))`, see `train.acting.step_noise`)."""
    started = time.perf_counter()
    S = len(ctxs)
    index = len(ctxs[0].eval_history)
    n = ctxs[0].run.eval_episodes
    venvs = [envs.make_vector_env(ctx.run.env, n, 1_000_003 * (ctx.run.seed + 1) + 7919 * index,
                                  **ctx.run.env_options())
             for ctx in ctxs]
    try:
        obs = np.stack([v.reset() for v in venvs])
        returns = np.zeros((S, n))
        finished = np.zeros((S, n), bool)
        noise = NoiseBlocks(eval_noise, jax.vmap(lambda k: jax.random.fold_in(k, done))(eval_keys), EVAL_BLOCK)
        t = 0
        while not finished.all():
            actions = np.asarray(eval_act_all((obs, noise.block_at(t)), (t,)))
            for i, env in enumerate(venvs):
                if finished[i].all():
                    continue
                o, reward, terminated, truncated, _ = env.step(actions[i])
                obs[i] = o
                returns[i] += np.where(finished[i], 0.0, reward)
                finished[i] |= np.asarray(terminated) | np.asarray(truncated)
            t += 1
    finally:
        for v in venvs:
            v.close()
    spent = time.perf_counter() - started
    for i, ctx in enumerate(ctxs):
        ctx.eval_history.append((index, float(returns[i].mean()), float(returns[i].std())))
        ctx.eval_seconds += spent


def make_recorders(ctxs: Sequence[RunContext], agents: Sequence, chunks: StateChunks,
                   resume_step: int | None) -> list:
    """Each run's training-time analysis recorder (None where the run records none): every run
    writes its own analysis.csv."""
    run0 = ctxs[0].run
    if not run0.analysis_every:
        return [None] * len(ctxs)
    return [make_recorder(agent, state, ctx.rundir.path, every=run0.analysis_every,
                          snr_every=run0.analysis_snr_every, resume_step=resume_step, ctx=ctx)
            for ctx, agent, state in zip(ctxs, agents, chunks.host())]


def record_around(recorders: list, chunks: StateChunks, batch_of: Callable, step_after: int, update: Callable):
    """`update()` with each run's recorder called before and after it. A run's state is copied
    out of its chunk (and its batch built, `batch_of(run, state)`) only when its recorder reads
    them on this call."""
    due = [rec is not None and rec.reads_state_next_call() for rec in recorders]
    for i, rec in enumerate(recorders):
        if due[i]:
            state = chunks.take(i)
            rec.before_update(state, batch_of(i, state))
    out = update()
    for i, rec in enumerate(recorders):
        if rec is None:
            continue
        if due[i]:
            state = chunks.take(i)
            rec.after_update(state, batch_of(i, state), step_after)
        else:
            rec.after_update(None, None, step_after)
    return out


def log_rows(ctxs: Sequence[RunContext], states: list, rows: list[dict], step: int, evaluated: bool) -> None:
    """Write each run's metrics row (completed with its measured sparsities, the loop's
    throughput and, when `evaluated`, its newest evaluation); the NaN/Inf scan of `ctx.log`
    reads the run's state. The progress line follows run 0 (throughput of the whole group)."""
    for i, (ctx, row) in enumerate(zip(ctxs, rows)):
        sps = ctx.clock.sps(step)
        row = {"step": step, "wall_time": ctx.clock.wall_time(), **row, "sps": sps, **ctx.network_sparsity(states[i])}
        if evaluated:
            row["eval_return_mean"], row["eval_return_std"] = ctx.eval_history[-1][1:]
        ctx.log(row, state=states[i])
        if i == 0:
            ctx.progress.update(step, sps=sps * len(ctxs), ret=row["train_return"], sparsity=row["sparsity"])


def finish(ctxs: Sequence[RunContext], chunks: StateChunks, recorders, extras, loop_start: float,
           steps_done: int, init_seconds: float, summary_extra: Callable[[int, object], dict] | None = None,
           eval_before: float = 0.0) -> list[dict]:
    """Every run's summary.json: throughput per run (evaluation and compilation, in the loop,
    left out), the group's compile time in each run's; a `vectorized` entry for N > 1."""
    ctx0 = ctxs[0]
    compile_in_loop = chunks.compile_seconds
    elapsed = time.perf_counter() - loop_start - (ctx0.eval_seconds - eval_before) - compile_in_loop
    elapsed -= sum(ctx.compile_seconds for ctx in ctxs)  # the analysis recorders' compilation
    mean_sps = steps_done / max(elapsed, 1e-9)
    summaries = []
    for i, (ctx, state_i) in enumerate(zip(ctxs, chunks.host())):
        ctx.compile_seconds = init_seconds + compile_in_loop + (ctx.compile_seconds or 0.0)
        if recorders[i] is not None:
            recorders[i].close(loop_seconds=elapsed)
        extra = {}
        if len(ctxs) > 1:
            extra["vectorized"] = {
                "runs": len(ctxs), "seeds": [c.run.seed for c in ctxs], "out": [str(c.run.out) for c in ctxs],
                "total_steps_per_second": mean_sps * len(ctxs), "chunks": list(chunks.sizes),
                "threads": chunks.threads}
        if summary_extra is not None:
            extra.update(summary_extra(i, state_i))
        if ctx.startup:
            extra["startup"] = ctx.startup
        extra.update(extras[i] or {})
        summaries.append(ctx.write_summary(state_i, mean_sps, extra))
    return summaries
