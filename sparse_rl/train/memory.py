"""Give memory freed after an XLA compilation back to the operating system.

XLA's CPU compiler allocates a few hundred MiB of working memory per program and frees it when the
program is built, but glibc keeps freed heap pages in the process (measured here: a SAC update's
compilation leaves ~100-150 MiB resident that nothing uses again). Successive compilations then
stack up, so a run's peak memory is the sum of its compilations rather than the largest one.
`malloc_trim(0)` returns those pages; it costs about a millisecond and is called only after a
compilation. No library does this for us (jax leaves allocator policy to the process).
"""

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS (glibc only); True when it could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
