"""The on-policy env loop (PPO) for a group of N >= 1 runs: rollouts from each run's vector env,
one update per rollout. A single run is a group of one.

Each run has its own vector env of `num_envs` envs; per env step one call acts for all runs
(`act_with_info`), the values of truncated episodes' final observations and of the last
observations are one call each, and after `rollout_length` steps one `update` call per state
chunk trains every run on its own rollout (`Rollout`, `sparse_rl.agents.base`).

Work is done in whole iterations of `num_envs * rollout_length` env steps: a run of `steps` env
steps runs ceil(steps / batch) iterations (1M steps of 2048 -> the paper's 489), so it may step a
little past `steps`. Evaluation, metrics rows and checkpoints happen at the end of an iteration,
whenever the iteration crossed a multiple of `eval_every` / `log_every` / `checkpoint_every` (and
after the last one); their `step` is the env steps done so far.

Episode ends: the vector env autoresets in the same step and reports the true final observation in
`infos["next_obs"]`; a truncated step is bootstrapped from V(final observation) (stored in the
rollout's `final_value`), a terminated one is not. Box actions are clipped to the bounds when
stepping; the rollout stores the unclipped sample (its log-probability is the policy's).

Reward scaling (the agent's `loop.reward_scaling`, `agents.normalize.scale_rewards`): its
statistics and the per-env discounted returns are loop state. Everything that decides the
trajectory is in the checkpoint (agent state with its observation statistics, the vector env's own
state and current observations, reward statistics, episode counters; loop keys are derived from
the seed and counters), so a resumed run continues exactly where the interrupted one was.

Training-time analysis (`RunConfig.analysis_every`, agents with an `analysis` hook): the recorder
is called around each update with a closure that builds the agent's `analysis_batch` from the
rollout, evaluated only on the iterations that record something.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl import envs
from sparse_rl.agents import normalize as running
from sparse_rl.agents.base import Rollout, example_rollout
from sparse_rl.train.acting import NoiseBlocks, NoiseDrawer, step_noise
from sparse_rl.train.context import RunContext, join_state, split_state
from sparse_rl.train.group import (ScheduledUpdate, Start, crossed, eval_act_step, evaluate, finish, log_rows,
                                   make_recorders, record_around, update_calendar)


def pack_step(action, log_prob, value):
    """act_with_info's outputs as one float32 array [..., action size + 2], so that a step makes one
    device-to-host transfer (integer actions are exact in float32 below 2**24)."""
    flat = action.reshape(*log_prob.shape, -1).astype(jnp.float32)
    return jnp.concatenate([flat, log_prob[..., None], value[..., None]], axis=-1)


def unpack_step(packed: np.ndarray, needs):
    """`pack_step`'s (action, log_prob, value), on the host."""
    batch = packed.shape[:-1]
    action = packed[..., :-2].reshape(*batch, *needs.action_shape).astype(needs.action_dtype)
    return action, packed[..., -2], packed[..., -1]


class RunLoopState:
    """One run's host-side loop state: its vector env, observations and reward-scaling statistics."""

    def __init__(self, ctx: RunContext, needs):
        self.env = envs.make_vector_env(ctx.run.env, needs.num_envs, ctx.run.seed, **ctx.run.env_options())
        self.reward_stats = running.init((), xp=np)
        self.discounted = np.zeros(needs.num_envs, np.float64)
        self.last_metrics: dict = {}
        self.obs = None

    def restore(self, arrays: dict, counters: dict):
        self.last_metrics = dict(counters.get("last_metrics", {}))
        self.env.set_state(join_state(arrays, counters["env"], "env/"))
        self.obs = np.asarray(arrays["loop/obs"])
        self.reward_stats = running.RunningMeanStd(
            *(np.asarray(arrays[f"loop/reward_stats/{name}"]) for name in running.RunningMeanStd._fields))
        self.discounted = np.asarray(arrays["loop/discounted_return"], np.float64).copy()

    def row(self, iteration: int, state) -> dict:
        recent = self.env.episode_returns[-10:]
        return {"train_return": float(np.mean(recent)) if recent else None,
                "train_episodes": len(self.env.episode_returns), "iteration": iteration,
                "gradient_steps": int(state.gradient_steps), **self.last_metrics}

    def save(self, ctx: RunContext, step: int, iteration: int, state):
        env_arrays, env_values = split_state(self.env.get_state(), "env/")
        counters = {"step": step, "iteration": iteration, "last_metrics": self.last_metrics, "env": env_values}
        arrays = {
            **env_arrays, "loop/obs": np.asarray(self.obs), "loop/discounted_return": self.discounted.copy(),
            **{f"loop/reward_stats/{name}": np.asarray(value)
               for name, value in zip(running.RunningMeanStd._fields, self.reward_stats)},
        }
        ctx.save_checkpoint(step, {"agent": state}, arrays, counters, state=state)


def act_step(agent):
    """The loop's act for one env step of every env, `(acting view, obs, noise block, index) ->
    packed (action, log-probability, value)` (over a `StateChunks.program`, `pack_step`): the
    step's noise is sliced from its block on the device."""
    return lambda view, obs, block, index: pack_step(*agent.policy_with_info(view, obs, step_noise(block, index)))


def run(ctxs: list[RunContext], agents: list, extras: list, *, chunk: int | None = None,
        threads: int | None = None) -> list[dict]:
    S = len(ctxs)
    ctx0 = ctxs[0]
    run0, agent = ctx0.run, agents[0]
    needs = agent.loop
    T, N = needs.rollout_length, needs.num_envs
    runs = [RunLoopState(ctx, needs) for ctx in ctxs]

    example = example_rollout(needs)
    start = Start(ctxs, agents, 4, example, chunk=chunk, threads=threads)
    chunks = start.chunks
    _, act_keys, update_keys, eval_keys = start.keys
    # Metric columns: the update's metrics (read from its output shapes, no compile) and the
    # per-network sparsities.
    _, metric_shapes = jax.eval_shape(agent.update, start.example, example, update_keys[0])
    network_names = [f"sparsity_{name}" for name in agent.networks(start.example)]

    start_iteration, resume_step = 0, None
    if start.restored is not None:
        start_iteration = int(start.counters(0)["iteration"])
        resume_step = start_iteration * T * N
        for i, loop_state in enumerate(runs):
            loop_state.restore(start.arrays(i), start.counters(i))
    else:
        for loop_state in runs:
            loop_state.obs = loop_state.env.reset()
    for ctx in ctxs:
        ctx.open_metrics(["train_episodes", "iteration", "gradient_steps"] + sorted(metric_shapes) + network_names,
                         resume_step)
    recorders = make_recorders(ctxs, agents, chunks, resume_step)
    analysis_batch = agent.analysis_batch

    # One dispatch per env step for all runs, over what acting reads (the agent's `acting_view`),
    # with noise drawn a rollout ahead (`train.acting`), returning one array (`pack_step`).
    view = agent.acting_view
    act_all = chunks.program(act_step(agent), "act", view=view)
    act_noise = NoiseBlocks(NoiseDrawer(lambda key: agent.act_noise(key, (N,), False)), act_keys, T)
    value_all = chunks.program(agent.value, view=view)
    eval_act_all = chunks.program(eval_act_step(agent), view=view)
    eval_noise = NoiseDrawer(lambda key: agent.act_noise(key, (run0.eval_episodes,), True))
    # Updates with no mask update among their minibatch steps run a program without the
    # mask-update branch.
    update_all = ScheduledUpdate(chunks.updater(lambda s, rollout, k, iteration, topology: agent.update(
        s, rollout, jax.random.fold_in(k, iteration), topology=topology)),
        update_calendar(agents, needs.iterations - start_iteration), per_call=needs.gradient_steps,
        grad_steps=start.gradient_steps)

    # Rollout buffers (numpy, reused), one slice per run.
    obs_dtype = runs[0].env.single_observation_space.dtype
    buf_obs = np.zeros((S, T, N, *needs.obs_shape), obs_dtype)
    buf_action = np.zeros((S, T, N, *needs.action_shape), needs.action_dtype)
    buf_log_prob = np.zeros((S, T, N), np.float32)
    buf_value = np.zeros((S, T, N), np.float32)
    buf_reward = np.zeros((S, T, N), np.float32)
    buf_terminated = np.zeros((S, T, N), bool)
    buf_truncated = np.zeros((S, T, N), bool)
    buf_final_value = np.zeros((S, T, N), np.float32)

    step = start_iteration * T * N
    start.init_seconds += act_noise.warm(start_iteration * T)  # compiles the draws: start-up, not loop time
    for ctx in ctxs:
        ctx.clock.reset_sps(step)
    loop_start = time.perf_counter()
    eval_before = ctx0.eval_seconds
    obs = np.stack([r.obs for r in runs])
    try:
        for iteration in range(start_iteration, needs.iterations):
            for t in range(T):
                index = iteration * T + t
                action, log_prob, value = unpack_step(np.asarray(act_all((obs, act_noise.block_at(index)), (index,))),
                                                      needs)
                next_obs = np.empty_like(obs)
                finals = {}  # run -> its envs' true final observations, where some env truncated
                for i, loop_state in enumerate(runs):
                    env_action = action[i] if needs.discrete else np.clip(action[i], needs.action_low,
                                                                          needs.action_high)
                    next_obs[i], reward, terminated, truncated, infos = loop_state.env.step(env_action)
                    buf_terminated[i, t] = terminated
                    buf_truncated[i, t] = truncated
                    if truncated.any():
                        finals[i] = infos["next_obs"]
                    if needs.reward_scaling is not None:
                        loop_state.reward_stats, loop_state.discounted, reward = running.scale_rewards(
                            needs.reward_scaling, loop_state.reward_stats, loop_state.discounted, reward,
                            terminated | truncated)
                    buf_reward[i, t] = reward
                if t == 0 and iteration == start_iteration:
                    start.first_step()
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
            for loop_state, run_obs in zip(runs, obs):
                loop_state.obs = run_obs
            last_value = np.asarray(value_all((obs,)))
            rollout = Rollout(buf_obs, buf_action, buf_log_prob, buf_value, buf_reward, buf_terminated,
                              buf_truncated, buf_final_value, last_value)

            def batch_of(i, state):
                """Run i's rollout (as a run alone passes it), or its analysis batch."""
                own = Rollout(*(jnp.asarray(x[i]) for x in rollout))
                return own if analysis_batch is None else (lambda: analysis_batch(state, own))

            metrics = record_around(recorders, chunks, batch_of, step + T * N,
                                    lambda: update_all((rollout, update_keys), (iteration,)))

            before, step = step, step + T * N
            last = iteration == needs.iterations - 1
            evaluated = crossed(before, step, run0.eval_every) or last
            if evaluated:
                evaluate(ctxs, eval_act_all, eval_noise, eval_keys, step)
            logged = evaluated or crossed(before, step, run0.log_every)
            saved = run0.checkpoint_every and (crossed(before, step, run0.checkpoint_every) or last)
            if logged or saved:
                states = chunks.host()
                for loop_state, run_metrics in zip(runs, chunks.host_metrics(metrics)):
                    loop_state.last_metrics = run_metrics
            if logged:
                log_rows(ctxs, states, [r.row(iteration + 1, s) for r, s in zip(runs, states)], step, evaluated)
            if saved:
                for ctx, loop_state, state in zip(ctxs, runs, states):
                    loop_state.save(ctx, step, iteration + 1, state)
        chunks.ready()
    finally:
        chunks.close()
        for loop_state in runs:
            loop_state.env.close()

    return finish(ctxs, chunks, recorders, extras, loop_start, step - start_iteration * T * N, start.init_seconds,
                  lambda i, state: {"env_steps": step, "iterations": needs.iterations,
                                    "gradient_steps": int(state.gradient_steps)},
                  eval_before=eval_before)
