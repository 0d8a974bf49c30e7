"""Several on-policy (PPO) runs in one process: seeds (and sparsity levels) vmapped.

The on-policy counterpart of `sparse_rl.train.vectorized` (which opens the group's run
directories, stacks the states in `StateChunks` and writes the summaries): S runs, each with its
own vector env of `num_envs` envs seeded as the single-run loop seeds it, step in lockstep; per
env step one call acts for all runs (`act_with_info`, vmapped), the values of truncated episodes'
final observations and of the last observations are one call each, and after `rollout_length`
steps one `update` call per state chunk trains every run on its own rollout.

Each run follows `sparse_rl.train.onpolicy.run` step for step: the same keys (folded with the
iteration and the env step), env seeds, reward scaling, evaluation seeds, metrics rows (at the
same iteration ends), checkpoints (same contents and format, so `sparse-rl train --resume`
continues a vectorized run alone) and summary, so its results equal a separate run's up to
floating-point reassociation in the batched computations.

Each run records its own training-time analysis (analysis.csv) as a separate run would.
Resuming is done run by run, as for the off-policy loop.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl import envs
from sparse_rl.agents import normalize as running
from sparse_rl.agents.ppo import Rollout
from sparse_rl.train.onpolicy import _crossed, example_rollout
from sparse_rl.train.runner import RunContext, ScheduledUpdate, split_state
from sparse_rl.train.vectorized import (
    evaluate_all,
    finish,
    make_recorders,
    record_around,
    refuse_checkpoints,
    start_states,
    update_calendar,
)


def run_group(ctxs: list[RunContext], agents: list, extras: list, *, chunk: int | None = None,
              threads: int | None = None) -> list[dict]:
    S = len(ctxs)
    ctx0 = ctxs[0]
    run0, config, agent = ctx0.run, ctx0.agent_config, agents[0]
    info = agent.info
    T, N = config.rollout_length, config.num_envs
    iterations = int(info["iterations"])
    scale_rewards = bool(getattr(config, "normalize_rewards", False))

    env_list = [envs.make_vector_env(ctx.run.env, N, ctx.run.seed) for ctx in ctxs]
    example = example_rollout(config, info)
    keys, chunks, single, init_seconds = start_states(ctxs, agents, 4, example, chunk=chunk, threads=threads)
    _, act_keys, update_keys, eval_keys = keys
    _, metric_shapes = jax.eval_shape(agent.update, single, example, update_keys[0])
    metric_names = sorted(metric_shapes)
    network_names = [f"sparsity_{name}" for name in agent.networks(single)]
    refuse_checkpoints(ctxs, single)
    del single
    for ctx in ctxs:
        ctx.open_metrics(["train_episodes", "iteration", "gradient_steps"] + metric_names + network_names, None)
    recorders = make_recorders(ctxs, agents, chunks)
    analysis_batch = getattr(agent, "analysis_batch", None)

    acting_view = getattr(ctx0.module, "acting_view", None)
    act_all = chunks.program(lambda s, o, k, i: agent.act_with_info(s, o, jax.random.fold_in(k, i)), "act",
                             view=acting_view)
    value_all = chunks.program(lambda s, o: agent.value(s, o), view=acting_view)
    eval_act_all = chunks.program(
        lambda s, o, k, t: agent.act(s, o, jax.random.fold_in(k, t), 0, evaluation=True), view=acting_view)
    # Updates with no mask update among their minibatch steps run a program without the
    # mask-update branch (as the single-run loop).
    update_all = ScheduledUpdate(None, chunks.updater(lambda s, rollout, k, iteration, topology: agent.update(
        s, rollout, jax.random.fold_in(k, iteration), topology=topology)),
        update_calendar(agents), per_call=config.epochs * config.num_minibatches)

    reward_stats = [running.init((), xp=np) for _ in range(S)]
    discounted = np.zeros((S, N), np.float64)
    last_metrics: list[dict] = [{} for _ in range(S)]
    obs = np.stack([env.reset() for env in env_list])

    def save(step, iteration, states):
        for i, (ctx, env, state_i) in enumerate(zip(ctxs, env_list, states)):
            env_arrays, env_values = split_state(env.get_state(), "env/")
            counters = {"step": step, "iteration": iteration, "last_metrics": last_metrics[i], "env": env_values}
            arrays = {
                **env_arrays, "loop/obs": np.asarray(obs[i]), "loop/discounted_return": discounted[i].copy(),
                **{f"loop/reward_stats/{name}": np.asarray(value)
                   for name, value in zip(running.RunningMeanStd._fields, reward_stats[i])},
            }
            ctx.save_checkpoint(step, {"agent": state_i}, arrays, counters, state=state_i)

    # Rollout buffers (numpy, reused), one slice per run.
    buf_obs = np.zeros((S, T, N, *info["obs_shape"]), env_list[0].single_observation_space.dtype)
    buf_action = np.zeros((S, T, N, *info["action_shape"]), info["action_dtype"])
    buf_log_prob = np.zeros((S, T, N), np.float32)
    buf_value = np.zeros((S, T, N), np.float32)
    buf_reward = np.zeros((S, T, N), np.float32)
    buf_terminated = np.zeros((S, T, N), bool)
    buf_truncated = np.zeros((S, T, N), bool)
    buf_final_value = np.zeros((S, T, N), np.float32)

    for ctx in ctxs:
        ctx.reset_sps(0)
    loop_start = time.perf_counter()
    step = 0
    try:
        for iteration in range(iterations):
            for t in range(T):
                index = np.int32(iteration * T + t)
                action, log_prob, value = jax.device_get(act_all((obs, act_keys), (index,)))
                next_obs = np.empty_like(obs)
                finals = {}  # run -> its envs' true final observations, where some env truncated
                for i, env in enumerate(env_list):
                    env_action = action[i] if info["discrete"] else np.clip(action[i], info["action_low"],
                                                                            info["action_high"])
                    next_obs[i], reward, terminated, truncated, infos = env.step(env_action)
                    buf_terminated[i, t] = terminated
                    buf_truncated[i, t] = truncated
                    if truncated.any():
                        finals[i] = infos["next_obs"]
                    if scale_rewards:
                        discounted[i] = discounted[i] * config.gamma + reward
                        reward_stats[i] = running.update(reward_stats[i], discounted[i].astype(np.float32))
                        reward = running.scale(reward_stats[i], reward, config.reward_clip)
                        discounted[i][terminated | truncated] = 0.0
                    buf_reward[i, t] = reward
                if finals:  # one call for all runs; the values of runs without truncations are unused
                    final_obs = next_obs.copy()
                    for i, o in finals.items():
                        final_obs[i] = o
                    final = np.asarray(value_all((final_obs,)))
                    buf_final_value[:, t] = np.where(buf_truncated[:, t], final, 0.0)
                else:
                    buf_final_value[:, t] = 0.0
                buf_obs[:, t] = obs
                buf_action[:, t] = action
                buf_log_prob[:, t] = log_prob
                buf_value[:, t] = value
                obs = next_obs
            last_value = np.asarray(value_all((obs,)))
            rollout = Rollout(buf_obs, buf_action, buf_log_prob, buf_value, buf_reward, buf_terminated,
                              buf_truncated, buf_final_value, last_value)

            def batch_of(i, state):
                """Run i's rollout (as the single-run loop passes it), or its analysis batch."""
                own = Rollout(*(jnp.asarray(x[i]) for x in rollout))
                return own if analysis_batch is None else (lambda: analysis_batch(state, own))

            metrics = record_around(recorders, chunks, batch_of, step + T * N,
                                    lambda: update_all((rollout, update_keys), (iteration,)))

            before, step = step, step + T * N
            last = iteration == iterations - 1
            evaluated = _crossed(before, step, run0.eval_every) or last
            if evaluated:
                evaluate_all(ctxs, eval_act_all, eval_keys, step)
            logged = evaluated or _crossed(before, step, run0.log_every)
            saved = run0.checkpoint_every and (_crossed(before, step, run0.checkpoint_every) or last)
            if logged or saved:
                states = chunks.host()
                last_metrics = chunks.host_metrics(metrics)
            if logged:
                for i, (ctx, env) in enumerate(zip(ctxs, env_list)):
                    sps = ctx.sps(step)
                    recent = env.episode_returns[-10:]
                    row = {
                        "step": step, "wall_time": ctx.wall_time(),
                        "train_return": float(np.mean(recent)) if recent else None,
                        "train_episodes": len(env.episode_returns), "sps": sps,
                        "iteration": iteration + 1, "gradient_steps": int(states[i].gradient_steps),
                        **last_metrics[i], **ctx.network_sparsity(states[i]),
                    }
                    if evaluated:
                        row["eval_return_mean"], row["eval_return_std"] = ctx.eval_history[-1][1:]
                    ctx.log(row, state=states[i])  # NaN/Inf parameter scan, as the single-run loop
                    if i == 0:
                        ctx.progress.update(step, sps=sps * S, ret=row["train_return"], sparsity=row["sparsity"])
            if saved:
                save(step, iteration + 1, states)
        chunks.ready()
    finally:
        chunks.close()
        for env in env_list:
            env.close()

    return finish(ctxs, chunks, recorders, extras, loop_start, step, init_seconds,
                  lambda i, state: {"env_steps": step, "iterations": iterations,
                                    "gradient_steps": int(state.gradient_steps)})
