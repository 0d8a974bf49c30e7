"""Sweep safety (issue 7): a malformed grid file is refused before any run starts, naming the line;
one sweep process per sweep directory; the Ray backend's private instance listens on loopback only
and opens no dashboard. (Per-run locking of a run directory by a second `sparse-rl train` process is
checked in test_reliability_kill.py; the sweep's own grid-file syntax errors in test_sweep.py.)"""

import fcntl
import os

import pytest

from sparse_rl.cli import main

sweep_cli = pytest.importorskip("sparse_rl.sweep.cli")


def test_invalid_value_deep_in_grid_file_is_refused_naming_its_line(tmp_path, capsys):
    out = tmp_path / "never"
    for name, text, line in [
        ("range.toml", f'agents = ["dqn"]\nout = "{out}"\nmethods = ["rigl"]\nsparsities = [0.5, 1.5]\nseeds = 1\n', 4),
        ("seeds.yaml", f"agents: [dqn]\nout: {out}\nmethods: [dense]\nseeds: -3\n", 4),
        ("flag.yaml", f"out: {out}\nmethods: [dense]\nset:\n  dqn.gamma: 7\n", 4),
    ]:
        path = tmp_path / name
        path.write_text(text)
        assert main(["sweep", "--grid", str(path)]) == 2, name
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and f"{name} line {line}" in err[0], (name, err)
        assert not out.exists()  # refused before any run (or directory) was created


def test_second_sweep_on_same_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    fd = os.open(out / "sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running sweep holds it
    try:
        code = main(["sweep", "--agent", "dqn", "--env", "CartPole-v1", "--methods", "dense", "--seeds", "0",
                     "--steps", "100", "--no-progress", "--out", str(out)])
    finally:
        os.close(fd)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2 and len(err) == 1 and "another sweep is running" in err[0], err
    assert not [p for p in out.iterdir() if p.name not in ("sweep.lock",)]  # no run started


def test_ray_local_instance_binds_loopback_without_dashboard(monkeypatch):
    ray = pytest.importorskip("ray")
    from sparse_rl.sweep import ray_backend

    calls = []

    def fake_init(**kwargs):
        calls.append((kwargs, os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")))

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    assert ray_backend.start(None, workers=2)
    kwargs, cluster_env = calls[-1]
    assert kwargs["include_dashboard"] is False
    assert kwargs["_node_ip_address"] == "127.0.0.1"
    assert kwargs["address"] == "local"  # never attaches to another cluster by accident
    assert cluster_env == "0"  # Ray's single-machine mode while it starts: servers bind to 127.0.0.1
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == before  # restored afterwards
    # With an address, the driver connects to that cluster and starts nothing of its own.
    assert ray_backend.start("ray://10.0.0.1:10001", workers=2)
    kwargs, _ = calls[-1]
    assert kwargs["address"] == "ray://10.0.0.1:10001" and "include_dashboard" not in kwargs
