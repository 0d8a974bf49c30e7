"""What a sweep will cost before it runs: env steps, memory per run and CPU hours.

CPU hours come from measured throughput: the steady env steps per second of one run on one CPU
core, measured on this project's 2-core x86_64 machine with the presets' networks
(README "Benchmarks", `benchmarks/results/*.json`; sparse methods cost 0.9-1.0x dense there).
Memory per run is the replay buffer (computed from its layout, `ReplayBuffer.nbytes`) plus the
process (JAX, the agent and its compiled programs: 550-700 MiB peak in the memory tables).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

# (agent, preset) -> steady env steps per second of one run on one core (dense, the preset's
# network). Sources: benchmarks/results/dqn_CartPole_v1.json (355-379 over methods),
# dqn_ALE_Pong_v5.json (74-94), sac_HalfCheetah_v5.json (183-221), ppo_HalfCheetah_v5.json
# (1762-1989). PPO's classic and atari presets were not measured.
MEASURED_SPS = {("dqn", "classic"): 360.0, ("dqn", "atari"): 80.0, ("sac", "mujoco"): 200.0,
                ("ppo", "mujoco"): 1800.0}
PROCESS_MIB = 700.0  # README memory tables: a run's peak before its replay buffer fills


@dataclasses.dataclass(frozen=True)
class GroupCost:
    """Cost of the runs of one (agent, env, preset)."""

    agent: str
    env: str
    preset: str
    runs: int
    env_steps: int
    memory_mib: float          # per run
    sps: float | None          # measured steps/s per core, None when not measured

    @property
    def cpu_hours(self) -> float | None:
        return None if self.sps is None else self.env_steps / self.sps / 3600.0


def replay_mib(agent: str, config, env_spec) -> float:
    """Replay memory of one off-policy run (0 for PPO), from the buffer's layout."""
    from sparse_rl.replay import ReplayBuffer

    if agent == "ppo":
        return 0.0
    obs, action = env_spec.observation_spec, env_spec.action_spec
    frame_stack = obs.shape[-1] if env_spec.family == "atari" else None
    buffer = ReplayBuffer(config.replay_capacity, obs.shape, obs.dtype, action_shape=action.shape,
                          action_dtype=action.dtype, frame_stack=frame_stack)
    return buffer.nbytes / 2**20


def preset_of(argv: list[str], agent: str, env: str) -> str:
    from sparse_rl.configure import choose_preset

    given = argv[argv.index("--preset") + 1] if "--preset" in argv[:-1] else None
    return choose_preset(agent, env, given)


def estimate(cells, parse) -> list[GroupCost]:
    """One GroupCost per (agent, env, preset) of `cells` (sweep.grid.Cell); `parse(argv)` ->
    (RunConfig, agent config), called once per group."""
    from sparse_rl import envs

    groups: OrderedDict = OrderedDict()
    for cell in cells:
        key = (cell.agent, cell.env, preset_of(cell.argv, cell.agent, cell.env))
        groups.setdefault(key, []).append(cell)
    out = []
    for (agent, env, preset), members in groups.items():
        run, config = parse(members[0].argv)
        spec = envs.env_spec(env, **run.env_options())
        out.append(GroupCost(agent, env, preset, len(members), sum(c.steps for c in members),
                             PROCESS_MIB + replay_mib(agent, config, spec),
                             MEASURED_SPS.get((agent, preset))))
    return out


def _hours(h: float) -> str:
    return f"{h:,.1f} h" if h < 48 else f"{h / 24:,.1f} days"


def format_estimate(groups: list[GroupCost], workers: int) -> str:
    """Lines for `sweep --dry-run`: per group and in total, with the wall time on `workers`
    cores at one run per core."""
    lines = ["cost estimate (CPU, one run per core; throughput measured on a 2-core x86_64 machine, "
             "README Benchmarks):"]
    total_steps, total_hours, unknown = 0, 0.0, []
    for g in groups:
        total_steps += g.env_steps
        hours = g.cpu_hours
        if hours is None:
            unknown.append(f"{g.agent}/{g.preset}")
            cost = "CPU hours: not measured for this agent and preset"
        else:
            total_hours += hours
            cost = f"{g.sps:,.0f} steps/s per core -> {_hours(hours)} of CPU"
        lines.append(f"  {g.agent} {g.env} ({g.preset}): {g.runs} runs, {g.env_steps:,} env steps, "
                     f"~{g.memory_mib / 1024:,.1f} GiB per run; {cost}")
    peak = max((g.memory_mib for g in groups), default=0.0) * max(workers, 1)
    lines.append(f"  total: {sum(g.runs for g in groups)} runs, {total_steps:,} env steps, "
                 f"{_hours(total_hours)} of CPU" + (f" (+ unmeasured: {', '.join(dict.fromkeys(unknown))})" if unknown else "")
                 + f"; on {workers} workers ~{_hours(total_hours / max(workers, 1))} and up to "
                 f"~{peak / 1024:,.1f} GiB of memory")
    lines.append("  faster: a GPU (pip install \"sparse_rl[cuda]\"), more workers, a Ray cluster "
                 "(--backend ray --ray-address HOST:PORT), --vectorize-seeds")
    return "\n".join(lines)
