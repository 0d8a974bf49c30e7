"""Several off-policy runs in one process: seeds (and sparsity levels) vmapped.

`train_vectorized(runs, agent_configs)` trains runs that differ only by seed and, optionally, by
sparsity level (of the same method) together:

* the agent states are stacked (`jax.vmap` of `init` over the runs' init keys; runs at different
  sparsity levels are initialised by their own config's `init`, since the level is a static part
  of a config, then stacked);
* `update` is jitted once and vmapped over the stacked states and a stacked replay batch (one
  sample per run from its own buffer); since the sparsity core keeps every level-dependent value
  (per-layer targets) in the optimiser state, one compiled update serves all levels (checked:
  the update's jaxprs must be identical);
* acting is one vmapped call for all runs (one env per run, stepped in a Python loop), and
  evaluation runs all runs' evaluation episodes in one batched call per env step.

Each run writes the same run directory as `sparse_rl.train.runner.train` would (config.json,
metrics.csv, summary.json, checkpoints in the same format, analysis.csv, COMPLETE), with the same
keys, env seeds, replay seeds and evaluation seeds, so its results equal a separate run's up to
floating-point reassociation in the batched computations (and `wall_time` / `sps`). A vectorized
run's checkpoint can be resumed by an ordinary `sparse-rl train --resume`.

Covered: off-policy agents (`LOOP == "offpolicy"`: DQN; SAC through the same code). Not covered:
PPO (on-policy; its rollouts already batch over a vector env). Resuming a group from checkpoints
is done run by run (the sweep does this), not vectorized.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import sparse_rl
from sparse_rl import envs
from sparse_rl.errors import ConfigError
from sparse_rl.replay import ReplayBuffer, Transition
from sparse_rl.train.offpolicy import _learning_starts
from sparse_rl.train.runner import split_state
from sparse_rl.train.rundir import RunDir
from sparse_rl.train.runner import RunConfig, RunContext, agent_module, default_out
from sparse_rl.train.serialize import config_diff

SUPPORTED_LOOPS = ("offpolicy",)

# Run fields that may differ between the runs of one group.
_RUN_VARYING = ("seed", "out", "resume", "progress")


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


def _recorder_due(rec) -> bool:
    """Whether a gradient-flow recorder will read the state at its next update call (so the run's
    own slice of the stacked state must be passed). Unknown recorder internals: always."""
    try:
        if rec._per_call is None:
            return True
        k = rec._per_call
        topology = bool(rec.sparsity) and rec._topology_in_call()
        periodic = rec.every > 0 and rec.grad_step // rec.every != (rec.grad_step + k) // rec.every
        return bool(topology or periodic or rec._pending is not None)
    except AttributeError:
        return True


def train_vectorized(runs: Sequence[RunConfig], agent_configs: Sequence | None = None,
                     summary_extra: Sequence[dict | None] | None = None) -> list[dict]:
    """Train `runs` together (see the module docstring); returns their summaries in order.

    `summary_extra[i]` (optional) is merged into run i's summary.json. Each run directory is
    opened (and locked) like `train` does; on an error every unfinished run is marked FAILED and
    the error re-raised.
    """
    runs = list(runs)
    module = agent_module(runs[0].agent)
    if module.LOOP not in SUPPORTED_LOOPS:
        raise ConfigError("vectorize_seeds", f"agent {runs[0].agent} ({module.LOOP} loop) is not supported",
                          ", ".join(a for a in ("dqn", "sac") if supports(a)))
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
            rundir.write_config(ctx.config_dict() | {"out": str(run.out), "library_version": sparse_rl.__version__})
        summaries = _run(ctxs, agents, extras)
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


def _example_batch(replay: ReplayBuffer, obs_spec, action_spec, batch_size: int):
    if hasattr(replay, "example_batch"):
        return replay.example_batch(batch_size)
    obs = np.zeros((batch_size, *obs_spec.shape), obs_spec.dtype)
    return Transition(obs, np.zeros((batch_size, *action_spec.shape), action_spec.dtype),
                      np.zeros(batch_size, np.float32), np.zeros(batch_size, np.float32), obs.copy())


def _run(ctxs: list[RunContext], agents: list, extras: list) -> list[dict]:
    S = len(ctxs)
    ctx0 = ctxs[0]
    run0, config, agent, spec = ctx0.run, ctx0.agent_config, agents[0], ctx0.env_spec
    action_spec = spec.action_spec
    continuous = not hasattr(action_spec, "num_values")
    learning_starts = _learning_starts(config, run0.env)
    n_step = getattr(config, "n_step", 1)
    gamma = getattr(config, "gamma", 0.99)

    env_list = [envs.make_env(ctx.run.env, ctx.run.seed) for ctx in ctxs]
    obs_spec = env_list[0].observation_spec()
    frame_stack = obs_spec.shape[-1] if spec.family == "atari" else None
    replays = [ReplayBuffer(config.replay_capacity, obs_spec.shape, obs_spec.dtype,
                            action_shape=action_spec.shape, action_dtype=action_spec.dtype,
                            seed=ctx.run.seed, frame_stack=frame_stack) for ctx in ctxs]

    # The keys of each run, exactly as the single-run loop derives them.
    keys = [jax.random.split(jax.random.PRNGKey(ctx.run.seed), 5) for ctx in ctxs]
    init_keys, act_keys, update_keys, eval_keys, warmup_keys = (jnp.stack([k[i] for k in keys]) for i in range(5))

    compile_seconds = 0.0
    started = time.perf_counter()
    groups: dict[int, list[int]] = {}
    for i, a in enumerate(agents):
        groups.setdefault(id(a), []).append(i)
    if len(groups) == 1:
        states = jax.vmap(agent.init)(init_keys)
    else:
        parts: dict[int, object] = {}
        for members in groups.values():
            stacked = jax.vmap(agents[members[0]].init)(init_keys[jnp.asarray(members)])
            for j, i in enumerate(members):
                parts[i] = jax.tree_util.tree_map(lambda x, j=j: x[j], stacked)
        states = _stack([parts[i] for i in range(S)])
    # Step counters (integer scalars equal in every run: gradient steps, the sparsity wrapper's and
    # the optimiser's counts) are kept once, unbatched: the runs move in lockstep, and a batched
    # counter would turn the agent's `lax.cond`s (e.g. "is this a mask-update step?") into
    # `select`s that compute both branches at every step.
    axes = _shared_axes(states)
    states = _tree_map_axes(lambda a, x: x[0] if a is None else x, axes, states)
    jax.block_until_ready(states)
    compile_seconds += time.perf_counter() - started
    init_seconds = compile_seconds

    def act_one(state, obs, key, step):
        return agent.act(state, obs[None], jax.random.fold_in(key, step), step, evaluation=False)[0]

    act_all = jax.jit(jax.vmap(act_one, in_axes=(axes, 0, 0, None)))

    def update_all(states, batch, update_keys, step):
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(update_keys)
        return jax.vmap(agent.update, in_axes=(axes, 0, 0), out_axes=(axes, 0))(states, batch, step_keys)

    update_all = jax.jit(update_all, donate_argnums=0)

    def eval_act_one(state, obs, key, t):
        return agent.act(state, obs, jax.random.fold_in(key, t), 0, evaluation=True)

    eval_act_all = jax.jit(jax.vmap(eval_act_one, in_axes=(axes, 0, 0, None)))
    take = jax.jit(lambda tree, i: _tree_map_axes(lambda a, x: x if a is None else x[i], axes, tree))

    def host_slice(tree, i):  # run i's state from a host copy of the stacked state
        return _tree_map_axes(lambda a, x: x if a is None else x[i], axes, tree)

    if continuous:
        low = jnp.asarray(action_spec.minimum, jnp.float32)
        high = jnp.asarray(action_spec.maximum, jnp.float32)

        def random_action(key, step):
            return jax.random.uniform(jax.random.fold_in(key, step), action_spec.shape, jnp.float32, low, high)

        random_all = jax.jit(jax.vmap(random_action, in_axes=(0, None)))

    if len(groups) > 1:  # one compiled update for every level: the traced programs must agree
        one = take(states, 0)
        batch = _example_batch(replays[0], obs_spec, action_spec, config.batch_size)
        programs = {str(jax.make_jaxpr(agents[m[0]].update)(one, batch, update_keys[0])) for m in groups.values()}
        if len(programs) > 1:
            raise ConfigError("sparsities", "this agent's update depends on the sparsity level; "
                              "vectorize over seeds only")

    single = take(states, 0)
    dummy = _example_batch(replays[0], obs_spec, action_spec, config.batch_size)
    _, metric_shapes = jax.eval_shape(agent.update, single, dummy, update_keys[0])
    metric_names = sorted(metric_shapes)
    extra_log = getattr(ctx0.module, "extra_log", None)
    extra_names = sorted(extra_log(config, 0)) if extra_log else []
    network_names = [f"sparsity_{name}" for name in agent.networks(single)]

    for ctx in ctxs:
        if ctx.run.resume and ctx.load_checkpoint({"agent": single}) is not None:
            raise ConfigError("resume", f"{ctx.rundir.path} has a checkpoint: resume it on its own "
                              "(vectorized runs start from scratch)")
        ctx.open_metrics(["train_episodes"] + metric_names + extra_names + network_names, None)

    recorders = [None] * S
    every = getattr(run0, "analysis_every", 0)
    if every:
        from sparse_rl.analysis.gradient_flow import make_recorder

        host = jax.device_get(states)
        recorders = [make_recorder(agents[i], host_slice(host, i),
                                   ctx.rundir.path, every=every, resume_step=None, ctx=ctx)
                     for i, ctx in enumerate(ctxs)]

    timesteps = [env.reset() for env in env_list]
    obs = np.stack([ts.observation for ts in timesteps])
    episode_return = np.zeros(S)
    episode_length = np.zeros(S, np.int64)
    recent_returns: list[list[float]] = [[] for _ in range(S)]
    episodes = np.zeros(S, np.int64)
    last_metrics: list[dict] = [{} for _ in range(S)]
    metrics = None

    def save(step):
        host = jax.device_get(states)
        for i, ctx in enumerate(ctxs):
            state_i = host_slice(host, i)
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
    compiled_act = compiled_update = False
    loop_start = time.perf_counter()
    for step in range(run0.steps):
        if continuous and step < learning_starts:
            actions = np.asarray(random_all(warmup_keys, step))
        else:
            t0 = time.perf_counter()
            actions = np.asarray(act_all(states, jnp.asarray(obs), act_keys, step))
            if not compiled_act:
                compiled_act = True
                compile_seconds += time.perf_counter() - t0
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
            samples = [r.sample(config.batch_size, n_step=n_step, gamma=gamma) if n_step > 1
                       else r.sample(config.batch_size) for r in replays]
            batch = Transition(*(np.stack(field) for field in zip(*samples)))
            due = [rec is not None and _recorder_due(rec) for rec in recorders]
            if any(due):
                host_batch = batch
                for i, rec in enumerate(recorders):
                    if due[i]:
                        rec.before_update(take(states, i), jax.tree_util.tree_map(lambda x, i=i: x[i], host_batch))
            t0 = time.perf_counter()
            states, metrics = update_all(states, batch, update_keys, step)
            if not compiled_update:
                jax.block_until_ready(states)
                compiled_update = True
                compile_seconds += time.perf_counter() - t0
            for i, rec in enumerate(recorders):
                if rec is None:
                    continue
                if due[i]:
                    rec.after_update(take(states, i), jax.tree_util.tree_map(lambda x, i=i: x[i], batch), step + 1)
                else:
                    rec.after_update(None, None, step + 1)

        done = step + 1
        evaluated = done % run0.eval_every == 0 or done == run0.steps
        if evaluated:
            _evaluate_all(ctxs, states, eval_keys, done, eval_act_all)
        if evaluated or done % run0.log_every == 0:
            host_states = jax.device_get(states)
            host_metrics = jax.device_get(metrics) if metrics is not None else None
            for i, ctx in enumerate(ctxs):
                sps = ctx.sps(done)
                if host_metrics is not None:
                    last_metrics[i] = {k: float(v[i]) for k, v in host_metrics.items()}
                state_i = host_slice(host_states, i)
                row = {
                    "step": done, "wall_time": ctx.wall_time(),
                    "train_return": float(np.mean(recent_returns[i])) if recent_returns[i] else None,
                    "train_episodes": int(episodes[i]), "sps": sps,
                    **last_metrics[i], **ctx.network_sparsity(state_i),
                }
                if extra_log:
                    row.update(extra_log(config, done))
                if evaluated:
                    row["eval_return_mean"], row["eval_return_std"] = ctx.eval_history[-1][1:]
                ctx.log(row)
                if i == 0:
                    ctx.progress.update(done, sps=sps * S, ret=row["train_return"], sparsity=row["sparsity"])
        if run0.checkpoint_every and (done % run0.checkpoint_every == 0 or done == run0.steps):
            save(done)

    # Training throughput per run, as the single-run loop reports it: evaluation and
    # compilation (of act and update, in the loop) are left out.
    elapsed = time.perf_counter() - loop_start - ctx0.eval_seconds - (compile_seconds - init_seconds)
    elapsed -= sum(ctx.compile_seconds for ctx in ctxs)  # the analysis recorders' compilation
    mean_sps = run0.steps / max(elapsed, 1e-9)
    host = jax.device_get(states)
    summaries = []
    for i, ctx in enumerate(ctxs):
        ctx.compile_seconds = compile_seconds + (ctx.compile_seconds or 0.0)
        if recorders[i] is not None:
            recorders[i].close(loop_seconds=elapsed)
        extra = {"vectorized": {"runs": S, "seeds": [c.run.seed for c in ctxs],
                                "out": [str(c.run.out) for c in ctxs],
                                "total_steps_per_second": mean_sps * S}}
        extra.update(extras[i] or {})
        summaries.append(ctx.write_summary(host_slice(host, i), mean_sps, extra))
    return summaries


def _evaluate_all(ctxs: list[RunContext], states, eval_keys, done: int, eval_act_all) -> None:
    """Every run's evaluation (as `RunContext.evaluate`: a fresh vector env seeded by the run's
    seed and the evaluation index, key folded with the env step and the episode step), with one
    batched act call per env step for all runs."""
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
            actions = np.asarray(eval_act_all(states, jnp.asarray(obs), keys, t))
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
