"""gymnasium -> dm_env adapter."""

from __future__ import annotations

from typing import Any, NamedTuple

import dm_env
import gymnasium as gym
import numpy as np
from dm_env import specs
from gymnasium import spaces

from sparse_rl.envs import state as env_state
from sparse_rl.envs.builders import check_spaces, make_gym_env
from sparse_rl.envs.registry import FAMILIES
from sparse_rl.errors import ConfigError, check


def check_seed(seed) -> int:
    check(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0,
          "seed", f"must be a non-negative int, got {seed!r}")
    return int(seed)


def space_to_spec(space: gym.Space, name: str):
    """dm_env spec for a Box / Discrete space.

    Box with an infinite bound -> `specs.Array`; else `specs.BoundedArray` (observation bounds that
    are uniform are stored as scalars; action bounds always as arrays of the action's shape).
    Discrete -> `specs.DiscreteArray` (int32).
    """
    if isinstance(space, spaces.Discrete):
        return specs.DiscreteArray(int(space.n), dtype=np.int32, name=name)
    if isinstance(space, spaces.Box):
        low, high = space.low, space.high
        if np.all(np.isfinite(low)) and np.all(np.isfinite(high)):
            if name == "observation":
                # uniform pixel bounds as scalars (dm_env broadcasts them): readable specs.
                # Action specs keep full arrays of the action's shape.
                low = low.flat[0] if low.size and np.all(low == low.flat[0]) else low
                high = high.flat[0] if high.size and np.all(high == high.flat[0]) else high
            return specs.BoundedArray(space.shape, space.dtype, low, high, name=name)
        return specs.Array(space.shape, space.dtype, name=name)
    raise ConfigError(f"{name}_space", f"unsupported {name} space {space}", "Box, Discrete")


class EnvSpec(NamedTuple):
    observation_spec: Any
    action_spec: Any
    family: str
    env_id: str


class GymEnv(dm_env.Environment):
    """dm_env view of a gymnasium env.

    - `reset()` -> FIRST (reward and discount None). The very first reset seeds the env with `seed`;
      later resets continue its generators, so a run is reproducible from its seed.
    - `step(a)` -> MID (discount 1.0); LAST with discount 0.0 when gymnasium says `terminated`,
      LAST with discount 1.0 when only `truncated` (time limit: bootstrap from the observation).
    - The step after a LAST resets and returns FIRST (dm_env convention).
    - Finished episodes are appended to `episode_returns` / `episode_lengths`.
    - `get_state()` / `set_state(d)`: exact resume (dict of numpy arrays, no pickle). `set_state` on
      a freshly made env with the same id, settings and seed continues the saved trajectory exactly.
    """

    def __init__(self, env: gym.Env, *, seed: int, env_id: str, family: str):
        check_spaces(env.observation_space, env.action_space)
        self._env = env
        self._seed = check_seed(seed)
        self.env_id = env_id
        self.family = family
        self._obs_spec = space_to_spec(env.observation_space, "observation")
        self._act_spec = space_to_spec(env.action_space, "action")
        self._discrete = isinstance(env.action_space, spaces.Discrete)
        self._obs_dtype = env.observation_space.dtype
        env.action_space.seed(self._seed)
        self._started = False
        self._reset_next = True
        self._episode_return = 0.0
        self._episode_length = 0
        self.total_steps = 0
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []

    # dm_env API -------------------------------------------------------------------------------
    @property
    def gym_env(self) -> gym.Env:
        return self._env

    def _obs(self, obs) -> np.ndarray:
        return np.asarray(obs, dtype=self._obs_dtype)

    def reset(self) -> dm_env.TimeStep:
        obs, _ = self._env.reset(seed=None if self._started else self._seed)
        self._started = True
        self._reset_next = False
        self._episode_return = 0.0
        self._episode_length = 0
        return dm_env.restart(self._obs(obs))

    def step(self, action) -> dm_env.TimeStep:
        if self._reset_next:
            return self.reset()
        if self._discrete:
            action = int(np.asarray(action))
        else:
            action = np.asarray(action, dtype=self._env.action_space.dtype).reshape(
                self._env.action_space.shape)
        obs, reward, terminated, truncated, _ = self._env.step(action)
        reward = float(reward)
        obs = self._obs(obs)
        self._episode_return += reward
        self._episode_length += 1
        self.total_steps += 1
        if terminated or truncated:
            self._reset_next = True
            self.episode_returns.append(self._episode_return)
            self.episode_lengths.append(self._episode_length)
            if terminated:
                return dm_env.termination(reward, obs)
            return dm_env.truncation(reward, obs, discount=1.0)
        return dm_env.transition(reward, obs, discount=1.0)

    def observation_spec(self):
        return self._obs_spec

    def action_spec(self):
        return self._act_spec

    def close(self) -> None:
        self._env.close()

    @property
    def episode_return(self) -> float:
        """Return of the episode in progress."""
        return self._episode_return

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(self._obs_spec, self._act_spec, self.family, self.env_id)

    # exact resume ------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        """Everything that decides the future trajectory, as numpy arrays (no pickle)."""
        if self.family not in FAMILIES:
            raise NotImplementedError(f"get_state is not supported for {self.family} envs")
        out = {
            "adapter": np.array([self._started, self._reset_next, self._episode_length,
                                 self.total_steps, self._seed], dtype=np.int64),
            "episode_return": np.array(self._episode_return, np.float64),
            "episode_returns": np.array(self.episode_returns, np.float64),
            "episode_lengths": np.array(self.episode_lengths, np.int64),
        }
        if self._started:
            snapshot = env_state.capture(self._env, self.family)
            out.update({"env/" + k: v for k, v in snapshot.items()})
        else:
            out["action_space_rng"] = env_state.rng_to_array(self._env.action_space.np_random)
        return out

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore `get_state()`'s output (into an env made with the same id and settings)."""
        started, reset_next, ep_len, total, seed = (int(x) for x in np.asarray(state["adapter"]))
        self._seed = seed
        if started:
            if not self._started:
                self._env.reset(seed=self._seed)
            env_state.restore(self._env, self.family,
                              {k[4:]: v for k, v in state.items() if k.startswith("env/")})
        else:
            env_state.rng_from_array(self._env.action_space.np_random, state["action_space_rng"])
        self._started = bool(started)
        self._reset_next = bool(reset_next)
        self._episode_length = ep_len
        self.total_steps = total
        self._episode_return = float(state["episode_return"])
        self.episode_returns = [float(x) for x in np.asarray(state["episode_returns"])]
        self.episode_lengths = [int(x) for x in np.asarray(state["episode_lengths"])]


def make_env(env_id: str, seed: int, *, max_episode_steps: int | None = None,
             **atari: Any) -> GymEnv:
    """A seeded dm_env environment.

    Args:
      env_id: a classic control id ("CartPole-v1", ...), a MuJoCo v5 id ("HalfCheetah-v5", ...) or
        "ALE/<Game>-v5" (see `env_family`).
      seed: non-negative int; the first reset uses it, later resets continue deterministically.
      max_episode_steps: time limit in agent steps (default: the registered one; Atari 27,000).
      **atari: Atari settings overriding `ATARI_DEFAULTS`: repeat_action_probability (0.25),
        frame_skip (4), frame_stack (4), screen_size (84), noop_max (30),
        terminal_on_life_loss (False), full_action_space (False).

    Observations: float32 for classic control / MuJoCo; uint8 [84, 84, 4] for Atari.
    """
    seed = check_seed(seed)
    env, family = make_gym_env(env_id, max_episode_steps=max_episode_steps, **atari)
    return GymEnv(env, seed=seed, env_id=env_id, family=family)


def wrap_env(env: gym.Env, seed: int, env_id: str = "custom") -> GymEnv:
    """Adapt a user-built gymnasium env (Box/Discrete spaces). No `get_state` support."""
    return GymEnv(env, seed=seed, env_id=env_id, family="custom")


def env_spec(env_id: str, *, max_episode_steps: int | None = None, **atari: Any) -> EnvSpec:
    """Observation / action specs and family of `env_id` (makes the env once, no reset)."""
    env = make_env(env_id, 0, max_episode_steps=max_episode_steps, **atari)
    try:
        return env.spec
    finally:
        env.close()
