"""The on-policy env loop (PPO): rollouts from a vector env, one jitted update per rollout, evaluate,
log, checkpoint.

`run(ctx)` is dispatched by `sparse_rl.train.runner.train` for agents whose `LOOP == "onpolicy"`.
The agent (see `sparse_rl.agents.ppo`) provides, besides `init / act / update / networks`:
`act_with_info(state, obs, key) -> (action, log_prob, value)`, `value(state, obs)`, and `info`
(iterations, action bounds, ...); the loop builds a `ppo.Rollout` of `rollout_length` steps of
`num_envs` envs and calls `update(state, rollout, key)` once per iteration.

Work is done in whole iterations of `num_envs * rollout_length` env steps: a run of `steps` env
steps runs ceil(steps / batch) iterations (1M steps of 2048 -> the paper's 489), so it may step a
little past `steps`. Evaluation, metrics rows and checkpoints happen at the end of an iteration,
whenever the iteration crossed a multiple of `eval_every` / `log_every` / `checkpoint_every` (and
after the last one); their `step` is the env steps done so far.

Episode ends: the vector env autoresets in the same step and reports the true final observation in
`infos["next_obs"]`; a truncated step is bootstrapped from V(final observation) (stored in the
rollout's `final_value`), a terminated one is not. Box actions are clipped to the bounds when
stepping; the rollout stores the unclipped sample (its log-probability is the policy's).

Reward scaling (`config.normalize_rewards`): rewards are divided by the running std of the
discounted return, per env, as gymnasium's NormalizeReward does; the statistics and the per-env
return accumulators are loop state. Everything that decides the trajectory is in the checkpoint
(agent state with its observation statistics, loop keys are derived from the seed and counters,
the vector env's own state and current observations, reward statistics, episode counters), so a
resumed run continues exactly where the interrupted one was.

Training-time analysis (`RunConfig.analysis_every`, agents with an `analysis` hook): the recorder
is called around each update with a closure that builds the agent's `analysis_batch` from the
rollout, evaluated only on the iterations that record something (before the update with the old
state, after it with the new one, whose observation statistics have absorbed the rollout).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl import envs
from sparse_rl.agents import normalize as running
from sparse_rl.agents.ppo import Rollout
from sparse_rl.analysis.gradient_flow import make_recorder
from sparse_rl.train.runner import RunContext, ScheduledUpdate, join_state, split_state, timed_compile


def example_rollout(config, info) -> Rollout:
    """Shapes and dtypes of a rollout (for reading the update's metric names without compiling)."""
    T, N = config.rollout_length, config.num_envs
    obs_dtype = np.uint8 if info["image"] else np.float32
    scalar = jax.ShapeDtypeStruct((T, N), np.float32)
    flag = jax.ShapeDtypeStruct((T, N), np.bool_)
    return Rollout(
        obs=jax.ShapeDtypeStruct((T, N, *info["obs_shape"]), obs_dtype),
        action=jax.ShapeDtypeStruct((T, N, *info["action_shape"]), info["action_dtype"]),
        log_prob=scalar, value=scalar, reward=scalar, terminated=flag, truncated=flag, final_value=scalar,
        last_value=jax.ShapeDtypeStruct((N,), np.float32),
    )


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and after // every > before // every


def run(ctx: RunContext) -> dict:
    run_cfg, config, agent = ctx.run, ctx.agent_config, ctx.agent
    info = agent.info
    T, N = config.rollout_length, config.num_envs
    batch = T * N
    iterations = int(info["iterations"])
    discrete = info["discrete"]
    low, high = info["action_low"], info["action_high"]
    scale_rewards = bool(getattr(config, "normalize_rewards", False))
    gamma = float(config.gamma)

    env = envs.make_vector_env(run_cfg.env, N, run_cfg.seed)
    obs_dtype = env.single_observation_space.dtype

    root = jax.random.PRNGKey(run_cfg.seed)
    init_key, act_key, update_key, eval_key = jax.random.split(root, 4)
    state = timed_compile(ctx, agent.init, init_key)

    # Metric columns: the update's metrics (read from its output shapes, no compile) and the
    # per-network sparsities.
    _, metric_shapes = jax.eval_shape(agent.update, state, example_rollout(config, info), update_key)
    metric_names = sorted(metric_shapes)
    network_names = [f"sparsity_{name}" for name in agent.networks(state)]

    # --- resume ------------------------------------------------------------------------
    start_iteration = 0
    last_metrics: dict = {}
    reward_stats = running.init((), xp=np)
    discounted = np.zeros(N, np.float64)
    restored = ctx.load_checkpoint({"agent": state}) if run_cfg.resume else None
    if restored is not None:
        tree, extra, manifest = restored
        state = jax.tree_util.tree_map(jnp.asarray, tree["agent"])
        counters = manifest["counters"]
        start_iteration = int(counters["iteration"])
        last_metrics = dict(counters.get("last_metrics", {}))
        env.set_state(join_state(extra, counters["env"], "env/"))
        obs = np.asarray(extra["loop/obs"])
        reward_stats = running.RunningMeanStd(
            *(np.asarray(extra[f"loop/reward_stats/{name}"]) for name in running.RunningMeanStd._fields)
        )
        discounted = np.asarray(extra["loop/discounted_return"], np.float64).copy()
    else:
        obs = env.reset()
    start_step = start_iteration * batch
    ctx.open_metrics(
        ["train_episodes", "iteration", "gradient_steps"] + metric_names + network_names,
        start_step if restored is not None else None,
    )

    # Training-time analysis (gradient flow, SNR, dormant neurons, topology) -> analysis.csv.
    recorder = make_recorder(agent, state, ctx.rundir.path, every=getattr(run_cfg, "analysis_every", 0),
                             snr_every=getattr(run_cfg, "analysis_snr_every", 10),
                             resume_step=start_step if restored is not None else None, ctx=ctx)
    analysis_batch = getattr(agent, "analysis_batch", None)

    def lazy_batch(state, rollout):
        """The recorder's batch, built only if it asks (closes over this state, not a later one)."""
        if analysis_batch is None:
            return rollout
        return lambda: analysis_batch(state, rollout)

    def save(step, iteration):
        env_arrays, env_values = split_state(env.get_state(), "env/")
        counters = {"step": step, "iteration": iteration, "last_metrics": last_metrics, "env": env_values}
        arrays = {
            **env_arrays, "loop/obs": np.asarray(obs), "loop/discounted_return": discounted.copy(),
            **{f"loop/reward_stats/{name}": np.asarray(value)
               for name, value in zip(running.RunningMeanStd._fields, reward_stats)},
        }
        ctx.save_checkpoint(step, {"agent": state}, arrays, counters, state=state)

    # One dispatch per env step: the key is folded in inside the jitted call, and the state is
    # passed without its optimiser states (`ppo.acting_view`).
    acting_view = getattr(ctx.module, "acting_view", lambda s: s)
    act_fn = jax.jit(lambda s, o, k, i: agent.act_with_info(s, o, jax.random.fold_in(k, i)))

    # Rollout buffers (numpy, reused).
    buf_obs = np.zeros((T, N, *info["obs_shape"]), obs_dtype)
    buf_action = np.zeros((T, N, *info["action_shape"]), info["action_dtype"])
    buf_log_prob = np.zeros((T, N), np.float32)
    buf_value = np.zeros((T, N), np.float32)
    buf_reward = np.zeros((T, N), np.float32)
    buf_terminated = np.zeros((T, N), bool)
    buf_truncated = np.zeros((T, N), bool)
    buf_final_value = np.zeros((T, N), np.float32)

    # --- the loop ------------------------------------------------------------------------
    compiled_act = False
    # Updates with no mask update among their minibatch steps run a program without the
    # mask-update branch.
    update = ScheduledUpdate(ctx, agent.update, getattr(agent, "mask_update_steps", None),
                             per_call=config.epochs * config.num_minibatches, grad_steps=int(state.gradient_steps))
    ctx.reset_sps(start_step)
    loop_start = time.perf_counter()
    compile_before = ctx.compile_seconds
    eval_before = ctx.eval_seconds
    step = start_step
    for iteration in range(start_iteration, iterations):
        acting = acting_view(state)
        for t in range(T):
            index = np.int32(iteration * T + t)
            if not compiled_act:
                out = timed_compile(ctx, act_fn, acting, obs, act_key, index)
                compiled_act = True
            else:
                out = act_fn(acting, obs, act_key, index)
            action, log_prob, value = jax.device_get(out)
            env_action = action if discrete else np.clip(action, low, high)
            next_obs, reward, terminated, truncated, infos = env.step(env_action)
            buf_obs[t] = obs
            buf_action[t] = action
            buf_log_prob[t] = log_prob
            buf_value[t] = value
            buf_terminated[t] = terminated
            buf_truncated[t] = truncated
            if truncated.any():
                final = np.asarray(agent.value(acting, infos["next_obs"]))
                buf_final_value[t] = np.where(truncated, final, 0.0)
            else:
                buf_final_value[t] = 0.0
            if scale_rewards:
                discounted = discounted * gamma + reward
                reward_stats = running.update(reward_stats, discounted.astype(np.float32))
                reward = running.scale(reward_stats, reward, config.reward_clip)
                discounted[terminated | truncated] = 0.0
            buf_reward[t] = reward
            obs = next_obs
        last_value = np.asarray(agent.value(acting, obs))
        rollout = Rollout(buf_obs, buf_action, buf_log_prob, buf_value, buf_reward, buf_terminated,
                          buf_truncated, buf_final_value, last_value)
        rollout = jax.tree_util.tree_map(jnp.asarray, rollout)
        key = jax.random.fold_in(update_key, iteration)
        if recorder is not None:  # before the update, which donates `state`
            recorder.before_update(state, lazy_batch(state, rollout))
        state, metrics = update(state, rollout, key)
        last_metrics = metrics
        if recorder is not None:
            recorder.after_update(state, lazy_batch(state, rollout), step + batch)

        before, step = step, step + batch
        last = iteration == iterations - 1
        evaluated = _crossed(before, step, run_cfg.eval_every) or last
        if evaluated:
            ctx.evaluate(state, jax.random.fold_in(eval_key, step), len(ctx.eval_history))
        if evaluated or _crossed(before, step, run_cfg.log_every):
            sps = ctx.sps(step)
            last_metrics = {k: float(v) for k, v in last_metrics.items()}
            recent = env.episode_returns[-10:]
            row = {
                "step": step, "wall_time": ctx.wall_time(),
                "train_return": float(np.mean(recent)) if recent else None,
                "train_episodes": len(env.episode_returns), "sps": sps,
                "iteration": iteration + 1, "gradient_steps": int(state.gradient_steps),
                **last_metrics, **ctx.network_sparsity(state),
            }
            if evaluated:
                row["eval_return_mean"], row["eval_return_std"] = ctx.eval_history[-1][1:]
            ctx.log(row, state=state)  # state: NaN/Inf parameter scan at log points (issue 7)
            ctx.progress.update(step, sps=sps, ret=row["train_return"], sparsity=row["sparsity"])
        if run_cfg.checkpoint_every and (_crossed(before, step, run_cfg.checkpoint_every) or last):
            last_metrics = {k: float(v) for k, v in last_metrics.items()}
            save(step, iteration + 1)

    # Training throughput: evaluation and compilation are reported separately.
    elapsed = (time.perf_counter() - loop_start - (ctx.eval_seconds - eval_before)
               - (ctx.compile_seconds - compile_before))
    mean_sps = (step - start_step) / max(elapsed, 1e-9)
    if recorder is not None:
        recorder.close(loop_seconds=elapsed)
    env.close()
    return ctx.write_summary(state, mean_sps, {"env_steps": step, "iterations": iterations,
                                               "gradient_steps": int(state.gradient_steps)})
