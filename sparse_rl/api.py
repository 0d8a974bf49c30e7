"""The Python door: `sparse_rl.train`, `sparse_rl.load`, `sparse_rl.evaluate`.

    import sparse_rl
    run = sparse_rl.train("dqn", "CartPole-v1", method="rigl", sparsity=0.9, steps=50_000)
    policy = sparse_rl.load(run.dir)
    returns = sparse_rl.evaluate(policy, "CartPole-v1", episodes=10, seed=0)

`train` completes the settings exactly as `sparse-rl train` does (`sparse_rl.configure`: the
preset that fits the env, each method's paper schedule, the same validation), then calls the one
training entry, `sparse_rl.train.runner.train`.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import gymnasium as gym
import jax
import numpy as np

from sparse_rl import agents, envs
from sparse_rl.agents.common import composed_act
from sparse_rl.analysis import sensitivity
from sparse_rl.configure import Shortcuts, apply_overrides, apply_shortcuts, choose_preset, run_warnings
from sparse_rl.envs.registry import FACTORY_NAMESPACE
from sparse_rl.errors import ConfigError, check
from sparse_rl.extras import require
from sparse_rl.train import runner
from sparse_rl.train.callbacks import Callback, WandbCallback

EnvLike = str | Callable[[], Any]
"""A gymnasium id (registered, or `module:Id`) or a callable returning a `gymnasium.Env`."""


def env_id_of(env: EnvLike) -> str:
    """The id under which `env` is made: itself for a string; a callable (a factory, possibly
    adding wrappers) is registered with gymnasium for this process (`envs.register_env_factory`)."""
    if isinstance(env, str):
        return env
    return envs.register_env_factory(env)


class Run(NamedTuple):
    """A finished training run."""

    dir: Path
    """Its run directory (config.json, metrics.csv, summary.json, checkpoints/)."""
    summary: dict
    """summary.json's contents."""


def configure_run(agent: str = "dqn", env: EnvLike = "CartPole-v1", *, method: str | None = None,
                  sparsity: float | None = None, steps: int = 50_000, seed: int = 0,
                  out: str | None = None, preset: str | None = None,
                  **config_overrides: Any) -> tuple[runner.RunConfig, Any]:
    """(RunConfig, agent config) that `train` would run with the same arguments: what
    `sparse-rl train` builds from the equivalent flags (`sparse_rl.configure`)."""
    env_id = env_id_of(env)
    shortcut_names = {f.name for f in dataclasses.fields(Shortcuts)}
    run_names = {f.name for f in dataclasses.fields(runner.RunConfig)} - {"agent", "env", "steps", "seed", "out"}
    shortcut_values = {"method": method, "sparsity": sparsity}
    run_values: dict[str, Any] = {}
    agent_values: dict[str, Any] = {}
    for key, value in config_overrides.items():
        if key in shortcut_names:
            shortcut_values[key] = value
        elif key in run_names:
            run_values[key] = value
        else:
            agent_values[key] = value
    run = runner.RunConfig(agent=agent, env=env_id, steps=steps, seed=seed, out=out, **run_values)
    preset = choose_preset(agent, env_id, preset)
    config = apply_overrides(agents.spec(agent).presets[preset], agent_values, f"{agent} config")
    return run, apply_shortcuts(agent, preset, config, Shortcuts(**shortcut_values))


def train(agent: str = "dqn", env: EnvLike = "CartPole-v1", *, method: str | None = None,
          sparsity: float | None = None, steps: int = 50_000, seed: int = 0,
          out: str | None = None, preset: str | None = None,
          callbacks: Sequence[Callback] = (), wandb: bool | str = False,
          **config_overrides: Any) -> Run:
    """Train one sparse agent, as `sparse-rl train` would, and return its `Run`.

    Args:
      agent: "dqn", "sac" or "ppo".
      env: a gymnasium id ("CartPole-v1", "ALE/Pong-v5", "mypkg:MyEnv-v0") or a callable
        returning a `gymnasium.Env` (add wrappers there). The agent's spaces are checked first.
      method, sparsity: sparsity method and target of every network (None: the preset's); a
        method given here takes the paper's schedule for it, as on the command line.
      steps, seed, out: env steps, random seed, run directory (None: runs/<agent>-<env>-...).
      preset: the agent's named preset (None: the one that fits the env's spaces).
      callbacks: `sparse_rl.Callback`s, called on each metrics row and each evaluation.
      wandb: True (or a project name) to also log to Weights & Biases (extra `[wandb]`).
      **config_overrides: any other `RunConfig` field (eval_every, log_every, progress,
        sticky_actions, ...), the other shortcut settings (distribution, update_every,
        drop_fraction) and any field of the agent's config (learning_rate=..., widths=(64, 64),
        network=MyHaikuModule, sparsity configs as dicts: `critic_sparsity={"method": "dense"}`).
    """
    run, config = configure_run(agent, env, method=method, sparsity=sparsity, steps=steps,
                                seed=seed, out=out, preset=preset, **config_overrides)
    for message in run_warnings(run, config):
        warnings.warn(message, UserWarning, stacklevel=2)
    callbacks = list(callbacks)
    if wandb:
        callbacks.append(WandbCallback(project=wandb if isinstance(wandb, str) else "sparse_rl"))
    summary = runner.train(run, config, callbacks=callbacks)
    return Run(Path(run.out or runner.default_out(run, config)), summary)


class Network(NamedTuple):
    """One network of an agent: its parameters (masked: pruned weights are exact zeros) and its
    masks (True: active weight), both Haiku-style nested dicts."""

    params: Any
    masks: Any


class Policy:
    """A trained agent's evaluation policy, restored from a run directory by `load`."""

    def __init__(self, loaded: sensitivity.LoadedRun, seed: int = 0):
        self.run_config = loaded.run
        self.config = loaded.config
        self.agent = loaded.agent
        self.env_spec = loaded.env_spec
        self.step = loaded.step
        self.dir = loaded.path
        self._key = jax.random.PRNGKey(seed)
        self._calls = 0
        # Acting reads only the agent's acting view (issue 15): it is taken once per state, and one
        # program per call draws the noise and runs the policy, the key folded in inside it.
        act = composed_act(lambda view: view, self.agent.act_noise, self.agent.policy,
                           len(self.env_spec.observation_spec.shape))
        self._act_with_key = jax.jit(lambda view, obs, key: act(view, obs, key, 0, evaluation=True))
        self._act_next = jax.jit(lambda view, obs, key, calls: act(view, obs, jax.random.fold_in(key, calls), 0,
                                                                    evaluation=True))
        self._acting_view = jax.jit(self.agent.acting_view)
        self.state = loaded.state

    @property
    def state(self):
        """The agent state (a pytree of arrays); setting it also renews what `act` reads."""
        return self._state

    @state.setter
    def state(self, state) -> None:
        self._state = state
        self._view = self._acting_view(state)

    @property
    def env_id(self) -> str:
        return self.run_config.env

    @property
    def networks(self) -> dict[str, Network]:
        """{network name: Network(params, masks)}, e.g. "q", or "actor", "critic1", "critic2"."""
        return {name: Network(params, masks) for name, (params, masks) in self.agent.networks(self.state).items()}

    def act(self, obs, key: jax.Array | None = None) -> np.ndarray:
        """The evaluation policy's action for one observation, or actions for a batch [B, ...].
        `key` seeds the policy's randomness (DQN's evaluation epsilon); None: a key drawn from the
        policy's own sequence (seed of `load`)."""
        obs = np.asarray(obs)
        single = obs.ndim == len(self.env_spec.observation_spec.shape)
        batch = obs[None] if single else obs
        if key is None:
            action = self._act_next(self._view, batch, self._key, self._calls)
            self._calls += 1
        else:
            action = self._act_with_key(self._view, batch, key)
        action = np.asarray(action)
        return action[0] if single else action


def load(run_dir: str | Path, *, step: int | None = None, env: EnvLike | None = None,
         seed: int = 0) -> Policy:
    """The `Policy` of a run directory's newest checkpoint (or the one at env `step`).

    `env`: needed only for a run trained on a Python env factory (its id lives in the training
    process only); pass the same factory."""
    spec = None
    if env is not None:
        spec = envs.env_spec(env_id_of(env))
    else:
        config = sensitivity.read_run_config(Path(run_dir))
        env_id = str(config.get("run", {}).get("env", ""))
        check(not env_id.startswith(FACTORY_NAMESPACE + "/") or _registered(env_id), "env",
              f"{run_dir} was trained on a Python env factory ({env_id})",
              "sparse_rl.load(run_dir, env=the same factory)")
    return Policy(sensitivity.load_run(run_dir, step, env_spec=spec), seed)


def _registered(env_id: str) -> bool:
    return env_id in gym.registry


def evaluate(policy: Policy, env: EnvLike | None = None, *, episodes: int = 10,
             seed: int = 0) -> list[float]:
    """Returns of `episodes` episodes of `policy` (one per env of a vector env seeded `seed`,
    `seed + 1`, ...). `env`: an id or a factory (None: the run's env, with its Atari settings)."""
    check(isinstance(episodes, int) and not isinstance(episodes, bool) and episodes > 0, "episodes",
          f"must be a positive int, got {episodes!r}")
    options = policy.run_config.env_options() if env is None else {}
    env_id = policy.env_id if env is None else env_id_of(env)
    _, _, returns = sensitivity.evaluate(policy.agent, policy.state, env_id, episodes, seed,
                                         env_options=options)
    return [float(r) for r in returns]


def record_video(policy: Policy, video_dir: str | Path, *, episodes: int = 1, seed: int = 0,
                 env: EnvLike | None = None) -> list[float]:
    """Play `episodes` episodes one after another and write each as an mp4 to `video_dir`
    (gymnasium's RecordVideo; needs the `[video]` extra: moviepy, which brings its own ffmpeg)."""
    require("moviepy", "video")
    options = policy.run_config.env_options() if env is None else {}
    env_id = policy.env_id if env is None else env_id_of(env)
    made, _ = envs.make_gym_env(env_id, render_mode="rgb_array", **options)
    recorder = gym.wrappers.RecordVideo(made, str(video_dir), episode_trigger=lambda _: True,
                                        name_prefix=Path(policy.dir).name, disable_logger=True)
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = recorder.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = recorder.step(_to_space(policy.act(obs), made.action_space))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        recorder.close()
    return returns


def _to_space(action, space):
    if isinstance(space, gym.spaces.Box):
        return np.clip(action, space.low, space.high).astype(space.dtype)
    return int(action)


__all__ = ["train", "configure_run", "load", "evaluate", "record_video", "Run", "Policy", "Network", "Callback",
           "EnvLike", "ConfigError"]
