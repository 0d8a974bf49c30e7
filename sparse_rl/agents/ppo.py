"""Sparse PPO: clipped surrogate with GAE (rlax) over separate, separately sparsified actor and value
networks.

Each network has its own `SparsityConfig` (its own ERK budget) and its own `sparsify`-wrapped
optimiser (gradient clipping chained before Adam/AdamW inside the wrapper), so its params are
always exactly masked and its mask schedule counts its own gradient steps (minibatch updates).

One `update` call is one PPO iteration: GAE over the rollout, then `epochs` x minibatches of
gradient steps in a `lax.scan` (permutations drawn from the key), then the running observation
statistics absorb the rollout. The observation statistics are frozen while a rollout is collected
and during its update, so the log-probabilities recorded by `act_with_info` and those recomputed in
the first minibatch agree exactly (ratio 1 at the start of every update).

Box actions: a state-independent std (a 1-D parameter `std_param`, so never sparsified; std =
softplus(std_param) starting at 0.35 in the paper's code) and a Gaussian whose mean is tanh-squashed
into the action bounds (`squash_mean`); its raw, unclipped sample is returned by `act`; the env loop
clips it to the bounds when stepping and stores the unclipped action. Evaluation returns the mean
clipped to the bounds. Gradients of both networks are clipped together to one global norm, after
the L2 term on kernels joins them (one optimiser over both networks in ppo_train_eval.py). Discrete actions: a
categorical head. Image observations (uint8) go through a CNN torso (`network="nature_cnn"`).

    sparse-rl train --agent ppo --env Hopper-v5 --method rigl --sparsity 0.9      # both networks
    sparse-rl train --agent ppo --env Hopper-v5 --ppo.actor-sparsity.method prune \
        --ppo.actor-sparsity.sparsity 0.8 --ppo.value-sparsity.method dense        # per network
    sparse-rl train --agent ppo --env CartPole-v1                                  # classic preset
"""

import dataclasses
import math
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sparse_rl.agents.rlax_import import rlax

from sparse_rl import nets
from sparse_rl.agents import common
from sparse_rl.agents import normalize as running
from sparse_rl.agents.base import AgentSpec, OnPolicyAgent, OnPolicyNeeds, Rollout
from sparse_rl.analysis.gradient_flow import AnalysisHook
from sparse_rl.errors import ConfigError, check, check_choice, check_fields
from sparse_rl.sparsity import SparsityConfig, apply_masks, get_masks, mask_update_steps, sparse_init, sparsify

# The paper's PPO updates masks from the weights before the step, then applies the step's gradients
# (ppo_train_eval.py SparsePPOAgent._train: mask updaters run before clip_by_global_norm and
# apply_gradients).
MASK_TIMING = "before"
# tf_agents: the paper's networks (sparse_ppo_actor_network.py: hidden Orthogonal(), means layer
# VarianceScaling(scale=0.1), i.e. fan-in truncated normal; sparse_value_network.py: hidden
# Orthogonal(), output U(-0.03, 0.03)). orthogonal: CleanRL / SB3 (hidden orthogonal sqrt 2,
# policy head 0.01, value head 1), used by the classic and Atari presets the paper did not run.
INITIALIZERS = ("tf_agents", "orthogonal")
STD_TRANSFORMS = ("softplus", "exp")

# PAPER.md, PPO: dense and pruning 1e-6, static 0, RigL 1e-4, SET 1e-6. Atari CNN: 0.
MUJOCO_WEIGHT_DECAY = {"dense": 1e-6, "prune": 1e-6, "static": 0.0, "rigl": 1e-4, "set": 1e-6}
ATARI_WEIGHT_DECAY = {"default": 0.0}
WEIGHT_DECAY_TABLES = {"mujoco": MUJOCO_WEIGHT_DECAY, "atari": ATARI_WEIGHT_DECAY}

# The paper's PPO window: pruning from 32k to 120k of 489 iterations x 320 gradient steps.
PAPER_GRADIENT_STEPS = 489 * 320
PAPER_START_FRACTION = 32_000 / PAPER_GRADIENT_STEPS  # ~0.2045
PAPER_END_FRACTION = 120_000 / PAPER_GRADIENT_STEPS  # ~0.7669

_PAPER_SPARSITY = SparsityConfig(
    method="rigl", sparsity=0.9, update_every=250, drop_fraction=0.3, start_step=32_000, end_step=120_000,
    sparse_init=True,
)


@dataclasses.dataclass(frozen=True)
class Config:
    """PPO settings. Defaults are the paper's MuJoCo values (PAPER.md, PPO row)."""

    network: str = "mlp"
    """Torso of both networks: mlp (vector observations) or nature_cnn / impala (pixels), or, from Python, a callable returning a Haiku module."""
    actor_widths: tuple[int, ...] = (64, 64)
    """Hidden widths of the actor MLP."""
    value_widths: tuple[int, ...] = (64, 64)
    """Hidden widths of the value MLP."""
    activation: str = "tanh"
    """Activation of the MLP torsos."""
    width_multiplier: float = 1.0
    """Scales every hidden layer of both networks (to match a dense network to a sparse one's parameter count)."""
    value_activation: str = "relu"
    """Activation of the value MLP (tf-agents ValueNetwork's default, relu; the actor uses `activation`)."""
    initializer: str = "tf_agents"
    """Weight initialisation: tf_agents (the paper's networks) or orthogonal (CleanRL / SB3)."""
    init_std: float = 0.35
    """Initial standard deviation of the state-independent Gaussian (Box actions; sparse_ppo_actor_network.py std_layers: softplus bias at 0.35)."""
    std_transform: str = "softplus"
    """Map from the std parameter to the std: softplus (the paper's code) or exp (a log-std parameter)."""
    squash_mean: bool = True
    """Squash the Gaussian mean into the action bounds with tanh (sparse_ppo_actor_network.py tanh_and_scale_to_spec)."""
    num_envs: int = 1
    """Environments stepped together in one vector env."""
    rollout_length: int = 2048
    """Steps per environment in one rollout; a PPO iteration learns from num_envs * rollout_length transitions."""
    epochs: int = 10
    """Passes over each rollout."""
    minibatch_size: int = 64
    """Transitions per gradient step; must divide num_envs * rollout_length."""
    learning_rate: float = 3e-4
    """Adam learning rate (initial value when annealed)."""
    anneal_learning_rate: bool = True
    """Decay the learning rate linearly to 0 over the run's gradient steps."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    max_grad_norm: float | None = 0.5
    """Clip the gradient of both networks together to this global norm before Adam (None: no clipping)."""
    weight_decay: float | None = None
    """L2 term weight_decay * sum(w^2) over each network's kernels, added to the loss; None takes the paper's value for each network's sparsity method (weight_decay_table)."""
    weight_decay_table: str = "mujoco"
    """Which paper table supplies weight_decay when it is None: mujoco (dense/prune 1e-6, static 0, RigL 1e-4, SET 1e-6) or atari (0)."""
    clip_epsilon: float = 0.2
    """PPO clipping range of the probability ratio."""
    clip_value_loss: bool = False
    """Also clip the value prediction to within clip_epsilon of the rollout's value."""
    value_coef: float = 0.5
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (0 for MuJoCo, 0.01 for discrete tasks)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    normalize_advantages: bool = True
    """Normalise advantages to zero mean and unit std within each minibatch."""
    normalize_observations: bool = True
    """Normalise observations by their running mean and variance (vector observations only)."""
    observation_clip: float = 10.0
    """Clip normalised observations to [-observation_clip, observation_clip]."""
    normalize_rewards: bool = True
    """Scale rewards by the running std of the discounted return (done in the env loop)."""
    reward_clip: float = 10.0
    """Clip scaled rewards to [-reward_clip, reward_clip] (when normalize_rewards)."""
    deterministic_evaluation: bool = True
    """Evaluate with the Gaussian mean / most likely action instead of sampling."""
    actor_sparsity: SparsityConfig = _PAPER_SPARSITY
    """Sparsity of the actor (its own ERK budget; schedule counted in gradient steps)."""
    value_sparsity: SparsityConfig = _PAPER_SPARSITY
    """Sparsity of the value network (its own ERK budget; schedule counted in gradient steps)."""
    schedule_start_fraction: float | None = PAPER_START_FRACTION
    """Start of the pruning window as a fraction of the run's gradient steps (None: use each sparsity config's start_step); the paper's 32k of 489 x 320."""
    schedule_end_fraction: float | None = PAPER_END_FRACTION
    """End of the pruning window / last SET-RigL update as a fraction of gradient steps (None: use end_step)."""

    def __post_init__(self):
        check_fields(self, skip=("network",))  # issue 7: wrong types / NaN / Inf -> ConfigError naming the field
        object.__setattr__(self, "network", nets.resolve_network(self.network))  # "module:Name" -> callable
        for name in ("actor_widths", "value_widths"):
            widths = getattr(self, name)
            check(isinstance(widths, (list, tuple)) and len(widths) > 0
                  and all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w > 0 for w in widths),
                  name, f"must be a non-empty sequence of positive ints, got {widths!r}")
            object.__setattr__(self, name, tuple(int(w) for w in widths))
        nets.get_activation(self.activation)
        check(_real(self.width_multiplier) and self.width_multiplier > 0, "width_multiplier",
              f"must be > 0, got {self.width_multiplier!r}")
        nets.get_activation(self.value_activation, "value_activation")
        check_choice(self.initializer, "initializer", INITIALIZERS)
        check_choice(self.std_transform, "std_transform", STD_TRANSFORMS)
        check(_real(self.init_std) and math.isfinite(self.init_std) and self.init_std > 0, "init_std",
              f"must be a finite number > 0, got {self.init_std!r}")
        for name in ("num_envs", "rollout_length", "epochs", "minibatch_size"):
            value = getattr(self, name)
            check(_int(value) and value >= 1, name, f"must be an int >= 1, got {value!r}")
        batch = self.num_envs * self.rollout_length
        check(self.minibatch_size <= batch and batch % self.minibatch_size == 0, "minibatch_size",
              f"{self.minibatch_size} must divide num_envs * rollout_length = {batch}",
              "a divisor of num_envs * rollout_length")
        check(_real(self.learning_rate) and self.learning_rate > 0, "learning_rate",
              f"must be > 0, got {self.learning_rate!r}")
        check(_real(self.adam_eps) and self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps!r}")
        check(self.max_grad_norm is None or (_real(self.max_grad_norm) and self.max_grad_norm > 0),
              "max_grad_norm", f"must be > 0 or None, got {self.max_grad_norm!r}")
        check(self.weight_decay is None or (_real(self.weight_decay) and self.weight_decay >= 0),
              "weight_decay", f"must be >= 0 or None, got {self.weight_decay!r}")
        check_choice(self.weight_decay_table, "weight_decay_table", tuple(WEIGHT_DECAY_TABLES))
        check(_real(self.clip_epsilon) and self.clip_epsilon > 0, "clip_epsilon",
              f"must be > 0, got {self.clip_epsilon!r}")
        check(_real(self.value_coef) and self.value_coef >= 0, "value_coef", f"must be >= 0, got {self.value_coef!r}")
        check(_real(self.entropy_coef) and self.entropy_coef >= 0, "entropy_coef",
              f"must be >= 0, got {self.entropy_coef!r}")
        check(_real(self.gamma) and 0.0 <= self.gamma <= 1.0, "gamma", f"must be in [0, 1], got {self.gamma!r}")
        check(_real(self.gae_lambda) and 0.0 <= self.gae_lambda <= 1.0, "gae_lambda",
              f"must be in [0, 1], got {self.gae_lambda!r}")
        check(_real(self.observation_clip) and self.observation_clip > 0, "observation_clip",
              f"must be > 0, got {self.observation_clip!r}")
        check(_real(self.reward_clip) and self.reward_clip > 0, "reward_clip", f"must be > 0, got {self.reward_clip!r}")
        for name in ("anneal_learning_rate", "clip_value_loss", "normalize_advantages", "normalize_observations",
                     "normalize_rewards", "deterministic_evaluation", "squash_mean"):
            check(isinstance(getattr(self, name), bool), name, f"must be True or False, got {getattr(self, name)!r}")
        for name in ("actor_sparsity", "value_sparsity"):
            if not isinstance(getattr(self, name), SparsityConfig):
                raise ConfigError(name, "must be a SparsityConfig")
        common.check_fraction(self.schedule_start_fraction, "schedule_start_fraction")
        common.check_fraction(self.schedule_end_fraction, "schedule_end_fraction")
        if self.schedule_start_fraction is not None and self.schedule_end_fraction is not None:
            check(self.schedule_end_fraction > self.schedule_start_fraction, "schedule_end_fraction",
                  f"{self.schedule_end_fraction} must exceed schedule_start_fraction={self.schedule_start_fraction}")

    @property
    def batch_size(self) -> int:
        """Transitions per rollout (num_envs * rollout_length)."""
        return self.num_envs * self.rollout_length

    @property
    def num_minibatches(self) -> int:
        return self.batch_size // self.minibatch_size


def _int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _sparsity(method: str = "rigl", sparsity: float = 0.9, **kw) -> SparsityConfig:
    return dataclasses.replace(_PAPER_SPARSITY, method=method, sparsity=sparsity, **kw)


PRESETS: dict[str, Config] = {
    # The paper's MuJoCo setting: 1 env x 2048 steps, 10 epochs of 32 minibatches of 64 (320 gradient
    # steps per iteration), pruning window 32k -> 120k of 156,480 gradient steps.
    "mujoco": Config(),
    # CartPole & co.: rl-zoo's tuned PPO (8 envs x 32 steps, one minibatch of 256, 20 epochs), which
    # solves CartPole-v1 in ~100k steps.
    "classic": Config(
        num_envs=8,
        rollout_length=32,
        epochs=20,
        minibatch_size=256,
        learning_rate=1e-3,
        gamma=0.98,
        gae_lambda=0.8,
        entropy_coef=0.0,
        normalize_observations=False,
        normalize_rewards=False,
        value_activation="tanh",
        initializer="orthogonal",
        init_std=1.0,
        std_transform="exp",
        squash_mean=False,
    ),
    # CleanRL's Atari PPO: 8 envs x 128 steps, 4 epochs of 4 minibatches, Nature CNN per network.
    "atari": Config(
        network="nature_cnn",
        num_envs=8,
        rollout_length=128,
        epochs=4,
        minibatch_size=256,
        learning_rate=2.5e-4,
        clip_epsilon=0.1,
        entropy_coef=0.01,
        value_coef=0.5,
        normalize_observations=False,
        normalize_rewards=False,
        deterministic_evaluation=False,
        weight_decay_table="atari",
        initializer="orthogonal",
        init_std=1.0,
        std_transform="exp",
        squash_mean=False,
    ),
}

# Per-method defaults by preset: PAPER.md's PPO values (RigL every 250 with drop 0.3, pruning every
# 500; SET takes RigL's) and the sparse init that ppo_mujoco_sparse_config.gin turns on for static,
# SET and RigL (init_masks.fixed_sparse_init = True; pruning starts dense).
METHOD_DEFAULTS = {
    preset: {"dense": dict(sparse_init=False), "static": dict(sparse_init=True),
             "prune": dict(update_every=500, sparse_init=False),
             "set": dict(update_every=250, drop_fraction=0.3, sparse_init=True),
             "rigl": dict(update_every=250, drop_fraction=0.3, sparse_init=True)}
    for preset in PRESETS
}


def default_preset(family: str) -> str:
    return {"atari": "atari", "classic": "classic"}.get(family, "mujoco")


class PPOState(NamedTuple):
    actor_params: Any
    value_params: Any
    actor_opt_state: Any
    value_opt_state: Any
    obs_norm: running.RunningMeanStd
    gradient_steps: jax.Array  # minibatch updates so far (int32)
    iterations: jax.Array  # update calls so far (int32)


class PPOActing(NamedTuple):
    """What acting reads (`acting_view`): the env loop passes this to the per-step functions so
    that each call flattens and transfers a few arrays, not the optimiser states (masks, Adam)."""

    actor_params: Any
    value_params: Any  # for `policy_with_info` and `value`
    obs_norm: running.RunningMeanStd


def acting_view(state: PPOState) -> PPOActing:
    return PPOActing(state.actor_params, state.value_params, state.obs_norm)


def num_iterations(config: Config, total_steps: int) -> int:
    """PPO iterations of a run of `total_steps` env steps (rounded up: 1M steps -> 489 as in the paper)."""
    return max(1, -(-int(total_steps) // config.batch_size))


def total_gradient_steps(config: Config, total_steps: int) -> int:
    return num_iterations(config, total_steps) * config.epochs * config.num_minibatches


def weight_decays(config: Config) -> dict[str, float]:
    table = WEIGHT_DECAY_TABLES[config.weight_decay_table]
    return {
        "actor": common.method_weight_decay(table, config.actor_sparsity.method, config.weight_decay),
        "value": common.method_weight_decay(table, config.value_sparsity.method, config.weight_decay),
    }


def gae(rollout: Rollout, gamma: float, lambda_: float):
    """(advantages, returns) [T, N] by rlax's truncated GAE, per env.

    Episode ends cut the trace; a truncated step is bootstrapped from V(final observation) by adding
    gamma * final_value to its reward (as if it ended there with that terminal value); a terminated
    step is not bootstrapped.
    """
    value = rollout.value.astype(jnp.float32)
    done = jnp.logical_or(rollout.terminated, rollout.truncated)
    bootstrap = jnp.logical_and(rollout.truncated, jnp.logical_not(rollout.terminated))  # termination wins
    reward = rollout.reward.astype(jnp.float32) + gamma * jnp.where(bootstrap, rollout.final_value, 0.0)
    discount = gamma * (1.0 - done.astype(jnp.float32))
    values = jnp.concatenate([value, rollout.last_value[None].astype(jnp.float32)], axis=0)
    advantages = jax.vmap(rlax.truncated_generalized_advantage_estimation, in_axes=(1, 1, None, 1), out_axes=1)(
        reward, discount, lambda_, values
    )
    return advantages, advantages + value


def _gaussian_log_prob(mean, log_std, x):
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z * z - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)


def _gaussian_entropy(log_std):
    return jnp.sum(log_std + 0.5 * (1.0 + jnp.log(2.0 * jnp.pi)), axis=-1)


def make(config: Config, env_spec, total_steps: int) -> OnPolicyAgent:
    """Jitted init / act / update of a sparse PPO for `env_spec` (Box or Discrete actions)."""
    check(isinstance(config, Config), "agent_config", f"expected ppo.Config, got {type(config).__name__}")
    check(_int(total_steps) and total_steps > 0, "steps", f"must be > 0, got {total_steps!r}")
    env_id = getattr(env_spec, "env_id", "this environment")
    obs_spec, action_spec = env_spec.observation_spec, env_spec.action_spec
    obs_shape, obs_dtype = tuple(obs_spec.shape), np.dtype(obs_spec.dtype)
    image = np.issubdtype(obs_dtype, np.integer) and len(obs_shape) == 3
    discrete = hasattr(action_spec, "num_values")
    if discrete:
        num_actions = int(action_spec.num_values)
        action_shape, action_dtype = (), np.int32
        low = high = None
    else:
        if not (hasattr(action_spec, "minimum") and len(action_spec.shape) == 1
                and np.issubdtype(np.dtype(action_spec.dtype), np.floating)):
            raise ConfigError("env", f"PPO needs a Discrete or a 1-D Box action space; {env_id} has {action_spec}",
                              "Discrete (CartPole-v1, ALE/...) or 1-D Box (Hopper-v5, ...)")
        num_actions = int(action_spec.shape[0])
        action_shape, action_dtype = (num_actions,), np.float32
        low = np.broadcast_to(np.asarray(action_spec.minimum, np.float32), action_shape)
        high = np.broadcast_to(np.asarray(action_spec.maximum, np.float32), action_shape)
    if image and config.normalize_observations:
        raise ConfigError("normalize_observations", f"running normalisation is for vector observations; "
                          f"{env_id} has {obs_dtype} images {obs_shape}", "False (use the atari preset)")
    normalize_obs = config.normalize_observations and not image

    # --- networks ---------------------------------------------------------------------------
    if config.initializer == "tf_agents":
        hidden_init = hk.initializers.Orthogonal(1.0)
        policy_init = hk.initializers.VarianceScaling(0.1, "fan_in", "truncated_normal")
        value_init = hk.initializers.RandomUniform(-0.03, 0.03)
    else:
        hidden_init = hk.initializers.Orthogonal(math.sqrt(2.0))
        policy_init = hk.initializers.Orthogonal(0.01)
        value_init = hk.initializers.Orthogonal(1.0)
    if config.std_transform == "softplus":
        std_of, std_param_init = jax.nn.softplus, math.log(math.expm1(config.init_std))
    else:
        std_of, std_param_init = jnp.exp, math.log(config.init_std)
    if not discrete and config.squash_mean:
        center, half_range = jnp.asarray((high + low) / 2.0), jnp.asarray((high - low) / 2.0)

    def torso(widths, activation):
        if config.network == "mlp":
            return nets.make_torso("mlp", widths=widths, activation=activation,
                                   width_multiplier=config.width_multiplier, w_init=hidden_init)
        if callable(config.network):
            return config.network()
        return nets.make_torso(config.network, width_multiplier=config.width_multiplier)

    def prepare(obs):
        if config.network == "mlp":
            return obs.reshape(obs.shape[: obs.ndim - len(obs_shape)] + (-1,)).astype(jnp.float32)
        return obs

    def actor_fn(obs):
        features = torso(config.actor_widths, config.activation)(prepare(obs))
        out = hk.Linear(num_actions, w_init=policy_init, name="policy_head")(features)
        if discrete:
            return out, None
        if config.squash_mean:
            out = center + half_range * jnp.tanh(out)
        std_param = hk.get_parameter("std_param", (num_actions,), jnp.float32,
                                     init=hk.initializers.Constant(std_param_init))
        return out, jnp.broadcast_to(jnp.log(std_of(std_param)), out.shape)

    def value_fn(obs):
        features = torso(config.value_widths, config.value_activation)(prepare(obs))
        return hk.Linear(1, w_init=value_init, name="value_head")(features)[..., 0]

    actor_net = hk.without_apply_rng(hk.transform(actor_fn))
    value_net = hk.without_apply_rng(hk.transform(value_fn))

    # --- optimisers -------------------------------------------------------------------------
    iterations = num_iterations(config, total_steps)
    grad_steps = total_gradient_steps(config, total_steps)
    if config.anneal_learning_rate:
        learning_rate = optax.linear_schedule(config.learning_rate, 0.0, grad_steps)
    else:
        learning_rate = optax.constant_schedule(config.learning_rate)
    decays = weight_decays(config)
    sparsity = {
        name: common.resolve_schedule(cfg, grad_steps, config.schedule_start_fraction, config.schedule_end_fraction)
        for name, cfg in (("actor", config.actor_sparsity), ("value", config.value_sparsity))
    }

    def optimiser(name):
        # The L2 term and the clipping span both networks, so they are applied in `sgd_step`.
        return optax.adam(learning_rate, eps=config.adam_eps)

    def regularised_clipped(actor_grads, value_grads, actor_params, value_params, actor_opt, value_opt):
        """Masked loss gradients + 2 wd w on kernels, clipped jointly to max_grad_norm (the paper's
        single optimiser over both networks: ppo_train_eval.py SparsePPOAgent._train)."""
        out = []
        for grads, params, opt_state, name in ((actor_grads, actor_params, actor_opt, "actor"),
                                               (value_grads, value_params, value_opt, "value")):
            grads = apply_masks(grads, get_masks(opt_state))
            if decays[name] > 0.0:
                kernels = common.kernel_mask(params)
                grads = jax.tree_util.tree_map(
                    lambda g, p, k: g + 2.0 * decays[name] * p if k else g, grads, params, kernels)
            out.append(grads)
        if config.max_grad_norm is not None:
            out, _ = optax.clip_by_global_norm(config.max_grad_norm).update(tuple(out), optax.EmptyState())
        return out

    # The wrappers' states hold masks and keys; their own key is only read at init.
    actor_tx = sparsify(optimiser("actor"), sparsity["actor"], key=jax.random.PRNGKey(0), timing=MASK_TIMING)
    value_tx = sparsify(optimiser("value"), sparsity["value"], key=jax.random.PRNGKey(0), timing=MASK_TIMING)

    def init(key):
        actor_key, value_key, actor_mask_key, value_mask_key, actor_init_key, value_init_key = jax.random.split(key, 6)
        dummy = jnp.zeros((1, *obs_shape), obs_dtype)
        out = []
        for net, tx_name, net_key, mask_key, init_key in (
            (actor_net, "actor", actor_key, actor_mask_key, actor_init_key),
            (value_net, "value", value_key, value_mask_key, value_init_key),
        ):
            params = net.init(net_key, dummy)
            opt_state = sparsify(optimiser(tx_name), sparsity[tx_name], key=mask_key,
                                 timing=MASK_TIMING).init(params)
            masks = get_masks(opt_state)
            params = apply_masks(params, masks)
            if sparsity[tx_name].sparse_init:
                params = sparse_init(init_key, params, masks, sparsity[tx_name])
            out.append((params, opt_state))
        (actor_params, actor_opt), (value_params, value_opt) = out
        zero = jnp.zeros((), jnp.int32)
        return PPOState(actor_params, value_params, actor_opt, value_opt, running.init(obs_shape), zero, zero)

    def preprocess(obs_norm, obs):
        if not normalize_obs:
            return obs
        return running.normalize(obs_norm, obs.astype(jnp.float32), config.observation_clip)

    def distribution(view, obs):
        return actor_net.apply(view.actor_params, preprocess(view.obs_norm, obs))

    def log_prob_entropy(out, action):
        if discrete:
            logits, _ = out
            log_p = jax.nn.log_softmax(logits)
            chosen = jnp.take_along_axis(log_p, action.astype(jnp.int32)[..., None], axis=-1)[..., 0]
            return chosen, -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
        mean, log_std = out
        return _gaussian_log_prob(mean, log_std, action), _gaussian_entropy(log_std)

    def act_noise(key, batch_shape, evaluation=False):
        """The sampling draws: Gumbel noise per logit (jax.random.categorical is the argmax of
        logits + gumbel(key, logits.shape)), or standard normal per action dimension; none for a
        deterministic evaluation."""
        if evaluation and config.deterministic_evaluation:
            return ()
        if discrete:
            return jax.random.gumbel(key, (*batch_shape, num_actions), jnp.float32)
        return jax.random.normal(key, (*batch_shape, num_actions), jnp.float32)

    def sample(out, noise):
        if discrete:
            return jnp.argmax(noise + out[0], axis=-1).astype(jnp.int32)
        mean, log_std = out
        return mean + jnp.exp(log_std) * noise

    def policy(view, obs, noise, step=0, evaluation=False):
        del step
        out = distribution(view, obs)
        if evaluation and config.deterministic_evaluation:
            if discrete:
                return jnp.argmax(out[0], axis=-1).astype(jnp.int32)
            return jnp.clip(out[0], low, high)
        action = sample(out, noise)
        return action if (discrete or not evaluation) else jnp.clip(action, low, high)

    def policy_with_info(view, obs, noise):
        out = distribution(view, obs)
        action = sample(out, noise)
        log_prob, _ = log_prob_entropy(out, action)
        return action, log_prob, value(view, obs)

    def value(view, obs):
        return value_net.apply(view.value_params, preprocess(view.obs_norm, obs))

    act = common.composed_act(acting_view, act_noise, policy, len(obs_shape))

    def act_with_info(state, obs, key):
        noise = common.drawn_apart(act_noise(key, common.batch_shape(obs, len(obs_shape))))
        return policy_with_info(acting_view(state), obs, noise)

    def normalize_advantage(adv):
        return (adv - adv.mean()) / (adv.std() + 1e-8)

    def loss_terms(actor_params, value_params, mb, normalize_advantages):
        """(loss, metrics) on a minibatch whose observations are already preprocessed (`mb["x"]`,
        what the networks see); advantages are normalised within it when `normalize_advantages`."""
        x = mb["x"]
        log_prob, entropy = log_prob_entropy(actor_net.apply(actor_params, x), mb["action"])
        log_ratio = log_prob - mb["log_prob"]
        ratio = jnp.exp(log_ratio)
        adv = mb["advantage"]
        if normalize_advantages:
            adv = normalize_advantage(adv)
        policy_loss = rlax.clipped_surrogate_pg_loss(ratio, adv, config.clip_epsilon)
        v = value_net.apply(value_params, x)
        value_error = jnp.square(v - mb["return"])
        if config.clip_value_loss:
            v_clipped = mb["value"] + jnp.clip(v - mb["value"], -config.clip_epsilon, config.clip_epsilon)
            value_error = jnp.maximum(value_error, jnp.square(v_clipped - mb["return"]))
        value_loss = 0.5 * jnp.mean(value_error)
        entropy = jnp.mean(entropy)
        loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
        metrics = {
            "loss": loss,
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy": entropy,
            "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
            "clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > config.clip_epsilon).astype(jnp.float32)),
        }
        return loss, metrics

    def loss_fn(actor_params, value_params, obs_norm, mb):
        mb = dict(mb, x=preprocess(obs_norm, mb["obs"]))
        return loss_terms(actor_params, value_params, mb, config.normalize_advantages)

    grad_fn = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)
    num_minibatches, batch_size = config.num_minibatches, config.batch_size

    def flatten(rollout):
        advantages, returns = gae(rollout, config.gamma, config.gae_lambda)
        flat = {
            "obs": rollout.obs, "action": rollout.action, "log_prob": rollout.log_prob, "value": rollout.value,
            "advantage": advantages, "return": returns,
        }
        flat = jax.tree_util.tree_map(lambda x: x.reshape((batch_size,) + x.shape[2:]), flat)
        flat["log_prob"] = flat["log_prob"].astype(jnp.float32)
        flat["value"] = flat["value"].astype(jnp.float32)
        return flat, advantages

    def loss(state, rollout):
        """The PPO loss terms over the whole rollout at the state's params (no update)."""
        flat, _ = flatten(rollout)
        return loss_fn(state.actor_params, state.value_params, state.obs_norm, flat)[1]

    def update(state, rollout, key, topology=True):
        flat, advantages = flatten(rollout)

        def sgd_step(carry, idx):
            actor_params, value_params, actor_opt, value_opt = carry
            mb = jax.tree_util.tree_map(lambda x: x[idx], flat)
            (actor_grads, value_grads), metrics = grad_fn(actor_params, value_params, state.obs_norm, mb)
            actor_step, value_step = regularised_clipped(actor_grads, value_grads, actor_params, value_params,
                                                         actor_opt, value_opt)
            # RigL grows by the loss gradient (the mask updaters' loss_fn has no L2 term); the step
            # uses the regularised, clipped one. `sparsify` reads the dense gradient for growth
            # through `grow_grads`.
            updates, actor_opt = actor_tx.update(actor_step, actor_opt, actor_params, topology=topology,
                                                 grow_grads=actor_grads)
            actor_params = optax.apply_updates(actor_params, updates)
            updates, value_opt = value_tx.update(value_step, value_opt, value_params, topology=topology,
                                                 grow_grads=value_grads)
            value_params = optax.apply_updates(value_params, updates)
            metrics["actor_grad_norm"] = optax.global_norm(actor_grads)
            metrics["value_grad_norm"] = optax.global_norm(value_grads)
            return (actor_params, value_params, actor_opt, value_opt), metrics

        def epoch(carry, epoch_key):
            order = jax.random.permutation(epoch_key, batch_size).reshape(num_minibatches, -1)
            return jax.lax.scan(sgd_step, carry, order)

        carry = (state.actor_params, state.value_params, state.actor_opt_state, state.value_opt_state)
        carry, metrics = jax.lax.scan(epoch, carry, jax.random.split(key, config.epochs))
        metrics = jax.tree_util.tree_map(jnp.mean, metrics)

        values, targets = flat["value"], flat["return"]
        target_var = jnp.var(targets)
        metrics["explained_variance"] = jnp.where(
            target_var > 0, 1.0 - jnp.var(targets - values) / jnp.where(target_var > 0, target_var, 1.0), 0.0
        )
        metrics["learning_rate"] = learning_rate(state.gradient_steps)
        if discrete:
            metrics["advantage_mean"] = jnp.mean(advantages)
        else:
            metrics["action_std"] = jnp.mean(std_of(carry[0]["~"]["std_param"]))

        obs_norm = running.update(state.obs_norm, rollout.obs) if normalize_obs else state.obs_norm
        new_state = PPOState(
            *carry, obs_norm,
            state.gradient_steps + config.epochs * num_minibatches,
            state.iterations + 1,
        )
        return new_state, metrics

    def networks(state):
        return {
            "actor": (state.actor_params, get_masks(state.actor_opt_state)),
            "value": (state.value_params, get_masks(state.value_opt_state)),
        }

    # --- analysis hook (sparse_rl.analysis: gradient flow, SNR, dormant neurons, topology) ------
    def analysis_batch(state, rollout):
        """All T*N transitions of `rollout` as one flat batch: `x` the observations preprocessed
        with the state's statistics (what the networks see), action, log_prob, value, return, and
        the advantage already normalised over the whole batch (when `normalize_advantages`), so
        that the loss of a single item, as the SNR's per-sample gradients take it, is meaningful."""
        flat, _ = flatten(rollout)
        adv = flat["advantage"]
        if config.normalize_advantages:
            adv = normalize_advantage(adv)
        return {"x": preprocess(state.obs_norm, flat["obs"]), "action": flat["action"],
                "log_prob": flat["log_prob"], "value": flat["value"], "return": flat["return"],
                "advantage": adv}

    analysis_grad = jax.grad(lambda a, v, mb: loss_terms(a, v, mb, False)[0], argnums=(0, 1))

    def analysis_grads(state, batch):
        """{network: (dense gradient of the PPO loss at the masked params, masks, params)} on an
        `analysis_batch` (advantages normalised there, not again)."""
        actor_grads, value_grads = analysis_grad(state.actor_params, state.value_params, batch)
        nets_ = networks(state)
        grads = {"actor": actor_grads, "value": value_grads}
        return {name: (grads[name], nets_[name][1], nets_[name][0]) for name in grads}

    analysis = AnalysisHook(
        grads=analysis_grads,
        forward={"actor": lambda params, batch: actor_net.apply(params, batch["x"]),
                 "value": lambda params, batch: value_net.apply(params, batch["x"])},
        sparsity=dict(sparsity),  # schedules resolved to gradient steps above
        activation=config.activation if config.network == "mlp" else "relu",
        steps_per_update=config.epochs * num_minibatches,
    )

    info = {
        "discrete": discrete,
        "num_actions": num_actions,
        "action_shape": action_shape,
        "action_dtype": action_dtype,
        "action_low": low,
        "action_high": high,
        "obs_shape": obs_shape,
        "image": image,
        "iterations": iterations,
        "total_gradient_steps": grad_steps,
        "sparsity": sparsity,
        "weight_decay": decays,
    }
    reward_scaling = running.RewardScaling(config.gamma, config.reward_clip) if config.normalize_rewards else None
    needs = OnPolicyNeeds(
        num_envs=config.num_envs, rollout_length=config.rollout_length, iterations=iterations,
        gradient_steps=config.epochs * num_minibatches, discrete=discrete, action_low=low, action_high=high,
        obs_shape=obs_shape, obs_dtype=np.uint8 if image else np.float32, action_shape=action_shape,
        action_dtype=action_dtype, reward_scaling=reward_scaling)
    return OnPolicyAgent(
        init=jax.jit(init),
        act=jax.jit(act, static_argnames="evaluation"),
        update=jax.jit(update, donate_argnums=0, static_argnames="topology"),
        networks=networks,
        act_with_info=jax.jit(act_with_info),
        value=jax.jit(value),
        acting_view=acting_view,
        act_noise=act_noise,
        policy=jax.jit(policy, static_argnames="evaluation"),
        policy_with_info=jax.jit(policy_with_info),
        loop=needs,
        loss=jax.jit(loss),
        info=info,
        analysis_batch=jax.jit(analysis_batch),
        analysis=analysis,
        mask_update_steps=np.union1d(mask_update_steps(sparsity["actor"]), mask_update_steps(sparsity["value"])),
    )


def first_update_step(config: Config, env_id: str) -> int:
    """The env step before which no gradient step runs: one full rollout."""
    return config.num_envs * config.rollout_length


def update_layer_macs(config: Config) -> int | None:
    """Multiply-adds of the largest hidden layer over one minibatch (None: not an MLP)."""
    if config.network != "mlp":
        return None
    return max(nets.largest_layer_macs(w, config.width_multiplier, config.minibatch_size)
               for w in (config.actor_widths, config.value_widths))


SPEC = AgentSpec(name="ppo", loop="onpolicy", config=Config, networks={"actor": "actor_sparsity", "value": "value_sparsity"},
                 presets=PRESETS, method_defaults=METHOD_DEFAULTS, default_preset=default_preset, make=make,
                 first_update_step=first_update_step, spaces=("Box", ("Discrete", "Box")),
                 update_layer_macs=update_layer_macs)
