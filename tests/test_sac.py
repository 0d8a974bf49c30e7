"""SAC agent: shapes, action bounds, per-network sparsity, target masks, determinism, bad input.

Small networks (32-32) and batches keep the whole file fast; the agents are built once per module.
"""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dm_env import specs

from sparse_rl.agents import sac
from sparse_rl.errors import ConfigError
from sparse_rl.sparsity import SparsityConfig, sparsity_summary, target_sparsities

Spec = collections.namedtuple("Spec", "env_id family observation_spec action_spec")
Transition = collections.namedtuple("Transition", "obs action reward discount next_obs")

# Pendulum-v1: obs (3,), one action in [-2, 2].
PENDULUM = Spec("Pendulum-v1", "classic", specs.Array((3,), np.float32),
                specs.BoundedArray((1,), np.float32, -2.0, 2.0))
# An asymmetric Box to check the rescaling per dimension.
ASYMMETRIC = Spec("Toy-v0", "classic", specs.Array((3,), np.float32),
                  specs.BoundedArray((2,), np.float32, [-2.0, 0.0], [2.0, 5.0]))
BATCH = 16
TINY = dict(actor_widths=(32, 32), critic_widths=(32, 32), batch_size=BATCH, replay_capacity=1000,
            learning_starts=10)
ACTOR = SparsityConfig(method="static", sparsity=0.5)
CRITIC = SparsityConfig(method="rigl", sparsity=0.9, update_every=5, drop_fraction=0.5, end_step=1000)


def tiny_config(**kw) -> sac.Config:
    # Fractions None: keep the absolute windows above (update every 5 steps up to step 1000).
    base = dict(TINY, actor_sparsity=ACTOR, critic_sparsity=CRITIC, schedule_start_fraction=None,
                schedule_end_fraction=None)
    base.update(kw)
    return sac.Config(**base)


def make_batch(rng, spec=PENDULUM, n=BATCH) -> Transition:
    obs_dim, act = spec.observation_spec.shape[0], spec.action_spec
    return Transition(
        obs=rng.normal(size=(n, obs_dim)).astype(np.float32),
        action=rng.uniform(act.minimum, act.maximum, size=(n, *act.shape)).astype(np.float32),
        reward=rng.normal(size=(n,)).astype(np.float32),
        discount=(rng.uniform(size=(n,)) > 0.1).astype(np.float32),
        next_obs=rng.normal(size=(n, obs_dim)).astype(np.float32),
    )


def run_updates(agent, state, num, seed=0):
    rng = np.random.default_rng(seed)
    metrics = None
    for i in range(num):
        state, metrics = agent.update(state, make_batch(rng), jax.random.PRNGKey(1000 + i))
    return state, metrics


def kernel_sparsity(params, masks) -> float:
    layers = sparsity_summary(params, masks)["layers"].values()
    return 1.0 - sum(l["nonzero"] for l in layers) / sum(l["total"] for l in layers)


def tree_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return (jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
            and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)))


@pytest.fixture(scope="module")
def agent():
    return sac.make(tiny_config(), PENDULUM, total_steps=10_000)


@pytest.fixture(scope="module")
def dense_agent():
    """Dense, 2-D asymmetric Box, two gradient steps per update, target entropy above any reachable."""
    config = tiny_config(actor_sparsity=SparsityConfig(), critic_sparsity=SparsityConfig(),
                         gradient_steps=2, target_entropy=5.0)
    return sac.make(config, ASYMMETRIC, 1000)


@pytest.fixture(scope="module")
def trained(agent):
    """(initial state, state after 60 updates, last metrics) from key 0."""
    initial = agent.init(jax.random.PRNGKey(0))
    state, metrics = run_updates(agent, agent.init(jax.random.PRNGKey(0)), 60)
    return initial, state, metrics


# --- config ----------------------------------------------------------------------------------

def test_defaults_follow_the_paper():
    c = sac.PRESETS["mujoco"]
    assert c.actor_widths == c.critic_widths == (256, 256)
    assert (c.actor_learning_rate, c.critic_learning_rate, c.temperature_learning_rate) == (3e-4, 3e-4, 3e-4)
    assert (c.batch_size, c.gamma, c.tau, c.replay_capacity) == (256, 0.99, 0.005, 1_000_000)
    assert c.actor_sparsity.method == c.critic_sparsity.method == "rigl"
    assert (c.critic_sparsity.update_every, c.critic_sparsity.drop_fraction) == (1000, 0.5)
    assert (c.schedule_start_fraction, c.schedule_end_fraction) == (0.2, 0.8)
    assert sac.default_preset("mujoco") == sac.default_preset("classic") == "mujoco"
    assert sac.SPEC.loop == "offpolicy" and sac.SPEC.sparsity_fields == ("actor_sparsity", "critic_sparsity")
    assert sac.method_defaults("set") == dict(update_every=250, drop_fraction=0.3, sparse_init=True)
    assert sac.method_defaults("prune") == dict(update_every=1000, sparse_init=False)
    assert sac.default_learning_starts("HalfCheetah-v5") == sac.default_learning_starts("Ant-v5") == 10_000
    assert sac.default_learning_starts("Hopper-v5") == sac.default_learning_starts("Pendulum-v1") == 1000
    assert sac.resolve_config(c, "Walker2d-v5").learning_starts == 1000
    assert sac._weight_decay(c, SparsityConfig(method="rigl")) == 1e-6
    assert sac._weight_decay(c, SparsityConfig(method="prune")) == 1e-4
    assert sac._weight_decay(dataclasses.replace(c, weight_decay=0.0), SparsityConfig(method="rigl")) == 0.0


@pytest.mark.parametrize("field, value", [
    ("tau", 0.0), ("gamma", 1.5), ("batch_size", 0), ("gradient_steps", 0), ("train_every", 0),
    ("init_temperature", 0.0), ("actor_learning_rate", -1.0), ("weight_decay", -1e-4),
    ("learning_starts", -1), ("actor_widths", ()), ("critic_widths", (0, 4)),
    ("actor_network", "transformer"), ("width_multiplier", 0.0), ("schedule_end_fraction", 1.5),
    ("schedule_start_fraction", 0.9), ("target_entropy", float("nan")), ("log_std_min", 3.0),
    ("critic_sparsity", "rigl"), ("activation", "nope"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        sac.Config(**{field: value})


def test_discrete_action_space_is_refused():
    spec = Spec("CartPole-v1", "classic", specs.Array((4,), np.float32), specs.DiscreteArray(2))
    with pytest.raises(ConfigError, match=r"^env: SAC needs a continuous \(Box\) action space; got Discrete\(2\)"):
        sac.make(tiny_config(), spec, 1000)


def test_unbounded_box_is_refused():
    spec = PENDULUM._replace(action_spec=specs.BoundedArray((1,), np.float32, -np.inf, np.inf))
    with pytest.raises(ConfigError, match="^env: SAC needs finite action bounds"):
        sac.make(tiny_config(), spec, 1000)


# --- networks --------------------------------------------------------------------------------

def test_actor_erk_matches_the_paper_halfcheetah_numbers():
    """PAPER.md: ERK at 0.9 on the 17-256-256-12 HalfCheetah actor is 0.565 / 0.946 / 0.396."""
    config = sac.Config()
    net = sac.actor_network(config, (17,), 6)
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 17)))
    params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    targets = target_sparsities(params, SparsityConfig(method="static", sparsity=0.9))
    got = [float(targets[name]["w"]) for name in ("mlp/~/linear_0", "mlp/~/linear_1", "policy_head")]
    np.testing.assert_allclose(got, [0.565, 0.946, 0.396], atol=1e-3)


def test_tanh_gaussian_log_prob():
    key = jax.random.PRNGKey(3)
    mean = jnp.array([[0.3, -1.0], [2.0, 0.0]])
    log_std = jnp.array([[-0.5, 0.2], [0.0, -1.0]])
    action, log_prob = sac.sample_tanh_gaussian(key, mean, log_std)
    u = jnp.arctanh(action)
    std = jnp.exp(log_std)
    gauss = -0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
    expected = jnp.sum(gauss - jnp.log(1.0 - action ** 2), axis=-1)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.abs(action) <= 1.0)


# --- init / act / update ---------------------------------------------------------------------

def test_act_shapes_and_bounds(agent, trained):
    _, state, _ = trained
    obs = jnp.asarray(np.random.default_rng(0).normal(size=(64, 3)) * 10, jnp.float32)
    for evaluation in (False, True):
        actions = agent.act(state, obs, jax.random.PRNGKey(1), 0, evaluation=evaluation)
        assert actions.shape == (64, 1) and actions.dtype == jnp.float32
        assert np.all(np.abs(np.asarray(actions)) <= 2.0)
    stochastic = agent.act(state, obs, jax.random.PRNGKey(1), 0, evaluation=False)
    assert not np.allclose(stochastic, agent.act(state, obs, jax.random.PRNGKey(2), 0, evaluation=False))
    greedy = agent.act(state, obs, jax.random.PRNGKey(1), 0, evaluation=True)
    np.testing.assert_array_equal(greedy, agent.act(state, obs, jax.random.PRNGKey(2), 0, evaluation=True))


def test_update_keeps_structure_and_reports_metrics(agent, trained):
    initial, state, metrics = trained
    shapes = lambda s: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), s)  # noqa: E731
    assert shapes(initial) == shapes(state)
    assert int(state.gradient_steps) == 60
    assert {"critic_loss", "actor_loss", "alpha", "entropy", "q_mean"} <= set(metrics)
    for name, value in metrics.items():
        assert np.shape(value) == () and np.isfinite(float(value)), name
    assert set(agent.networks(state)) == {"actor", "critic1", "critic2"}


def test_per_network_sparsity(agent, trained):
    """Actor static 0.5, critics RigL 0.9: each reaches its own target; the critics' masks differ."""
    initial, state, _ = trained
    nets = agent.networks(state)
    actor_params, actor_masks = nets["actor"]
    assert kernel_sparsity(actor_params, actor_masks) == pytest.approx(0.5, abs=0.01)
    for name in ("critic1", "critic2"):
        params, masks = nets[name]
        assert kernel_sparsity(params, masks) == pytest.approx(0.9, abs=0.01)
        # Params are exactly masked: measured from the arrays, the kernels are at least that sparse.
        for path, layer in sparsity_summary(params)["layers"].items():
            assert layer["nonzero"] <= sparsity_summary(params, masks)["layers"][path]["nonzero"]
    c1, c2 = nets["critic1"][1], nets["critic2"][1]
    assert not tree_equal(c1, c2)
    # RigL changed the critics' topology; the static actor kept its masks.
    assert not tree_equal(c1, agent.networks(initial)["critic1"][1])
    assert tree_equal(actor_masks, agent.networks(initial)["actor"][1])


def test_target_critics_carry_online_masks(agent, trained):
    _, state, _ = trained
    nets = agent.networks(state)
    for i, name in enumerate(("critic1", "critic2")):
        _, masks = nets[name]
        target = state.target_critic_params[i]
        for t, m in zip(jax.tree_util.tree_leaves(target), jax.tree_util.tree_leaves(masks)):
            t, m = np.asarray(t), np.asarray(m)
            assert np.all(t[~m] == 0.0)
        # Not trivially zero: the targets track the online critics.
        assert kernel_sparsity(target, None) < 0.95


def test_determinism(agent, trained):
    _, state, metrics = trained
    again, metrics_again = run_updates(agent, agent.init(jax.random.PRNGKey(0)), 60)
    assert tree_equal(state, again)
    assert tree_equal(metrics, metrics_again)
    other = agent.init(jax.random.PRNGKey(1))
    assert not tree_equal(agent.networks(other)["critic1"][1], agent.networks(agent.init(jax.random.PRNGKey(0)))["critic1"][1])


def test_actions_rescaled_to_asymmetric_bounds(dense_agent):
    state = dense_agent.init(jax.random.PRNGKey(0))
    # Huge log-std and mean: tanh saturates at both ends, so samples reach (close to) both bounds.
    state = state._replace(actor_params=jax.tree_util.tree_map(lambda x: x * 50.0, state.actor_params))
    obs = jnp.asarray(np.random.default_rng(0).normal(size=(256, 3)), jnp.float32)
    actions = np.asarray(dense_agent.act(state, obs, jax.random.PRNGKey(0), 0, evaluation=False))
    assert actions.shape == (256, 2)
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 5.0])
    assert np.all(actions >= low) and np.all(actions <= high)
    np.testing.assert_allclose(actions.min(0), low, atol=0.05)
    np.testing.assert_allclose(actions.max(0), high, atol=0.05)


def test_temperature_moves_towards_the_target_entropy(trained, dense_agent):
    """Entropy above the target lowers alpha; entropy below it raises alpha."""
    _, state, metrics = trained  # target -|A| = -1, entropy of a fresh policy ~0.7
    assert float(metrics["entropy"]) > -1.0
    assert float(jnp.exp(state.log_alpha)) < 1.0
    rng = np.random.default_rng(0)
    state = dense_agent.init(jax.random.PRNGKey(0))
    for i in range(3):  # target 5 > 2 log 2, the largest entropy of a 2-D tanh-Gaussian
        state, metrics = dense_agent.update(state, make_batch(rng, ASYMMETRIC, 2 * BATCH), jax.random.PRNGKey(i))
        assert float(metrics["entropy"]) < 5.0
    assert float(jnp.exp(state.log_alpha)) > 1.0


def test_several_gradient_steps_per_update(dense_agent):
    """G = 2: a flat [G * batch_size] batch is split into one minibatch per step; a plain
    [batch_size] batch is reused for both steps."""
    config = tiny_config(gradient_steps=2)
    assert sac.sample_size(config) == 2 * BATCH
    rng = np.random.default_rng(0)
    half = make_batch(rng, ASYMMETRIC)
    state, metrics = dense_agent.update(dense_agent.init(jax.random.PRNGKey(0)),
                                        jax.tree_util.tree_map(lambda x: np.concatenate([x, x]), half),
                                        jax.random.PRNGKey(1))
    assert int(state.gradient_steps) == 2
    reused, reused_metrics = dense_agent.update(dense_agent.init(jax.random.PRNGKey(0)), half,
                                                jax.random.PRNGKey(1))
    assert tree_equal(state, reused) and tree_equal(metrics, reused_metrics)


# --- through the runner and CLI --------------------------------------------------------------

def kernel_sparsity_of(summary_network: dict) -> float:
    layers = summary_network["layers"].values()
    return 1.0 - sum(l["nonzero"] for l in layers) / sum(l["total"] for l in layers)


def run_cli(tmp_path, env, *extra, name="run", steps=200):
    from sparse_rl.cli import build_train_args
    from sparse_rl.train.runner import train

    argv = ["--agent", "sac", "--env", env, "--steps", str(steps), "--eval-every", "100",
            "--eval-episodes", "1", "--log-every", "100", "--checkpoint-every", "100",
            "--analysis-every", "0", "--out", str(tmp_path / name),
            "--sac.actor-widths", "32", "32", "--sac.critic-widths", "32", "32",
            "--sac.batch-size", "32", "--sac.learning-starts", "50", *extra]
    run, config = build_train_args(argv)
    return train(run, config), tmp_path / name


def read_rows(path):
    import csv

    with open(path / "metrics.csv") as f:
        return list(csv.DictReader(f))


# Every method on both envs; two of them run by default, the rest with `-m slow`.
SMOKE = [("Pendulum-v1", "rigl"), ("HalfCheetah-v5", "prune")]


@pytest.mark.parametrize("env, method", [
    pytest.param(env, method, marks=() if (env, method) in SMOKE else pytest.mark.slow)
    for env in ("Pendulum-v1", "HalfCheetah-v5") for method in ("dense", "static", "prune", "set", "rigl")
])
def test_runner_smoke(tmp_path, env, method):
    """Actor at 0.5 and critics at 0.9 of the same method; each network reports its own sparsity."""
    summary, out = run_cli(tmp_path, env, "--method", method, "--update-every", "20",
                           "--sac.actor-sparsity.sparsity", "0.5", "--sac.critic-sparsity.sparsity", "0.9")
    for name in ("config.json", "metrics.csv", "summary.json", "COMPLETE"):
        assert (out / name).exists(), name
    rows = read_rows(out)
    assert rows[-1]["step"] == "200" and any(r["eval_return_mean"] for r in rows)
    for column in ("critic_loss", "actor_loss", "alpha", "entropy", "q_mean",
                   "sparsity_actor", "sparsity_critic1", "sparsity_critic2"):
        assert rows[-1][column] not in ("", None) and np.isfinite(float(rows[-1][column])), column
    assert np.isfinite(summary["final_eval_return"])
    networks = summary["networks"]
    assert set(networks) == {"actor", "critic1", "critic2"}
    if method == "dense":
        assert summary["sparsity"] == 0.0
    else:
        # prune reaches its target at 0.8 of the 150 gradient steps; the others start there.
        assert kernel_sparsity_of(networks["actor"]) == pytest.approx(0.5, abs=0.01)
        assert kernel_sparsity_of(networks["critic1"]) == pytest.approx(0.9, abs=0.01)
        assert kernel_sparsity_of(networks["critic2"]) == pytest.approx(0.9, abs=0.01)


@pytest.mark.slow
def test_runner_resume_equals_uninterrupted(tmp_path):
    import json

    args = ("--method", "set", "--update-every", "20")
    timing = {"wall_time", "sps"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    _, full = run_cli(tmp_path, "Pendulum-v1", *args, name="full")
    _, part = run_cli(tmp_path, "Pendulum-v1", *args, name="part")
    (part / "COMPLETE").unlink()
    for f in (part / "checkpoints").glob("ckpt_000000000200*"):
        f.unlink()
    run_cli(tmp_path, "Pendulum-v1", *args, "--resume", name="part")
    assert strip(read_rows(full)) == strip(read_rows(part))
    s_full = json.loads((full / "summary.json").read_text())
    s_part = json.loads((part / "summary.json").read_text())
    assert s_full["final_eval_return"] == s_part["final_eval_return"]
    assert s_full["networks"] == s_part["networks"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dense", "rigl"])
def test_learns_pendulum(tmp_path, method):
    """Paper-size SAC (dense, RigL 0.9) reaches an eval return >= -250 on Pendulum-v1 within 15k
    steps in at least 2 of 3 seeds."""
    from sparse_rl.cli import build_train_args
    from sparse_rl.train.runner import train

    reached = 0
    for seed in range(3):
        run, config = build_train_args([
            "--agent", "sac", "--env", "Pendulum-v1", "--steps", "15000", "--seed", str(seed),
            "--eval-every", "2500", "--eval-episodes", "5", "--checkpoint-every", "0", "--analysis-every", "0",
            "--method", method, "--sparsity", "0.9", "--out", str(tmp_path / f"s{seed}"),
        ])
        summary = train(run, config)
        reached += max(summary["eval_returns"]) >= -250
        if reached >= 2:
            break
    assert reached >= 2


@pytest.mark.parametrize("env, message", [
    ("CartPole-v1", r"^env: sac needs Box observations and Box actions; CartPole-v1 has Box "
                    r"observations and Discrete actions"),
    ("HalfCheetah-v99", r"^env: unknown environment 'HalfCheetah-v99'"),
])
def test_runner_refuses_bad_env_before_writing(tmp_path, env, message):
    from sparse_rl.cli import build_train_args
    from sparse_rl.train.runner import train

    with pytest.raises(ConfigError, match=message):
        run, config = build_train_args(["--agent", "sac", "--env", env, "--out", str(tmp_path / "run")])
        train(run, config)
    assert not (tmp_path / "run").exists()
