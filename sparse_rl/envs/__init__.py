"""Environments: gymnasium envs behind a dm_env adapter, plus batched vector envs.

    env = make_env("CartPole-v1", seed=0)
    ts = env.reset()                  # FIRST
    ts = env.step(action)             # MID / LAST (discount 0 on termination, 1 on truncation)
    snapshot = env.get_state()        # numpy arrays; env2.set_state(snapshot) continues exactly
"""

from sparse_rl.envs.dm_adapter import EnvSpec, GymEnv, env_spec, make_env, wrap_env
from sparse_rl.envs.registry import (ATARI_DEFAULTS, CLASSIC_IDS, FAMILIES, MUJOCO_IDS,
                                     atari_settings, env_family, register_env_factory)
from sparse_rl.envs.builders import make_gym_env
from sparse_rl.envs.vector import VectorEnv, make_vector_env

__all__ = ["make_env", "make_vector_env", "VectorEnv", "GymEnv", "EnvSpec", "env_spec",
           "env_family", "wrap_env", "make_gym_env", "ATARI_DEFAULTS", "CLASSIC_IDS", "MUJOCO_IDS",
           "FAMILIES", "atari_settings", "register_env_factory"]

