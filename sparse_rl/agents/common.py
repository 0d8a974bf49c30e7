"""Pieces every agent shares: schedule windows as fractions, per-method weight decay, optimisers."""

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from sparse_rl.errors import ConfigError
from sparse_rl.sparsity import SparsityConfig
from sparse_rl.sparsity.config import path_str


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


def kernel_mask(params, exclude: tuple[str, ...] = ()):
    """Bool pytree: True at kernels (leaves named "w" with ndim >= 2) outside modules matching `exclude`.

    Biases, the PPO log-std and any 1-D leaf are never kernels (tf-agents regularises `kernel`
    variables only: Keras `kernel_regularizer`, PPOAgent.l2_regularization_loss's 'kernel' filter).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for path, leaf in flat:
        name = path_str(path)
        out.append(name.rsplit("/", 1)[-1] == "w" and jnp.ndim(leaf) >= 2
                   and not any(pattern in name for pattern in exclude))
    return jax.tree_util.tree_unflatten(treedef, out)


def adam_with_l2(learning_rate, weight_decay: float, eps: float = 1e-8, max_grad_norm: float | None = None,
                 exclude: tuple[str, ...] = ()) -> optax.GradientTransformation:
    """Adam on the loss plus the L2 term `weight_decay * sum(w**2)` over kernels, as the paper's code.

    tf-agents adds Keras `L2(weight_decay)` kernel regularisers (loss + wd * sum(w^2)) to the loss
    (dqn_train_eval.py build_network, sac_train_eval.py create_fc_layers, PPOClipAgent
    policy_l2_reg / value_function_l2_reg), so the term's gradient 2 * wd * w joins the loss
    gradient before clipping and Adam's normalisation. It is not decoupled AdamW, which at wd 1e-6
    and lr 1e-3 would shrink weights by ~1e-9 per step. `exclude`: module names whose kernels carry
    no regulariser (the classic DQN output layer). Gradient clipping (PPO) comes after the L2 term.
    """
    parts = []
    if weight_decay > 0.0:
        parts.append(optax.add_decayed_weights(2.0 * weight_decay,
                                               mask=functools.partial(kernel_mask, exclude=exclude)))
    if max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(optax.adam(learning_rate, eps=eps))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def drawn_apart(noise):
    """`noise` (an `act_noise` result) fenced off from the policy that reads it, so that `act`
    computes exactly what the env loops compute, which draw the noise in a program of its own
    (`sparse_rl.train.acting`): in one program XLA may reassociate the draw's last scaling with the
    policy's arithmetic (PPO's Box policy: jax.random.normal's sqrt(2) folded into the broadcast
    std, a 1-ulp difference)."""
    return jax.lax.optimization_barrier(noise)


def batch_shape(obs, obs_rank: int) -> tuple:
    """The leading (batch) axes of `obs`, whose observations have `obs_rank` axes each."""
    return obs.shape[: obs.ndim - obs_rank]


def composed_act(acting_view, act_noise, policy, obs_rank: int):
    """The contract's `act(state, obs, key, step=0, evaluation=False)` from an agent's three acting
    parts (`sparse_rl.agents.base.Agent`): `policy(acting_view(state), obs, noise, step,
    evaluation)` with `noise = act_noise(key, batch shape of obs, evaluation)`, drawn apart."""
    def act(state, obs, key, step=0, evaluation=False):
        noise = drawn_apart(act_noise(key, batch_shape(obs, obs_rank), evaluation))
        return policy(acting_view(state), obs, noise, step, evaluation)

    return act
