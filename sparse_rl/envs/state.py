"""Exact snapshot / restore of a wrapped gymnasium env (no pickle: numpy arrays only).

A snapshot holds everything that decides the env's future: the simulator state, the numpy
bit-generator states (reset noise, no-op starts, `action_space.sample`), the TimeLimit counter and,
for Atari, the ALE state with its RNG plus the preprocessing and frame-stack buffers.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from sparse_rl.errors import ConfigError

_MASK64 = (1 << 64) - 1

# MuJoCo quantities derived from qpos that gymnasium's envs read *before* stepping (e.g. Ant's
# torso xpos, Humanoid's mass centre from xipos). After mj_step they lag the integrated state by
# one substep, so they cannot be recomputed by mj_forward: they are saved as they are.
_MJ_DERIVED = ("xpos", "xquat", "xmat", "xipos", "ximat", "site_xpos", "site_xmat", "geom_xpos",
               "geom_xmat", "subtree_com", "cvel", "cfrc_ext", "cinert")


def rng_to_array(generator: np.random.Generator) -> np.ndarray:
    """A PCG64 generator's full state as a uint64 array [6]."""
    st = generator.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise TypeError(f"only PCG64 generators can be saved, got {st['bit_generator']}")
    s, inc = int(st["state"]["state"]), int(st["state"]["inc"])
    return np.array([s >> 64, s & _MASK64, inc >> 64, inc & _MASK64, st["has_uint32"],
                     st["uinteger"]], dtype=np.uint64)


def rng_from_array(generator: np.random.Generator, a) -> None:
    """Restore a PCG64 generator in place from `rng_to_array`'s output."""
    a = [int(x) for x in np.asarray(a, dtype=np.uint64)]
    generator.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (a[0] << 64) | a[1], "inc": (a[2] << 64) | a[3]},
        "has_uint32": a[4], "uinteger": a[5]}


def _unwrap_to(env: gym.Env, cls: type):
    from sparse_rl.envs.builders import find_wrapper
    return find_wrapper(env, cls)


def simulator_kind(env: gym.Env, family: str) -> str:
    """How the simulator state of an env of `family` is saved: the family itself for the paper's
    envs; for any other gymnasium env, "mujoco" or "classic" when it keeps its state the way those
    do (`data` of a MuJoCo env, a `state` array), else "opaque" (nothing to save: such a run's
    checkpoints can be loaded and evaluated, but not resumed exactly)."""
    if family != "gym":
        return family
    u = env.unwrapped
    if hasattr(u, "model") and hasattr(u, "data") and type(u.data).__module__.startswith("mujoco"):
        return "mujoco"
    if isinstance(getattr(u, "state", None), (np.ndarray, tuple, list)):
        return "classic"
    return "opaque"


def capture(env: gym.Env, family: str) -> dict[str, np.ndarray]:
    """Snapshot of a *reset* gymnasium env built by `make_gym_env`."""
    family = simulator_kind(env, family)
    u = env.unwrapped
    out: dict[str, np.ndarray] = {"np_random": rng_to_array(u.np_random),
                                  "action_space_rng": rng_to_array(env.action_space.np_random)}
    tl = _unwrap_to(env, gym.wrappers.TimeLimit)
    if tl is not None:
        out["elapsed_steps"] = np.array(tl._elapsed_steps if tl._elapsed_steps is not None else -1,
                                        np.int64)
    if family == "classic":
        # in its own dtype: Acrobot resets to float32 but integrates in float64
        out["physics_state"] = np.array(u.state, dtype=np.result_type(np.asarray(u.state).dtype, np.float32))
        sbt = getattr(u, "steps_beyond_terminated", None)
        out["steps_beyond_terminated"] = np.array(-1 if sbt is None else sbt, np.int64)
        if hasattr(u, "last_u"):
            out["last_u"] = np.array(np.nan if u.last_u is None else u.last_u, np.float64)
    elif family == "mujoco":
        import mujoco
        sig = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(u.model, sig), np.float64)
        mujoco.mj_getState(u.model, u.data, state, sig)
        out["mj_state"] = state
        for name in _MJ_DERIVED:
            out["mj_" + name] = np.array(getattr(u.data, name), copy=True)
    elif family == "atari":
        out["ale_state"] = np.frombuffer(u.ale.cloneState(include_rng=True).serialize(),
                                         dtype=np.uint8).copy()
        pre = _unwrap_to(env, gym.wrappers.AtariPreprocessing)
        out["atari_obs_buffer"] = np.stack([np.array(b, copy=True) for b in pre.obs_buffer])
        out["atari_lives"] = np.array(pre.lives, np.int64)
        out["atari_game_over"] = np.array(bool(pre.game_over))
        fs = _unwrap_to(env, gym.wrappers.FrameStackObservation)
        out["frame_queue"] = np.stack([np.array(f, copy=True) for f in fs.obs_queue])
    elif family == "opaque":
        out["opaque"] = np.array(True)
    else:
        raise ValueError(f"unknown family {family!r}")
    return out


def restore(env: gym.Env, family: str, state: dict[str, Any]) -> None:
    """Inverse of `capture`, applied to an env of the same id that has been reset once."""
    if "opaque" in state:
        raise ConfigError("resume", f"{env.spec.id if env.spec else 'this env'} keeps its state "
                          "where sparse_rl cannot save it, so its run cannot continue exactly",
                          "classic control, MuJoCo, Atari, or an env holding its state in "
                          "`state` or MuJoCo `data`; start a new run with --out")
    family = simulator_kind(env, family)
    u = env.unwrapped
    rng_from_array(u.np_random, state["np_random"])
    rng_from_array(env.action_space.np_random, state["action_space_rng"])
    tl = _unwrap_to(env, gym.wrappers.TimeLimit)
    if tl is not None and "elapsed_steps" in state:
        e = int(state["elapsed_steps"])
        tl._elapsed_steps = None if e < 0 else e
    if family == "classic":
        s = np.array(state["physics_state"])
        u.state = tuple(s.tolist()) if isinstance(u.state, tuple) else s
        if hasattr(u, "steps_beyond_terminated"):
            sbt = int(state["steps_beyond_terminated"])
            u.steps_beyond_terminated = None if sbt < 0 else sbt
        if "last_u" in state and hasattr(u, "last_u"):
            lu = float(state["last_u"])
            u.last_u = None if np.isnan(lu) else lu
    elif family == "mujoco":
        import mujoco
        mujoco.mj_setState(u.model, u.data, np.asarray(state["mj_state"], np.float64),
                           mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(u.model, u.data)
        for name in _MJ_DERIVED:
            getattr(u.data, name)[...] = state["mj_" + name]
    elif family == "atari":
        import ale_py
        u.ale.restoreState(ale_py.ALEState(np.asarray(state["ale_state"], np.uint8).tobytes()))
        pre = _unwrap_to(env, gym.wrappers.AtariPreprocessing)
        for buf, saved in zip(pre.obs_buffer, np.asarray(state["atari_obs_buffer"])):
            buf[...] = saved
        pre.lives = int(state["atari_lives"])
        pre.game_over = bool(state["atari_game_over"])
        fs = _unwrap_to(env, gym.wrappers.FrameStackObservation)
        fs.obs_queue.clear()
        for frame in np.asarray(state["frame_queue"]):
            fs.obs_queue.append(np.array(frame, copy=True))
    else:
        raise ValueError(f"unknown family {family!r}")
