"""`sparse-rl train`'s persistent compilation cache: where it lives, and that it changes speed only."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_rl.train.compile_cache import ENV_VAR, default_cache_dir, enable_compile_cache, resolve_cache_dir


@pytest.fixture
def clean_env(monkeypatch):
    for var in (ENV_VAR, "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_cache_dir_precedence(clean_env, tmp_path):
    clean_env.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == default_cache_dir() == tmp_path / "home" / ".cache" / "sparse_rl" / "xla"
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "sparse_rl" / "xla"
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert resolve_cache_dir() == tmp_path / "jax"
    clean_env.setenv(ENV_VAR, str(tmp_path / "ours"))
    assert resolve_cache_dir() == tmp_path / "ours"
    assert resolve_cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    for off in ("off", "OFF", "none", "0"):
        assert resolve_cache_dir(off) is None
    clean_env.setenv(ENV_VAR, "off")
    assert resolve_cache_dir() is None
    assert resolve_cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"  # the flag wins


def test_unusable_cache_dir_means_no_cache(clean_env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert enable_compile_cache(str(blocker / "xla")) is None
    assert enable_compile_cache("off") is None


def _train(out: Path, cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "JAX_COMPILATION_CACHE_DIR")}
    cmd = [sys.executable, "-m", "sparse_rl.cli", "train", "--env", "CartPole-v1", "--steps", "800",
           "--dqn.learning-starts", "200", "--eval-every", "400", "--eval-episodes", "2",
           "--checkpoint-every", "0", "--compile-cache", cache, "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out / "metrics.csv") as f:
        rows = [{k: v for k, v in row.items() if k not in ("wall_time", "sps")}
                for row in csv.DictReader(f)]
    return {"summary": json.loads((out / "summary.json").read_text()), "rows": rows}


def test_cached_programs_give_the_same_run(tmp_path):
    cache = tmp_path / "xla"
    cold = _train(tmp_path / "cold", str(cache))
    entries = list(cache.iterdir())
    assert entries, "the first run wrote nothing to the cache"
    warm = _train(tmp_path / "warm", str(cache))
    off = _train(tmp_path / "off", "off")
    assert warm["rows"] == cold["rows"] == off["rows"]
    assert warm["summary"]["eval_returns"] == cold["summary"]["eval_returns"] == off["summary"]["eval_returns"]
    assert warm["summary"]["compile_seconds"] < cold["summary"]["compile_seconds"]
    assert not (tmp_path / "off_cache").exists()
