"""The agent states of a group of runs on the device, and the calls over them.

A group of one run keeps its state as it is (no run axis: its programs are the single-run
programs, so a run trains exactly as it would alone); a group of N > 1 runs stacks the states
along a leading run axis and vmaps every call over it, in *chunks* of consecutive runs:

* step counters equal in every run (gradient steps, the sparsity wrapper's and the optimisers'
  counts) are kept once, unbatched: the runs move in lockstep, and a batched counter would turn
  the agent's `lax.cond`s into `select`s that compute both branches at every step;
* on CPU, runs whose states are large (wide networks) are updated in chunks of a few runs, one
  vmapped call per chunk (`chunk_sizes`): a chunk's working set then stays closer to the core's
  caches, and a program over all 8 seeds of a 512-512 DQN was ~8% slower per seed than 4 over 2
  (and one over 8 seeds of a 64-64 DQN 4x faster than 8 calls); with `threads` > 1 (the sweep's
  --cpus-per-run) the chunks' updates are dispatched from that many host threads, so that XLA can
  run them on as many cores at once;
* runs at different sparsity levels of one method share one compiled update, since the sparsity
  core keeps every level-dependent value (per-layer targets) in the optimiser state
  (`check_one_program` refuses agents whose traced updates differ).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl.errors import ConfigError
from sparse_rl.train.memory import release_freed_memory

# Largest working set (agent states) of one update chunk on CPU: measured on a 2-core Xeon with
# 2 MiB of L2 per core (DQN, RigL 90%, 8 seeds; benchmarks/bench_sweep.py and the README): at
# 512-512 (4.3 MiB of state per run) chunks of 2-4 runs were ~10% faster per run than one call
# for all 8; at 256-256 (1.1 MiB) and below, one call for all runs is as fast or faster.
CHUNK_BYTES = 16 * 2**20


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


def _single_axis(x):
    """`_shared_axes` of a one-run state, from its unbatched leaf: integer scalars are shared."""
    return None if np.ndim(x) == 0 and np.issubdtype(np.result_type(x), np.integer) else 0


@jax.jit
def _copy_tree(tree):
    """A copy of a device pytree in one program (an eager `jnp.copy` per leaf compiles one per
    distinct shape)."""
    return jax.tree_util.tree_map(jnp.copy, tree)


def _first(tree):
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def _add_run_axis(tree):
    return jax.tree_util.tree_map(lambda x: x[None], tree)


class StateChunks:
    """The agent states of S runs on the device, in chunks of consecutive runs.

    One run (`single`): the state has no run axis and the calls run the single-run programs
    (their per-run arguments and outputs still carry a run axis of length 1, sliced inside the
    jitted call), so a group of one trains exactly as a run alone. Otherwise each chunk is one stacked state whose leaves have a leading run axis, except the step counters
    equal in every run (`axes` None), which are kept once: the runs move in lockstep, and a batched
    counter would turn the agent's `lax.cond`s (e.g. "is this a mask-update step?") into `select`s
    that compute both branches at every step.

    `program(fn)` makes one jitted call of `fn(state, *per_run, *shared)` for every run (vmapped
    within a chunk, all chunks in one program), e.g. acting; `updater(fn)` a call per chunk (with
    the chunk's state donated), dispatched from `threads` host threads, e.g. the update.
    """

    def __init__(self, stacked, sizes: Sequence[int], threads: int = 1, single: bool = False):
        self.single = single
        self.sizes = list(sizes)
        self.bounds = []
        lo = 0
        for size in self.sizes:
            self.bounds.append((lo, lo + size))
            lo += size
        self.n = lo
        if single:
            # One unbatched state, kept as it is: its axes follow from the shapes alone. Adding a
            # run axis and slicing it off again ran two small programs per distinct leaf shape,
            # ~40 at start-up, each traced, lowered and looked up in the cache (issue 15).
            self.axes = jax.tree_util.tree_map(_single_axis, stacked)
            self.states = [stacked]
        else:
            self.axes = _shared_axes(stacked)
            self.states = [_tree_map_axes(lambda a, x, lo=lo, hi=hi: x[lo] if a is None else x[lo:hi],
                                          self.axes, stacked) for lo, hi in self.bounds]
        self.threads = max(1, min(int(threads), len(self.sizes)))
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.compile_seconds = 0.0
        self._compiled: set = set()
        self._where = [(c, j) for c, (lo, hi) in enumerate(self.bounds) for j in range(hi - lo)]

    @classmethod
    def for_one(cls, state) -> StateChunks:
        """The group of one run: its state as it is."""
        return cls(state, [1], 1, single=True)

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
        (a state -> pytree function, the agent's `acting_view`) trims what each call passes.

        The call is made once per env step, so its host-side path is kept short: the group of
        one passes its one state's view straight to the single-run program."""
        view = view or (lambda state: state)
        axes = view(self.axes)

        if self.single:
            def one_run(state, per_run, shared):
                return _add_run_axis(fn(state, *_first(per_run), *shared))

            jitted = jax.jit(one_run)

            def views():
                return view(self.states[0])
        else:
            def all_runs(states, per_run, shared):
                outs = [jax.vmap(lambda s, a: fn(s, *a, *shared), in_axes=(axes, 0))(state, self._rows(c, per_run))
                        for c, state in enumerate(states)]
                return outs[0] if len(outs) == 1 else jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *outs)

            jitted = jax.jit(all_runs)

            def views():
                return [view(s) for s in self.states]

        def call(per_run, shared=()):
            if name is None or name in self._compiled:
                return jitted(views(), per_run, shared)
            return self._timed_first(name, lambda: jitted(views(), per_run, shared))

        return call

    def updater(self, fn: Callable, name: str = "update"):
        """`update(per_run, shared=(), **static)`: `state_i, metrics_i = fn(state_i, *per_run_i,
        *shared, **static)` for every run, one call per chunk with the chunk's state donated
        (`static`: hashable trace-time arguments); replaces the states and returns the metrics
        of each chunk (a list, see `host_metrics`). `per_run` holds arrays with a leading run
        axis (numpy or device)."""
        axes = self.axes

        def chunk_fn(state, per_run, shared, static):
            if self.single:
                state, metrics = fn(state, *_first(per_run), *shared, **dict(static))
                return state, _add_run_axis(metrics)
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
        if self.single:
            return _copy_tree(self.states[0])
        return _tree_map_axes(lambda a, x: jnp.copy(x) if a is None else x[j], self.axes, self.states[c])

    def host(self) -> list:
        """Every run's state, copied to the host (a list of numpy pytrees)."""
        chunks = jax.device_get(self.states)
        if self.single:
            return chunks
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
