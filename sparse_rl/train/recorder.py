"""The training-time analysis recorder: an env loop calls it around `agent.update` to write
`<run>/analysis.csv` every `every` gradient steps and around every topology update, with the
statistics of `sparse_rl.analysis.gradient_flow` (columns described there). It keeps the
initial parameters (init_params.npz) and the positions ever active (ever_active.npz) next to it,
truncates its rows on resume, and times its own compilation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

from sparse_rl.analysis.gradient_flow import (AnalysisHook, chunked_snr_values, flatten_stats, gradient_flow_stats,
                                              leaves_with_paths, summarize_snr, topology_update_effect,
                                              update_steps, snr_values)
from sparse_rl.errors import ConfigError
from sparse_rl.train.rundir import ANALYSIS, ANALYSIS_META, EVER_ACTIVE, INIT_PARAMS

ANALYSIS_FILE, INIT_PARAMS_FILE, EVER_ACTIVE_FILE, META_FILE = ANALYSIS, INIT_PARAMS, EVER_ACTIVE, ANALYSIS_META
NEVER = np.iinfo(np.int32).max  # ever_active.npz: positions not active yet


# --- init params on disk --------------------------------------------------------------------------

def save_tree_npz(path, trees: Mapping[str, Any]) -> None:
    """`{network: params}` -> one npz with keys `<network>/<param path>` (temp file + rename)."""
    arrays = {}
    for name, tree in trees.items():
        for p, x in leaves_with_paths(tree):
            arrays[f"{name}/{p}"] = np.asarray(x)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_tree_npz(path, like: Mapping[str, Any]) -> dict | None:
    """Inverse of `save_tree_npz` for trees shaped like `like`; None when a key or shape is missing."""
    try:
        data = np.load(path)
    except (OSError, ValueError):
        return None
    out = {}
    with data:
        for name, tree in like.items():
            leaves = []
            for p, x in leaves_with_paths(tree):
                key = f"{name}/{p}"
                if key not in data.files or data[key].shape != np.shape(x):
                    return None
                leaves.append(data[key])
            out[name] = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), leaves)
    return out


# --- the recorder -----------------------------------------------------------------------------------

def _host_copy(tree):
    # A real copy: the agent's update donates its state, so device buffers may be reused.
    return jax.tree_util.tree_map(lambda x: np.array(x, copy=True), tree)


def _stat_keys(prefix: str, stats: Mapping) -> list[str]:
    """The column names `flatten_stats` would give (works on shape structs from eval_shape)."""
    keys = [f"{prefix}/{path}/{name}" for path, values in stats.get("layers", {}).items()
            for name in values]
    return keys + [f"{prefix}/total/{name}" for name in stats.get("total", {})]


class GradientFlowRecorder:
    """Writes gradient-flow, SNR, dormant-neuron and topology rows to `<run>/analysis.csv`.

    The env loop calls `before_update(state, batch)` and `after_update(state, batch, env_step)`
    around each `agent.update` call (which may run several gradient steps: `hook.steps_per_update`,
    else the recorder learns how many from the sparsify step counter once). `batch` may be a
    zero-argument callable returning the batch, called only when a row is computed.

    - Every `every` gradient steps (when an update call crosses a multiple of `every`), a row with
      event "periodic": `gradient_flow_stats` of each network at the new state on that batch
      (`gf/...`), the tau-dormant neuron ratios (`dormant/...`) when the hook has a forward
      function, and on every `snr_every`-th such row the gradient SNR over the batch's items
      (`snr/...`, at most `snr_max_batch` items, per-sample gradients `snr_chunk` at a time;
      `snr_chunk` 0: all at once).
    - Around every update call in which the masks of a network whose method changes masks (prune /
      SET / RigL) change, a row with event "topology" (`topo/...`): `topology_update_effect` (old
      state's dense gradient under the old and the new masks, churn, sparsity, weight norms), the
      masked gradient norm at the new params, and the fraction of positions that were ever active.
      Its grad_step is the step count at which the (first) mask update of the call ran; an update
      call of several gradient steps (PPO) is compared as a whole, from before to after the call.

    Initial params go to `<run>/init_params.npz` (read back on resume) for the distance from
    initialisation. Time spent here is kept in `seconds` (compilation in `compile_seconds`) and
    written to `<run>/analysis.json` by `close`.
    """

    def __init__(self, hook: AnalysisHook, networks: Callable, state, run_path, *,
                 every: int = 1000, snr_every: int = 10, resume_step: int | None = None,
                 snr_max_batch: int = 256, snr_chunk: int = 32, tau=(0.025, 0.0), ctx=None):
        from sparse_rl.sparsity import get_sparse_state

        started = time.perf_counter()
        self.ctx = ctx
        self.hook = hook
        self.networks = networks
        self.every = int(every)
        self.snr_every = int(snr_every)
        self.snr_max_batch = int(snr_max_batch)
        self.snr_chunk = int(snr_chunk)
        self.taus = tuple(float(t) for t in tau)
        self.path = Path(run_path)
        self.seconds = 0.0
        self.compile_seconds = 0.0
        self.counts = {"periodic": 0, "snr": 0, "topology": 0}
        self._compiled: set[str] = set()
        self.compile_by: dict[str, float] = {}
        self.seconds_by: dict[str, float] = {}
        self._pending = None
        self._pending_step = 0
        self._per_call: int | None = (int(hook.steps_per_update)
                                      if getattr(hook, "steps_per_update", None) else None)
        self.writer = None
        self.sparsity = {k: v for k, v in (hook.sparsity or {}).items()
                         if getattr(v, "method", "dense") in ("prune", "set", "rigl")}
        self._updates = np.unique(np.concatenate(
            [update_steps(c) for c in self.sparsity.values()] or [np.zeros((0,), np.int64)]))

        nets = networks(state)
        try:  # gradient steps done so far: the sparsify wrapper counts them (checkpointed)
            self.grad_step = int(get_sparse_state(state).step)
        except Exception:
            self.grad_step = 0
        like = {name: params for name, (params, _) in nets.items()}
        init_file = self.path / INIT_PARAMS_FILE
        if resume_step is None:
            self.init_params = _host_copy(like)
            save_tree_npz(init_file, self.init_params)
        else:
            if not init_file.is_file():  # issue 16: never a resume silently without these columns
                raise ConfigError("analysis_every", f"{init_file} is missing: the run was started "
                                  "without analysis (--analysis-every 0), so it has no initial "
                                  "parameters to measure distances from; resume it with "
                                  "--analysis-every 0, or start a new run")
            self.init_params = load_tree_npz(init_file, like)
        # Masks only change at topology updates, all of which this recorder sees, so the union of
        # the masks it sees is the set of positions ever active. <run>/ever_active.npz keeps, per
        # position, the env step at which it first became active (NEVER if not yet): on resume from
        # a checkpoint at step S, positions first active after S are reset, so the statistics
        # continue exactly as in an uninterrupted run even after a kill.
        masks_now = {name: _host_copy(masks) for name, (_, masks) in nets.items()}
        first = None
        if resume_step is not None:
            like = {n: jax.tree_util.tree_map(lambda m: np.zeros(np.shape(m), np.int32), t)
                    for n, t in masks_now.items()}
            first = load_tree_npz(self.path / EVER_ACTIVE_FILE, like)
        step0 = 0 if resume_step is None else int(resume_step)
        self.first_active = {
            name: jax.tree_util.tree_map(
                lambda m, f: np.where(np.asarray(m, bool), np.minimum(f, step0), f).astype(np.int32),
                masks_now[name],
                jax.tree_util.tree_map(lambda m: np.full(np.shape(m), NEVER, np.int32), masks_now[name])
                if first is None else jax.tree_util.tree_map(
                    lambda f: np.where(np.asarray(f) > step0, NEVER, f).astype(np.int32), first[name]))
            for name in masks_now}
        self._truncate(resume_step)
        self._build()
        self._spend(time.perf_counter() - started, "setup")

    def _truncate(self, resume_step):
        """Cut an existing analysis.csv back to `resume_step` (fresh run: remove it)."""
        from sparse_rl.train.metrics import MetricsWriter

        file = self.path / ANALYSIS_FILE
        if resume_step is None:
            file.unlink(missing_ok=True)
            (self.path / EVER_ACTIVE_FILE).unlink(missing_ok=True)
            return
        if file.exists():
            import csv

            with open(file, encoding="utf-8", newline="") as f:
                header = next(csv.reader([f.readline()]), [])
            if "step" in header:
                with MetricsWriter(file, header, fsync=False) as w:
                    w.truncate_after(resume_step)
                self._existing_header = header

    _existing_header = None

    # --- jitted pieces -------------------------------------------------------------------------
    # One program computes the gradients (the expensive one to compile); small ones reduce them to
    # statistics, so periodic rows and both sides of a topology update share compiled code.
    def _build(self):
        from sparse_rl.analysis import topology

        hook, taus, networks, chunk = self.hook, self.taus, self.networks, self.snr_chunk
        fwd = dict(hook.forward or {})
        activation = hook.activation

        def grads(state, batch):
            """({network: (dense grads, masks, params)}, {network: dormant-neuron stats})."""
            g = hook.grads(state, batch)
            dormant = {}
            for name, f in fwd.items():
                if name in g:
                    acts = topology.capture_activations(f, g[name][2], batch, activation=activation)
                    dormant[name] = topology.dormant_stats(acts, taus)
            return g, dormant

        def snr(state, batch):
            """Per-parameter SNR values and masks (summarised on the host)."""
            def grad_fn(single):
                return {name: g for name, (g, _, _) in hook.grads(state, single).items()}

            if chunk > 0:
                values = chunked_snr_values(grad_fn, batch, chunk)
            else:
                values = snr_values(jax.vmap(
                    lambda item: grad_fn(jax.tree_util.tree_map(lambda x: x[None], item)))(batch))
            masks = {name: m for name, (_, m) in networks(state).items()}
            return {name: (v, masks.get(name)) for name, v in values.items()}

        self._fns = {"grads": grads, "snr": snr}
        self._grads = jax.jit(grads)
        self._snr = jax.jit(snr)

    @staticmethod
    def _effect(pre, post) -> dict:
        (g0, m0, p0), (g1, m1, p1) = pre, post
        stats = topology_update_effect(p0, m0, p1, m1, g0)
        after = gradient_flow_stats(g1, m1, p1)
        for path, v in after["layers"].items():
            stats["layers"][path]["post_masked_grad_norm"] = v["masked_grad_norm"]
        stats["total"]["post_masked_grad_norm"] = after["total"]["masked_grad_norm"]
        return stats

    def _host(self, fn, *args):
        """Run a numpy reduction of fetched arrays, counting its time."""
        start = time.perf_counter()
        out = fn(*args)
        self._spend(time.perf_counter() - start, "host")
        return out

    def _spend(self, seconds, name):
        self.seconds += seconds
        self.seconds_by[name] = self.seconds_by.get(name, 0.0) + seconds

    def _periodic_stats(self, g, dormant) -> dict:
        out = {}
        for name, (grads, masks, params) in g.items():
            init = self.init_params.get(name) if self.init_params is not None else None
            out[f"gf/{name}"] = self._host(gradient_flow_stats, grads, masks, params, init)
            if name in dormant:
                out[f"dormant/{name}"] = dormant[name]
        return out

    @staticmethod
    def _ever_stats(ever) -> dict:
        """Fraction of positions ever active per kernel and over all kernels (numpy)."""
        from sparse_rl.sparsity import leaf_paths

        layers, on, size = {}, 0, 0
        paths = jax.tree_util.tree_leaves(leaf_paths(ever))
        for path, e in zip(paths, jax.tree_util.tree_leaves(ever)):
            if np.ndim(e) >= 2:
                n = int(np.count_nonzero(e))
                layers[path] = n / max(int(np.size(e)), 1)
                on, size = on + n, size + int(np.size(e))
        return {"layers": layers, "total": on / max(size, 1)}

    def _open(self, state, batch):
        """Open analysis.csv with every column this run can write (shapes only, no compute)."""
        from sparse_rl.train.metrics import MetricsWriter

        f = self._fns
        cols = ["step", "grad_step", "event"]
        g, dormant = jax.eval_shape(f["grads"], state, batch)
        zeros = {name: jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), v)
                 for name, v in g.items()}
        for name, (grads, masks, params) in zeros.items():
            init = self.init_params.get(name) if self.init_params is not None else None
            cols += _stat_keys(f"gf/{name}", gradient_flow_stats(grads, masks, params, init))
            if name in dormant:
                cols += _stat_keys(f"dormant/{name}", dormant[name])
        if self.snr_every > 0:
            for name, (grads, masks, _) in zeros.items():
                cols += _stat_keys(f"snr/{name}", summarize_snr(grads, masks))
        for name in self.sparsity:
            s = self._effect(zeros[name], zeros[name])
            s["total"]["ever_active"] = 0.0
            for path in s["layers"]:
                s["layers"][path]["ever_active"] = 0.0
            cols += _stat_keys(f"topo/{name}", s)
        file = self.path / ANALYSIS_FILE
        if self._existing_header is not None and self._existing_header != cols and file.exists():
            # written by another version of this code: keep it aside rather than mix columns
            file.replace(file.with_name(f"analysis-{int(time.time())}.csv"))
        self.writer = MetricsWriter(file, cols, fsync=False)
        self._fields = set(cols)

    def _resolve(self, batch):
        """The batch itself, or what a zero-argument callable batch returns (timed as "batch")."""
        if not callable(batch):
            return batch
        start = time.perf_counter()
        out = jax.block_until_ready(batch())
        spent = time.perf_counter() - start
        if "batch" in self._compiled:
            self._spend(spent, "batch")
        else:  # the first call compiles
            self._compiled.add("batch")
            self._add_compile(spent, "batch")
        return out

    def _call(self, name, fn, *args):
        start = time.perf_counter()
        out = jax.device_get(fn(*args))
        spent = time.perf_counter() - start
        if name in self._compiled:
            self._spend(spent, name)
        else:  # the first call compiles
            self._compiled.add(name)
            self._add_compile(spent, name)
        return out

    def _add_compile(self, seconds, name="columns"):
        self.compile_seconds += seconds
        self.compile_by[name] = self.compile_by.get(name, 0.0) + seconds
        if self.ctx is not None:  # the run reports compilation apart from its steps per second
            self.ctx.compile_seconds += seconds

    def _write(self, row, state, batch):
        start = time.perf_counter()
        if self.writer is None:
            self._open(state, batch)
            self._add_compile(time.perf_counter() - start)
            start = time.perf_counter()
        self.writer.write({k: v for k, v in row.items() if k in self._fields})
        self._spend(time.perf_counter() - start, "write")

    # --- loop interface -------------------------------------------------------------------------
    def _topology_in_call(self) -> int | None:
        """The step count of the first mask update in the next update call (gradient steps
        grad_step .. grad_step + per_call - 1), None if there is none."""
        from sparse_rl.sparsity import next_mask_update

        return next_mask_update(self._updates, self.grad_step, self._per_call or 1)

    def _periodic_in(self, first: int, last: int) -> bool:
        """Whether the gradient steps first .. last cross a multiple of `every`."""
        return self.every > 0 and first // self.every != last // self.every

    def reads_state_next_call(self) -> bool:
        """Whether `before_update` / `after_update` of the next update call will read the state and
        batch (a topology or periodic row, or the first call, which counts its gradient steps).
        A loop may pass None for both on calls where this is False (e.g. not slicing a run's state
        out of a vectorised one)."""
        if self._per_call is None:
            return True
        due = bool(self.sparsity) and self._topology_in_call() is not None
        return bool(due or self._pending is not None
                    or self._periodic_in(self.grad_step, self.grad_step + self._per_call))

    def before_update(self, state, batch) -> None:
        """Call just before `agent.update(state, batch, ...)` (which may donate `state`). A callable
        `batch` is called (if at all) before this returns, so it may read `state`."""
        if self.error is None:
            self._guard(self._before_update, state, batch)

    def after_update(self, state, batch, env_step: int) -> None:
        """Call just after `agent.update`, with the new state, its batch (or a zero-argument
        callable returning it) and the env steps done so far."""
        if self.error is None:
            self._guard(self._after_update, state, batch, env_step)

    def _guard(self, fn, *args):
        # Analysis must never stop a training run: on an error, warn once and stop recording
        # (the error is kept in analysis.json).
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            if self.raise_errors:
                raise
            import traceback
            import warnings

            self.error = f"{type(e).__name__}: {e}"
            self._traceback = traceback.format_exc()
            warnings.warn(f"analysis recording stopped: {self.error}", RuntimeWarning, stacklevel=3)

    error: str | None = None
    raise_errors = False  # tests set this to see errors instead of a warning

    def _before_update(self, state, batch) -> None:
        self._pending = None
        update_step = self._topology_in_call() if self.sparsity else None
        if update_step is not None:
            jax.block_until_ready(state)
            batch = self._resolve(batch)
            g, _ = self._call("grads", self._grads, state, batch)
            # real host copies: the update donates `state`, whose buffers params / masks may share
            self._pending = self._host(lambda: {name: _host_copy(g[name]) for name in self.sparsity
                                                if name in g})
            self._pending_step = update_step

    def _after_update(self, state, batch, env_step: int) -> None:
        from sparse_rl.sparsity import get_sparse_state

        previous = self.grad_step
        if self._per_call is None:  # how many gradient steps one update call runs (read once)
            start = time.perf_counter()
            try:
                self._per_call = max(1, int(get_sparse_state(state).step) - previous)
            except Exception:
                self._per_call = 1
            self._spend(time.perf_counter() - start, "setup")
        self.grad_step = previous + self._per_call
        periodic = self._periodic_in(previous, self.grad_step)
        g = None
        if periodic or self._pending is not None:
            # The update runs asynchronously; its own time (a mask update can be slow) is training
            # time, not analysis time: wait for it before the clock starts.
            jax.block_until_ready(state)
            batch = self._resolve(batch)

        if self._pending is not None:
            pre, self._pending = self._pending, None
            g, dormant = self._call("grads", self._grads, state, batch)
            row = {"step": env_step, "grad_step": self._pending_step, "event": "topology"}
            for name, before in pre.items():
                stats = self._host(self._effect, before, g[name])
                start = time.perf_counter()
                first = jax.tree_util.tree_map(
                    lambda f, a, b: np.where((np.asarray(a, bool) | np.asarray(b, bool)) & (f == NEVER),
                                             np.int32(env_step), f),
                    self.first_active[name], before[1], g[name][1])
                self.first_active[name] = first
                frac = self._ever_stats(jax.tree_util.tree_map(lambda f: f != NEVER, first))
                for path, v in frac["layers"].items():
                    stats["layers"][path]["ever_active"] = v
                stats["total"]["ever_active"] = frac["total"]
                self._spend(time.perf_counter() - start, "host")
                row.update(flatten_stats(f"topo/{name}", stats))
            self._write(row, state, batch)
            self._host(save_tree_npz, self.path / EVER_ACTIVE_FILE, self.first_active)
            self.counts["topology"] += 1

        if periodic:
            index = self.grad_step // self.every
            if g is None:
                g, dormant = self._call("grads", self._grads, state, batch)
            row = {"step": env_step, "grad_step": self.grad_step, "event": "periodic"}
            for prefix, s in self._periodic_stats(g, dormant).items():
                row.update(flatten_stats(prefix, s))
            # SNR on periodic rows 1, 1 + snr_every, ... (or the row whose call crossed one)
            before = previous // self.every
            if self.snr_every > 0 and (index - 1) // self.snr_every != (before - 1) // self.snr_every:
                small = jax.tree_util.tree_map(lambda x: x[: self.snr_max_batch], batch)
                for name, (values, masks) in self._call("snr", self._snr, state, small).items():
                    row.update(flatten_stats(f"snr/{name}", self._host(summarize_snr, values, masks)))
                self.counts["snr"] += 1
            self._write(row, state, batch)
            self.counts["periodic"] += 1

    def close(self, loop_seconds: float | None = None) -> dict:
        """Close the CSV and write `<run>/analysis.json` (cadence, counts, time spent)."""
        if self.writer is not None:
            self.writer.close()
        meta = {"every": self.every, "snr_every": self.snr_every, "grad_steps": self.grad_step,
                "records": self.counts, "seconds": self.seconds,
                "seconds_by": self.seconds_by, "compile_seconds": self.compile_seconds,
                "compile_by": self.compile_by}
        if self.error is not None:
            meta["error"] = self.error
            meta["traceback"] = self._traceback
        if loop_seconds:
            meta["loop_seconds"] = float(loop_seconds)
            meta["overhead_fraction"] = self.seconds / max(float(loop_seconds), 1e-9)
        tmp = self.path / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(self.path / META_FILE)
        return meta


def make_recorder(agent, state, run_path, *, every: int, resume_step: int | None = None,
                  **kw) -> GradientFlowRecorder | None:
    """A recorder for `agent` when it has an `analysis` hook and `every` > 0, else None."""
    hook = getattr(agent, "analysis", None)
    if hook is None or not every or every <= 0:
        return None
    return GradientFlowRecorder(hook, agent.networks, state, run_path, every=every,
                                resume_step=resume_step, **kw)
