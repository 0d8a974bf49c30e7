"""Pieces every agent shares: schedule windows as fractions, per-method weight decay, optimisers."""

import dataclasses
from typing import Mapping

import optax

from sparse_rl.errors import ConfigError
from sparse_rl.sparsity import SparsityConfig


def resolve_schedule(
    config: SparsityConfig,
    total_gradient_steps: int,
    start_fraction: float | None,
    end_fraction: float | None,
) -> SparsityConfig:
    """The sparsity config with its window given in absolute gradient steps.

    Presets state the window as fractions of the run (the paper's 20%-75% for classic control) so
    that `--steps` rescales it and a short run still reaches its target sparsity. A fraction of
    None keeps the config's absolute step.
    """
    if config.method in ("dense", "static"):
        return config
    total = max(int(total_gradient_steps), 1)
    start = config.start_step if start_fraction is None else int(round(start_fraction * total))
    end = config.end_step if end_fraction is None else int(round(end_fraction * total))
    end = max(end, start + 1)
    return dataclasses.replace(config, start_step=start, end_step=end)


def check_fraction(value: float | None, field: str) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigError(field, f"must be a fraction in [0, 1] or None, got {value!r}")


def method_weight_decay(table: Mapping[str, float], method: str, override: float | None) -> float:
    """The paper's weight decay for a sparsity method unless the user set one."""
    if override is not None:
        return float(override)
    return float(table.get(method, table.get("default", 0.0)))


def adam_or_adamw(learning_rate, weight_decay: float, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam, decoupled weight decay when it is non-zero (AdamW), as the paper's agents use."""
    if weight_decay > 0.0:
        return optax.adamw(learning_rate, eps=eps, weight_decay=weight_decay)
    return optax.adam(learning_rate, eps=eps)
