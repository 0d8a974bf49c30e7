"""The off-policy env loop (DQN, SAC): act in one env, store in replay, update, evaluate, checkpoint.

Everything that decides the trajectory lives in the checkpoint (agent state, loop key, replay
buffer with its sampler state, the env's own state and current observation, episode counters), so
a resumed run continues exactly where the interrupted one was.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl import envs
from sparse_rl.analysis.gradient_flow import make_recorder
from sparse_rl.replay import ReplayBuffer, Transition
from sparse_rl.train.runner import RunContext, ScheduledUpdate, join_state, split_state, timed_compile


def _example_batch(obs_spec, action_spec, batch_size: int) -> Transition:
    """Shapes and dtypes of a replay batch, for reading the update's metric names."""
    obs = jax.ShapeDtypeStruct((batch_size, *obs_spec.shape), obs_spec.dtype)
    scalar = jax.ShapeDtypeStruct((batch_size,), np.float32)
    action = jax.ShapeDtypeStruct((batch_size, *action_spec.shape), action_spec.dtype)
    return Transition(obs, action, scalar, scalar, obs)


def _learning_starts(config, env_id: str) -> int:
    value = getattr(config, "learning_starts", 0)
    if value is None:  # SAC's paper rule
        return 10_000 if any(name in env_id for name in ("HalfCheetah", "Ant")) else 1_000
    return int(value)


def run(ctx: RunContext) -> dict:
    run_cfg, config, agent, spec = ctx.run, ctx.agent_config, ctx.agent, ctx.env_spec
    action_spec = spec.action_spec
    continuous = not hasattr(action_spec, "num_values")
    learning_starts = _learning_starts(config, run_cfg.env)
    n_step = getattr(config, "n_step", 1)
    # Agents that take several gradient steps per update sample one fresh batch for each.
    sample_size = ctx.module.sample_size(config) if hasattr(ctx.module, "sample_size") else config.batch_size
    gamma = getattr(config, "gamma", 0.99)

    env = envs.make_env(run_cfg.env, run_cfg.seed)
    obs_spec = env.observation_spec()
    frame_stack = obs_spec.shape[-1] if spec.family == "atari" else None
    replay = ReplayBuffer(
        config.replay_capacity, obs_spec.shape, obs_spec.dtype,
        action_shape=action_spec.shape, action_dtype=action_spec.dtype,
        seed=run_cfg.seed, frame_stack=frame_stack,
    )

    root = jax.random.PRNGKey(run_cfg.seed)
    init_key, act_key, update_key, eval_key, warmup_key = jax.random.split(root, 5)
    state = timed_compile(ctx, agent.init, init_key)

    def act_fn(state, obs, key, step):
        return agent.act(state, obs[None], jax.random.fold_in(key, step), step, evaluation=False)[0]

    act_fn = jax.jit(act_fn)
    # The per-step key is derived inside the jitted call: one dispatch per update, not two.
    # Two programs for prune/SET/RigL: calls in which no mask update is due run one without the
    # mask-update branch (`topology=False`), which is what most calls are.
    update_fn = jax.jit(
        lambda state, batch, key, step, topology: agent.update(state, batch, jax.random.fold_in(key, step),
                                                               topology=topology),
        donate_argnums=0, static_argnames="topology")
    if continuous:
        low = jnp.asarray(action_spec.minimum, jnp.float32)
        high = jnp.asarray(action_spec.maximum, jnp.float32)

        @jax.jit
        def random_action(key, step):
            return jax.random.uniform(jax.random.fold_in(key, step), action_spec.shape, jnp.float32, low, high)

    # Metric columns: the agent's update metrics (read from its output shapes, no compile) and
    # the per-network sparsities.
    _, metric_shapes = jax.eval_shape(
        agent.update, state, _example_batch(obs_spec, action_spec, sample_size), update_key
    )
    metric_names = sorted(metric_shapes)
    extra_log = getattr(ctx.module, "extra_log", None)
    extra_names = sorted(extra_log(config, 0)) if extra_log else []
    network_names = [f"sparsity_{name}" for name in agent.networks(state)]

    # --- resume ------------------------------------------------------------------------
    start_step = 0
    episode_return, episode_length = 0.0, 0
    recent_returns: list[float] = []
    episodes = 0
    last_metrics: dict = {}
    restored = ctx.load_checkpoint({"agent": state}) if run_cfg.resume else None
    timestep = None
    if restored is not None:
        tree, extra, manifest = restored
        state = jax.tree_util.tree_map(jnp.asarray, tree["agent"])
        counters = manifest["counters"]
        start_step = int(counters["step"])
        episode_return = float(counters["episode_return"])
        episode_length = int(counters["episode_length"])
        recent_returns = list(counters["recent_returns"])
        episodes = int(counters["episodes"])
        last_metrics = dict(counters.get("last_metrics", {}))
        replay.load_state_dict(join_state(extra, counters["replay"], "replay/"))
        env.set_state(join_state(extra, counters["env"], "env/"))
        timestep = env.current_timestep() if hasattr(env, "current_timestep") else None
        obs = extra["loop/obs"]
    else:
        timestep = env.reset()
        obs = timestep.observation
    ctx.open_metrics(
        ["train_episodes"] + metric_names + extra_names + network_names,
        start_step if restored is not None else None,
    )

    # Training-time analysis (gradient flow, SNR, dormant neurons, topology) -> analysis.csv.
    recorder = make_recorder(agent, state, ctx.rundir.path, every=getattr(run_cfg, "analysis_every", 0),
                             snr_every=getattr(run_cfg, "analysis_snr_every", 10),
                             resume_step=start_step if restored is not None else None, ctx=ctx)

    def save(step):
        replay_arrays, replay_values = split_state(replay.state_dict(), "replay/")
        env_arrays, env_values = split_state(env.get_state(), "env/")
        counters = {
            "step": step, "episode_return": episode_return, "episode_length": episode_length,
            "recent_returns": recent_returns, "episodes": episodes, "last_metrics": last_metrics,
            "replay": replay_values, "env": env_values,
        }
        arrays = {**replay_arrays, **env_arrays, "loop/obs": np.asarray(obs)}
        ctx.save_checkpoint(step, {"agent": state}, arrays, counters, state=state)

    # --- the loop ------------------------------------------------------------------------
    update = ScheduledUpdate(ctx, update_fn, getattr(agent, "mask_update_steps", None),
                             per_call=getattr(config, "gradient_steps", 1), grad_steps=int(state.gradient_steps))
    ctx.reset_sps(start_step)
    sps = 0.0
    loop_start, loop_start_step = time.perf_counter(), start_step
    compile_before = ctx.compile_seconds
    for step in range(start_step, run_cfg.steps):
        if continuous and step < learning_starts:
            action = np.asarray(random_action(warmup_key, step))
        elif step == start_step:
            action = np.asarray(timed_compile(ctx, act_fn, state, jnp.asarray(obs), act_key, step))
        else:
            action = np.asarray(act_fn(state, obs, act_key, step))
        timestep = env.step(action)
        next_obs = timestep.observation
        episode_return += float(timestep.reward)
        episode_length += 1
        replay.add(obs, action, float(timestep.reward), float(timestep.discount), next_obs,
                   first=episode_length == 1)
        if timestep.last():
            recent_returns = (recent_returns + [episode_return])[-10:]
            episodes += 1
            episode_return, episode_length = 0.0, 0
            timestep = env.reset()
            next_obs = timestep.observation
        obs = next_obs

        if step >= learning_starts and (step - learning_starts) % config.train_every == 0 and len(replay) >= config.batch_size:
            batch = replay.sample(sample_size, n_step=n_step, gamma=gamma)
            if recorder is not None:
                recorder.before_update(state, batch)
            state, metrics = update(state, batch, update_key, step)
            last_metrics = metrics
            if recorder is not None:
                recorder.after_update(state, batch, step + 1)

        done = step + 1
        evaluated = done % run_cfg.eval_every == 0 or done == run_cfg.steps
        if evaluated:
            ctx.evaluate(state, jax.random.fold_in(eval_key, done), len(ctx.eval_history))
        if evaluated or done % run_cfg.log_every == 0:
            sps = ctx.sps(done)
            last_metrics = {k: float(v) for k, v in last_metrics.items()}
            row = {
                "step": done, "wall_time": ctx.wall_time(),
                "train_return": float(np.mean(recent_returns)) if recent_returns else None,
                "train_episodes": episodes, "sps": sps,
                **last_metrics, **ctx.network_sparsity(state),
            }
            if extra_log:
                row.update(extra_log(config, done))
            if evaluated:
                row["eval_return_mean"], row["eval_return_std"] = ctx.eval_history[-1][1:]
            ctx.log(row, state=state)  # state: NaN/Inf parameter scan at log points (issue 7)
            ctx.progress.update(done, sps=sps, ret=row["train_return"], sparsity=row["sparsity"])
        if run_cfg.checkpoint_every and (done % run_cfg.checkpoint_every == 0 or done == run_cfg.steps):
            save(done)

    # Training throughput: evaluation and compilation are reported separately.
    elapsed = time.perf_counter() - loop_start - ctx.eval_seconds - (ctx.compile_seconds - compile_before)
    mean_sps = (run_cfg.steps - loop_start_step) / max(elapsed, 1e-9)
    if recorder is not None:
        recorder.close(loop_seconds=elapsed)
    return ctx.write_summary(state, mean_sps)
