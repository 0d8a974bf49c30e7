"""Sparse SAC: tanh-Gaussian actor, twin critics, automatic temperature, per-network sparsity.

Networks (Haiku, knowing nothing of masks):
  - actor: torso (MLP 256-256 ReLU) -> one linear layer of 2|A| outputs (mean and log-std, the
    paper's "17-256-256-12" actor on HalfCheetah), log-std unclipped as in the paper's code
    (tf-agents TanhNormalProjectionNetwork, std = exp) unless log_std_min / log_std_max are set;
    every kernel Glorot uniform (sac_train_eval.py: kernel_initializer='glorot_uniform');
    actions are tanh(mean + std * noise), rescaled from [-1, 1] to the Box bounds;
  - critic1, critic2: torso (MLP 256-256 ReLU) on concat[obs, action in [-1, 1]] -> linear 1.
    The two critics are separate param trees with separate `sparsify` optimiser states (each its own
    masks and ERK budget from `critic_sparsity`); they are evaluated together with `vmap`.
  - target critics: Polyak averages of the online critics, re-masked with the online critics' masks
    after every Polyak step, so target masks always equal online masks (also right after a SET /
    RigL topology change, where a dropped weight would otherwise linger in the target).
  - temperature: log alpha, Adam, target entropy -|A| by default; never sparsified.

Replay stores actions in the env's own units; `update` maps them back to [-1, 1] for the critics.

`update(state, batch, key)` runs `config.gradient_steps` gradient steps inside one jitted call.
With `gradient_steps == 1` the batch is `[batch_size, ...]`. With `gradient_steps = G > 1` the
batch may be `[G, batch_size, ...]` or flat `[G * batch_size, ...]` (one fresh minibatch per
gradient step; sample `sample_size(config)` transitions); any other flat batch is reused for all G
steps. Each step: critic step (soft Bellman target from the target critics), actor step against
the freshly updated critics, temperature step, Polyak step. The sparsity schedules count gradient
steps (each optimiser's own step counter).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparse_rl import nets
from sparse_rl.agents import common
from sparse_rl.agents.base import Agent, AgentSpec, OffPolicyNeeds
from sparse_rl.analysis.gradient_flow import AnalysisHook
from sparse_rl.errors import ConfigError, check, check_choice, check_fields
from sparse_rl.sparsity import (METHODS, SparsityConfig, apply_masks, get_masks, mask_update_steps, sparse_init,
                               sparsify)

# The paper's SAC updates masks after the step's gradient updates (sac_train_eval.py
# SparseSacAgent._train: critic and actor apply_gradients, then the mask updaters).
MASK_TIMING = "after"

# PAPER.md: SAC uses weight decay 1e-4 for every method except RigL (1e-6). Resolved per network
# from that network's own sparsity method.
WEIGHT_DECAY = {"default": 1e-4, "rigl": 1e-6}

# PAPER.md: initial random-collect steps, 10k on HalfCheetah and Ant, 1k elsewhere.
LONG_WARMUP_ENVS = ("HalfCheetah", "Ant")

# Per-method schedule defaults of the paper (update interval, drop fraction) by preset. The
# windows (prune 0.2 -> 0.8 of the gradient steps, SET/RigL updates until 0.8) come from
# `schedule_start_fraction` / `schedule_end_fraction`.
# sparse_init: sac_mujoco_sparse_config.gin turns on init_masks.fixed_sparse_init for static, SET
# and RigL; pruning starts dense (sac_mujoco_pruning_config.gin), so no sparse init.
METHOD_DEFAULTS = {
    "mujoco": {
        "dense": dict(sparse_init=False),
        "static": dict(sparse_init=True),
        "prune": dict(update_every=1000, sparse_init=False),
        "set": dict(update_every=250, drop_fraction=0.3, sparse_init=True),
        "rigl": dict(update_every=1000, drop_fraction=0.5, sparse_init=True),
    },
}


def method_defaults(method: str, preset: str = "mujoco") -> dict[str, Any]:
    """The paper's SAC schedule settings for a sparsity method, as `SparsityConfig` field values.

    Apply them when a user picks a method without giving its schedule, e.g.
    `dataclasses.replace(cfg, method="set", **method_defaults("set"))`.
    """
    check_choice(method, "method", METHODS)
    check_choice(preset, "preset", tuple(METHOD_DEFAULTS))
    return dict(METHOD_DEFAULTS[preset][method])


def _rigl(**kw) -> SparsityConfig:
    return SparsityConfig(method="rigl", sparsity=0.9, start_step=0, end_step=800_000,
                          **method_defaults("rigl"), **kw)


@dataclasses.dataclass(frozen=True)
class Config:
    """SAC settings. Defaults are the paper's MuJoCo values (PAPER.md)."""

    actor_network: str = "mlp"
    """Actor torso: a registered name (mlp, nature_cnn, impala) or, from Python, any callable returning a Haiku module."""
    critic_network: str = "mlp"
    """Critic torso (input concat[obs, action]): a registered name or, from Python, a callable returning a Haiku module."""
    actor_widths: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the actor's MLP torso."""
    critic_widths: tuple[int, ...] = (256, 256)
    """Hidden layer widths of each critic's MLP torso."""
    activation: str = "relu"
    """Activation of the MLP torsos."""
    width_multiplier: float = 1.0
    """Scales every hidden layer of actor and critics (to match a dense network to a sparse one's parameter count)."""
    log_std_min: float | None = None
    """Lower clip of the actor's log standard deviation (None: no clip, as the paper's code)."""
    log_std_max: float | None = None
    """Upper clip of the actor's log standard deviation (None: no clip, as the paper's code)."""
    reward_scale: float = 0.1
    """Rewards are multiplied by this in the critic target (sac_train_eval.py reward_scale_factor=0.1)."""
    actor_learning_rate: float = 3e-4
    """Adam learning rate of the actor."""
    critic_learning_rate: float = 3e-4
    """Adam learning rate of the critics."""
    temperature_learning_rate: float = 3e-4
    """Adam learning rate of log alpha."""
    adam_eps: float = 1e-7
    """Adam epsilon (all three optimisers; Keras Adam's default, the tf-agents code's)."""
    weight_decay: float | None = None
    """L2 term weight_decay * sum(w^2) over the kernels of actor and critics, added to their losses; None takes the paper's per-method value (1e-4, RigL 1e-6)."""
    batch_size: int = 256
    """Replay minibatch size per gradient step."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak averaging rate of the target critics."""
    replay_capacity: int = 1_000_000
    """Replay buffer size in transitions."""
    learning_starts: int | None = None
    """Environment steps of uniformly random actions before the first gradient step; None: 10000 on HalfCheetah and Ant, else 1000."""
    train_every: int = 1
    """Environment steps between update calls."""
    gradient_steps: int = 1
    """Gradient steps per update call (run in lax.scan)."""
    init_temperature: float = 1.0
    """Initial entropy temperature alpha."""
    target_entropy: float | None = None
    """Target policy entropy of the temperature loss; None: -|A| (minus the action dimension)."""
    actor_sparsity: SparsityConfig = _rigl()
    """Sparsity of the actor (its own ERK budget)."""
    critic_sparsity: SparsityConfig = _rigl()
    """Sparsity of each critic (each critic gets its own masks and ERK budget from this config)."""
    schedule_start_fraction: float | None = 0.2
    """Start of the pruning window as a fraction of the run's step budget, steps / train_every x gradient_steps gradient steps (None: use the configs' start_step)."""
    schedule_end_fraction: float | None = 0.8
    """End of the pruning window / last SET-RigL update, same fraction (None: use the configs' end_step)."""

    def __post_init__(self):
        check_fields(self, skip=("actor_network", "critic_network"))  # issue 7: wrong types / NaN / Inf -> ConfigError naming the field
        for name in ("actor_network", "critic_network"):
            value = getattr(self, name)
            if not callable(value):
                check_choice(value, name, tuple(nets.NETWORKS))
        for name in ("actor_widths", "critic_widths"):
            widths = getattr(self, name)
            check(isinstance(widths, (tuple, list)) and len(widths) > 0
                  and all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w > 0 for w in widths),
                  name, f"must be a non-empty sequence of positive ints, got {widths!r}")
            object.__setattr__(self, name, tuple(int(w) for w in widths))
        nets.get_activation(self.activation)
        check(self.width_multiplier > 0, "width_multiplier", f"must be > 0, got {self.width_multiplier}")
        check((self.log_std_min is None) == (self.log_std_max is None), "log_std_min",
              "log_std_min and log_std_max must both be set or both be None")
        check(self.log_std_min is None or self.log_std_min < self.log_std_max, "log_std_min",
              f"must be < log_std_max, got {self.log_std_min} >= {self.log_std_max}")
        check(self.reward_scale > 0, "reward_scale", f"must be > 0, got {self.reward_scale}")
        for name in ("actor_learning_rate", "critic_learning_rate", "temperature_learning_rate", "adam_eps"):
            value = getattr(self, name)
            check(value > 0, name, f"must be > 0, got {value}")
        check(self.weight_decay is None or self.weight_decay >= 0, "weight_decay",
              f"must be >= 0 or None, got {self.weight_decay}")
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        check(0.0 <= self.gamma <= 1.0, "gamma", f"must be in [0, 1], got {self.gamma}")
        check(0.0 < self.tau <= 1.0, "tau", f"must be in (0, 1], got {self.tau}")
        check(self.replay_capacity >= self.batch_size, "replay_capacity",
              f"must be >= batch_size ({self.batch_size}), got {self.replay_capacity}")
        check(self.learning_starts is None or self.learning_starts >= 0, "learning_starts",
              f"must be >= 0 or None, got {self.learning_starts}")
        check(self.train_every >= 1, "train_every", f"must be >= 1, got {self.train_every}")
        check(self.gradient_steps >= 1, "gradient_steps", f"must be >= 1, got {self.gradient_steps}")
        check(self.init_temperature > 0, "init_temperature", f"must be > 0, got {self.init_temperature}")
        check(self.target_entropy is None or np.isfinite(self.target_entropy), "target_entropy",
              f"must be a finite number or None, got {self.target_entropy}")
        for name in ("actor_sparsity", "critic_sparsity"):
            if not isinstance(getattr(self, name), SparsityConfig):
                raise ConfigError(name, "must be a SparsityConfig")
        common.check_fraction(self.schedule_start_fraction, "schedule_start_fraction")
        common.check_fraction(self.schedule_end_fraction, "schedule_end_fraction")
        if self.schedule_start_fraction is not None and self.schedule_end_fraction is not None:
            check(self.schedule_start_fraction < self.schedule_end_fraction, "schedule_start_fraction",
                  f"must be < schedule_end_fraction, got {self.schedule_start_fraction} >= "
                  f"{self.schedule_end_fraction}")


PRESETS: dict[str, Config] = {"mujoco": Config()}


def default_preset(family: str) -> str:
    return "mujoco"


def default_learning_starts(env_id: str) -> int:
    """The paper's initial-collect steps: 10000 on HalfCheetah and Ant, 1000 elsewhere."""
    return 10_000 if any(name in str(env_id) for name in LONG_WARMUP_ENVS) else 1_000


def resolve_config(config: Config, env_id: str) -> Config:
    """`config` with `learning_starts` fixed to an int for `env_id` (the paper's rule when None)."""
    if config.learning_starts is not None:
        return config
    return dataclasses.replace(config, learning_starts=default_learning_starts(env_id))


def sample_size(config: Config) -> int:
    """Transitions to sample per update call: one fresh minibatch per gradient step."""
    return config.batch_size * config.gradient_steps


def total_gradient_steps(config: Config, total_env_steps: int, learning_starts: int) -> int:
    updates = max((int(total_env_steps) - learning_starts) // config.train_every, 1)
    return updates * config.gradient_steps


def schedule_horizon(config: Config, total_env_steps: int) -> int:
    """Gradient steps the schedule fractions refer to: env steps / train_every x gradient_steps.

    The paper's windows are absolute gradient steps, 200k-800k of a 1M-step run after its random
    collect (sac_mujoco_pruning_config.gin; sac_mujoco_sparse_config.gin last_update_step 800000),
    so the warm-up is not subtracted.
    """
    return max(int(total_env_steps) // config.train_every, 1) * config.gradient_steps


class SACState(NamedTuple):
    actor_params: Any
    critic_params: tuple[Any, Any]          # (critic1, critic2), each exactly masked
    target_critic_params: tuple[Any, Any]   # always carry the online critics' masks
    log_alpha: jax.Array                    # scalar float32
    actor_opt_state: Any                    # sparsify(adam[w]) state: masks, counters, RNG
    critic_opt_state: tuple[Any, Any]       # one sparsify state per critic
    temperature_opt_state: Any
    gradient_steps: jax.Array               # int32, gradient steps taken


# --- networks --------------------------------------------------------------------------------

# sac_train_eval.py: every Dense kernel 'glorot_uniform' (create_fc_layers, the value layer, and
# the Keras default of SparseTanhNormalProjectionNetwork's projection layer); biases zero.
GLOROT_UNIFORM = hk.initializers.VarianceScaling(1.0, "fan_avg", "uniform")


def _torso(spec, widths, config: Config):
    if callable(spec):
        return spec()
    if spec == "mlp":
        return nets.make_torso("mlp", widths=widths, activation=config.activation,
                               width_multiplier=config.width_multiplier, activate_final=True,
                               w_init=GLOROT_UNIFORM)
    return nets.make_torso(spec, width_multiplier=config.width_multiplier, w_init=GLOROT_UNIFORM)


def _flat(x: jax.Array, feature_ndim: int) -> jax.Array:
    x = x.astype(jnp.float32) if x.dtype != jnp.uint8 else x
    if feature_ndim == 1:
        return x
    return x.reshape(*x.shape[: x.ndim - feature_ndim], -1)


def actor_network(config: Config, obs_shape, action_dim: int) -> hk.Transformed:
    """obs [B, *obs_shape] -> (mean, log_std), each [B, action_dim], pre-tanh."""
    mlp_like = config.actor_network == "mlp"

    def forward(obs):
        x = _flat(obs, len(obs_shape)) if mlp_like else obs
        features = _torso(config.actor_network, config.actor_widths, config)(x)
        if features.ndim > 2:
            features = features.reshape(features.shape[0], -1)
        out = hk.Linear(2 * action_dim, w_init=GLOROT_UNIFORM, name="policy_head")(features)
        mean, log_std = jnp.split(out, 2, axis=-1)
        if config.log_std_min is None:
            return mean, log_std
        return mean, jnp.clip(log_std, config.log_std_min, config.log_std_max)

    return hk.without_apply_rng(hk.transform(forward))


def critic_network(config: Config, obs_shape) -> hk.Transformed:
    """(obs [B, *obs_shape], action [B, A] in [-1, 1]) -> Q [B]."""

    def forward(obs, action):
        x = jnp.concatenate([_flat(obs, len(obs_shape)).astype(jnp.float32),
                             action.astype(jnp.float32)], axis=-1)
        features = _torso(config.critic_network, config.critic_widths, config)(x)
        return hk.Linear(1, w_init=GLOROT_UNIFORM, name="q_head")(features)[..., 0]

    return hk.without_apply_rng(hk.transform(forward))


def sample_tanh_gaussian(key, mean, log_std):
    """Reparameterised tanh-Gaussian sample in [-1, 1]^A and its log-probability (tanh-corrected)."""
    return tanh_gaussian(jax.random.normal(key, mean.shape, mean.dtype), mean, log_std)


def tanh_gaussian(noise, mean, log_std):
    """The tanh-Gaussian sample of standard normal `noise` and its log-probability (tanh-corrected)."""
    pre_tanh = mean + jnp.exp(log_std) * noise
    log_prob = jnp.sum(-0.5 * jnp.square(noise) - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)
    # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), numerically stable.
    log_det = jnp.sum(2.0 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh)), axis=-1)
    return jnp.tanh(pre_tanh), log_prob - log_det


# --- action space ----------------------------------------------------------------------------

def _describe_space(spec) -> str:
    if hasattr(spec, "num_values"):
        return f"Discrete({int(spec.num_values)})"
    if hasattr(spec, "n"):
        return f"Discrete({int(spec.n)})"
    return repr(spec)


def box_bounds(env_spec) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) float32 arrays of the env's Box action space; ConfigError for any other space."""
    spec = env_spec.action_spec
    env_id = getattr(env_spec, "env_id", "the environment")
    low = getattr(spec, "minimum", getattr(spec, "low", None))
    high = getattr(spec, "maximum", getattr(spec, "high", None))
    is_box = (low is not None and high is not None and not hasattr(spec, "num_values")
              and not hasattr(spec, "n") and np.issubdtype(np.dtype(spec.dtype), np.floating))
    if not is_box:
        raise ConfigError(
            "env", f"SAC needs a continuous (Box) action space; got {_describe_space(spec)} ({env_id})",
            "environments with Box actions, e.g. Pendulum-v1, HalfCheetah-v5",
        )
    shape = tuple(spec.shape)
    check(len(shape) == 1 and shape[0] > 0, "env",
          f"SAC needs a 1-D Box action space; {env_id} has action shape {shape}")
    low = np.broadcast_to(np.asarray(low, np.float32), shape).copy()
    high = np.broadcast_to(np.asarray(high, np.float32), shape).copy()
    check(bool(np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)), "env",
          f"SAC needs finite action bounds with low < high; {env_id} has low={low}, high={high}")
    return low, high


# --- the agent -------------------------------------------------------------------------------

def _weight_decay(config: Config, sparsity: SparsityConfig) -> float:
    return common.method_weight_decay(WEIGHT_DECAY, sparsity.method, config.weight_decay)


def make(config: Config, env_spec, total_steps: int) -> Agent:
    """Jitted init / act / update of a sparse SAC agent for `env_spec` (Box actions only).

    `total_steps` (env steps of the run) resolves the sparsity windows given as fractions.
    """
    low, high = box_bounds(env_spec)
    action_dim = int(low.shape[0])
    action_dtype = env_spec.action_spec.dtype
    obs_spec = env_spec.observation_spec
    obs_shape = tuple(obs_spec.shape)
    learning_starts = (config.learning_starts if config.learning_starts is not None
                       else default_learning_starts(env_spec.env_id))
    horizon = schedule_horizon(config, total_steps)
    actor_sparsity, critic_sparsity = (
        common.resolve_schedule(cfg, horizon, config.schedule_start_fraction, config.schedule_end_fraction)
        for cfg in (config.actor_sparsity, config.critic_sparsity)
    )
    target_entropy = float(-action_dim if config.target_entropy is None else config.target_entropy)

    actor = actor_network(config, obs_shape, action_dim)
    critic = critic_network(config, obs_shape)
    actor_opt = common.adam_with_l2(config.actor_learning_rate, _weight_decay(config, actor_sparsity),
                                    config.adam_eps)
    critic_opt = common.adam_with_l2(config.critic_learning_rate, _weight_decay(config, critic_sparsity),
                                     config.adam_eps)
    temperature_tx = optax.adam(config.temperature_learning_rate, eps=config.adam_eps)
    # The sparsify state carries masks, targets, counters and keys, so the transformations are
    # stateless: `update` uses copies built with a fixed key (the key is only read at init).
    actor_tx = sparsify(actor_opt, actor_sparsity, key=jax.random.PRNGKey(0), timing=MASK_TIMING)
    critic_tx = sparsify(critic_opt, critic_sparsity, key=jax.random.PRNGKey(0), timing=MASK_TIMING)

    low_j, high_j = jnp.asarray(low), jnp.asarray(high)

    def to_env(action):  # [-1, 1] -> [low, high]
        return low_j + (action + 1.0) * 0.5 * (high_j - low_j)

    def from_env(action):  # [low, high] -> [-1, 1]
        return jnp.clip(2.0 * (action.astype(jnp.float32) - low_j) / (high_j - low_j) - 1.0, -1.0, 1.0)

    def twin_q(critic_params, obs, action):
        stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), *critic_params)
        return jax.vmap(critic.apply, in_axes=(0, None, None))(stacked, obs, action)  # [2, B]

    def sparse_network(opt, sparsity, params, mask_key, init_key):
        opt_state = sparsify(opt, sparsity, key=mask_key, timing=MASK_TIMING).init(params)
        masks = get_masks(opt_state)
        params = apply_masks(params, masks)
        if sparsity.sparse_init:
            params = sparse_init(init_key, params, masks, sparsity)
        return params, opt_state

    def init(key):
        keys = jax.random.split(key, 9)
        obs = jnp.zeros((1, *obs_shape), obs_spec.dtype)
        action = jnp.zeros((1, action_dim), jnp.float32)
        actor_params, actor_state = sparse_network(
            actor_opt, actor_sparsity, actor.init(keys[0], obs), keys[1], keys[2])
        critics, critic_states = [], []
        for i in range(2):
            k_net, k_mask, k_init = keys[3 + 3 * i: 6 + 3 * i]
            params, opt_state = sparse_network(critic_opt, critic_sparsity, critic.init(k_net, obs, action),
                                               k_mask, k_init)
            critics.append(params)
            critic_states.append(opt_state)
        log_alpha = jnp.asarray(np.log(config.init_temperature), jnp.float32)
        return SACState(
            actor_params=actor_params,
            critic_params=tuple(critics),
            target_critic_params=tuple(jax.tree_util.tree_map(jnp.copy, c) for c in critics),
            log_alpha=log_alpha,
            actor_opt_state=actor_state,
            critic_opt_state=tuple(critic_states),
            temperature_opt_state=temperature_tx.init(log_alpha),
            gradient_steps=jnp.zeros((), jnp.int32),
        )

    def acting_view(state):
        return state.actor_params

    def act_noise(key, batch_shape, evaluation=False):
        """The tanh-Gaussian's standard normal draws; none in evaluation (the mean's tanh)."""
        if evaluation:
            return ()
        return jax.random.normal(key, (*batch_shape, action_dim), jnp.float32)

    def policy(actor_params, obs, noise, step, evaluation=False):
        del step  # SAC explores through its stochastic policy only.
        mean, log_std = actor.apply(actor_params, obs)
        if evaluation:
            action = jnp.tanh(mean)
        else:
            action, _ = tanh_gaussian(noise, mean, log_std)
        return to_env(action).astype(action_dtype)

    act = common.composed_act(acting_view, act_noise, policy, len(obs_shape))

    def critic_loss_fn(critic_params, state: SACState, batch, key):
        """MSE_1 + MSE_2 to the soft Bellman target (tf-agents SacAgent.critic_loss with
        td_errors_loss_fn=tf.math.squared_difference, sac_train_eval.py), reward scaled by reward_scale."""
        alpha = jnp.exp(state.log_alpha)
        next_mean, next_log_std = actor.apply(state.actor_params, batch.next_obs)
        next_action, next_log_prob = sample_tanh_gaussian(key, next_mean, next_log_std)
        next_q = jnp.min(twin_q(state.target_critic_params, batch.next_obs, next_action), axis=0)
        discount = config.gamma * batch.discount.astype(jnp.float32)
        reward = config.reward_scale * batch.reward.astype(jnp.float32)
        target = reward + discount * (next_q - alpha * next_log_prob)
        q = twin_q(critic_params, batch.obs, from_env(batch.action))
        td = q - jax.lax.stop_gradient(target)[None]
        return jnp.sum(jnp.mean(jnp.square(td), axis=1)), q

    def actor_loss_fn(actor_params, critic_params, alpha, batch, key):
        """Reparameterised policy loss E[alpha * log pi(a|s) - min_i Q_i(s, a)], a ~ pi(.|s)."""
        mean, log_std = actor.apply(actor_params, batch.obs)
        action, log_prob = sample_tanh_gaussian(key, mean, log_std)
        q = jnp.min(twin_q(critic_params, batch.obs, action), axis=0)
        return jnp.mean(alpha * log_prob - q), log_prob

    def gradient_step(state: SACState, batch, key, topology=True):
        next_key, policy_key = jax.random.split(key)
        alpha = jnp.exp(state.log_alpha)

        # Critics: one loss over both, then each critic's own sparsify optimiser.
        (critic_loss, q), critic_grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
            state.critic_params, state, batch, next_key)
        critic_params, critic_opt_state = [], []
        for params, grads, opt_state in zip(state.critic_params, critic_grads, state.critic_opt_state):
            updates, opt_state = critic_tx.update(grads, opt_state, params, topology=topology)
            critic_params.append(optax.apply_updates(params, updates))
            critic_opt_state.append(opt_state)
        critic_params, critic_opt_state = tuple(critic_params), tuple(critic_opt_state)

        # Actor: against the freshly updated critics.
        (actor_loss, log_prob), actor_grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
            state.actor_params, critic_params, alpha, batch, policy_key)
        updates, actor_opt_state = actor_tx.update(actor_grads, state.actor_opt_state, state.actor_params,
                                                   topology=topology)
        actor_params = optax.apply_updates(state.actor_params, updates)

        # Temperature: raise alpha when the policy entropy is below the target, lower it above.
        entropy = -jnp.mean(jax.lax.stop_gradient(log_prob))

        def temperature_loss_fn(log_alpha):
            return log_alpha * (entropy - target_entropy)

        temperature_loss, temperature_grad = jax.value_and_grad(temperature_loss_fn)(state.log_alpha)
        updates, temperature_opt_state = temperature_tx.update(temperature_grad, state.temperature_opt_state)
        log_alpha = optax.apply_updates(state.log_alpha, updates)

        # Targets: Polyak step, then the online critics' (possibly just changed) masks.
        target_critic_params = tuple(
            apply_masks(optax.incremental_update(online, target, config.tau), get_masks(opt_state))
            for online, target, opt_state in zip(critic_params, state.target_critic_params, critic_opt_state)
        )
        new_state = SACState(actor_params, critic_params, target_critic_params, log_alpha, actor_opt_state,
                             critic_opt_state, temperature_opt_state, state.gradient_steps + 1)
        metrics = {
            "critic_loss": critic_loss,
            "actor_loss": actor_loss,
            "temperature_loss": temperature_loss,
            "alpha": alpha,
            "entropy": entropy,
            "q_mean": jnp.mean(q),
        }
        return new_state, metrics

    g = config.gradient_steps
    obs_ndim = len(obs_shape)

    def update(state, batch, key, topology=True):
        if g == 1:
            return gradient_step(state, batch, key, topology)
        rows = batch.obs.shape[: batch.obs.ndim - obs_ndim]
        if len(rows) == 2:
            check(rows[0] == g, "batch", f"leading dim {rows[0]} != gradient_steps ({g})")
            batches = batch
        elif rows[0] == g * config.batch_size:
            batches = jax.tree_util.tree_map(lambda x: x.reshape(g, config.batch_size, *x.shape[1:]), batch)
        else:  # one minibatch, reused for every gradient step
            batches = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (g, *x.shape)), batch)
        state, metrics = jax.lax.scan(lambda s, xs: gradient_step(s, *xs, topology), state,
                                      (batches, jax.random.split(key, g)))
        return state, jax.tree_util.tree_map(jnp.mean, metrics)

    def networks(state):
        return {
            "actor": (state.actor_params, get_masks(state.actor_opt_state)),
            "critic1": (state.critic_params[0], get_masks(state.critic_opt_state[0])),
            "critic2": (state.critic_params[1], get_masks(state.critic_opt_state[1])),
        }

    # --- analysis hook (sparse_rl.analysis: gradient flow, SNR, dormant neurons, topology) ------
    def analysis_grads(state, batch):
        """{network: (dense gradient of its loss at the masked params, masks, params)}.

        The policy noise uses a fixed key, so per-sample gradients (SNR) differ only by the data.
        """
        next_key, policy_key = jax.random.split(jax.random.PRNGKey(0))
        critic_grads = jax.grad(lambda c: critic_loss_fn(c, state, batch, next_key)[0])(state.critic_params)
        actor_grads = jax.grad(lambda a: actor_loss_fn(a, state.critic_params, jnp.exp(state.log_alpha),
                                                       batch, policy_key)[0])(state.actor_params)
        nets_ = networks(state)
        grads = {"actor": actor_grads, "critic1": critic_grads[0], "critic2": critic_grads[1]}
        return {name: (grads[name], nets_[name][1], nets_[name][0]) for name in grads}

    def critic_forward(params, batch):
        return critic.apply(params, batch.obs, from_env(batch.action))

    analysis = AnalysisHook(
        grads=analysis_grads,
        forward={"actor": lambda params, batch: actor.apply(params, batch.obs),
                 "critic1": critic_forward, "critic2": critic_forward},
        sparsity={"actor": actor_sparsity, "critic1": critic_sparsity, "critic2": critic_sparsity},
        activation=config.activation if config.actor_network == config.critic_network == "mlp" else "relu",
    )

    return Agent(
        init=jax.jit(init),
        act=jax.jit(act, static_argnames="evaluation"),
        update=jax.jit(update, donate_argnums=0, static_argnames="topology"),
        networks=networks,
        acting_view=acting_view,
        act_noise=act_noise,
        policy=jax.jit(policy, static_argnames="evaluation"),
        loop=OffPolicyNeeds(
            learning_starts=learning_starts, random_warmup=True, train_every=config.train_every,
            batch_size=config.batch_size, sample_size=sample_size(config), gradient_steps=config.gradient_steps,
            n_step=1, gamma=config.gamma, replay_capacity=config.replay_capacity),
        analysis=analysis,
        mask_update_steps=np.union1d(mask_update_steps(actor_sparsity), mask_update_steps(critic_sparsity)),
    )


def first_update_step(config: Config, env_id: str) -> int:
    """The env step before which no gradient step runs (the paper's 10k / 1k rule when None)."""
    return resolve_config(config, env_id).learning_starts


def update_layer_macs(config: Config) -> int | None:
    """Multiply-adds of the largest hidden layer over one minibatch (None: a torso is not an MLP);
    the twin critics run as one batched matmul, twice the rows."""
    if config.actor_network != "mlp" or config.critic_network != "mlp":
        return None
    return max(nets.largest_layer_macs(config.actor_widths, config.width_multiplier, config.batch_size),
               nets.largest_layer_macs(config.critic_widths, config.width_multiplier, 2 * config.batch_size))


SPEC = AgentSpec(name="sac", loop="offpolicy", config=Config,
                 networks={"actor": "actor_sparsity", "critic1": "critic_sparsity", "critic2": "critic_sparsity"},
                 presets=PRESETS, method_defaults=METHOD_DEFAULTS, default_preset=default_preset, make=make,
                 first_update_step=first_update_step, spaces=("Box", ("Box",)),
                 update_layer_macs=update_layer_macs)
