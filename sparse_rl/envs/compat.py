"""Which environments each agent can train on, and which preset fits an environment.

Checked before anything runs, from the env's dm_env specs, so that a mismatch is one line naming
what the agent needs instead of a shape error deep inside a jitted function.
"""

from dm_env import specs

from sparse_rl.errors import ConfigError

def space_name(spec) -> str:
    return "Discrete" if isinstance(spec, specs.DiscreteArray) else "Box"


def check_agent_spaces(agent: str, spaces: tuple[str, tuple[str, ...]], env_spec) -> None:
    """Raise ConfigError naming `env` unless `agent`, which accepts `spaces` (its spec's
    (observations, actions) in the words of the message), can act in `env_spec`'s spaces."""
    observations, actions = spaces
    obs, act = space_name(env_spec.observation_spec), space_name(env_spec.action_spec)
    if obs != observations or act not in actions:
        needs = f"{observations} observations and {' or '.join(actions)} actions"
        raise ConfigError("env", f"{agent} needs {needs}; {env_spec.env_id} has {obs} "
                          f"observations and {act} actions",
                          f"an env with {needs}")


def preset_family(env_spec) -> str:
    """The family whose preset fits `env_spec`: its own for the paper's envs; else "atari" for
    image observations ([H, W, C]), "classic" for discrete actions, "mujoco" for continuous ones."""
    if env_spec.family != "gym":
        return env_spec.family
    if len(env_spec.observation_spec.shape) == 3:
        return "atari"
    return "classic" if isinstance(env_spec.action_spec, specs.DiscreteArray) else "mujoco"
