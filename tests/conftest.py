"""Test-session set-up: a persistent JAX compilation cache shared by every test of a worker.

Many tests train the same tiny configuration more than once (determinism, resume, sweeps); with
the cache each distinct program is compiled once per test worker instead of once per run. Child
processes (sweep workers) get it through JAX_COMPILATION_CACHE_DIR. The cache changes how fast
programs are built, not what they compute.
"""

import os

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_dir(tmp_path_factory):
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {name: getattr(jax.config, name) for name in names}
    compilation_cache.reset_cache()  # JAX decides once per process whether the cache is used
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    env_before = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env_before is None:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(jax.config.jax_compilation_cache_dir)
    yield
    if env_before is None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    for name, value in old.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
