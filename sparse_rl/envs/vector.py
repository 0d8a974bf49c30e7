"""Batched environments with a plain numpy API (for PPO and vectorised collection)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from sparse_rl.envs import state as env_state
from sparse_rl.envs.builders import check_spaces, make_gym_env
from sparse_rl.envs.dm_adapter import check_seed
from sparse_rl.envs.registry import env_family
from sparse_rl.errors import check


class _Factory:
    """Picklable env constructor (AsyncVectorEnv sends it to worker processes)."""

    def __init__(self, env_id: str, max_episode_steps, atari: dict):
        self.env_id, self.max_episode_steps, self.atari = env_id, max_episode_steps, atari

    def __call__(self) -> gym.Env:
        return make_gym_env(self.env_id, max_episode_steps=self.max_episode_steps, **self.atari)[0]


class VectorEnv:
    """`num_envs` copies of an env stepped together, autoresetting in the same step.

    - `reset() -> obs[N, ...]`: the first call seeds env i with `seed + i`; later calls continue.
    - `step(actions) -> (obs, reward, terminated, truncated, infos)`. When env i's episode ends,
      `obs[i]` is already the first observation of its next episode (gymnasium's SAME_STEP
      autoreset) and `infos["next_obs"][i]` is the true final observation: use `infos["next_obs"]`
      as s' for bootstrapping (it equals `obs` for envs whose episode goes on).
    - Finished episodes are appended to `episode_returns` / `episode_lengths`.
    - `get_state()` / `set_state()` (synchronous envs only): exact resume, numpy arrays only.
    """

    def __init__(self, env_id: str, num_envs: int, seed: int, asynchronous: bool = False,
                 max_episode_steps: int | None = None, **atari: Any):
        check(isinstance(num_envs, int) and not isinstance(num_envs, bool) and num_envs > 0,
              "num_envs", f"must be a positive int, got {num_envs!r}")
        self._seed = check_seed(seed)
        self.env_id = env_id
        self.family = env_family(env_id)
        self.num_envs = num_envs
        # build one env here so bad settings fail in this process with a clear ConfigError
        probe = make_gym_env(env_id, max_episode_steps=max_episode_steps, **atari)[0]
        check_spaces(probe.observation_space, probe.action_space)
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        probe.close()
        factory = _Factory(env_id, max_episode_steps, dict(atari))
        cls = AsyncVectorEnv if asynchronous else SyncVectorEnv
        self.asynchronous = bool(asynchronous)
        self._vec = cls([factory] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
        self._vec.action_space.seed(self._seed)
        self._started = False
        self._returns = np.zeros(num_envs, np.float64)
        self._lengths = np.zeros(num_envs, np.int64)
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []

    @property
    def observation_space(self):
        return self._vec.observation_space

    @property
    def action_space(self):
        return self._vec.action_space

    def reset(self) -> np.ndarray:
        obs, _ = self._vec.reset(seed=None if self._started else self._seed)
        self._started = True
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return obs

    def step(self, actions):
        actions = np.asarray(actions)
        if isinstance(self.single_action_space, gym.spaces.Discrete):
            actions = actions.astype(np.int64)
        obs, reward, terminated, truncated, infos = self._vec.step(actions)
        reward = np.asarray(reward, np.float64)
        terminated = np.asarray(terminated, bool)
        truncated = np.asarray(truncated, bool)
        done = terminated | truncated
        next_obs = obs
        if done.any():
            next_obs = obs.copy()
            final = infos.get("final_obs")
            for i in np.flatnonzero(done):
                next_obs[i] = final[i]
        infos["next_obs"] = next_obs
        self._returns += reward
        self._lengths += 1
        for i in np.flatnonzero(done):
            self.episode_returns.append(float(self._returns[i]))
            self.episode_lengths.append(int(self._lengths[i]))
            self._returns[i] = 0.0
            self._lengths[i] = 0
        return obs, reward, terminated, truncated, infos

    def close(self) -> None:
        self._vec.close()

    def _check_sync(self) -> None:
        if self.asynchronous:
            raise NotImplementedError("get_state/set_state need asynchronous=False")

    def get_state(self) -> dict[str, np.ndarray]:
        self._check_sync()
        out = {
            "vector": np.array([self._started, self.num_envs, self._seed], np.int64),
            "returns": self._returns.copy(), "lengths": self._lengths.copy(),
            "episode_returns": np.array(self.episode_returns, np.float64),
            "episode_lengths": np.array(self.episode_lengths, np.int64),
            "action_space_rng": env_state.rng_to_array(self._vec.action_space.np_random),
        }
        if self._started:
            for i, env in enumerate(self._vec.envs):
                snapshot = env_state.capture(env, self.family)
                out.update({f"env{i}/{k}": v for k, v in snapshot.items()})
        return out

    def set_state(self, state: dict[str, Any]) -> None:
        self._check_sync()
        started, num_envs, seed = (int(x) for x in np.asarray(state["vector"]))
        check(num_envs == self.num_envs, "num_envs",
              f"state is for {num_envs} envs, this VectorEnv has {self.num_envs}")
        self._seed = seed
        if started:
            if not self._started:
                self._vec.reset(seed=self._seed)
            for i, env in enumerate(self._vec.envs):
                p = f"env{i}/"
                env_state.restore(env, self.family,
                                  {k[len(p):]: v for k, v in state.items() if k.startswith(p)})
            self._vec._autoreset_envs = np.zeros(self.num_envs, bool)
        self._started = bool(started)
        env_state.rng_from_array(self._vec.action_space.np_random, state["action_space_rng"])
        self._returns = np.array(state["returns"], np.float64)
        self._lengths = np.array(state["lengths"], np.int64)
        self.episode_returns = [float(x) for x in np.asarray(state["episode_returns"])]
        self.episode_lengths = [int(x) for x in np.asarray(state["episode_lengths"])]


def make_vector_env(env_id: str, num_envs: int, seed: int, asynchronous: bool = False, *,
                    max_episode_steps: int | None = None, **atari: Any) -> VectorEnv:
    """`num_envs` seeded copies of `env_id` (see `VectorEnv`); settings as for `make_env`."""
    return VectorEnv(env_id, num_envs, seed, asynchronous=asynchronous,
                     max_episode_steps=max_episode_steps, **atari)
