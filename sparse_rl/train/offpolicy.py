"""The off-policy env loop (DQN, SAC) for a group of N >= 1 runs: each run acts in its own env,
stores in its own replay buffer and is updated on its own sample; acting and updating are one
call for all runs (`StateChunks`). A single run is a group of one.

Everything that decides a trajectory lives in its run's checkpoint (agent state, replay buffer
with its sampler state, the env's own state and current observation, episode counters; the keys
are derived from the seed and the step), so a resumed run (or group) continues exactly where the
interrupted one was.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from sparse_rl import envs
from sparse_rl.replay import ReplayBuffer, Transition
from sparse_rl.train.acting import NoiseBlocks, NoiseDrawer, step_noise
from sparse_rl.train.context import RunContext, join_state, split_state
from sparse_rl.train.group import (ScheduledUpdate, Start, eval_act_step, evaluate, finish, log_rows,
                                   make_recorders, record_around, stack_runs, update_calendar)


def example_batch(obs_spec, action_spec, size: int) -> Transition:
    """Shapes and dtypes of a replay sample, for reading the update's metric names."""
    obs = jax.ShapeDtypeStruct((size, *obs_spec.shape), obs_spec.dtype)
    scalar = jax.ShapeDtypeStruct((size,), np.float32)
    action = jax.ShapeDtypeStruct((size, *action_spec.shape), action_spec.dtype)
    return Transition(obs, action, scalar, scalar, obs)


class RunLoopState:
    """One run's host-side loop state: its env, replay buffer, observation and episode counters."""

    def __init__(self, ctx: RunContext, env, needs, action_spec, frame_stack):
        self.env = env
        obs_spec = env.observation_spec()
        self.replay = ReplayBuffer(needs.replay_capacity, obs_spec.shape, obs_spec.dtype,
                                   action_shape=action_spec.shape, action_dtype=action_spec.dtype,
                                   seed=ctx.run.seed, frame_stack=frame_stack)
        self.episode_return, self.episode_length, self.episodes = 0.0, 0, 0
        self.recent_returns: list[float] = []
        self.last_metrics: dict = {}
        self.obs = None

    def reset(self):
        self.obs = self.env.reset().observation

    def restore(self, arrays: dict, counters: dict):
        self.episode_return = float(counters["episode_return"])
        self.episode_length = int(counters["episode_length"])
        self.recent_returns = list(counters["recent_returns"])
        self.episodes = int(counters["episodes"])
        self.last_metrics = dict(counters.get("last_metrics", {}))
        self.replay.load_state_dict(join_state(arrays, counters["replay"], "replay/"))
        self.env.set_state(join_state(arrays, counters["env"], "env/"))
        self.obs = arrays["loop/obs"]

    def step(self, action):
        timestep = self.env.step(action)
        next_obs = timestep.observation
        reward = float(timestep.reward)
        self.episode_return += reward
        self.episode_length += 1
        self.replay.add(self.obs, action, reward, float(timestep.discount), next_obs,
                        first=self.episode_length == 1)
        if timestep.last():
            self.recent_returns = (self.recent_returns + [self.episode_return])[-10:]
            self.episodes += 1
            self.episode_return, self.episode_length = 0.0, 0
            next_obs = self.env.reset().observation
        self.obs = next_obs

    def row(self) -> dict:
        return {"train_return": float(np.mean(self.recent_returns)) if self.recent_returns else None,
                "train_episodes": self.episodes, **self.last_metrics}

    def save(self, ctx: RunContext, step: int, state):
        replay_arrays, replay_values = split_state(self.replay.state_dict(), "replay/")
        env_arrays, env_values = split_state(self.env.get_state(), "env/")
        counters = {
            "step": step, "episode_return": self.episode_return, "episode_length": self.episode_length,
            "recent_returns": self.recent_returns, "episodes": self.episodes, "last_metrics": self.last_metrics,
            "replay": replay_values, "env": env_values,
        }
        arrays = {**replay_arrays, **env_arrays, "loop/obs": np.asarray(self.obs)}
        ctx.save_checkpoint(step, {"agent": state}, arrays, counters, state=state)


def update_calls(needs, first_step: int, steps: int) -> int:
    """Update calls the loop makes from env step `first_step` to `steps` (one at every
    `train_every`-th step from `learning_starts` on)."""
    first = max(first_step, needs.learning_starts)
    if first >= steps:
        return 0
    offset = (first - needs.learning_starts) % needs.train_every
    first += (needs.train_every - offset) % needs.train_every
    return 0 if first >= steps else (steps - 1 - first) // needs.train_every + 1


def act_step(agent):
    """The loop's act for one env step, `(acting view, obs, noise block, step) -> action` (over a
    `StateChunks.program`): the step's noise is sliced from its block on the device."""
    return lambda view, obs, block, step: agent.policy(view, obs[None], step_noise(block, step), step,
                                                       evaluation=False)[0]


def run(ctxs: list[RunContext], agents: list, extras: list, *, chunk: int | None = None,
        threads: int | None = None) -> list[dict]:
    ctx0 = ctxs[0]
    run0, agent, spec = ctx0.run, agents[0], ctx0.env_spec
    needs = agent.loop
    action_spec = spec.action_spec
    env_list = [envs.make_env(ctx.run.env, ctx.run.seed, **ctx.run.env_options()) for ctx in ctxs]
    obs_spec = env_list[0].observation_spec()
    frame_stack = obs_spec.shape[-1] if spec.family == "atari" else None
    runs = [RunLoopState(ctx, env, needs, action_spec, frame_stack) for ctx, env in zip(ctxs, env_list)]

    start = Start(ctxs, agents, 5, example_batch(obs_spec, action_spec, needs.sample_size),
                  chunk=chunk, threads=threads)
    chunks = start.chunks
    _, act_keys, update_keys, eval_keys, warmup_keys = start.keys

    # Per env step one dispatch of the deterministic policy over what acting reads; the noise of
    # its random draws comes from blocks drawn ahead (`train.acting`).
    act_all = chunks.program(act_step(agent), "act", view=agent.acting_view)
    act_noise = NoiseBlocks(NoiseDrawer(lambda key: agent.act_noise(key, (1,), False)), act_keys)
    eval_act_all = chunks.program(eval_act_step(agent), view=agent.acting_view)
    eval_noise = NoiseDrawer(lambda key: agent.act_noise(key, (run0.eval_episodes,), True))
    if needs.random_warmup:  # uniform actions in the bounds, drawn ahead as the noise is
        low = jnp.asarray(action_spec.minimum, jnp.float32)
        high = jnp.asarray(action_spec.maximum, jnp.float32)
        random_actions = NoiseBlocks(NoiseDrawer(
            lambda key: jax.random.uniform(key, action_spec.shape, jnp.float32, low, high)), warmup_keys)

    # Metric columns: the agent's update metrics (read from its output shapes, no compile) and
    # the per-network sparsities.
    _, metric_shapes = jax.eval_shape(agent.update, start.example, example_batch(obs_spec, action_spec,
                                                                                 needs.sample_size), update_keys[0])
    network_names = [f"sparsity_{name}" for name in agent.networks(start.example)]
    device_update_keys = jax.device_put(update_keys)  # read by every update: moved to the device once
    resume_step = None
    if start.restored is not None:
        resume_step = int(start.counters(0)["step"])
        for i, loop_state in enumerate(runs):
            loop_state.restore(start.arrays(i), start.counters(i))
    else:
        for loop_state in runs:
            loop_state.reset()
    # Two programs for prune/SET/RigL: calls in which no mask update is due run one without the
    # mask-update branch (`topology=False`), which is what most calls are; a run with few calls
    # left runs the one with the branch only (`group.ONE_PROGRAM_CALLS`).
    update_all = ScheduledUpdate(chunks.updater(
        lambda state, batch, key, step, topology: agent.update(state, batch, jax.random.fold_in(key, step),
                                                                topology=topology)),
        update_calendar(agents, update_calls(needs, resume_step or 0, run0.steps)), per_call=needs.gradient_steps,
        grad_steps=start.gradient_steps)
    for ctx in ctxs:
        ctx.open_metrics(["train_episodes"] + sorted(metric_shapes) + network_names, resume_step)
    recorders = make_recorders(ctxs, agents, chunks, resume_step)

    start_step = resume_step or 0
    # The first noise draws compile their program: counted as start-up, not as loop time. The
    # block drawn is the one the first policy action reads (after a random warm-up, if any).
    warming_up = needs.random_warmup and start_step < needs.learning_starts
    first_act = needs.learning_starts if warming_up else start_step
    if first_act < run0.steps:
        start.init_seconds += act_noise.warm(first_act)
    if warming_up:
        start.init_seconds += random_actions.warm(start_step)
    for ctx in ctxs:
        ctx.clock.reset_sps(start_step)
    metrics = None
    loop_start = time.perf_counter()
    eval_before = ctx0.eval_seconds
    try:
        for step in range(start_step, run0.steps):
            obs = stack_runs([r.obs for r in runs])
            if needs.random_warmup and step < needs.learning_starts:
                actions = random_actions.at(step)
            else:
                actions = np.asarray(act_all((obs, act_noise.block_at(step)), (step,)))
            for loop_state, action in zip(runs, actions):
                loop_state.step(action)
            if step == start_step:
                start.first_step()

            if (step >= needs.learning_starts and (step - needs.learning_starts) % needs.train_every == 0
                    and len(runs[0].replay) >= needs.batch_size):
                samples = [r.replay.sample(needs.sample_size, n_step=needs.n_step, gamma=needs.gamma) for r in runs]
                batch = stack_runs(samples)
                metrics = record_around(recorders, chunks, lambda i, state: samples[i], step + 1,
                                        lambda: update_all((batch, device_update_keys), (step,)))

            done = step + 1
            evaluated = done % run0.eval_every == 0 or done == run0.steps
            if evaluated:
                evaluate(ctxs, eval_act_all, eval_noise, eval_keys, done)
            logged = evaluated or done % run0.log_every == 0
            saved = run0.checkpoint_every and (done % run0.checkpoint_every == 0 or done == run0.steps)
            if logged or saved:
                states = chunks.host()
                if metrics is not None:
                    for loop_state, run_metrics in zip(runs, chunks.host_metrics(metrics)):
                        loop_state.last_metrics = run_metrics
            if logged:
                log_rows(ctxs, states, [r.row() for r in runs], done, evaluated)
            if saved:
                for ctx, loop_state, state in zip(ctxs, runs, states):
                    loop_state.save(ctx, done, state)
        chunks.ready()
    finally:
        chunks.close()

    return finish(ctxs, chunks, recorders, extras, loop_start, run0.steps - start_step, start.init_seconds,
                  eval_before=eval_before)
