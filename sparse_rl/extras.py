"""Optional dependencies: imported only where used, and a missing one is a one-line error naming
the extra that brings it (`pip install "sparse_rl[EXTRA]"`)."""

import importlib
from types import ModuleType

from sparse_rl.errors import ConfigError

# Which extra of pyproject.toml installs each optional top-level module.
EXTRAS = {"ale_py": "atari", "cv2": "atari", "mujoco": "mujoco", "ray": "ray", "wandb": "wandb",
          "moviepy": "video", "flax": "examples"}


def require(module: str, needed_for: str) -> ModuleType:
    """`importlib.import_module(module)`, or a ConfigError naming `needed_for` and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], "all")
        raise ConfigError(needed_for, f"needs the optional package {module.split('.')[0]!r}",
                          f'pip install "sparse_rl[{extra}]"') from None
