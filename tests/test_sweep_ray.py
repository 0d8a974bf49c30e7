"""The Ray backend on a local Ray instance: the same run directories as the local backend."""

import json
import os

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from sparse_rl.sweep import cli as sweep_cli  # noqa: E402
from sparse_rl.sweep import ray_backend  # noqa: E402
from sparse_rl.train.metrics import read_metrics  # noqa: E402
from sparse_rl.train.rundir import run_status  # noqa: E402

TRAIN = ["--steps", "200", "--eval-every", "100", "--eval-episodes", "2", "--log-every", "50",
         "--checkpoint-every", "100", "--analysis-every", "0", "--set", "dqn.widths=16,16",
         "--dqn.learning-starts", "100", "--dqn.batch-size", "32"]
GRID = ["--agent", "dqn", "--env", "CartPole-v1", "--methods", "rigl", "--sparsities", "0.8",
        "--seeds", "0,1", "--workers", "2", "--no-progress", *TRAIN]
TIMING = ("wall_time", "sps")


def _ray_listen_addresses() -> set:
    """Addresses that the processes of our Ray instance listen on."""
    import os

    import psutil

    me = psutil.Process(os.getpid())
    procs = {p.pid for p in me.children(recursive=True)}
    return {c.laddr.ip for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in procs}


def test_ray_backend_matches_local_backend(tmp_path):
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    assert sweep_cli.main([*GRID, "--out", str(local_out)]) == 0
    try:
        assert ray_backend.start(None, workers=2)
        # A local instance listens on loopback only, without a dashboard.
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        assert _ray_listen_addresses() <= {"127.0.0.1", "::ffff:127.0.0.1"}
        assert sweep_cli.main([*GRID, "--out", str(ray_out), "--backend", "ray"]) == 0
        cells = json.loads((ray_out / "sweep.json").read_text())["cells"]
        assert len(cells) == 2 and all(c["status"] == "complete" for c in cells)
        for c in cells:
            a, b = read_metrics(local_out / c["id"] / "metrics.csv"), read_metrics(ray_out / c["id"] / "metrics.csv")
            assert list(a) == list(b)
            for name in a:
                if name not in TIMING:
                    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
            sa = json.loads((local_out / c["id"] / "summary.json").read_text())
            sb = json.loads((ray_out / c["id"] / "summary.json").read_text())
            assert sa["eval_returns"] == sb["eval_returns"] and sa["networks"] == sb["networks"]
        # Same skip semantics: a re-run trains nothing.
        before = {c["id"]: (ray_out / c["id"] / "summary.json").stat().st_mtime_ns for c in cells}
        assert sweep_cli.main([*GRID, "--out", str(ray_out), "--backend", "ray"]) == 0
        assert before == {c["id"]: (ray_out / c["id"] / "summary.json").stat().st_mtime_ns for c in cells}
        assert all(run_status(ray_out / c["id"]) == "complete" for c in cells)
    finally:
        ray.shutdown()
