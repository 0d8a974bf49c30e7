"""The agent contract: what an agent module declares (`AgentSpec`) and what `make()` returns (an
agent with its loop needs resolved), so that the env loops never probe an agent or import one.

An agent module (`dqn`, `sac`, `ppo`) exposes:
  - `Config`: frozen dataclass of documented fields, nested `SparsityConfig`s, validated on
    construction (ConfigError naming the field);
  - `PRESETS: dict[str, Config]` (names like "classic", "atari", "mujoco"),
    `default_preset(env_family: str) -> str` and `METHOD_DEFAULTS` (per preset, per method: the
    paper's schedule defaults, e.g. update interval and drop fraction);
  - `make(config, env_spec, total_steps) -> Agent | OnPolicyAgent`: builds the jitted pure
    functions (the sparsity schedule windows that are given as fractions are resolved against
    `total_steps` here) and resolves what its loop needs (`OffPolicyNeeds` / `OnPolicyNeeds`);
  - `SPEC: AgentSpec`, the one declaration the rest of the library asks: loop kind, networks and
    the config field holding each network's SparsityConfig, presets, method defaults, `make`.
    `sparse_rl.agents.spec(name)` returns it.
Agent state is a NamedTuple pytree of arrays only, so it can be checkpointed, vmapped over seeds and
compared leaf by leaf.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

LOOPS = ("offpolicy", "onpolicy")


class OffPolicyNeeds(NamedTuple):
    """What the off-policy loop (one env per run, replay, update) needs, resolved by `make`."""

    learning_starts: int  # env steps before the first update
    random_warmup: bool  # act uniformly at random in the action bounds before `learning_starts` (SAC)
    train_every: int  # env steps between update calls
    batch_size: int  # the replay must hold this many transitions before the first update
    sample_size: int  # transitions sampled per update call (one fresh minibatch per gradient step)
    gradient_steps: int  # gradient steps one update call runs
    n_step: int
    gamma: float
    replay_capacity: int


class OnPolicyNeeds(NamedTuple):
    """What the on-policy loop (rollouts from a vector env, one update per rollout) needs."""

    num_envs: int
    rollout_length: int
    iterations: int  # update calls in the run
    gradient_steps: int  # minibatch gradient steps one update call runs
    discrete: bool  # else Box actions, clipped to [action_low, action_high] when stepping the env
    action_low: Any
    action_high: Any
    obs_shape: tuple
    obs_dtype: Any
    action_shape: tuple
    action_dtype: Any
    # Reward scaling by the running std of the discounted return (agents.normalize.RewardScaling), or None.
    reward_scaling: Any


class Rollout(NamedTuple):
    """One rollout from a vector env, time-major: arrays are [T, N, ...] unless noted.

    `obs` are the raw (unnormalised) observations the actions were chosen from; `action` the raw
    (unclipped) actions; `log_prob` and `value` as returned by `act_with_info`; `reward` the
    (possibly scaled) rewards; `terminated` / `truncated` whether the episode ended after the step;
    `final_value` V(final observation) where `truncated` (bootstrapped into the reward unless the
    step also terminated), else 0;
    `last_value` [N] V(observation after the last step).
    """

    obs: Any
    action: Any
    log_prob: Any
    value: Any
    reward: Any
    terminated: Any
    truncated: Any
    final_value: Any
    last_value: Any


def example_rollout(needs: OnPolicyNeeds) -> Rollout:
    """Shapes and dtypes of a rollout (for reading the update's metric names without compiling)."""
    T, N = needs.rollout_length, needs.num_envs
    scalar = jax.ShapeDtypeStruct((T, N), np.float32)
    flag = jax.ShapeDtypeStruct((T, N), np.bool_)
    return Rollout(
        obs=jax.ShapeDtypeStruct((T, N, *needs.obs_shape), needs.obs_dtype),
        action=jax.ShapeDtypeStruct((T, N, *needs.action_shape), needs.action_dtype),
        log_prob=scalar, value=scalar, reward=scalar, terminated=flag, truncated=flag, final_value=scalar,
        last_value=jax.ShapeDtypeStruct((N,), np.float32),
    )


class Agent(NamedTuple):
    """An off-policy agent: jitted pure functions over an agent state (a NamedTuple pytree).

    Acting is split in three so that the env loops pay for the network only, once per env step
    (issue 15: the PRNG draws cost more than a small network): `acting_view(state)` is all that
    acting reads; `act_noise(key, batch_shape, evaluation)` makes every random draw of one act
    call and nothing else (so a loop draws the noise of many steps in one call, vmapped over the
    steps' keys: the same bits); `policy(view, obs, noise, step, evaluation)` is deterministic.
    `act` is their composition, kept for single calls (the Python API, tests).
    """

    # key -> state (params already masked, optimiser states built by `sparsify`).
    init: Callable[[jax.Array], Any]
    # (state, obs batch [B, ...], key, env step (int), evaluation: bool static) -> actions [B, ...];
    # = policy(acting_view(state), obs, act_noise(key, (B,), evaluation), step, evaluation).
    act: Callable[..., jax.Array]
    # (state, batch, key, topology=True) -> (state, metrics dict of scalars). One call may run
    # several gradient steps (lax.scan) when the agent is configured so. `topology` (static): False
    # compiles the update without the mask-update branch; only valid when no mask update is due in
    # the call (see `mask_update_steps`).
    update: Callable[..., tuple[Any, dict[str, jax.Array]]]
    # state -> {network name: (params, masks)}, e.g. {"q": ...} or {"actor": ..., "critic1": ...}.
    # Used for measured sparsity, analysis and checkpoint statistics.
    networks: Callable[[Any], dict[str, tuple[Any, Any]]]
    # What the off-policy loop needs (learning starts, sample size, ...).
    loop: OffPolicyNeeds
    # state -> what acting reads (DQN: the online params; SAC: the actor params); a pure selection
    # that works on any pytree shaped like the state (the loops apply it to vmap axes too).
    acting_view: Callable[[Any], Any]
    # (key, batch_shape: tuple static, evaluation: bool static) -> noise pytree (arrays only,
    # possibly empty): exactly the draws `act` makes from `key`. Not jitted: the loop jits and
    # vmaps it over many steps' keys.
    act_noise: Callable[..., Any]
    # (view, obs batch, noise, env step, evaluation: bool static) -> actions; uses no PRNG.
    policy: Callable[..., jax.Array]
    # Optional `sparse_rl.analysis.gradient_flow.AnalysisHook` (dense gradients, forward functions
    # and resolved sparsity configs per network) for the training-time analysis; None: no analysis.
    analysis: Any = None
    # Sorted values of `state.gradient_steps` (before the step) at which some network's masks may
    # change (`sparse_rl.sparsity.mask_update_steps`, union over networks); None: unknown, always
    # call `update` with topology=True.
    mask_update_steps: Any = None


class OnPolicyAgent(NamedTuple):
    """An on-policy agent: `Agent`'s functions (update takes a `Rollout`) plus what rollouts need.

    Acting is split as in `Agent`; `policy_with_info` and `value` read the acting view too."""

    init: Callable
    act: Callable
    update: Callable
    networks: Callable
    # (state, obs [B, ...], key) -> (action, log_prob [B], value [B]); raw (unclipped) actions;
    # = policy_with_info(acting_view(state), obs, act_noise(key, (B,), False)).
    act_with_info: Callable
    # (acting view, obs [B, ...]) -> value [B].
    value: Callable
    # What the on-policy loop needs (rollout shape, iterations, action bounds, reward scaling, ...).
    loop: OnPolicyNeeds
    # As `Agent`: state -> what acting reads (PPO: actor and value params, observation statistics).
    acting_view: Callable
    act_noise: Callable
    policy: Callable
    # (view, obs [B, ...], noise) -> (action, log_prob [B], value [B]); uses no PRNG.
    policy_with_info: Callable
    # (state, rollout) -> loss terms over the whole rollout at the current params (diagnostics).
    loss: Callable | None = None
    # Numbers for diagnostics and tests (total gradient steps, resolved sparsity, weight decays).
    info: dict | None = None
    # (state, rollout) -> the flat batch the analysis hook reads; None: the rollout itself.
    analysis_batch: Callable | None = None
    analysis: Any = None
    # As `Agent.mask_update_steps`; `update(..., topology=False)` is valid for an update none of
    # whose minibatch steps is one.
    mask_update_steps: Any = None


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """An agent module's declaration: everything outside the agent asks this, never the module."""

    name: str
    loop: str  # one of LOOPS
    config: type  # the Config dataclass
    # Network name (as `agent.networks(state)` names it) -> the config field holding its SparsityConfig.
    networks: Mapping[str, str]
    presets: Mapping[str, Any]  # preset name -> Config
    method_defaults: Mapping[str, Mapping[str, Mapping[str, Any]]]  # preset -> method -> SparsityConfig fields
    default_preset: Callable[[str], str]  # env family -> preset name
    make: Callable[..., Any]  # (config, env_spec, total_steps) -> Agent | OnPolicyAgent
    # (config, env_id) -> the env step before which the agent makes no gradient step (learning
    # starts, or one rollout), known before the env or the agent is built (run warnings, costs).
    first_update_step: Callable[[Any, str], int]
    # (observations, actions) the agent accepts, as gymnasium space names ("Box", "Discrete"):
    # checked from the env's specs before anything is written (envs.compat.check_agent_spaces).
    spaces: tuple[str, tuple[str, ...]]
    # config -> multiply-adds of the largest hidden layer in one gradient step (minibatch rows x
    # fan-in x fan-out, `nets.largest_layer_macs`), or None when a torso is not an MLP. Read
    # before JAX starts, to size its CPU thread pool (`sparse_rl.train.dispatch.use_cpu_threads`).
    update_layer_macs: Callable[[Any], int | None]

    def __post_init__(self):
        if self.loop not in LOOPS:
            raise ValueError(f"AgentSpec {self.name}: loop must be one of {LOOPS}, got {self.loop!r}")

    @property
    def sparsity_fields(self) -> tuple[str, ...]:
        """The config fields holding SparsityConfigs, in declaration order, each once."""
        return tuple(dict.fromkeys(self.networks.values()))

    def sparsity_configs(self, config) -> dict[str, Any]:
        """{field: SparsityConfig} of an agent config (a dataclass, or its dict from config.json)."""
        get = config.get if isinstance(config, Mapping) else lambda f: getattr(config, f)
        return {field: get(field) for field in self.sparsity_fields}

    def main_sparsity(self, config):
        """The first network's SparsityConfig (names runs: method and level)."""
        return self.sparsity_configs(config)[self.sparsity_fields[0]]

    def preset_for(self, family: str):
        """The default preset's Config for an env family."""
        return self.presets[self.default_preset(family)]
