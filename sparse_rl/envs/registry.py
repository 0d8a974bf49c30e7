"""Which environment ids the library supports, and how each family is configured.

Any gymnasium id works: the families below get the paper's wrappers (Atari preprocessing) and
exact snapshot support; every other id that `gymnasium.make` resolves (a registered id, or
`module:Id`, which imports `module` first so that it can register `Id`) is family `"gym"`.
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Any, Callable

from sparse_rl.errors import ConfigError, check
from sparse_rl.extras import require

CLASSIC_IDS = ("CartPole-v1", "CartPole-v0", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1",
               "MountainCarContinuous-v0")
MUJOCO_IDS = tuple(f"{name}-v5" for name in (
    "HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid", "Swimmer", "Reacher",
    "InvertedPendulum", "InvertedDoublePendulum", "Pusher", "HumanoidStandup"))
_ATARI_RE = re.compile(r"^ALE/([A-Za-z0-9]+)-v5$")

FAMILIES = ("classic", "mujoco", "atari", "gym")

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

_ALLOWED_ENVS = ("a registered gymnasium id (e.g. CartPole-v1, HalfCheetah-v5, ALE/Pong-v5) or "
                 "module:Id, whose module registers Id when imported")
# Ids that `register_env_factory` gave to Python callables (in this process only).
FACTORY_NAMESPACE = "sparse_rl_factory"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _atari_games() -> set[str]:
    return set(require("ale_py.roms", "env (Atari)").get_all_rom_ids())


def _import_env_module(env_id: str) -> None:
    """`module:Id` -> import `module` (which registers `Id`), naming `env` if it cannot be imported."""
    module = env_id.split(":", 1)[0]
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ConfigError("env", f"cannot import module {module!r} of {env_id!r} ({e})",
                          "module:Id with an importable module that registers Id") from None


def _registered(env_id: str) -> bool:
    import gymnasium as gym

    if ":" in env_id:
        _import_env_module(env_id)
        env_id = env_id.split(":", 1)[1]
    return env_id in gym.registry


def _refuse_other_atari_ids(env_id: str) -> None:
    """ale-py also registers v0/v4 ids (PongNoFrameskip-v4, ...) without the paper's protocol
    (sticky actions, preprocessing, frame stacking): Atari runs go through ALE/<Game>-v5."""
    import gymnasium as gym

    spec = gym.registry[env_id.split(":", 1)[-1]]
    if str(spec.entry_point).startswith("ale_py"):
        game = "".join(w.title() for w in str(spec.kwargs.get("game", "")).split("_"))
        raise ConfigError("env", f"{env_id} is an ale-py id without the paper's Atari protocol; "
                          f"did you mean ALE/{game}-v5?", "ALE/<Game>-v5, with --sticky-actions, "
                          "--frame-skip, --full-action-space, --terminal-on-life-loss")


def close_env_ids(env_id: str) -> list[str]:
    """The registered ids closest to a misspelt `env_id` (at most 3)."""
    import gymnasium as gym

    known = dict.fromkeys(CLASSIC_IDS + MUJOCO_IDS + tuple(k for k in gym.registry if not k.startswith("ALE/")))
    if isinstance(env_id, str) and env_id.startswith("ALE/"):
        known.update(dict.fromkeys(f"ALE/{''.join(w.title() for w in g.split('_'))}-v5"
                                   for g in _atari_games()))
    return difflib.get_close_matches(str(env_id), list(known), n=3, cutoff=0.6)


def env_family(env_id: str) -> str:
    """`"classic"`, `"mujoco"`, `"atari"` (the paper's settings) or `"gym"` (any other id that
    gymnasium resolves); anything else raises `ConfigError` naming `env`, with the nearest ids."""
    if isinstance(env_id, str) and env_id:
        if env_id in CLASSIC_IDS:
            return "classic"
        if env_id in MUJOCO_IDS:
            return "mujoco"
        m = _ATARI_RE.match(env_id)
        if m:
            if _snake(m.group(1)) in _atari_games():
                return "atari"
        elif _registered(env_id):
            _refuse_other_atari_ids(env_id)
            return "gym"
    close = close_env_ids(env_id)
    if close:
        raise ConfigError("env", f"unknown environment {env_id!r}; did you mean {' or '.join(close)}?")
    raise ConfigError("env", f"unknown environment {env_id!r}", _ALLOWED_ENVS)


def register_env_factory(factory: Callable[[], Any], name: str | None = None) -> str:
    """Register a callable returning a `gymnasium.Env` (with any wrappers) under an id that
    every function taking an env id accepts, and return that id. The registration lives in this
    process only: a run directory of such an env is loaded with `sparse_rl.load(dir, env=factory)`."""
    import gymnasium as gym

    check(callable(factory), "env", f"must be an env id or a callable returning a gymnasium.Env, "
          f"got {factory!r}")
    base = name or getattr(factory, "__name__", "env")
    base = re.sub(r"[^A-Za-z0-9_]", "_", base).strip("_") or "env"
    version = 0
    while f"{FACTORY_NAMESPACE}/{base}-v{version}" in gym.registry:
        if gym.registry[f"{FACTORY_NAMESPACE}/{base}-v{version}"].entry_point is factory:
            return f"{FACTORY_NAMESPACE}/{base}-v{version}"
        version += 1
    env_id = f"{FACTORY_NAMESPACE}/{base}-v{version}"
    gym.register(env_id, entry_point=factory, disable_env_checker=True)
    return env_id


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
