"""Uniform experience replay with exact save / resume and optional n-step returns.

Two storage modes:

- Plain (default): `obs` and `next_obs` arrays are stored per transition (float32 for classic
  control / MuJoCo).
- Frame stack (`frame_stack=k`, observations `[..., k]` channels-last, e.g. Atari uint8
  [84, 84, 4]): each frame is stored once. A transition stores only the newest frame of its
  `next_obs`; the first transition of an episode also stores the newest frame of its `obs` (the
  reset frame). Stacks are rebuilt at sample time, repeating an episode's first frame where the
  stack reaches back before the episode began -- exactly what gymnasium's
  `FrameStackObservation(padding_type="reset")` produces. 1M Atari transitions take ~7.1 GB
  instead of 56 GB. Frame-stack mode needs the transitions of one env added in order, with
  `first=True` on the first transition of each episode (checked on `add`).

n-step sampling also relies on transitions being added in trajectory order (one env per buffer).

Storage is allocated on the first `add` (see `nbytes` for the planned size).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from sparse_rl.errors import ConfigError, check

_MASK64 = (1 << 64) - 1


class Transition(NamedTuple):
    """A batch of transitions (numpy arrays, leading batch dimension)."""
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    discount: np.ndarray
    next_obs: np.ndarray


def _rng_to_array(rng: np.random.Generator) -> np.ndarray:
    st = rng.bit_generator.state
    s, inc = int(st["state"]["state"]), int(st["state"]["inc"])
    return np.array([s >> 64, s & _MASK64, inc >> 64, inc & _MASK64, st["has_uint32"],
                     st["uinteger"]], dtype=np.uint64)


def _rng_from_array(rng: np.random.Generator, a) -> None:
    a = [int(x) for x in np.asarray(a, dtype=np.uint64)]
    rng.bit_generator.state = {"bit_generator": "PCG64",
                               "state": {"state": (a[0] << 64) | a[1], "inc": (a[2] << 64) | a[3]},
                               "has_uint32": a[4], "uinteger": a[5]}


def _positive_int(value, field: str) -> int:
    check(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0,
          field, f"must be a positive int, got {value!r}")
    return int(value)


class ReplayBuffer:
    """Uniform replay buffer.

    Args:
      capacity: number of transitions kept (oldest dropped first).
      obs_shape, obs_dtype: one observation's shape and dtype.
      action_shape, action_dtype: one action's shape and dtype (int32 scalars for discrete actions,
        e.g. float32 (act_dim,) for continuous ones).
      seed: seed of the buffer's own sampling generator (its state is saved by `state_dict`).
      frame_stack: k to store frames once (observations `[..., k]`); None stores whole observations.
    """

    def __init__(self, capacity: int, obs_shape, obs_dtype=np.float32, action_shape=(),
                 action_dtype=np.int32, seed: int = 0, frame_stack: int | None = None):
        self.capacity = _positive_int(capacity, "capacity")
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.action_shape = tuple(int(s) for s in action_shape)
        self.action_dtype = np.dtype(action_dtype)
        check(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0,
              "seed", f"must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        if frame_stack is not None:
            frame_stack = _positive_int(frame_stack, "frame_stack")
            check(len(self.obs_shape) >= 2 and self.obs_shape[-1] == frame_stack, "frame_stack",
                  f"observations must be [..., {frame_stack}] (channels last), "
                  f"got obs_shape {self.obs_shape}")
        self.frame_stack = frame_stack
        # Frame ring: room for every transition's frame, the oldest stack's history, and one
        # extra (reset) frame per episode for up to 1% of the capacity in episodes. Transitions
        # whose frames were overwritten anyway (very short episodes) are no longer sampled.
        self.frame_capacity = (self.capacity + (frame_stack or 0) + max(16, self.capacity // 100)
                               if frame_stack else 0)
        self._rng = np.random.default_rng(self.seed)
        self._t = 0            # transitions ever added (global index of the next one)
        self._lo = 0           # global index of the oldest sampleable transition
        self._f = 0            # frames ever written (frame mode)
        self._ep_start = -1    # global frame index of the current episode's first frame
        self._storage: dict[str, np.ndarray] | None = None

    # storage ------------------------------------------------------------------------------------
    def _layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        c = self.capacity
        lay = {"action": ((c,) + self.action_shape, self.action_dtype),
               "reward": ((c,), np.dtype(np.float32)),
               "discount": ((c,), np.dtype(np.float32)),
               "first": ((c,), np.dtype(bool))}
        if self.frame_stack:
            lay["frames"] = ((self.frame_capacity,) + self.obs_shape[:-1], self.obs_dtype)
            lay["next_pos"] = ((c,), np.dtype(np.int64))
            lay["ep_start"] = ((c,), np.dtype(np.int64))
        else:
            lay["obs"] = ((c,) + self.obs_shape, self.obs_dtype)
            lay["next_obs"] = ((c,) + self.obs_shape, self.obs_dtype)
        return lay

    @property
    def nbytes(self) -> int:
        """Bytes the storage takes once allocated (computed from shapes; allocates nothing)."""
        return int(sum(int(np.prod(shape)) * dtype.itemsize
                       for shape, dtype in self._layout().values()))

    def _allocate(self) -> dict[str, np.ndarray]:
        if self._storage is None:
            self._storage = {k: np.zeros(shape, dtype)
                             for k, (shape, dtype) in self._layout().items()}
        return self._storage

    def __len__(self) -> int:
        return self._t - self._lo

    # adding -------------------------------------------------------------------------------------
    def _write_frame(self, frame) -> int:
        s = self._storage
        pos = self._f
        s["frames"][pos % self.frame_capacity] = frame
        self._f += 1
        return pos

    def add(self, obs, action, reward, discount, next_obs, first: bool) -> None:
        """Append one transition (s, a, r, discount, s'); `first`: s is an episode's first obs.

        `discount` is the env's discount for this step (0 at termination, 1 otherwise, also at
        truncation, where s' is the true final observation).
        """
        s = self._allocate()
        obs = np.asarray(obs)
        next_obs = np.asarray(next_obs)
        if obs.shape != self.obs_shape or next_obs.shape != self.obs_shape:
            raise ValueError(f"observations must have shape {self.obs_shape}, got {obs.shape} "
                             f"and {next_obs.shape}")
        slot = self._t % self.capacity
        first = bool(first)
        if self.frame_stack:
            if first or self._t == 0:
                if not np.all(obs == obs[..., -1:]):
                    raise ValueError("frame-stack buffer: an episode's first observation must "
                                     "repeat its reset frame (FrameStackObservation padding "
                                     "'reset'); pass first=True only at episode starts")
                self._ep_start = self._write_frame(obs[..., -1])
                first = True
            elif not np.array_equal(obs[..., -1],
                                    s["frames"][(self._f - 1) % self.frame_capacity]):
                raise ValueError("frame-stack buffer: obs does not continue the previous "
                                 "transition's next_obs; pass first=True at episode starts and "
                                 "add one env's transitions in order")
            s["ep_start"][slot] = self._ep_start
            s["next_pos"][slot] = self._write_frame(next_obs[..., -1])
        else:
            s["obs"][slot] = obs
            s["next_obs"][slot] = next_obs
        s["action"][slot] = np.asarray(action, self.action_dtype).reshape(self.action_shape)
        s["reward"][slot] = reward
        s["discount"][slot] = discount
        s["first"][slot] = first
        self._t += 1
        self._lo = max(self._lo, self._t - self.capacity)
        if self.frame_stack:
            oldest_frame = self._f - self.frame_capacity
            while self._lo < self._t and self._oldest_frame_needed(self._lo) < oldest_frame:
                self._lo += 1

    def _oldest_frame_needed(self, g):
        s = self._storage
        slot = g % self.capacity
        return np.maximum(s["next_pos"][slot] - self.frame_stack, s["ep_start"][slot])

    # sampling -----------------------------------------------------------------------------------
    def _stacks(self, g: np.ndarray, newest_offset: int) -> np.ndarray:
        """Frame stacks for global transitions g: newest frame at next_pos + newest_offset."""
        s = self._storage
        k = self.frame_stack
        slot = g % self.capacity
        newest = s["next_pos"][slot] + newest_offset
        pos = newest[:, None] + np.arange(-k + 1, 1)[None, :]              # [B, k] oldest first
        pos = np.maximum(pos, s["ep_start"][slot][:, None])
        frames = s["frames"][pos % self.frame_capacity]                   # [B, k, ...]
        return np.ascontiguousarray(np.moveaxis(frames, 1, -1))

    def _obs(self, g: np.ndarray) -> np.ndarray:
        if self.frame_stack:
            return self._stacks(g, -1)
        return self._storage["obs"][g % self.capacity]

    def _next_obs(self, g: np.ndarray) -> np.ndarray:
        if self.frame_stack:
            return self._stacks(g, 0)
        return self._storage["next_obs"][g % self.capacity]

    def sample(self, batch_size: int, n_step: int = 1, gamma: float = 0.99) -> Transition:
        """`batch_size` transitions drawn uniformly (with replacement).

        With `n_step = n > 1` each sample is the n-step transition starting at the drawn one,
        cut at the end of its episode after m <= n steps:
          reward   = sum_{j<m} gamma^j (prod_{l<j} d_l) r_j
          discount = (prod_{j<m} d_j) * gamma^(m-1)
          next_obs = s' of the m-th step
        so the agent's target is always `reward + gamma * discount * V(next_obs)`, for n = 1
        too (then `discount` is the env's discount d, 0 at termination). The newest n-1
        transitions are not sampled until their successors arrive.
        """
        batch_size = _positive_int(batch_size, "batch_size")
        n = _positive_int(n_step, "n_step")
        check(isinstance(gamma, (int, float, np.floating)) and 0.0 <= gamma <= 1.0, "gamma",
              f"must be in [0, 1], got {gamma!r}")
        hi = self._t - (n - 1)
        if hi <= self._lo:
            raise ValueError(f"replay buffer holds {len(self)} transitions: too few to sample "
                             f"with n_step={n}")
        s = self._storage
        g = self._rng.integers(self._lo, hi, size=batch_size)
        if n == 1:
            slot = g % self.capacity  # gathers by index arrays copy: the sample owns its arrays
            return Transition(self._obs(g), s["action"][slot], s["reward"][slot], s["discount"][slot],
                              self._next_obs(g))
        c = self.capacity
        idx = g[:, None] + np.arange(n)[None, :]                         # [B, n] global
        r = s["reward"][idx % c].astype(np.float64)
        d = s["discount"][idx % c].astype(np.float64)
        ended = (d[:, :-1] == 0) | s["first"][(idx[:, :-1] + 1) % c]    # episode ends after step j
        alive = np.ones((batch_size, n), bool)
        alive[:, 1:] = np.cumprod(~ended, axis=1).astype(bool)
        weight = np.ones((batch_size, n))
        weight[:, 1:] = np.cumprod(gamma * d[:, :-1], axis=1)
        reward = np.sum(np.where(alive, weight * r, 0.0), axis=1)
        m = alive.sum(axis=1)
        discount = np.prod(np.where(alive, d, 1.0), axis=1) * np.power(float(gamma), m - 1)
        last = g + m - 1
        return Transition(self._obs(g), s["action"][g % c], reward.astype(np.float32),
                          discount.astype(np.float32), self._next_obs(last))

    # checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to continue exactly: numpy arrays only (no pickle).

        Only the written part of the storage is included, as views into it: write them out
        (e.g. `np.savez`) before adding more transitions.
        """
        out = {
            "counters": np.array([self._t, self._lo, self._f, self._ep_start], np.int64),
            "config": np.array([self.capacity, self.frame_stack or 0, self.frame_capacity],
                               np.int64),
            "obs_shape": np.array(self.obs_shape, np.int64),
            "rng": _rng_to_array(self._rng),
        }
        if self._storage is not None:
            n = min(self._t, self.capacity)
            for k, v in self._storage.items():
                out["data/" + k] = v[:min(self._f, self.frame_capacity)] if k == "frames" else v[:n]
        return out

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore `state_dict()`'s output into a buffer built with the same arguments."""
        cap, k, fcap = (int(x) for x in np.asarray(d["config"]))
        mine = (self.capacity, self.frame_stack or 0, self.frame_capacity)
        if (cap, k, fcap) != mine or tuple(np.asarray(d["obs_shape"]).tolist()) != self.obs_shape:
            raise ConfigError("replay", f"saved buffer (capacity {cap}, frame_stack {k}, obs_shape "
                              f"{tuple(np.asarray(d['obs_shape']).tolist())}) does not match this "
                              f"one (capacity {self.capacity}, frame_stack {self.frame_stack}, "
                              f"obs_shape {self.obs_shape})")
        self._t, self._lo, self._f, self._ep_start = (int(x) for x in np.asarray(d["counters"]))
        _rng_from_array(self._rng, d["rng"])
        self._storage = None
        data = {key[5:]: v for key, v in d.items() if key.startswith("data/")}
        if data:
            s = self._allocate()
            for key, v in data.items():
                v = np.asarray(v)
                s[key][:len(v)] = v
