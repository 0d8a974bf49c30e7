"""Agents (DQN, SAC, PPO). Each module declares one `SPEC` (`sparse_rl.agents.base.AgentSpec`);
`spec(name)` returns it, importing the module only then."""

import importlib

from sparse_rl.errors import check_choice

AGENTS = ("dqn", "sac", "ppo")


def spec(name: str):
    """The `AgentSpec` of agent `name` (ConfigError naming `agent` for an unknown one)."""
    check_choice(name, "agent", AGENTS)
    return importlib.import_module(f"sparse_rl.agents.{name}").SPEC


def main_sparsity_of(config_json) -> dict | None:
    """The first network's SparsityConfig (as a dict) of a run's config.json contents
    (`{"run": {"agent": ...}, "agent": {...}}`), or None when the agent or the field is unknown."""
    agent = (config_json.get("run") or {}).get("agent")
    if agent not in AGENTS:
        return None
    value = spec(agent).main_sparsity(config_json.get("agent") or {})
    return value if isinstance(value, dict) else None
