"""Which environment ids the library supports, and how each family is configured."""

from __future__ import annotations

import re
from typing import Any

from sparse_rl.errors import ConfigError, check

CLASSIC_IDS = ("CartPole-v1", "CartPole-v0", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1",
               "MountainCarContinuous-v0")
MUJOCO_IDS = tuple(f"{name}-v5" for name in (
    "HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid", "Swimmer", "Reacher",
    "InvertedPendulum", "InvertedDoublePendulum", "Pusher", "HumanoidStandup"))
_ATARI_RE = re.compile(r"^ALE/([A-Za-z0-9]+)-v5$")

FAMILIES = ("classic", "mujoco", "atari")

# The paper's Atari protocol (Machado et al. 2018 sticky actions; Dopamine-style preprocessing).
ATARI_DEFAULTS: dict[str, Any] = {
    "repeat_action_probability": 0.25,  # sticky actions
    "frame_skip": 4,
    "frame_stack": 4,
    "screen_size": 84,
    "noop_max": 30,
    "terminal_on_life_loss": False,
    "full_action_space": False,
    "max_episode_steps": 27_000,       # agent steps = 108k frames at frame_skip 4
}

_ALLOWED_ENVS = ("classic control: " + ", ".join(CLASSIC_IDS) + "; MuJoCo: "
                 + ", ".join(MUJOCO_IDS) + "; Atari: ALE/<Game>-v5 for any game ale-py ships, "
                 "e.g. ALE/Pong-v5, ALE/Breakout-v5")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _atari_games() -> set[str]:
    import ale_py.roms
    return set(ale_py.roms.get_all_rom_ids())


def env_family(env_id: str) -> str:
    """`"classic"`, `"mujoco"` or `"atari"`; anything else raises `ConfigError` naming `env`."""
    if isinstance(env_id, str):
        if env_id in CLASSIC_IDS:
            return "classic"
        if env_id in MUJOCO_IDS:
            return "mujoco"
        m = _ATARI_RE.match(env_id)
        if m and _snake(m.group(1)) in _atari_games():
            return "atari"
    raise ConfigError("env", f"unknown environment {env_id!r}", _ALLOWED_ENVS)


def atari_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge and validate the Atari keyword overrides."""
    for key in overrides:
        if key not in ATARI_DEFAULTS:
            raise ConfigError(key, "unknown Atari setting", ", ".join(ATARI_DEFAULTS))
    s = {**ATARI_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    p = s["repeat_action_probability"]
    check(isinstance(p, (int, float)) and 0.0 <= p <= 1.0, "repeat_action_probability",
          f"must be a probability, got {p!r}", "0 <= p <= 1")
    for key, low in (("frame_skip", 1), ("frame_stack", 1), ("screen_size", 8), ("noop_max", 0),
                     ("max_episode_steps", 1)):
        v = s[key]
        check(isinstance(v, int) and not isinstance(v, bool) and v >= low, key,
              f"must be an int >= {low}, got {v!r}")
    for key in ("terminal_on_life_loss", "full_action_space"):
        check(isinstance(s[key], bool), key, f"must be a bool, got {s[key]!r}", "True, False")
    return s
