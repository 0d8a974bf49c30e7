"""Several runs in one process: seeds (and sparsity levels) vmapped.

`train_vectorized(runs, agent_configs)` trains runs that differ only by seed and, optionally, by
sparsity level (of the same method) together:

* the agent states are stacked (`jax.vmap` of `init` over the runs' init keys; runs at different
  sparsity levels are initialised by their own config's `init`, since the level is a static part
  of a config, then stacked); step counters equal in every run (gradient steps, the sparsity
  wrapper's and the optimisers' counts) are kept once, unbatched (`StateChunks`);
* `update` is jitted once and vmapped over the stacked states and a stacked batch (one sample per
  run from its own replay buffer); since the sparsity core keeps every level-dependent value
  (per-layer targets) in the optimiser state, one compiled update serves all levels (checked:
  the update's jaxprs must be identical). As in the single-run loop, calls in which no mask update
  is due run a program without the mask-update branch (`topology=False`, from the agent's
  host-side calendar);
* on CPU, runs whose states are large (wide networks) are updated in *chunks* of a few runs, one
  vmapped call per chunk (`chunk_sizes`): a chunk's working set then stays closer to the core's
  caches, and a program over all 8 seeds of a 512-512 DQN was ~8% slower per seed than 4 over 2
  (and one over 8 seeds of a 64-64 DQN 4x faster than 8 calls); with `threads` > 1 (the sweep's
  --cpus-per-run) the chunks' updates are dispatched from that many host threads, so that XLA can
  run them on as many cores at once;
* acting is one call for all runs (one env per run, stepped in a Python loop), and evaluation runs
  all runs' evaluation episodes in one batched call per env step.

Each run writes the same run directory as `sparse_rl.train.runner.train` would (config.json,
metrics.csv, summary.json, checkpoints in the same format, analysis.csv, COMPLETE), with the same
keys, env seeds, replay seeds and evaluation seeds, so its results equal a separate run's up to
floating-point reassociation in the batched computations (and `wall_time` / `sps`). A vectorized
run's checkpoint can be resumed by an ordinary `sparse-rl train --resume`.

Covered: off-policy agents (`LOOP == "offpolicy"`: DQN, SAC) here, on-policy ones (PPO) in
`sparse_rl.train.vectorized_onpolicy`, which shares this module's group set-up and state chunks.
Resuming a group from checkpoints is done run by run (the sweep does this), not vectorized.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl import envs
from sparse_rl.errors import ConfigError
from sparse_rl.replay import ReplayBuffer, Transition
from sparse_rl.train.memory import release_freed_memory
from sparse_rl.train.offpolicy import _learning_starts
from sparse_rl.train.rundir import RunDir
from sparse_rl.train.runner import (
    RunConfig,
    RunContext,
    ScheduledUpdate,
    agent_module,
    default_out,
    split_state,
)
from sparse_rl.train.serialize import config_diff

SUPPORTED_LOOPS = ("offpolicy", "onpolicy")

# Run fields that may differ between the runs of one group.
_RUN_VARYING = ("seed", "out", "resume", "progress")

# Largest working set (agent states) of one update chunk on CPU: measured on a 2-core Xeon with
# 2 MiB of L2 per core (DQN, RigL 90%, 8 seeds; benchmarks/bench_sweep.py and the README): at
# 512-512 (4.3 MiB of state per run) chunks of 2-4 runs were ~10% faster per run than one call
# for all 8; at 256-256 (1.1 MiB) and below, one call for all runs is as fast or faster.
CHUNK_BYTES = 16 * 2**20


def supports(agent: str) -> bool:
    """Whether `train_vectorized` can train runs of `agent`."""
    return agent_module(agent).LOOP in SUPPORTED_LOOPS


def _sparsity_fields(config) -> list[str]:
    return [f.name for f in dataclasses.fields(config)
            if f.name == "sparsity" or f.name.endswith("_sparsity")]


def check_group(runs: Sequence[RunConfig], configs: Sequence) -> None:
    """Refuse runs that cannot share one program: they may differ only by seed, output directory
    and the sparsity level of their sparsity configs (same method)."""
    if not runs:
        raise ConfigError("runs", "no runs to train")
    if len(configs) != len(runs):
        raise ConfigError("agent_configs", f"{len(configs)} configs for {len(runs)} runs")
    ref = dataclasses.replace(runs[0], **{k: RunConfig.__dataclass_fields__[k].default for k in _RUN_VARYING})
    for run in runs[1:]:
        other = dataclasses.replace(run, **{k: RunConfig.__dataclass_fields__[k].default for k in _RUN_VARYING})
        diff = config_diff(ref, other)
        if diff:
            raise ConfigError("runs", f"vectorized runs may differ only by seed; they differ in {', '.join(diff)}")
    outs = [str(r.out) for r in runs]
    if len(set(outs)) != len(outs):
        raise ConfigError("out", "vectorized runs need distinct output directories")
    levels = [f"{f}.sparsity" for f in _sparsity_fields(configs[0])]
    for config in configs[1:]:
        diff = config_diff(configs[0], config, ignore=tuple(levels))
        if diff:
            raise ConfigError("agent_configs", "vectorized runs may differ only by sparsity level; "
                              f"their agent configs differ in {', '.join(diff)}")


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _is_none(x) -> bool:
    return x is None


def _tree_map_axes(fn, axes, tree):
    """`fn(axis, leaf)` over a state and its vmap axes (None = shared leaf)."""
    return jax.tree_util.tree_map(fn, axes, tree, is_leaf=_is_none)


def _shared_axes(states):
    """vmap axes of a stacked state: None for integer scalars equal in every run, else 0."""
    def axis(x):
        x = np.asarray(x)
        if x.ndim == 1 and np.issubdtype(x.dtype, np.integer) and bool((x == x[0]).all()):
            return None
        return 0

    return jax.tree_util.tree_map(axis, jax.device_get(states))


def default_threads() -> int:
    """Host threads that dispatch chunk updates: the compute threads this process was given
    (`OMP_NUM_THREADS`, which the sweep sets from --cpus-per-run), else 1."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def chunk_sizes(n_runs: int, run_bytes: int, *, platform: str | None = None,
                max_bytes: int = CHUNK_BYTES) -> list[int]:
    """Sizes of the chunks (consecutive runs, one vmapped update call each) `n_runs` runs are
    split into: one chunk on accelerators; on CPU as few chunks as keep each chunk's states
    within `max_bytes`. Equal sizes where a divisor of `n_runs` allows (one compiled update),
    else sizes that differ by one (two). Small networks thus keep one call for all runs (which
    XLA's intra-op threads parallelise), however many dispatching threads there are."""
    platform = platform or jax.devices()[0].platform
    if platform != "cpu" or n_runs <= 1:
        return [n_runs]
    per_chunk = max(1, int(max_bytes // max(int(run_bytes), 1)))
    n = min(n_runs, math.ceil(n_runs / per_chunk))
    n = next((d for d in range(n, 2 * n + 1) if n_runs % d == 0), n)
    return [n_runs // n + (1 if i < n_runs % n else 0) for i in range(n)]


class StateChunks:
    """The agent states of S runs on the device, in chunks of consecutive runs.

    Each chunk is one stacked state whose leaves have a leading run axis, except the step counters
    equal in every run (`axes` None), which are kept once: the runs move in lockstep, and a batched
    counter would turn the agent's `lax.cond`s (e.g. "is this a mask-update step?") into `select`s
    that compute both branches at every step.

    `program(fn)` makes one jitted call of `fn(state, *per_run, *shared)` for every run (vmapped
    within a chunk, all chunks in one program), e.g. acting; `updater(fn)` a call per chunk (with
    the chunk's state donated), dispatched from `threads` host threads, e.g. the update.
    """

    def __init__(self, stacked, sizes: Sequence[int], threads: int = 1):
        self.axes = _shared_axes(stacked)
        self.sizes = list(sizes)
        self.bounds = []
        lo = 0
        for size in self.sizes:
            self.bounds.append((lo, lo + size))
            lo += size
        self.n = lo
        self.states = [_tree_map_axes(lambda a, x, lo=lo, hi=hi: x[lo] if a is None else x[lo:hi],
                                      self.axes, stacked) for lo, hi in self.bounds]
        self.threads = max(1, min(int(threads), len(self.sizes)))
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.compile_seconds = 0.0
        self._compiled: set = set()
        self._where = [(c, j) for c, (lo, hi) in enumerate(self.bounds) for j in range(hi - lo)]

    @classmethod
    def for_runs(cls, stacked, *, threads: int | None = None, chunk: int | None = None) -> StateChunks:
        """Chunks for a stacked state: `chunk` runs per chunk, or `chunk_sizes`' choice."""
        n = int(jax.tree_util.tree_leaves(stacked)[0].shape[0])
        threads = default_threads() if threads is None else max(1, int(threads))
        if chunk:
            count = math.ceil(n / max(1, int(chunk)))
            sizes = [n // count + (1 if i < n % count else 0) for i in range(count)]
        else:
            run_bytes = sum(int(np.prod(x.shape[1:])) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(stacked))
            sizes = chunk_sizes(n, run_bytes)
        return cls(stacked, sizes, threads)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()

    def _timed_first(self, key, call):
        """Run `call()`; the first time for `key` (a new program), block and count it as compile time."""
        if key in self._compiled:
            return call()
        started = time.perf_counter()
        out = call()
        jax.block_until_ready(out)
        release_freed_memory()
        self.compile_seconds += time.perf_counter() - started
        self._compiled.add(key)
        return out

    # --- calls ------------------------------------------------------------------------------
    def _rows(self, c: int, per_run):
        """Chunk c's rows of arrays with a leading run axis."""
        lo, hi = self.bounds[c]
        if len(self.bounds) == 1:
            return per_run
        return jax.tree_util.tree_map(lambda x: x[lo:hi], per_run)

    def program(self, fn: Callable, name: str | None = None, view: Callable | None = None):
        """`call(per_run, shared=())`: `fn(state, *per_run_i, *shared)` for every run i, one
        dispatch; `per_run` is a tuple of arrays (pytrees) with a leading run axis, and so are
        the outputs. With a `name`, the first call's compilation counts as compile time. `view`
        (a state -> state function, e.g. `ppo.acting_view`) trims what each call passes."""
        view = view or (lambda state: state)
        axes = view(self.axes)

        def all_runs(states, per_run, shared):
            outs = [jax.vmap(lambda s, a: fn(s, *a, *shared), in_axes=(axes, 0))(state, self._rows(c, per_run))
                    for c, state in enumerate(states)]
            return outs[0] if len(outs) == 1 else jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *outs)

        jitted = jax.jit(all_runs)

        def call(per_run, shared=()):
            def run():
                return jitted([view(s) for s in self.states], tuple(per_run), tuple(shared))

            return run() if name is None else self._timed_first(name, run)

        return call

    def updater(self, fn: Callable, name: str = "update"):
        """`update(per_run, shared=(), **static)`: `state_i, metrics_i = fn(state_i, *per_run_i,
        *shared, **static)` for every run, one call per chunk with the chunk's state donated
        (`static`: hashable trace-time arguments); replaces the states and returns the metrics
        of each chunk (a list, see `host_metrics`). `per_run` holds arrays with a leading run
        axis (numpy or device)."""
        axes = self.axes

        def chunk_fn(state, per_run, shared, static):
            return jax.vmap(lambda s, a: fn(s, *a, *shared, **dict(static)), in_axes=(axes, 0),
                            out_axes=(axes, 0))(state, per_run)

        jitted = jax.jit(chunk_fn, donate_argnums=0, static_argnums=3)

        def run_chunks(indices, per_run, shared, static):
            return [(c, jitted(self.states[c], self._rows(c, per_run), shared, static)) for c in indices]

        def update(per_run, shared=(), **static):
            per_run, shared, static = tuple(per_run), tuple(shared), tuple(sorted(static.items()))
            results, todo = [], []
            for c, size in enumerate(self.sizes):  # each new program compiles on its first chunk
                key = (name, static, size)
                if key not in self._compiled:
                    results += self._timed_first(key, lambda c=c: run_chunks([c], per_run, shared, static))
                else:
                    todo.append(c)
            if self._pool is not None and len(todo) > 1:
                parts = [todo[t::self.threads] for t in range(self.threads)]
                for part in self._pool.map(lambda p: run_chunks(p, per_run, shared, static), parts):
                    results += part
            else:
                results += run_chunks(todo, per_run, shared, static)
            metrics = [None] * len(self.sizes)
            for c, (state, chunk_metrics) in results:
                self.states[c] = state
                metrics[c] = chunk_metrics
            return metrics

        return update

    def host_metrics(self, metrics: list) -> list[dict]:
        """Per-run metrics ({name: float}) from an updater's per-chunk metrics."""
        chunks = jax.device_get(metrics)
        return [{k: float(v[j]) for k, v in chunks[c].items()} for c, j in self._where]

    # --- reading states ---------------------------------------------------------------------
    def take(self, i: int):
        """Run i's state as a device pytree (a copy: the chunk's state is donated by updates)."""
        c, j = self._where[i]
        return _tree_map_axes(lambda a, x: jnp.copy(x) if a is None else x[j], self.axes, self.states[c])

    def host(self) -> list:
        """Every run's state, copied to the host (a list of numpy pytrees)."""
        chunks = jax.device_get(self.states)
        return [_tree_map_axes(lambda a, x, j=j: x if a is None else x[j], self.axes, chunks[c])
                for c, j in self._where]

    def ready(self):
        jax.block_until_ready(self.states)


def init_states(agents: Sequence, init_keys) -> object:
    """The stacked initial states of runs with `agents` (vmapped `init` per distinct agent)."""
    groups: dict[int, list[int]] = {}
    for i, a in enumerate(agents):
        groups.setdefault(id(a), []).append(i)
    if len(groups) == 1:
        return jax.vmap(agents[0].init)(init_keys)
    parts: dict[int, object] = {}
    for members in groups.values():
        stacked = jax.vmap(agents[members[0]].init)(init_keys[np.asarray(members)])
        for j, i in enumerate(members):
            parts[i] = jax.tree_util.tree_map(lambda x, j=j: x[j], stacked)
    return _stack([parts[i] for i in range(len(agents))])


def check_one_program(agents: Sequence, fn: Callable, *example) -> None:
    """Runs at several sparsity levels share one compiled `fn(agent)(*example)`: refuse agents
    whose traced programs differ."""
    distinct = list({id(a): a for a in agents}.values())
    if len(distinct) > 1:
        programs = {str(jax.make_jaxpr(fn(a))(*example)) for a in distinct}
        if len(programs) > 1:
            raise ConfigError("sparsities", "this agent's update depends on the sparsity level; "
                              "vectorize over seeds only")


def start_states(ctxs: Sequence[RunContext], agents: Sequence, n_keys: int, example_batch, *,
                 chunk: int | None = None, threads: int | None = None):
    """The runs' keys and initial states: `keys` (n_keys numpy arrays [S, 2]: run i's
    `split(PRNGKey(seed_i), n_keys)`, as its single-run loop derives them; [0] initialises, [2]
    updates; numpy, so that a chunk's rows are a view, not an eager device op per call), the
    `StateChunks`, run 0's state (for shapes) and the seconds `init` took. Checks that one
    compiled update serves every run (`check_one_program`)."""
    split = np.stack([jax.random.split(jax.random.PRNGKey(ctx.run.seed), n_keys) for ctx in ctxs])
    keys = tuple(split[:, i] for i in range(n_keys))
    started = time.perf_counter()
    stacked = init_states(agents, keys[0])
    jax.block_until_ready(stacked)
    init_seconds = time.perf_counter() - started
    chunks = StateChunks.for_runs(stacked, threads=threads, chunk=chunk)
    single = chunks.take(0)
    check_one_program(agents, lambda a: a.update, single, example_batch, keys[2][0])
    return keys, chunks, single, init_seconds


def update_calendar(agents: Sequence):
    """Gradient-step counts at which some run's masks may change (union over the runs' agents),
    or None when an agent does not say (then every update runs the mask-update branch)."""
    calendars = [getattr(a, "mask_update_steps", None) for a in {id(a): a for a in agents}.values()]
    if any(c is None for c in calendars):
        return None
    return np.unique(np.concatenate([np.asarray(c, np.int64) for c in calendars]))


# ----------------------------------------------------------------------------- the group

def train_vectorized(runs: Sequence[RunConfig], agent_configs: Sequence | None = None,
                     summary_extra: Sequence[dict | None] | None = None, *,
                     chunk: int | None = None, threads: int | None = None) -> list[dict]:
    """Train `runs` together (see the module docstring); returns their summaries in order.

    `summary_extra[i]` (optional) is merged into run i's summary.json. Each run directory is
    opened (and locked) like `train` does; on an error every unfinished run is marked FAILED and
    the error re-raised. `chunk` (runs per update call) and `threads` (host threads dispatching
    the chunks) default to `chunk_sizes`' choice and `default_threads()`.
    """
    runs = list(runs)
    module = agent_module(runs[0].agent)
    if module.LOOP not in SUPPORTED_LOOPS:
        raise ConfigError("vectorize_seeds", f"agent {runs[0].agent} ({module.LOOP} loop) is not supported",
                          ", ".join(a for a in ("dqn", "sac", "ppo") if supports(a)))
    if module.LOOP == "onpolicy":
        from sparse_rl.train.vectorized_onpolicy import run_group as loop
    else:
        loop = _run
    return open_group(runs, agent_configs, summary_extra, module,
                      lambda ctxs, agents, extras: loop(ctxs, agents, extras, chunk=chunk, threads=threads))


def open_group(runs: list[RunConfig], agent_configs, summary_extra, module, body) -> list[dict]:
    """Open every run's directory and context as `train` does, call `body(ctxs, agents, extras)`
    and mark the runs complete; on an error mark every unfinished run FAILED and re-raise."""
    env_spec = envs.env_spec(runs[0].env)
    if agent_configs is None:
        agent_configs = [module.PRESETS[module.default_preset(env_spec.family)]] * len(runs)
    configs = list(agent_configs)
    runs = [r if r.out else dataclasses.replace(r, out=default_out(r, c)) for r, c in zip(runs, configs)]
    check_group(runs, configs)
    extras = list(summary_extra) if summary_extra is not None else [None] * len(runs)

    agents, by_config = [], {}
    for config in configs:
        key = repr(config)
        if key not in by_config:
            by_config[key] = module.make(config, env_spec, runs[0].steps)
        agents.append(by_config[key])

    rundirs: list[RunDir] = []
    ctxs: list[RunContext] = []
    try:
        for run, config, agent in zip(runs, configs, agents):
            rundir = RunDir(run.out, resume=run.resume)
            rundirs.append(rundir)
            ctx = RunContext(run, config, rundir, env_spec, agent, module)
            ctxs.append(ctx)
            ctx.write_config(run.out)
        summaries = body(ctxs, agents, extras)
        for rundir in rundirs:
            rundir.mark_complete()
        return summaries
    except KeyboardInterrupt:
        raise
    except Exception as error:
        import traceback

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


def refuse_checkpoints(ctxs: Sequence[RunContext], like) -> None:
    """Vectorized runs start from scratch: refuse a run directory that has a checkpoint."""
    for ctx in ctxs:
        if ctx.run.resume and ctx.load_checkpoint({"agent": like}) is not None:
            raise ConfigError("resume", f"{ctx.rundir.path} has a checkpoint: resume it on its own "
                              "(vectorized runs start from scratch)")


def vectorized_summary(ctxs: Sequence[RunContext], chunks: StateChunks, total_sps: float) -> dict:
    """The `vectorized` entry of each run's summary.json."""
    return {"vectorized": {"runs": len(ctxs), "seeds": [c.run.seed for c in ctxs],
                           "out": [str(c.run.out) for c in ctxs], "total_steps_per_second": total_sps,
                           "chunks": list(chunks.sizes), "threads": chunks.threads}}


def _example_batch(replay: ReplayBuffer, obs_spec, action_spec, batch_size: int):
    if hasattr(replay, "example_batch"):
        return replay.example_batch(batch_size)
    obs = np.zeros((batch_size, *obs_spec.shape), obs_spec.dtype)
    return Transition(obs, np.zeros((batch_size, *action_spec.shape), action_spec.dtype),
                      np.zeros(batch_size, np.float32), np.zeros(batch_size, np.float32), obs.copy())


# ----------------------------------------------------------------------------- off-policy loop

def _run(ctxs: list[RunContext], agents: list, extras: list, *, chunk: int | None = None,
         threads: int | None = None) -> list[dict]:
    S = len(ctxs)
    ctx0 = ctxs[0]
    run0, config, agent, spec = ctx0.run, ctx0.agent_config, agents[0], ctx0.env_spec
    action_spec = spec.action_spec
    continuous = not hasattr(action_spec, "num_values")
    learning_starts = _learning_starts(config, run0.env)
    n_step = getattr(config, "n_step", 1)
    gamma = getattr(config, "gamma", 0.99)
    # Agents that take several gradient steps per update sample one fresh batch for each.
    sample_size = ctx0.module.sample_size(config) if hasattr(ctx0.module, "sample_size") else config.batch_size

    env_list = [envs.make_env(ctx.run.env, ctx.run.seed) for ctx in ctxs]
    obs_spec = env_list[0].observation_spec()
    frame_stack = obs_spec.shape[-1] if spec.family == "atari" else None
    replays = [ReplayBuffer(config.replay_capacity, obs_spec.shape, obs_spec.dtype,
                            action_shape=action_spec.shape, action_dtype=action_spec.dtype,
                            seed=ctx.run.seed, frame_stack=frame_stack) for ctx in ctxs]

    dummy = _example_batch(replays[0], obs_spec, action_spec, sample_size)
    keys, chunks, single, init_seconds = start_states(ctxs, agents, 5, dummy, chunk=chunk, threads=threads)
    _, act_keys, update_keys, eval_keys, warmup_keys = keys

    act_all = chunks.program(
        lambda state, obs, key, step: agent.act(state, obs[None], jax.random.fold_in(key, step), step,
                                                evaluation=False)[0], "act")
    eval_act_all = chunks.program(
        lambda state, obs, key, t: agent.act(state, obs, jax.random.fold_in(key, t), 0, evaluation=True))
    update_all = ScheduledUpdate(None, chunks.updater(
        lambda state, batch, key, step, topology: agent.update(state, batch, jax.random.fold_in(key, step),
                                                                topology=topology)),
        update_calendar(agents), per_call=getattr(config, "gradient_steps", 1))

    if continuous:
        low = jnp.asarray(action_spec.minimum, jnp.float32)
        high = jnp.asarray(action_spec.maximum, jnp.float32)

        def random_action(key, step):
            return jax.random.uniform(jax.random.fold_in(key, step), action_spec.shape, jnp.float32, low, high)

        random_all = jax.jit(jax.vmap(random_action, in_axes=(0, None)))

    _, metric_shapes = jax.eval_shape(agent.update, single, dummy, update_keys[0])
    metric_names = sorted(metric_shapes)
    extra_log = getattr(ctx0.module, "extra_log", None)
    extra_names = sorted(extra_log(config, 0)) if extra_log else []
    network_names = [f"sparsity_{name}" for name in agent.networks(single)]

    refuse_checkpoints(ctxs, single)
    for ctx in ctxs:
        ctx.open_metrics(["train_episodes"] + metric_names + extra_names + network_names, None)

    recorders = make_recorders(ctxs, agents, chunks)
    del single

    timesteps = [env.reset() for env in env_list]
    obs = np.stack([ts.observation for ts in timesteps])
    episode_return = np.zeros(S)
    episode_length = np.zeros(S, np.int64)
    recent_returns: list[list[float]] = [[] for _ in range(S)]
    episodes = np.zeros(S, np.int64)
    last_metrics: list[dict] = [{} for _ in range(S)]
    metrics = None

    def save(step):
        for i, (ctx, state_i) in enumerate(zip(ctxs, chunks.host())):
            replay_arrays, replay_values = split_state(replays[i].state_dict(), "replay/")
            env_arrays, env_values = split_state(env_list[i].get_state(), "env/")
            counters = {
                "step": step, "episode_return": float(episode_return[i]),
                "episode_length": int(episode_length[i]), "recent_returns": recent_returns[i],
                "episodes": int(episodes[i]), "last_metrics": last_metrics[i],
                "replay": replay_values, "env": env_values,
            }
            arrays = {**replay_arrays, **env_arrays, "loop/obs": np.asarray(obs[i])}
            ctx.save_checkpoint(step, {"agent": state_i}, arrays, counters, state=state_i)

    for ctx in ctxs:
        ctx.reset_sps(0)
    loop_start = time.perf_counter()
    try:
        for step in range(run0.steps):
            if continuous and step < learning_starts:
                actions = np.asarray(random_all(warmup_keys, step))
            else:
                actions = np.asarray(act_all((jnp.asarray(obs), act_keys), (step,)))
            next_obs = np.empty_like(obs)
            for i, env in enumerate(env_list):
                ts = env.step(actions[i])
                reward = float(ts.reward)
                episode_return[i] += reward
                episode_length[i] += 1
                replays[i].add(obs[i], actions[i], reward, float(ts.discount), ts.observation,
                               first=episode_length[i] == 1)
                if ts.last():
                    recent_returns[i] = (recent_returns[i] + [float(episode_return[i])])[-10:]
                    episodes[i] += 1
                    episode_return[i], episode_length[i] = 0.0, 0
                    ts = env.reset()
                next_obs[i] = ts.observation
            obs = next_obs

            if (step >= learning_starts and (step - learning_starts) % config.train_every == 0
                    and len(replays[0]) >= config.batch_size):
                samples = [r.sample(sample_size, n_step=n_step, gamma=gamma) for r in replays]
                batch = Transition(*(np.stack(field) for field in zip(*samples)))
                metrics = record_around(recorders, chunks, lambda i, state: samples[i], step + 1,
                                        lambda: update_all((batch, update_keys), (step,)))

            done = step + 1
            evaluated = done % run0.eval_every == 0 or done == run0.steps
            if evaluated:
                evaluate_all(ctxs, eval_act_all, eval_keys, done)
            if evaluated or done % run0.log_every == 0:
                states = chunks.host()
                if metrics is not None:
                    last_metrics = chunks.host_metrics(metrics)
                for i, ctx in enumerate(ctxs):
                    sps = ctx.sps(done)
                    row = {
                        "step": done, "wall_time": ctx.wall_time(),
                        "train_return": float(np.mean(recent_returns[i])) if recent_returns[i] else None,
                        "train_episodes": int(episodes[i]), "sps": sps,
                        **last_metrics[i], **ctx.network_sparsity(states[i]),
                    }
                    if extra_log:
                        row.update(extra_log(config, done))
                    if evaluated:
                        row["eval_return_mean"], row["eval_return_std"] = ctx.eval_history[-1][1:]
                    ctx.log(row, state=states[i])  # NaN/Inf parameter scan, as the single-run loop
                    if i == 0:
                        ctx.progress.update(done, sps=sps * S, ret=row["train_return"], sparsity=row["sparsity"])
            if run0.checkpoint_every and (done % run0.checkpoint_every == 0 or done == run0.steps):
                save(done)
        chunks.ready()
    finally:
        chunks.close()

    return finish(ctxs, chunks, recorders, extras, loop_start, run0.steps, init_seconds)


def make_recorders(ctxs: list[RunContext], agents: list, chunks: StateChunks) -> list:
    """Each run's training-time analysis recorder (None where the run records none), as the
    single-run loops make them: every run writes its own analysis.csv."""
    run0 = ctxs[0].run
    every = getattr(run0, "analysis_every", 0)
    if not every:
        return [None] * len(ctxs)
    from sparse_rl.analysis.gradient_flow import make_recorder

    return [make_recorder(agent, state, ctx.rundir.path, every=every,
                          snr_every=getattr(run0, "analysis_snr_every", 10), resume_step=None, ctx=ctx)
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


def finish(ctxs: list[RunContext], chunks: StateChunks, recorders, extras, loop_start: float, steps: int,
           init_seconds: float, summary_extra: Callable[[int, object], dict] | None = None) -> list[dict]:
    """Every run's summary.json: throughput per run as the single-run loops report it (evaluation
    and compilation, in the loop, left out), the group's compile time in each run's."""
    ctx0 = ctxs[0]
    compile_in_loop = chunks.compile_seconds
    elapsed = time.perf_counter() - loop_start - ctx0.eval_seconds - compile_in_loop
    elapsed -= sum(ctx.compile_seconds for ctx in ctxs)  # the analysis recorders' compilation
    mean_sps = steps / max(elapsed, 1e-9)
    summaries = []
    for i, (ctx, state_i) in enumerate(zip(ctxs, chunks.host())):
        ctx.compile_seconds = init_seconds + compile_in_loop + (ctx.compile_seconds or 0.0)
        if recorders[i] is not None:
            recorders[i].close(loop_seconds=elapsed)
        extra = vectorized_summary(ctxs, chunks, mean_sps * len(ctxs))
        if summary_extra is not None:
            extra.update(summary_extra(i, state_i))
        extra.update(extras[i] or {})
        summaries.append(ctx.write_summary(state_i, mean_sps, extra))
    return summaries


def evaluate_all(ctxs: list[RunContext], eval_act_all, eval_keys, done: int) -> None:
    """Every run's evaluation (as `RunContext.evaluate`: a fresh vector env seeded by the run's
    seed and the evaluation index, key folded with the env step and the episode step), with one
    batched act call per env step for all runs (`eval_act_all((obs, keys), (t,))`)."""
    started = time.perf_counter()
    S = len(ctxs)
    index = len(ctxs[0].eval_history)
    n = ctxs[0].run.eval_episodes
    venvs = [envs.make_vector_env(ctx.run.env, n, 1_000_003 * (ctx.run.seed + 1) + 7919 * index)
             for ctx in ctxs]
    try:
        obs = np.stack([v.reset() for v in venvs])
        returns = np.zeros((S, n))
        finished = np.zeros((S, n), bool)
        keys = jax.vmap(lambda k: jax.random.fold_in(k, done))(eval_keys)
        t = 0
        while not finished.all():
            actions = np.asarray(eval_act_all((jnp.asarray(obs), keys), (t,)))
            for i, env in enumerate(venvs):
                if finished[i].all():
                    continue
                o, reward, terminated, truncated, _ = env.step(ctxs[i].to_env_action(actions[i]))
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
