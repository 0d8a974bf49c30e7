"""Output heads."""

from __future__ import annotations

import haiku as hk
import jax

from sparse_rl.errors import check


class QHead(hk.Module):
    """Linear layer to one Q-value per action. Parameters: `q_head/~/linear/{w,b}`."""

    def __init__(self, num_actions: int, w_init=None, b_init=None, name: str | None = "q_head"):
        super().__init__(name=name)
        check(isinstance(num_actions, int) and num_actions > 0, "num_actions",
              f"must be a positive int, got {num_actions!r}")
        self.num_actions = num_actions
        self.linear = hk.Linear(num_actions, w_init=w_init, b_init=b_init, name="linear")

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(x)
