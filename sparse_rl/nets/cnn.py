"""Convolutional torsos for pixel observations: Nature CNN and Impala ResNet."""

from __future__ import annotations

from typing import Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from sparse_rl.errors import check_choice, check
from sparse_rl.nets.mlp import check_multiplier, scaled_width


def _prepare_pixels(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
    """Integer pixels -> float in [0, 1]; float input is used as given. Flattens leading dims."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        x = x.astype(jnp.float32) / 255.0
    else:
        x = x.astype(jnp.float32)
    if x.ndim < 3:
        raise ValueError(f"pixel input must be [..., H, W, C], got shape {x.shape}")
    lead = x.shape[:-3]
    return x.reshape((-1,) + x.shape[-3:]), lead


class NatureCNN(hk.Module):
    """Mnih et al. (2015) torso: conv 32-8x8-s4, 64-4x4-s2, 64-3x3-s1, flatten, dense 512, all ReLU.

    Input `[..., 84, 84, C]` (channels last). Integer (uint8) pixels are scaled to [0, 1] inside;
    float input is taken as already scaled. Padding defaults to the paper's code, "SAME"
    (rigl/rl/dqn_agents.py NatureDQNNetwork: padding='same', flatten 11*11*64 = 7744, the shapes
    its ERK split and PAPER.md's ERK numbers use); "VALID" is Mnih et al.'s (7*7*64 = 3136).
    `width_multiplier` scales every channel count and the dense width. `w_init`: initialiser of
    every kernel (None: Haiku's truncated-normal fan-in default).
    """

    def __init__(self, width_multiplier: float = 1.0, padding: str = "SAME", dense: int = 512,
                 w_init=None, name: str | None = None):
        super().__init__(name=name)
        padding = padding.upper() if isinstance(padding, str) else padding
        check_choice(padding, "padding", ("VALID", "SAME"))
        m = check_multiplier(width_multiplier)
        self.padding = padding
        self.channels = tuple(scaled_width(c, m) for c in (32, 64, 64))
        self.dense = scaled_width(dense, m)
        self.convs = tuple(hk.Conv2D(c, k, stride=s, padding=padding, w_init=w_init, name=f"conv_{i}")
                           for i, (c, k, s) in enumerate(zip(self.channels, (8, 4, 3), (4, 2, 1))))
        self.linear = hk.Linear(self.dense, w_init=w_init, name="linear")

    def __call__(self, x: jax.Array) -> jax.Array:
        x, lead = _prepare_pixels(x)
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        x = x.reshape((x.shape[0], -1))
        x = jax.nn.relu(self.linear(x))
        return x.reshape(lead + (self.dense,))


class _ResidualBlock(hk.Module):
    def __init__(self, channels: int, w_init=None, name: str | None = None):
        super().__init__(name=name)
        self.conv_0 = hk.Conv2D(channels, 3, padding="SAME", w_init=w_init, name="conv_0")
        self.conv_1 = hk.Conv2D(channels, 3, padding="SAME", w_init=w_init, name="conv_1")

    def __call__(self, x):
        y = self.conv_0(jax.nn.relu(x))
        y = self.conv_1(jax.nn.relu(y))
        return x + y


class ImpalaResNet(hk.Module):
    """Espeholt et al. (2018) torso.

    Per stack: conv 3x3 (SAME), max-pool 3x3 stride 2 (SAME), two residual blocks
    (relu-conv-relu-conv + skip). Then relu, flatten, dense `dense` + relu. 84x84 -> 11x11.
    """

    def __init__(self, stacks: Sequence[int] = (32, 64, 64), dense: int = 512,
                 width_multiplier: float = 1.0, w_init=None, name: str | None = "impala"):
        super().__init__(name=name)
        stacks = tuple(stacks)
        check(len(stacks) > 0 and all(isinstance(c, int) and c > 0 for c in stacks), "stacks",
              f"must be a non-empty sequence of positive ints, got {stacks!r}")
        m = check_multiplier(width_multiplier)
        self.stacks = tuple(scaled_width(c, m) for c in stacks)
        self.dense = scaled_width(dense, m)
        self.blocks = tuple(
            (hk.Conv2D(c, 3, padding="SAME", w_init=w_init, name=f"stack_{i}_conv"),
             _ResidualBlock(c, w_init=w_init, name=f"stack_{i}_res_0"),
             _ResidualBlock(c, w_init=w_init, name=f"stack_{i}_res_1"))
            for i, c in enumerate(self.stacks))
        self.linear = hk.Linear(self.dense, w_init=w_init, name="linear")

    def __call__(self, x: jax.Array) -> jax.Array:
        x, lead = _prepare_pixels(x)
        for conv, res_0, res_1 in self.blocks:
            x = conv(x)
            x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
            x = res_1(res_0(x))
        x = jax.nn.relu(x)
        x = x.reshape((x.shape[0], -1))
        x = jax.nn.relu(self.linear(x))
        return x.reshape(lead + (self.dense,))
