"""Agents run an update program without the mask-update branch when no mask update is due; the
results are exactly those of the always-branching program."""

import jax
import numpy as np
import pytest

from sparse_rl import envs
from sparse_rl.cli import build_train_args
from sparse_rl.replay import Transition
from sparse_rl.sparsity import mask_update_due


def random_batch(spec, size, rng):
    o, a = spec.observation_spec, spec.action_spec
    obs = rng.standard_normal((size, *o.shape)).astype(o.dtype)
    if hasattr(a, "num_values"):
        action = rng.integers(0, int(a.num_values), size).astype(a.dtype)
    else:
        action = rng.uniform(-1, 1, (size, *a.shape)).astype(a.dtype)
    return Transition(obs, action, rng.standard_normal(size).astype(np.float32),
                      np.ones(size, np.float32), rng.standard_normal((size, *o.shape)).astype(o.dtype))


@pytest.mark.parametrize("agent_name, env_id, extra", [
    ("dqn", "CartPole-v1", ["--dqn.widths", "16", "16", "--dqn.batch-size", "8"]),
    ("sac", "Pendulum-v1", ["--sac.actor-widths", "16", "16", "--sac.critic-widths", "16", "16",
                            "--sac.batch-size", "8"]),
])
def test_calendar_switch_equals_always_branching(agent_name, env_id, extra):
    import importlib

    run, config = build_train_args(["--agent", agent_name, "--env", env_id, "--method", "rigl",
                                    "--sparsity", "0.8", "--update-every", "5", "--steps", "2000", *extra])
    module = importlib.import_module(f"sparse_rl.agents.{agent_name}")
    spec = envs.env_spec(env_id)
    agent = module.make(config, spec, run.steps)
    assert agent.mask_update_steps is not None and len(agent.mask_update_steps) > 0
    rng = np.random.default_rng(0)
    batches = [random_batch(spec, 8, rng) for _ in range(12)]
    a = b = agent.init(jax.random.PRNGKey(0))
    b = jax.tree.map(lambda x: x.copy(), b)
    switched = 0
    for t, batch in enumerate(batches):
        key = jax.random.PRNGKey(t)
        a, _ = agent.update(a, batch, key)
        due = mask_update_due(agent.mask_update_steps, t)
        switched += not due
        b, _ = agent.update(b, batch, key, topology=due)
    assert 0 < switched < len(batches)  # both programs ran
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_static_has_no_mask_update_calendar():
    from sparse_rl.agents import dqn

    run, config = build_train_args(["--method", "static", "--sparsity", "0.9", "--steps", "2000"])
    agent = dqn.make(config, envs.env_spec("CartPole-v1"), run.steps)
    assert len(agent.mask_update_steps) == 0


def test_ppo_calendar_switch_equals_always_branching():
    from sparse_rl.agents import ppo
    from sparse_rl.agents.base import example_rollout

    run, config = build_train_args([
        "--agent", "ppo", "--env", "CartPole-v1", "--method", "rigl", "--sparsity", "0.8", "--update-every", "20",
        "--steps", "1024", "--ppo.actor-widths", "16", "16", "--ppo.value-widths", "16", "16",
        "--ppo.rollout-length", "64", "--ppo.num-envs", "2", "--ppo.minibatch-size", "32", "--ppo.epochs", "2"])
    agent = ppo.make(config, envs.env_spec("CartPole-v1"), run.steps)
    per_call = config.epochs * config.num_minibatches
    assert len(agent.mask_update_steps) > 0
    rng = np.random.default_rng(0)

    def fill(x):
        if x.dtype == np.bool_:
            return rng.random(x.shape) < 0.05
        if np.issubdtype(x.dtype, np.integer):
            return rng.integers(0, 2, x.shape).astype(x.dtype)
        return rng.standard_normal(x.shape).astype(x.dtype)

    shapes = example_rollout(agent.loop)
    a = agent.init(jax.random.PRNGKey(0))
    b = jax.tree.map(lambda x: x.copy(), a)
    used = set()
    for i in range(6):
        rollout = jax.tree.map(fill, shapes)
        key = jax.random.PRNGKey(i)
        a, _ = agent.update(a, rollout, key)
        due = mask_update_due(agent.mask_update_steps, i * per_call, per_call)
        used.add(due)
        b, _ = agent.update(b, rollout, key, topology=due)
    assert used == {True, False}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_update_calls_counts_the_loops_update_steps():
    from types import SimpleNamespace

    from sparse_rl.train.offpolicy import update_calls

    for starts, every, first, steps in [(100, 4, 0, 30_000), (100, 4, 101, 1000), (0, 1, 0, 10), (5, 3, 7, 8),
                                        (50, 2, 60, 50), (10, 7, 0, 10), (10, 7, 0, 11), (3, 5, 2000, 2001)]:
        needs = SimpleNamespace(learning_starts=starts, train_every=every)
        want = sum(1 for s in range(first, steps) if s >= starts and (s - starts) % every == 0)
        assert update_calls(needs, first, steps) == want, (starts, every, first, steps)


def test_a_run_with_few_update_calls_runs_one_program():
    from sparse_rl.train.group import ONE_PROGRAM_CALLS, update_calendar

    class A:
        mask_update_steps = np.array([10, 20])

    assert update_calendar([A()], ONE_PROGRAM_CALLS - 1) is None
    np.testing.assert_array_equal(update_calendar([A()], ONE_PROGRAM_CALLS), [10, 20])


@pytest.mark.parametrize("agent_name, env_id, kwargs", [
    ("ppo", "Pendulum-v1", dict(steps=6 * 128, num_envs=1, rollout_length=128, minibatch_size=64, epochs=2,
                                actor_widths=(16, 16), value_widths=(16, 16), update_every=6)),
    ("dqn", "CartPole-v1", dict(steps=600, widths=(16, 16), learning_starts=100, batch_size=16, update_every=20)),
])
def test_one_program_and_two_give_the_same_run(agent_name, env_id, kwargs, tmp_path, monkeypatch):
    """Whichever way a run's calls are split between the programs, its numbers are the same."""
    import csv

    import sparse_rl
    from sparse_rl.train import group

    rows, due = {}, []
    monkeypatch.setattr(group, "mask_update_due", lambda *a: due.append(mask_update_due(*a)) or due[-1])
    for mode, calls in (("two", 0), ("one", 10**9)):
        monkeypatch.setattr(group, "ONE_PROGRAM_CALLS", calls)
        out = tmp_path / mode
        sparse_rl.train(agent_name, env_id, out=str(out), method="rigl", sparsity=0.8, eval_every=kwargs["steps"],
                        checkpoint_every=0, eval_episodes=1, log_every=kwargs["steps"] // 3, progress=False, **kwargs)
        rows[mode] = [{k: v for k, v in r.items() if k not in ("wall_time", "sps")}
                      for r in csv.DictReader(open(out / "metrics.csv"))]
    assert any(due) and not all(due)  # two programs ran in the first run; one in the second (no calendar)
    assert len(rows["one"]) >= 3 and rows["one"] == rows["two"]
