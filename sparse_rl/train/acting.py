"""Exploration noise for the env loops, drawn many steps at a time.

An agent's `act_noise(key, batch_shape, evaluation)` makes every random draw of one act call
(`sparse_rl.agents.base.Agent`). The loops derive each step's key as before (`fold_in(run key,
step)`) but draw the noise of a whole block of upcoming steps in one device call, vmapped over the
steps' keys and the runs (the same bits as one call per step: threefry draws depend on the key
only), keep the block on the host and pass one step's slice to the act call. A step's noise is a
pure function of (run key, step), so a resumed run draws exactly what an uninterrupted one did.

Why: with a small network the PRNG draws in a per-step act program cost more than the network
(issue 15: DQN CartPole 256-256, ~130 us a call, ~45 us of it the forward pass).
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
        """The noise of `steps` for every run: leaves [runs, len(steps), ...], numpy."""
        return jax.device_get(self.draw(keys, steps))


class NoiseBlocks:
    """Run i's noise for step s, `draw(fold_in(keys[i], s))`, for every run at once (`at(s)`:
    leaves [runs, ...], numpy), drawn `block` steps at a time (blocks aligned to multiples of
    `block`)."""

    def __init__(self, drawer: NoiseDrawer, keys, block: int = BLOCK):
        self.drawer, self.keys, self.block = drawer, keys, int(block)
        self.start, self.noise = None, None

    def warm(self, step: int) -> float:
        """Draw the block holding `step` now (compiling the drawer); the seconds it took."""
        started = time.perf_counter()
        self.at(step)
        return time.perf_counter() - started

    def at(self, step: int):
        if self.drawer.empty:
            return ()
        start = step - step % self.block
        if start != self.start:
            self.noise = self.drawer(self.keys, np.arange(start, start + self.block, dtype=np.uint32))
            self.start = start
        j = step - start
        return jax.tree_util.tree_map(lambda x: x[:, j], self.noise)
