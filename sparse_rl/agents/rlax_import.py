"""rlax, imported without the ~0.8 s of distrax and tensorflow-probability it loads eagerly.

`import rlax` imports `rlax._src.distributions`, which imports distrax, which imports
tensorflow-probability: about 0.8 s of a ~1.3 s training-path import on a 2-core CPU (issue 15).
The rlax functions the agents use (q_learning, double_q_learning, huber_loss, truncated GAE,
clipped_surrogate_pg_loss) never touch distrax, but rlax offers no way to import them without its
`__init__`. So, before rlax is imported, `distrax` is registered as a stand-in module that imports
the real distrax on its first attribute access (`distrax.Categorical`, ...) and forwards to it.
The standard library's `importlib.util.LazyLoader` would be the usual tool, but on Python 3.11 the
import statement itself reads `__spec__` and so runs the module at once. This is the one place that
does this; every module that needs rlax imports it from here.
"""

import importlib
import importlib.util
import sys
import types
import typing


class DeferredModule(types.ModuleType):
    """Stands in `sys.modules` for a module until one of its attributes is read: then the real
    module is imported (and replaces the stand-in in `sys.modules`) and the read is forwarded."""

    def __getattr__(self, attr: str):
        return getattr(self.real(), attr)

    def real(self) -> types.ModuleType:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        try:
            return importlib.import_module(name)
        except BaseException:
            sys.modules.setdefault(name, self)  # a failed import leaves the stand-in, to fail again where used
            raise


def defer_import(name: str) -> DeferredModule | None:
    """Put a `DeferredModule` for `name` in `sys.modules` and return it (None when the module is
    already imported, or not installed: then the import fails where it is written, as without this)."""
    spec = None if name in sys.modules else importlib.util.find_spec(name)
    if spec is None:
        return None
    module = DeferredModule(name)
    module.__spec__ = spec
    sys.modules[name] = module
    return module


def import_rlax() -> types.ModuleType:
    """rlax, with distrax deferred. While rlax is imported, its policy_targets.py reads
    `distrax.DistributionLike` for two type annotations (rlax 0.1.6); a placeholder answers those so
    that reading them does not import distrax. Any other read imports the real distrax: a newer rlax
    that needs more at import time loses the saving, never correctness."""
    stand_in = defer_import("distrax")
    if stand_in is not None:
        stand_in.DistributionLike = typing.Any
    try:
        import rlax
    finally:
        if stand_in is not None:
            del stand_in.DistributionLike
    return rlax


rlax = import_rlax()

__all__ = ["rlax"]
