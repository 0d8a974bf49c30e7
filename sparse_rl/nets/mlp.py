"""Multi-layer perceptron torso."""

from __future__ import annotations

from typing import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from sparse_rl.errors import ConfigError, check

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.swish,
    "leaky_relu": jax.nn.leaky_relu,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}


def get_activation(activation: str | Callable, field: str = "activation") -> Callable:
    """Resolve an activation name (or pass a callable through)."""
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ConfigError(field, f"unknown activation {activation!r}", ", ".join(ACTIVATIONS))
    return ACTIVATIONS[activation]


def check_multiplier(width_multiplier: float) -> float:
    try:
        m = float(width_multiplier)
    except (TypeError, ValueError):
        raise ConfigError("width_multiplier", f"not a number: {width_multiplier!r}",
                          "> 0") from None
    check(m > 0 and m == m and m != float("inf"), "width_multiplier",
          f"must be a positive finite number, got {width_multiplier!r}", "> 0")
    return m


def scaled_width(width: int, multiplier: float) -> int:
    """`max(1, round(width * multiplier))` (Python's round: half to even)."""
    return max(1, int(round(int(width) * float(multiplier))))


def scaled_widths(widths: Sequence[int], multiplier: float) -> tuple[int, ...]:
    """Scale every width by `multiplier`, rounding to the nearest integer and keeping at least 1."""
    m = check_multiplier(multiplier)
    return tuple(scaled_width(w, m) for w in widths)


def largest_layer_macs(widths: Sequence[int], multiplier: float, rows: int) -> int:
    """Multiply-adds of an MLP torso's largest hidden layer applied to `rows` inputs: rows x the
    largest product of consecutive scaled hidden widths (rows x w x w for one hidden layer). The
    input and output sizes are left out: they are known only once the env is built, and hidden
    layers are the larger ones in the nets this library builds."""
    scaled = scaled_widths(widths, multiplier)
    pairs = list(zip(scaled, scaled[1:])) or [(scaled[0], scaled[0])]
    return int(rows) * max(a * b for a, b in pairs)


class MLP(hk.Module):
    """A stack of `hk.Linear` layers named `linear_0`, `linear_1`, ...

    Parameter paths look like `"mlp/~/linear_0/w"`.

    Args:
      widths: output sizes of the layers.
      activation: name from `ACTIVATIONS` ("relu", "tanh", ...) or a callable.
      width_multiplier: scales the *hidden* widths (`scaled_widths`). With `activate_final=True` the
        MLP is a torso and every width is hidden, so all are scaled; with `activate_final=False`
        the last layer is an output layer and keeps its width exactly.
      activate_final: apply the activation after the last layer too (True for a torso).
      w_init: weight initialiser for every layer (haiku's default: truncated normal, fan-in).
    """

    def __init__(self, widths: Sequence[int] = (512, 512), activation: str | Callable = "relu",
                 width_multiplier: float = 1.0, activate_final: bool = False,
                 w_init: hk.initializers.Initializer | None = None, b_init=None,
                 name: str | None = None):
        super().__init__(name=name)
        widths = tuple(widths)
        check(len(widths) > 0 and all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                                      for w in widths),
              "widths", f"must be a non-empty sequence of positive ints, got {widths!r}")
        m = check_multiplier(width_multiplier)
        if activate_final:
            widths = scaled_widths(widths, m)
        else:
            widths = scaled_widths(widths[:-1], m) + widths[-1:]
        self.widths = widths
        self.activation = get_activation(activation)
        self.activate_final = bool(activate_final)
        # Built in the constructor so that parameter paths read "mlp/~/linear_0/w".
        self.layers = tuple(hk.Linear(w, w_init=w_init, b_init=b_init, name=f"linear_{i}")
                            for i, w in enumerate(widths))

    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < n - 1 or self.activate_final:
                x = self.activation(x)
        return x
