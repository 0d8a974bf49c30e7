"""Sparse DQN: Q-learning (or double Q-learning) from rlax over a sparse Haiku Q-network.

The online network's optimiser is wrapped by `sparsify`, so its params are always exactly masked;
the target network is a periodic copy of those params and so always carries the online masks.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import optax
from sparse_rl.agents.rlax_import import rlax

from sparse_rl import nets
from sparse_rl.agents import common
from sparse_rl.agents.base import Agent, AgentSpec, OffPolicyNeeds
from sparse_rl.analysis.gradient_flow import AnalysisHook
from sparse_rl.errors import ConfigError, check, check_choice, check_fields
from sparse_rl.sparsity import (MASK_TIMINGS, SparsityConfig, apply_masks, get_masks, mask_update_steps,
                               sparse_init, sparsify)

LOSSES = ("mse", "huber")
# he_truncated_normal: tf-agents classic control (dqn_train_eval.py build_network: hidden kernels
# VarianceScaling(2.0, fan_in, truncated_normal), output kernel U(-0.03, 0.03), output bias -0.2).
# glorot_uniform: Keras defaults, which the Dopamine Atari networks keep (dqn_agents.py
# NatureDQNNetwork / ImpalaNetwork pass no initialiser): Glorot uniform kernels, zero biases.
INITIALIZERS = ("he_truncated_normal", "glorot_uniform")

# PAPER.md: weight decay 1e-6 for every classic-control method, 0 for the Atari CNN.
CLASSIC_WEIGHT_DECAY = {"default": 1e-6}
ATARI_WEIGHT_DECAY = {"default": 0.0}


@dataclasses.dataclass(frozen=True)
class Config:
    """DQN settings. Defaults are the paper's classic-control values (PAPER.md)."""

    network: str = "mlp"
    """Q-network torso: a registered name (mlp, nature_cnn, impala) or, from Python, any callable returning a Haiku module."""
    widths: tuple[int, ...] = (512, 512)
    """Hidden layer widths of the MLP torso."""
    activation: str = "relu"
    """Activation of the MLP torso."""
    width_multiplier: float = 1.0
    """Scales every hidden layer (used to match a dense network to a sparse one's parameter count)."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    adam_eps: float = 1e-7
    """Adam epsilon (classic: Keras Adam's default 1e-7, the tf-agents code's; Atari 1e-8)."""
    weight_decay: float | None = None
    """L2 term weight_decay * sum(w^2) over kernels, added to the loss; None takes the paper's value for the preset (classic 1e-6, Atari 0)."""
    l2_output_layer: bool = False
    """Whether the L2 term covers the output layer's kernel too (tf-agents classic: no; Dopamine Atari: every non-bias variable)."""
    initializer: str = "he_truncated_normal"
    """Weight initialisation: he_truncated_normal (tf-agents classic control) or glorot_uniform (Keras defaults, Dopamine Atari)."""
    batch_size: int = 128
    """Replay minibatch size."""
    gamma: float = 0.99
    """Discount factor."""
    n_step: int = 1
    """n-step returns (1 = one-step Q-learning)."""
    double_q: bool = False
    """Use double Q-learning targets."""
    loss: str = "mse"
    """TD loss: mse (mean td^2, tf-agents element_wise_squared_loss) or huber (delta 1, Dopamine)."""
    target_update_every: int = 100
    """Copy online params (and so masks) to the target network every this many gradient steps."""
    replay_capacity: int = 100_000
    """Replay buffer size in transitions."""
    learning_starts: int = 1000
    """Environment steps collected before the first gradient step."""
    train_every: int = 1
    """Environment steps per gradient step."""
    epsilon_start: float = 0.01
    """Exploration epsilon at learning_starts (actions before learning_starts are uniformly random)."""
    epsilon_end: float = 0.01
    """Final exploration epsilon."""
    epsilon_decay_steps: int = 1000
    """Environment steps over which epsilon decays linearly from epsilon_start to epsilon_end, counted from learning_starts."""
    eval_epsilon: float = 0.0
    """Epsilon of the evaluation policy (0: greedy)."""
    sparsity: SparsityConfig = SparsityConfig(
        method="rigl", sparsity=0.9, update_every=1000, drop_fraction=0.5, start_step=0, end_step=75_000,
        sparse_init=True,
    )
    """Sparsity of the Q-network."""
    mask_update_timing: str = "before"
    """When masks change relative to that step's gradient step: before, after, or instead (SET/RigL skip the step)."""
    schedule_start_fraction: float | None = 0.2
    """Start of the pruning window as a fraction of the run's step budget, steps / train_every gradient steps (None: use sparsity.start_step)."""
    schedule_end_fraction: float | None = 0.75
    """End of the pruning window / last SET-RigL update, same fraction (None: use sparsity.end_step)."""
    weight_decay_table: str = "classic"
    """Which paper table supplies weight_decay when it is None: classic or atari."""

    def __post_init__(self):
        check_fields(self, skip=("network",))  # issue 7: wrong types -> ConfigError naming the field
        object.__setattr__(self, "network", nets.resolve_network(self.network))  # "module:Name" -> callable
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        check(len(self.widths) > 0 and all(w > 0 for w in self.widths), "widths", "must be positive integers")
        nets.get_activation(self.activation)  # issue 7: was only refused when the network was built
        check(self.width_multiplier > 0, "width_multiplier", f"must be > 0, got {self.width_multiplier}")
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps}")
        check(self.weight_decay is None or self.weight_decay >= 0, "weight_decay", "must be >= 0 or None")
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        check(0.0 <= self.gamma <= 1.0, "gamma", f"must be in [0, 1], got {self.gamma}")
        check(self.n_step >= 1, "n_step", f"must be >= 1, got {self.n_step}")
        check_choice(self.loss, "loss", LOSSES)
        check_choice(self.initializer, "initializer", INITIALIZERS)
        check_choice(self.mask_update_timing, "mask_update_timing", MASK_TIMINGS)
        check(self.target_update_every >= 1, "target_update_every", "must be >= 1")
        check(self.replay_capacity >= self.batch_size, "replay_capacity", "must be >= batch_size")
        check(self.learning_starts >= 0, "learning_starts", "must be >= 0")
        check(self.train_every >= 1, "train_every", "must be >= 1")
        for name in ("epsilon_start", "epsilon_end", "eval_epsilon"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, name, f"must be in [0, 1], got {value}")
        check(self.epsilon_decay_steps >= 1, "epsilon_decay_steps", "must be >= 1")
        common.check_fraction(self.schedule_start_fraction, "schedule_start_fraction")
        common.check_fraction(self.schedule_end_fraction, "schedule_end_fraction")
        check_choice(self.weight_decay_table, "weight_decay_table", ("classic", "atari"))
        if not isinstance(self.sparsity, SparsityConfig):
            raise ConfigError("sparsity", "must be a SparsityConfig")


PRESETS: dict[str, Config] = {
    "classic": Config(),
    "atari": Config(
        network="nature_cnn",
        learning_rate=2.5e-4,
        adam_eps=1e-8,
        batch_size=32,
        loss="huber",
        target_update_every=2000,  # 8000 env steps at one gradient step per 4 env steps
        replay_capacity=1_000_000,
        learning_starts=20_000,
        train_every=4,
        epsilon_start=1.0,
        epsilon_end=0.01,
        epsilon_decay_steps=250_000,
        eval_epsilon=0.001,
        initializer="glorot_uniform",
        l2_output_layer=True,
        sparsity=SparsityConfig(
            method="rigl", sparsity=0.9, update_every=5000, drop_fraction=0.3, start_step=500_000,
            end_step=2_000_000, sparse_init=True,
        ),
        mask_update_timing="instead",
        schedule_start_fraction=0.2,
        schedule_end_fraction=0.8,
        weight_decay_table="atari",
    ),
}

# Per-method defaults of the paper by preset: update interval, drop fraction, and the sparse init
# its static / SET / RigL configs turn on (dqn_gym_sparse_config.gin, dqn_atari_{static,set,rigl}.gin:
# init_masks.fixed_sparse_init = True; pruning starts dense, so rigl/rl/sparse_utils.py init_masks
# returns before re-initialising).
METHOD_DEFAULTS = {
    "classic": {"dense": dict(sparse_init=False), "static": dict(sparse_init=True),
                "prune": dict(update_every=1000, sparse_init=False),
                "set": dict(update_every=1000, drop_fraction=0.5, sparse_init=True),
                "rigl": dict(update_every=1000, drop_fraction=0.5, sparse_init=True)},
    "atari": {"dense": dict(sparse_init=False), "static": dict(sparse_init=True),
              "prune": dict(update_every=5000, sparse_init=False),
              "set": dict(update_every=5000, drop_fraction=0.3, sparse_init=True),
              "rigl": dict(update_every=5000, drop_fraction=0.3, sparse_init=True)},
}


def default_preset(family: str) -> str:
    return "atari" if family == "atari" else "classic"


class DQNState(NamedTuple):
    params: Any
    target_params: Any
    opt_state: Any
    gradient_steps: jax.Array


def _weight_decay(config: Config) -> float:
    table = CLASSIC_WEIGHT_DECAY if config.weight_decay_table == "classic" else ATARI_WEIGHT_DECAY
    return common.method_weight_decay(table, config.sparsity.method, config.weight_decay)


def q_network(config: Config, num_actions: int) -> hk.Transformed:
    """The Q-network as a pure (init, apply) pair; the torso is pluggable."""

    if config.initializer == "he_truncated_normal":
        hidden_init = hk.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal")
        head_init = dict(w_init=hk.initializers.RandomUniform(-0.03, 0.03), b_init=hk.initializers.Constant(-0.2))
    else:
        hidden_init = hk.initializers.VarianceScaling(1.0, "fan_avg", "uniform")  # Glorot uniform
        head_init = dict(w_init=hidden_init)

    def forward(obs):
        if config.network == "mlp":
            torso = nets.make_torso(
                "mlp", widths=config.widths, activation=config.activation,
                width_multiplier=config.width_multiplier, activate_final=True, w_init=hidden_init,
            )
        elif callable(config.network):
            torso = config.network()
        else:
            torso = nets.make_torso(config.network, width_multiplier=config.width_multiplier, w_init=hidden_init)
        return nets.QHead(num_actions, **head_init)(torso(obs))

    return hk.without_apply_rng(hk.transform(forward))


def total_gradient_steps(config: Config, total_env_steps: int) -> int:
    return max((total_env_steps - config.learning_starts) // config.train_every, 1)


def schedule_horizon(config: Config, total_env_steps: int) -> int:
    """Gradient steps the schedule fractions refer to: the run's env steps / train_every.

    The paper's windows are absolute gradient steps (20k-75k of 100k for classic control after a
    1000-step random collect, dqn_gym_pruning_config.gin; 500k-2M for Atari, dqn_atari_rigl.gin),
    so the fractions multiply the step budget without subtracting the warm-up.
    """
    return max(int(total_env_steps) // config.train_every, 1)


def make(config: Config, env_spec, total_steps: int) -> Agent:
    """Jitted init / act / update of a sparse DQN for `env_spec` (Discrete actions only)."""
    action_spec = env_spec.action_spec
    if not hasattr(action_spec, "num_values"):
        raise ConfigError(
            "env", f"DQN needs a Discrete action space; {env_spec.env_id} has {action_spec}",
            "environments with Discrete actions, e.g. CartPole-v1, Acrobot-v1, ALE/Pong-v5",
        )
    num_actions = int(action_spec.num_values)
    obs_spec = env_spec.observation_spec
    network = q_network(config, num_actions)
    sparsity = common.resolve_schedule(
        config.sparsity, schedule_horizon(config, total_steps),
        config.schedule_start_fraction, config.schedule_end_fraction,
    )
    optimiser = common.adam_with_l2(config.learning_rate, _weight_decay(config), config.adam_eps,
                                    exclude=() if config.l2_output_layer else ("q_head",))

    def init(key):
        net_key, mask_key, init_key = jax.random.split(key, 3)
        dummy = jnp.zeros((1, *obs_spec.shape), obs_spec.dtype)
        params = network.init(net_key, dummy)
        tx = sparsify(optimiser, sparsity, key=mask_key, timing=config.mask_update_timing)
        opt_state = tx.init(params)
        masks = get_masks(opt_state)
        params = apply_masks(params, masks)
        if sparsity.sparse_init:
            params = sparse_init(init_key, params, masks, sparsity)
        return DQNState(params, params, opt_state, jnp.zeros((), jnp.int32))

    # The wrapper's state carries masks, targets and keys, so the transformation itself is stateless
    # and can be rebuilt with a fixed key for `update` (its key is only read at init).
    tx = sparsify(optimiser, sparsity, key=jax.random.PRNGKey(0), timing=config.mask_update_timing)

    def epsilon(step):
        # Random actions fill the replay first (tf-agents: RandomPyPolicy for initial_collect_steps;
        # Dopamine: epsilon 1 during min_replay_history), then the linear schedule.
        progress = jnp.clip((step - config.learning_starts) / config.epsilon_decay_steps, 0.0, 1.0)
        scheduled = config.epsilon_start + progress * (config.epsilon_end - config.epsilon_start)
        return jnp.where(step < config.learning_starts, 1.0, scheduled)

    def acting_view(state):
        return state.params

    def act_noise(key, batch_shape, evaluation=False):
        """The epsilon-greedy draws: (uniform [0, 1) per observation, random action per observation)."""
        del evaluation  # the same draws; only the epsilon they are compared with differs
        explore_key, action_key = jax.random.split(key)
        return (jax.random.uniform(explore_key, batch_shape),
                jax.random.randint(action_key, batch_shape, 0, num_actions))

    def policy(params, obs, noise, step, evaluation=False):
        greedy = jnp.argmax(network.apply(params, obs), axis=-1)
        eps = config.eval_epsilon if evaluation else epsilon(step)
        explore_draw, random_actions = noise
        return jnp.where(explore_draw < eps, random_actions, greedy)

    act = common.composed_act(acting_view, act_noise, policy, len(obs_spec.shape))

    def loss_fn(params, target_params, batch):
        q = network.apply(params, batch.obs)
        q_next_target = network.apply(target_params, batch.next_obs)
        discount = config.gamma * batch.discount.astype(jnp.float32)
        reward = batch.reward.astype(jnp.float32)
        action = batch.action.astype(jnp.int32)
        if config.double_q:
            q_next_online = network.apply(params, batch.next_obs)
            td = jax.vmap(rlax.double_q_learning)(q, action, reward, discount, q_next_target, q_next_online)
        else:
            td = jax.vmap(rlax.q_learning)(q, action, reward, discount, q_next_target)
        # mse: td^2 (tf-agents common.element_wise_squared_loss, not rlax's 0.5 td^2): the scale
        # sets the L2 term's weight relative to the TD loss. huber: Dopamine's delta-1 Huber.
        losses = rlax.huber_loss(td, 1.0) if config.loss == "huber" else jnp.square(td)
        return jnp.mean(losses), jnp.mean(q)

    def update(state, batch, key, topology=True):
        del key  # DQN's update is deterministic given the batch.
        (loss, q_mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.target_params, batch
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params, topology=topology)
        params = optax.apply_updates(state.params, updates)
        steps = state.gradient_steps + 1
        refresh = steps % config.target_update_every == 0
        target_params = jax.tree_util.tree_map(
            lambda online, target: jnp.where(refresh, online, target), params, state.target_params
        )
        new_state = DQNState(params, target_params, opt_state, steps)
        return new_state, {"loss": loss, "q_mean": q_mean, "grad_norm": optax.global_norm(grads)}

    def networks(state):
        return {"q": (state.params, get_masks(state.opt_state))}

    # --- analysis hook (sparse_rl.analysis: gradient flow, SNR, dormant neurons, topology) ------
    def analysis_grads(state, batch):
        """{"q": (dense gradient of the TD loss at the masked params, masks, params)}."""
        grads = jax.grad(lambda p: loss_fn(p, state.target_params, batch)[0])(state.params)
        return {"q": (grads, get_masks(state.opt_state), state.params)}

    analysis = AnalysisHook(
        grads=analysis_grads, forward={"q": lambda params, batch: network.apply(params, batch.obs)},
        sparsity={"q": sparsity}, activation=config.activation if config.network == "mlp" else "relu",
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
            learning_starts=config.learning_starts, random_warmup=False, train_every=config.train_every,
            batch_size=config.batch_size, sample_size=config.batch_size, gradient_steps=1,
            n_step=config.n_step, gamma=config.gamma, replay_capacity=config.replay_capacity),
        analysis=analysis,
        mask_update_steps=mask_update_steps(sparsity),
    )


def first_update_step(config: Config, env_id: str) -> int:
    """The env step before which no gradient step runs."""
    return config.learning_starts


def update_layer_macs(config: Config) -> int | None:
    """Multiply-adds of the Q-network's largest hidden layer over one minibatch (None: not an MLP)."""
    if config.network != "mlp":
        return None
    return nets.largest_layer_macs(config.widths, config.width_multiplier, config.batch_size)


SPEC = AgentSpec(name="dqn", loop="offpolicy", config=Config, networks={"q": "sparsity"}, presets=PRESETS,
                 method_defaults=METHOD_DEFAULTS, default_preset=default_preset, make=make,
                 first_update_step=first_update_step, spaces=("Box", ("Discrete",)),
                 update_layer_macs=update_layer_macs)
