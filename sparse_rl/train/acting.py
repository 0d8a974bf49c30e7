"""Exploration noise for the env loops, drawn many steps at a time.

An agent's `act_noise(key, batch_shape, evaluation)` makes every random draw of one act call
(`sparse_rl.agents.base.Agent`). The loops derive each step's key as before (`fold_in(run key,
step)`) but draw the noise of a whole block of upcoming steps in one device call, vmapped over the
steps' keys and the runs (the same bits as one call per step: threefry draws depend on the key
only) and keep the block on the device: the act program takes the whole block and the step, and
slices the step's noise itself (`step_noise`), so a step passes no noise from the host. A step's
noise is a pure function of (run key, step), so a resumed run draws exactly what an uninterrupted
one did.

Why: with a small network the PRNG draws in a per-step act program cost more than the network
(issue 15: DQN CartPole 256-256, ~130 us a call, ~45 us of it the forward pass); slicing the step
on the host and passing its arrays in cost another ~35 us a call (104 -> 67 us measured).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

# Steps drawn per block: large enough that one draw costs little per step, small enough that a
# block of Atari-sized noise (18 actions x 16 envs x 4 bytes) stays a few MiB.
BLOCK = 1024


class NoiseDrawer:
    """`draw(key) -> noise pytree` of one step, as one jitted call over (runs x steps)."""

    def __init__(self, draw: Callable):
        shapes = jax.eval_shape(draw, jax.ShapeDtypeStruct((2,), np.uint32))
        self.empty = not jax.tree_util.tree_leaves(shapes)  # e.g. a deterministic evaluation

        def one(key, step):
            return draw(jax.random.fold_in(key, step))

        self.draw = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))

    def __call__(self, keys, steps: np.ndarray):
        """The noise of `steps` for every run: leaves [runs, len(steps), ...], on the device."""
        return self.draw(keys, steps)


def step_noise(block, step):
    """Step `step`'s noise from one run's block (leaves [block length, ...]), inside an act
    program. Blocks start at multiples of their length, so the step's row is `step % length`."""
    return jax.tree_util.tree_map(lambda x: x[step % x.shape[0]], block)


class NoiseBlocks:
    """Run i's noise for step s, `draw(fold_in(keys[i], s))`, for every run at once, drawn `block`
    steps at a time (blocks aligned to multiples of `block`): `block_at(s)` is the device block
    holding s (leaves [runs, block, ...], for `step_noise`), `at(s)` the step's noise on the host
    (leaves [runs, ...])."""

    def __init__(self, drawer: NoiseDrawer, keys, block: int = BLOCK):
        self.drawer, self.keys, self.block = drawer, keys, int(block)
        self.start, self.noise, self._host = None, None, None

    def warm(self, step: int) -> float:
        """Draw the block holding `step` now (compiling the drawer); the seconds it took."""
        started = time.perf_counter()
        jax.block_until_ready(self.block_at(step))
        return time.perf_counter() - started

    def block_at(self, step: int):
        if self.drawer.empty:
            return ()
        start = step - step % self.block
        if start != self.start:
            self.noise = self.drawer(self.keys, np.arange(start, start + self.block, dtype=np.uint32))
            self.start, self._host = start, None
        return self.noise

    def at(self, step: int):
        block = self.block_at(step)
        if self.drawer.empty:
            return ()
        if self._host is None:
            self._host = jax.device_get(block)
        j = step - self.start
        return jax.tree_util.tree_map(lambda x: x[:, j], self._host)
