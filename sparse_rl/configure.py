"""The one place where a run's settings are completed: preset choice, the shortcut flags with each
method's paper schedule, overrides and the checks that need the whole picture.

Both doors use it, `sparse-rl train` (cli.py) and `sparse_rl.train(...)` (api.py), so that the same
request gives the same config.json through either.
"""

import dataclasses
from typing import Any

from sparse_rl import envs
from sparse_rl.envs.compat import preset_family
from sparse_rl.errors import ConfigError, check_choice
from sparse_rl import agents
from sparse_rl.train.runner import RunConfig

@dataclasses.dataclass(frozen=True)
class Shortcuts:
    """Settings that apply to every network of the agent at once (None: the preset's)."""

    method: str | None = None
    """Sparsity method of every network: dense, static, prune, set or rigl (None: the preset's)."""
    sparsity: float | None = None
    """Target fraction of zeros in the sparsified kernels of every network, in [0, 1); biases stay dense (None: the preset's)."""
    distribution: str | None = None
    """Per-layer sparsity distribution of every network: erk or uniform (None: the preset's)."""
    update_every: int | None = None
    """Topology update interval in gradient steps (None: the paper's for the method)."""
    drop_fraction: float | None = None
    """Initial drop fraction of SET and RigL (None: the paper's for the method)."""


def choose_preset(agent: str, env_id: str, preset: str | None = None) -> str:
    """`preset` if given (checked), else the one that fits the env: the paper's for its families;
    for any other env, by its spaces (images: atari; else classic for discrete actions, mujoco for
    continuous ones; `envs.compat.preset_family`)."""
    spec = agents.spec(agent)
    if preset is None:
        family = envs.env_family(env_id)
        if family == "gym":
            family = preset_family(envs.env_spec(env_id))
        preset = spec.default_preset(family)
    check_choice(preset, "preset", tuple(spec.presets))
    return preset


def apply_shortcuts(agent: str, preset: str, config, shortcuts: Shortcuts):
    """Agent config with the shortcuts applied to each of its sparsity configs.

    A method chosen this way takes the paper's schedule defaults for that method and preset
    (update interval, drop fraction: the agent module's METHOD_DEFAULTS) unless given too.
    """
    spec = agents.spec(agent)
    defaults = spec.method_defaults.get(preset, {})
    changes = {}
    for field, sparsity_config in spec.sparsity_configs(config).items():
        update = {}
        if shortcuts.method is not None:
            update["method"] = shortcuts.method
            if shortcuts.method != sparsity_config.method:
                update.update(defaults.get(shortcuts.method, {}))
        for name in ("sparsity", "distribution", "update_every", "drop_fraction"):
            value = getattr(shortcuts, name)
            if value is not None:
                update[name] = value
        if update:
            changes[field] = dataclasses.replace(sparsity_config, **update)
    return dataclasses.replace(config, **changes) if changes else config


def apply_overrides(config, overrides: dict[str, Any], name: str = "config"):
    """`config` (a dataclass) with fields replaced; a nested dataclass field takes a dict of its
    own fields. Unknown names are a ConfigError listing the allowed ones."""
    fields = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ConfigError(key, f"is not a setting of {name}", ", ".join(sorted(fields)))
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = apply_overrides(current, value, f"{name}.{key}")
        changes[key] = value
    return dataclasses.replace(config, **changes)


def first_update_step(agent: str, config, env_id: str) -> int:
    """The env step before which the agent makes no gradient step (the agent's spec says)."""
    return agents.spec(agent).first_update_step(config, env_id)


def run_warnings(run: RunConfig, config) -> list[str]:
    """What a user should hear before a run starts: for now, that it will make no gradient step
    (it would only evaluate its initial networks)."""
    first = first_update_step(run.agent, config, run.env)
    if run.steps <= first:
        return [f"steps={run.steps} <= {first}, the step of the first gradient update ({run.agent}: "
                "learning starts or rollout size): this run will not train; give more steps"]
    return []
