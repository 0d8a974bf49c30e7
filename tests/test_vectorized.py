"""Vectorised runs (`sparse_rl.train.runner.train_group`, the loops over groups of N runs): several
seeds in one process give the separate runs' results, whatever the state chunking and dispatch
threads; a vectorised PPO run's checkpoint resumes alone, an interrupted DQN group resumes as a group; how the sweep splits groups among workers.
Runs are tiny (16-unit networks, a few hundred steps), with training-time analysis on."""

import json

import numpy as np
import pytest

from sparse_rl.cli import build_train_args
from sparse_rl.sweep import cli as sweep_cli
from sparse_rl.sweep import grid as G
from sparse_rl.train.metrics import read_metrics
from sparse_rl.train.chunks import chunk_sizes
from sparse_rl.train.runner import train, train_group

TIMING = ("wall_time", "sps")
DQN = ["--agent", "dqn", "--env", "CartPole-v1", "--steps", "200", "--eval-every", "100", "--eval-episodes", "2",
       "--log-every", "50", "--checkpoint-every", "100", "--analysis-every", "20", "--analysis-snr-every", "2",
       "--dqn.widths", "16", "16",
       "--dqn.learning-starts", "100", "--dqn.batch-size", "32", "--method", "rigl", "--sparsity", "0.9",
       "--dqn.sparsity.update-every", "20", "--progress", "False"]
# 4 iterations of 2 envs x 64 steps (8 gradient steps each); RigL actor, SET value network with a mask
# update every 2 gradient steps; observation and reward normalisation on (loop state in checkpoints).
PPO = ["--agent", "ppo", "--env", "CartPole-v1", "--steps", "512", "--eval-episodes", "2", "--eval-every", "256",
       "--log-every", "128", "--ppo.num-envs", "2", "--ppo.rollout-length", "64", "--ppo.minibatch-size", "32",
       "--ppo.epochs", "2", "--ppo.actor-widths", "16", "16", "--ppo.value-widths", "16", "16", "--update-every", "2",
       "--analysis-every", "8", "--analysis-snr-every", "2", "--ppo.actor-sparsity.method", "rigl", "--ppo.value-sparsity.method", "set",
       "--checkpoint-every", "256", "--ppo.normalize-observations", "--ppo.normalize-rewards", "--progress", "False"]


def _args(base, seed, out):
    return build_train_args(base + ["--seed", str(seed), "--out", str(out)])


def _same_run(a, b, exact=("step", "train_episodes", "train_return", "eval_return_mean", "eval_return_std",
                           "iteration", "gradient_steps")):
    ma, mb = read_metrics(a / "metrics.csv"), read_metrics(b / "metrics.csv")
    assert list(ma) == list(mb)
    for name in ma:
        if name in TIMING:
            continue
        if name in exact:  # the same trajectories and evaluations
            np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)
        else:  # losses etc.: equal up to floating-point reassociation
            np.testing.assert_allclose(ma[name], mb[name], rtol=1e-4, atol=1e-6, err_msg=name)
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    for key in ("eval_returns", "nonzero_params", "steps", "seed"):
        assert sa[key] == sb[key], key
    # training-time analysis: the same rows, statistics equal up to reassociation
    aa, ab = read_metrics(a / "analysis.csv"), read_metrics(b / "analysis.csv")
    assert list(aa) == list(ab) and len(aa["step"]) >= 3
    assert any(name.startswith("snr/") for name in aa)
    for name in aa:
        if aa[name].dtype.kind in "fi":
            np.testing.assert_allclose(aa[name], ab[name], rtol=1e-3, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(aa[name], ab[name], err_msg=name)
    return sa, sb


def test_offpolicy_chunks_and_threads_equal_separate_runs(tmp_path):
    """DQN, 3 seeds in 2 chunks (2 + 1 runs, so two compiled sizes) dispatched from 2 threads, with
    mask updates every 20 gradient steps (both update programs): the separate runs' results."""
    runs, configs = zip(*(_args(DQN, s, tmp_path / f"vec{s}") for s in range(3)))
    train_group(runs, configs, chunk=2, threads=2)
    for s in range(3):
        train(*_args(DQN, s, tmp_path / f"sep{s}"))
        vec, _ = _same_run(tmp_path / f"vec{s}", tmp_path / f"sep{s}")
        assert vec["vectorized"]["chunks"] == [2, 1] and vec["vectorized"]["threads"] == 2


def test_ppo_vectorized_equals_separate_runs_and_resumes_alone(tmp_path):
    """PPO seeds vmapped (one env vector per seed) give the separate runs' results; a vectorised
    run's checkpoint is resumed by an ordinary `train --resume` to the same end."""
    runs, configs = zip(*(_args(PPO, s, tmp_path / f"vec{s}") for s in (0, 1)))
    train_group(runs, configs)
    for s in (0, 1):
        train(*_args(PPO, s, tmp_path / f"sep{s}"))
        vec, sep = _same_run(tmp_path / f"vec{s}", tmp_path / f"sep{s}")
        assert vec["vectorized"]["seeds"] == [0, 1]
        for key in ("env_steps", "iterations", "gradient_steps"):
            assert vec[key] == sep[key], key
        assert json.loads((tmp_path / f"vec{s}" / "config.json").read_text())["run"] == \
            json.loads((tmp_path / f"sep{s}" / "config.json").read_text())["run"]
    # interrupt vectorised seed 1 after its step-256 checkpoint, resume it alone
    part = tmp_path / "vec1"
    (part / "COMPLETE").unlink()
    for f in (part / "checkpoints").glob(f"ckpt_{512:012d}*"):
        f.unlink()
    assert list((part / "checkpoints").glob(f"ckpt_{256:012d}*.npz"))
    run, config = _args(PPO, 1, part)
    import dataclasses

    train(dataclasses.replace(run, resume=True), config)
    _same_run(part, tmp_path / "sep1")


def test_offpolicy_group_resumes_from_its_checkpoints(tmp_path):
    """A DQN group interrupted after its step-100 checkpoints resumes as a group to the separate
    runs' results; a group whose runs stopped at different steps is refused."""
    import dataclasses

    from sparse_rl.errors import ConfigError

    runs, configs = zip(*(_args(DQN, s, tmp_path / f"vec{s}") for s in (0, 1)))
    train_group(runs, configs)
    for s in (0, 1):
        part = tmp_path / f"vec{s}"
        (part / "COMPLETE").unlink()
        for f in (part / "checkpoints").glob(f"ckpt_{200:012d}*"):
            f.unlink()
    train_group([dataclasses.replace(r, resume=True) for r in runs], configs)
    for s in (0, 1):
        train(*_args(DQN, s, tmp_path / f"sep{s}"))
        _same_run(tmp_path / f"vec{s}", tmp_path / f"sep{s}")
    for f in (tmp_path / "vec0" / "checkpoints").glob(f"ckpt_{200:012d}*"):
        f.unlink()
    (tmp_path / "vec0" / "COMPLETE").unlink()
    (tmp_path / "vec1" / "COMPLETE").unlink()
    with pytest.raises(ConfigError, match="at one step"):
        train_group([dataclasses.replace(r, resume=True) for r in runs], configs)

    # The sweep groups cells to resume by their newest checkpoint's step (here 100 and 200: two
    # tasks); a group whose checkpoints belie that (a damaged newest one) resumes its runs alone.
    from sparse_rl.sweep.local import execute_task

    cells = [G.Cell(agent="dqn", env="CartPole-v1", method="rigl", sparsity=0.9, seed=s,
                    path=str(tmp_path / f"vec{s}"), id=f"g/seed{s}", steps=200,
                    argv=DQN + ["--seed", str(s), "--out", str(tmp_path / f"vec{s}")]) for s in (0, 1)]
    resume = {"g/seed0": "resume", "g/seed1": "resume"}
    tasks = sweep_cli.make_tasks(cells, resume, True, workers=1)
    assert [[c["id"] for c in t["cells"]] for t in tasks] == [["g/seed0"], ["g/seed1"]]
    (tmp_path / "vec1" / "checkpoints" / f"ckpt_{200:012d}.done").rename(tmp_path / "hidden.done")
    assert [len(t["cells"]) for t in sweep_cli.make_tasks(cells, resume, True, workers=1)] == [2]
    (tmp_path / "hidden.done").rename(tmp_path / "vec1" / "checkpoints" / f"ckpt_{200:012d}.done")
    results = execute_task({"cells": [dict(t["cells"][0], resume=True) for t in tasks], "vectorized": True})
    assert [r["status"] for r in results] == ["complete", "complete"]
    for s in (0, 1):
        _same_run(tmp_path / f"vec{s}", tmp_path / f"sep{s}")


def test_chunk_sizes_and_sweep_split():
    mib = 2**20
    assert chunk_sizes(8, 0.1 * mib, platform="cpu") == [8]            # small states: one call
    assert chunk_sizes(8, 4.3 * mib, platform="cpu") == [2, 2, 2, 2]   # 512-512 DQN: chunks of <= 16 MiB
    assert chunk_sizes(7, 4.3 * mib, platform="cpu") == [3, 2, 2]      # no divisor: two sizes
    assert chunk_sizes(8, 64 * mib, platform="cpu") == [1] * 8
    assert chunk_sizes(8, 64 * mib, platform="gpu") == [8]
    assert sweep_cli.split_groups([8], 2) == [2] and sweep_cli.split_groups([8, 8], 2) == [1, 1]
    assert sweep_cli.split_groups([8, 2], 4) == [3, 1] and sweep_cli.split_groups([2], 8) == [2]

    argv = ["--agent", "ppo,dqn", "--env", "CartPole-v1", "--methods", "rigl", "--sparsities", "0.9",
            "--seeds", "0-7", "--steps", "100", "--out", "unused"]
    grid, _, _ = sweep_cli.build_grid(argv)
    cells = G.plan(grid)
    fresh = {c.id: "run" for c in cells}
    tasks = sweep_cli.make_tasks(cells, fresh, True, workers=2)
    assert [len(t["cells"]) for t in tasks] == [8, 8] and all(t["vectorized"] for t in tasks)
    tasks = sweep_cli.make_tasks(cells, fresh, True, workers=4)  # 2 processes of 4 seeds per agent
    assert [[c["id"].rsplit("seed", 1)[1] for c in t["cells"]] for t in tasks] == \
        [["0", "1", "2", "3"], ["4", "5", "6", "7"]] * 2


def _primitives(jaxpr, counts):
    for eqn in jaxpr.eqns:
        counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _primitives(inner, counts)
    return counts


@pytest.mark.parametrize("argv", [
    ["--agent", "dqn", "--env", "CartPole-v1", "--dqn.widths", "16", "16"],
    ["--agent", "sac", "--env", "Pendulum-v1", "--sac.actor-widths", "16", "16", "--sac.critic-widths", "16", "16"],
    ["--agent", "ppo", "--env", "CartPole-v1", "--ppo.actor-widths", "16", "16", "--ppo.value-widths", "16", "16"],
], ids=lambda a: a[1])
def test_vmapped_update_keeps_its_conds(argv):
    """With the step counters unbatched (`StateChunks.axes`), every `lax.cond` of the update (the
    mask-update branch) stays a `cond` under vmap: no extra `select_n` computing both branches."""
    import jax

    from sparse_rl import agents, envs
    from sparse_rl.agents.base import example_rollout
    from sparse_rl.train.chunks import StateChunks, init_states
    from sparse_rl.train.offpolicy import example_batch

    run, config = build_train_args([*argv, "--method", "rigl"])
    spec = envs.env_spec(run.env)
    agent = agents.spec(run.agent).make(config, spec, 10_000)
    keys = np.stack([jax.random.split(jax.random.PRNGKey(s), 3) for s in range(4)])
    chunks = StateChunks.for_runs(init_states([agent] * 4, keys[:, 0]), chunk=4)
    if run.agent == "ppo":
        batch = example_rollout(agent.loop)
    else:
        batch = example_batch(envs.make_env(run.env, 0).observation_spec(), spec.action_spec, agent.loop.sample_size)
    batches = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((4, *x.shape), x.dtype), batch)

    def update(state, batch, key):
        return agent.update(state, batch, key, topology=True)

    one = _primitives(jax.make_jaxpr(update)(chunks.take(0), batch, keys[0, 2]).jaxpr, {})
    vmapped = jax.vmap(update, in_axes=(chunks.axes, 0, 0), out_axes=(chunks.axes, 0))
    many = _primitives(jax.make_jaxpr(vmapped)(chunks.states[0], batches, keys[:, 2]).jaxpr, {})
    assert one.get("cond", 0) >= 1
    assert (many.get("cond", 0), many.get("select_n", 0)) == (one.get("cond", 0), one.get("select_n", 0))
