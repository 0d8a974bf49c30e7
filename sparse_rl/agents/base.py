"""What every agent module provides, and what the runner relies on.

An agent module (`dqn`, `sac`, `ppo`) exposes:
  - `Config`: frozen dataclass of documented fields, nested `SparsityConfig`s, validated on
    construction (ConfigError naming the field);
  - `PRESETS: dict[str, Config]` (names like "classic", "atari", "mujoco") and
    `default_preset(env_family: str) -> str`;
  - `make(config, env_spec, total_steps) -> Agent`: builds the jitted pure functions (the
    sparsity schedule windows that are given as fractions are resolved against `total_steps`
    here);
  - `LOOP`: "offpolicy" (DQN, SAC: step one env, replay, update) or "onpolicy" (PPO: rollouts
    from a vector env, then epochs of minibatch updates).
Agent state is a NamedTuple pytree of arrays only, so it can be checkpointed, vmapped over seeds and
compared leaf by leaf.
"""

from typing import Any, Callable, NamedTuple

import jax


class Agent(NamedTuple):
    """Jitted pure functions over an agent state (a NamedTuple pytree)."""

    # key -> state (params already masked, optimiser states built by `sparsify`).
    init: Callable[[jax.Array], Any]
    # (state, obs batch [B, ...], key, env step (int), evaluation: bool static) -> actions [B, ...].
    act: Callable[..., jax.Array]
    # (state, batch, key, topology=True) -> (state, metrics dict of scalars). One call may run
    # several gradient steps (lax.scan) when the agent is configured so. `topology` (static): False
    # compiles the update without the mask-update branch; only valid when no mask update is due in
    # the call (see `mask_update_steps`).
    update: Callable[..., tuple[Any, dict[str, jax.Array]]]
    # state -> {network name: (params, masks)}, e.g. {"q": ...} or {"actor": ..., "critic1": ...}.
    # Used for measured sparsity, analysis and checkpoint statistics.
    networks: Callable[[Any], dict[str, tuple[Any, Any]]]
    # Optional `sparse_rl.analysis.gradient_flow.AnalysisHook` (dense gradients, forward functions
    # and resolved sparsity configs per network) for the training-time analysis; None: no analysis.
    analysis: Any = None
    # Sorted values of `state.gradient_steps` (before the step) at which some network's masks may
    # change (`sparse_rl.sparsity.mask_update_steps`, union over networks); None: unknown, always
    # call `update` with topology=True.
    mask_update_steps: Any = None
