"""Build fully wrapped gymnasium environments for each family."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sparse_rl.envs.registry import atari_settings, env_family
from sparse_rl.errors import ConfigError, check
from sparse_rl.extras import require


class Float32Observation(gym.ObservationWrapper):
    """Casts float Box observations to float32 (MuJoCo and classic control emit float64)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        self.observation_space = spaces.Box(space.low.astype(np.float32),
                                            space.high.astype(np.float32),
                                            shape=space.shape, dtype=np.float32)

    def observation(self, observation):
        return np.asarray(observation, dtype=np.float32)


class ChannelsLast(gym.ObservationWrapper):
    """[k, H, W] frame stacks (FrameStackObservation's layout) -> contiguous [H, W, k]."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        self.observation_space = spaces.Box(np.moveaxis(space.low, 0, -1),
                                            np.moveaxis(space.high, 0, -1), dtype=space.dtype)

    def observation(self, observation):
        return np.ascontiguousarray(np.moveaxis(observation, 0, -1))


def check_spaces(observation_space: gym.Space, action_space: gym.Space) -> None:
    """Refuse spaces the library has no spec for (Dict, Tuple, Text, MultiDiscrete, ...)."""
    ok_obs = isinstance(observation_space, (spaces.Box, spaces.Discrete))
    check(ok_obs, "observation_space", f"unsupported observation space {observation_space}",
          "Box, Discrete")
    ok_act = isinstance(action_space, (spaces.Box, spaces.Discrete))
    check(ok_act, "action_space", f"unsupported action space {action_space}", "Box, Discrete")
    if isinstance(action_space, spaces.Discrete):
        check(int(action_space.start) == 0, "action_space",
              f"Discrete action space must start at 0, got start={action_space.start}")


def _register_ale() -> None:
    gym.register_envs(require("ale_py", "env (Atari)"))
    require("cv2", "env (Atari preprocessing)")


def make_gym_env(env_id: str, *, max_episode_steps: int | None = None,
                 render_mode: str | None = None, **atari: Any) -> tuple[gym.Env, str]:
    """The wrapped gymnasium env for `env_id` and its family.

    classic / MuJoCo / any other gymnasium id: `gym.make(env_id)` (its registered TimeLimit unless
    `max_episode_steps`), float observations cast to float32 (image observations stay uint8). Atari: ale-py's env with `frameskip=1` and sticky actions,
    `AtariPreprocessing` (frame skip + max-pool, 84x84 grayscale, up to 30 no-op starts),
    a `TimeLimit` in agent steps, `FrameStackObservation` and channels-last uint8 [84, 84, k].
    `render_mode`: gymnasium's (e.g. "rgb_array" for videos).
    """
    family = env_family(env_id)
    if max_episode_steps is not None:
        check(isinstance(max_episode_steps, int) and not isinstance(max_episode_steps, bool)
              and max_episode_steps > 0, "max_episode_steps",
              f"must be a positive int, got {max_episode_steps!r}")
    if family != "atari":
        if atari:
            key = next(iter(atari))
            raise ConfigError(key, f"is an Atari setting, but {env_id} is a {family} env")
        if family == "mujoco":
            require("mujoco", "env (MuJoCo)")
        render = {} if render_mode is None else {"render_mode": render_mode}  # factories may not take it
        try:
            env = gym.make(env_id, max_episode_steps=max_episode_steps, disable_env_checker=True, **render)
        except gym.error.DependencyNotInstalled as e:
            raise ConfigError("env", f"{env_id} needs a package that is not installed: {e}") from None
        check_spaces(env.observation_space, env.action_space)
        if (isinstance(env.observation_space, spaces.Box)
                and np.issubdtype(env.observation_space.dtype, np.floating)):
            env = Float32Observation(env)
        return env, family

    s = atari_settings({**atari, "max_episode_steps": max_episode_steps})
    _register_ale()
    # frameskip=1: AtariPreprocessing skips (and max-pools); the episode limit is the TimeLimit
    # below, in agent steps, so ALE's own frame limit is left off.
    env = gym.make(env_id, frameskip=1,
                   repeat_action_probability=float(s["repeat_action_probability"]),
                   full_action_space=s["full_action_space"], max_num_frames_per_episode=None,
                   render_mode=render_mode, disable_env_checker=True)
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=s["noop_max"], frame_skip=s["frame_skip"], screen_size=s["screen_size"],
        terminal_on_life_loss=s["terminal_on_life_loss"], grayscale_obs=True, scale_obs=False)
    env = gym.wrappers.TimeLimit(env, max_episode_steps=s["max_episode_steps"])
    env = gym.wrappers.FrameStackObservation(env, s["frame_stack"])
    env = ChannelsLast(env)
    return env, family


def find_wrapper(env: gym.Env, cls: type) -> gym.Env | None:
    """The outermost wrapper of type `cls` in `env`'s chain, or None."""
    while True:
        if isinstance(env, cls):
            return env
        if not hasattr(env, "env"):
            return None
        env = env.env
