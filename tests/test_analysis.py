"""sparse_rl.analysis: gradient-flow statistics, SNR, topology dynamics, dormant neurons, recorder."""

import collections
import dataclasses
import json

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparse_rl.analysis import gradient_flow as gf
from sparse_rl.train import recorder
from sparse_rl.analysis import topology as topo
from sparse_rl.sparsity import (SparsityConfig, apply_masks, get_masks, is_update_step, leaf_paths,
                                sparsify)


def tiny_mlp(widths=(6, 5), out=3):
    def f(x):
        h = x
        for i, w in enumerate(widths):
            h = jax.nn.relu(hk.Linear(w, name=f"linear_{i}")(h))
        return hk.Linear(out, name="head")(h)

    return hk.without_apply_rng(hk.transform(f))


def tree_like(params, seed, scale=1.0):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(
        treedef, [rng.normal(size=np.shape(x)).astype(np.float32) * scale for x in leaves])


def random_masks(params, seed, density=0.5):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda p: rng.random(np.shape(p)) < density if np.ndim(p) >= 2 else np.ones(np.shape(p), bool),
        params)


@pytest.fixture(autouse=True)
def raise_recorder_errors(monkeypatch):
    """The recorder turns errors into a warning during training; tests want to see them."""
    from sparse_rl.train.recorder import GradientFlowRecorder

    monkeypatch.setattr(GradientFlowRecorder, "raise_errors", True)


@pytest.fixture(scope="module")
def net():
    network = tiny_mlp()
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
    return network, params


# --- gradient flow --------------------------------------------------------------------------------

def test_norms_equal_direct_computation(net):
    _, params = net
    grads, masks, init = tree_like(params, 1), random_masks(params, 2), tree_like(params, 3)
    paths = jax.tree_util.tree_leaves(leaf_paths(params))
    P, G, M, I = (jax.tree_util.tree_leaves(t) for t in (params, grads, masks, init))
    for stats in (gf.gradient_flow_stats(grads, masks, params, init),            # numpy
                  jax.jit(gf.gradient_flow_stats)(grads, masks, params, init)):  # JAX
        kernels = [p for p, x in zip(paths, P) if np.ndim(x) >= 2]
        assert sorted(stats["layers"]) == sorted(kernels)
        for path, p, g, m, i in zip(paths, P, G, M, I):
            if np.ndim(p) < 2:
                continue
            s = stats["layers"][path]
            np.testing.assert_allclose(s["dense_grad_norm"], np.linalg.norm(g), rtol=1e-5)
            np.testing.assert_allclose(s["masked_grad_norm"], np.linalg.norm(g * m), rtol=1e-5)
            np.testing.assert_allclose(s["weight_norm"], np.linalg.norm(np.asarray(p)), rtol=1e-5)
            np.testing.assert_allclose(s["dist_from_init"], np.linalg.norm(np.asarray(p) - i), rtol=1e-5)
        flat = lambda ts: np.concatenate([np.ravel(np.asarray(t)) for t in ts])  # noqa: E731
        np.testing.assert_allclose(stats["total"]["dense_grad_norm"], np.linalg.norm(flat(G)), rtol=1e-5)
        np.testing.assert_allclose(stats["total"]["masked_grad_norm"],
                                   np.linalg.norm(flat(G) * flat(M)), rtol=1e-5)
    norms = gf.layer_norms(params)
    assert set(norms) == set(paths) | {"total"}
    np.testing.assert_allclose(norms["total"], np.linalg.norm(flat(P)), rtol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_masked_norm_at_most_dense_norm(net, seed):
    _, params = net
    stats = gf.gradient_flow_stats(tree_like(params, seed), random_masks(params, 10 + seed, 0.3), params)
    for s in list(stats["layers"].values()) + [stats["total"]]:
        assert s["masked_grad_norm"] <= s["dense_grad_norm"] + 1e-6
    assert "dist_from_init" not in stats["total"]


def test_per_sample_grads_match_single_item_grads(net):
    network, params = net
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)

    def loss(p, batch):
        xb, yb = batch
        return jnp.mean((network.apply(p, xb) - yb) ** 2)

    per = jax.jit(lambda p, b: gf.per_sample_grads(loss, p, b))(params, (x, y))
    grad = jax.jit(jax.grad(loss))
    for i in range(5):
        single = grad(params, (x[i:i + 1], y[i:i + 1]))
        for a, b in zip(jax.tree_util.tree_leaves(per), jax.tree_util.tree_leaves(single)):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-7)


def test_snr_identical_samples_large_and_noise_small(net):
    _, params = net
    g = tree_like(params, 0)
    identical = jax.tree_util.tree_map(lambda x: np.repeat(x[None], 64, axis=0), g)
    for snr in (gf.gradient_snr(identical), jax.jit(gf.gradient_snr)(identical)):
        assert float(snr["total"]["median"]) > 1e6
        assert all(float(s["mean"]) > 1e6 for s in snr["layers"].values())
    rng = np.random.default_rng(1)
    noise = jax.tree_util.tree_map(lambda x: rng.normal(size=(256,) + np.shape(x)).astype(np.float32), g)
    snr = gf.gradient_snr(noise)
    # |mean| / std of 256 standard normals is about |N(0, 1/256)|: mean ~ 0.05
    assert float(snr["total"]["mean"]) < 0.2 and float(snr["total"]["median"]) < 0.2


@pytest.mark.parametrize("n, chunk", [(13, 4), (5, 32)])
def test_chunked_snr_equals_unchunked(net, n, chunk):
    """Per-sample SNR computed chunk by chunk (full chunks and a padded remainder; one chunk larger
    than the batch) equals the all-at-once computation."""
    network, params = net
    rng = np.random.default_rng(n)
    batch = (rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32))

    def loss(p, b):
        return jnp.mean((network.apply(p, b[0]) - b[1]) ** 2)

    @jax.jit
    def both(b):  # (all at once, chunked, gradient of the first item)
        return (gf.snr_values(gf.per_sample_grads(loss, params, b)),
                gf.chunked_snr_values(lambda one: jax.grad(loss)(params, one), b, chunk),
                jax.grad(loss)(params, jax.tree_util.tree_map(lambda x: x[:1], b)))

    expected, got, _ = both(batch)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # identical samples: std ~ 0 across chunks too, so the SNR is huge where the gradient is not 0
    _, values, g = both(jax.tree_util.tree_map(lambda x: np.repeat(x[:1], n, axis=0), batch))
    nonzero = [np.asarray(v)[np.asarray(x) != 0] for v, x in zip(
        jax.tree_util.tree_leaves(values), jax.tree_util.tree_leaves(g))]
    assert np.median(np.concatenate(nonzero)) > 1e6


def test_snr_counts_only_active_parameters(net):
    _, params = net
    rng = np.random.default_rng(2)
    masks = random_masks(params, 3)
    # active entries: pure noise (small SNR); inactive ones: identical samples (huge SNR)
    per = jax.tree_util.tree_map(
        lambda p, m: np.where(m[None], rng.normal(size=(128,) + np.shape(p)), 1.0).astype(np.float32),
        params, masks)
    masked, unmasked = gf.gradient_snr(per, masks), gf.gradient_snr(per)
    assert float(masked["total"]["mean"]) < 0.3
    assert float(unmasked["total"]["mean"]) > 1e6
    jitted = jax.jit(gf.gradient_snr)(per, masks)
    np.testing.assert_allclose(jitted["total"]["median"], masked["total"]["median"], rtol=1e-4)
    # mean_all: inactive parameters count as SNR 0 (their masked gradient is 0)
    density = np.mean(np.concatenate([np.ravel(m) for m in jax.tree_util.tree_leaves(masks)]))
    np.testing.assert_allclose(masked["total"]["mean_all"], masked["total"]["mean"] * density, rtol=1e-4)
    np.testing.assert_allclose(jitted["total"]["mean_all"], masked["total"]["mean_all"], rtol=1e-4)
    assert unmasked["total"]["mean_all"] == pytest.approx(unmasked["total"]["mean"], rel=1e-5)


def test_topology_update_effect(net):
    _, params = net
    g = tree_like(params, 5)
    old = random_masks(params, 6)
    new = random_masks(params, 7)
    e = gf.topology_update_effect(params, old, params, new, g)
    path = "linear_1/w"
    o, n = np.asarray(old[ "linear_1"]["w"]), np.asarray(new["linear_1"]["w"])
    gl = g["linear_1"]["w"]
    np.testing.assert_allclose(e["layers"][path]["churn"], np.sum(n & ~o) / np.sum(n), rtol=1e-6)
    np.testing.assert_allclose(e["layers"][path]["sparsity"], 1 - n.mean(), rtol=1e-6)
    np.testing.assert_allclose(e["layers"][path]["masked_grad_norm_before"], np.linalg.norm(gl * o), rtol=1e-5)
    np.testing.assert_allclose(e["layers"][path]["masked_grad_norm_after"], np.linalg.norm(gl * n), rtol=1e-5)
    same = gf.topology_update_effect(params, old, params, old, g)
    assert float(same["total"]["churn"]) == 0.0
    jitted = jax.jit(gf.topology_update_effect)(params, old, params, new, g)
    np.testing.assert_allclose(jitted["total"]["churn"], e["total"]["churn"], rtol=1e-6)


def test_flatten_and_should_record():
    stats = {"layers": {"a/w": {"x": 1.0}}, "total": {"x": 2.0}}
    assert gf.flatten_stats("gf/q", stats) == {"gf/q/a/w/x": 1.0, "gf/q/total/x": 2.0}
    assert gf.should_record(2000, 1000) and not gf.should_record(1500, 1000)
    assert not gf.should_record(1000, 0)


@pytest.mark.parametrize("cfg", [
    SparsityConfig(method="prune", sparsity=0.9, update_every=7, start_step=10, end_step=60),
    SparsityConfig(method="rigl", sparsity=0.9, update_every=5, end_step=40),
    SparsityConfig(method="set", sparsity=0.9, update_every=3, end_step=20),
    SparsityConfig(method="static", sparsity=0.9),
])
def test_update_steps_match_core(cfg):
    core = [t for t in range(100) if bool(is_update_step(t, cfg))]
    assert gf.update_steps(cfg).tolist() == core


# --- topology ---------------------------------------------------------------------------------------

def churn_series(method, steps=12, end_step=6):
    network = tiny_mlp((16, 16))
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
    cfg = SparsityConfig(method=method, sparsity=0.7, update_every=2, drop_fraction=0.5,
                         end_step=end_step, distribution="uniform")
    tx = sparsify(optax.sgd(0.1), cfg, key=jax.random.PRNGKey(1))
    state = tx.init(params)
    params = apply_masks(params, get_masks(state))
    x = jax.random.normal(jax.random.PRNGKey(2), (32, 4))
    loss = lambda p: jnp.mean(network.apply(p, x) ** 2)  # noqa: E731

    @jax.jit
    def step(params, state, ever):
        old = get_masks(state)
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
        stats, ever = topo.topology_stats(old, get_masks(state), ever)
        return params, state, ever, stats

    ever = get_masks(state)
    out = []
    for t in range(steps):
        params, state, ever, stats = step(params, state, ever)
        out.append((t, float(stats["total"]["churn"]), float(stats["total"]["ever_active"]),
                    float(stats["total"]["sparsity"])))
    return out


def test_churn_zero_for_static():
    series = churn_series("static")
    assert all(c == 0.0 for _, c, _, _ in series)
    assert all(abs(s - 0.7) < 0.02 for _, _, _, s in series)


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_churn_positive_before_end_step_zero_after(method):
    series = churn_series(method)
    during = [c for t, c, _, _ in series if t % 2 == 0 and t < 6]
    after = [c for t, c, _, _ in series if t > 6 or t % 2 == 1]
    assert during and all(c > 0 for c in during)
    assert all(c == 0.0 for c in after)
    ever = [e for _, _, e, _ in series]
    assert all(b >= a for a, b in zip(ever, ever[1:])) and ever[-1] > 0.3 + 1e-6


def test_dormant_ratio_hand_built_network():
    # neuron 0: w=+1 (active, |h| ~ 1); neuron 1: w=-1 (ReLU of a negative input: 0, dormant at
    # tau 0); neuron 2: w=+0.005 (fires, but its score 0.005 / (1.005 / 3) ~ 0.015 <= 0.025).
    def f(x):
        h = jax.nn.relu(hk.Linear(3, name="hidden")(x))
        return hk.Linear(1, name="out")(h)

    net = hk.without_apply_rng(hk.transform(f))
    params = {"hidden": {"w": jnp.array([[1.0, -1.0, 0.005]]), "b": jnp.zeros(3)},
              "out": {"w": jnp.ones((3, 1)), "b": jnp.zeros(1)}}
    x = jnp.linspace(0.5, 1.5, 20)[:, None]
    acts = topo.capture_activations(net.apply, params, x)
    assert list(acts) == ["hidden"]  # the output layer is left out
    scores = np.asarray(topo.neuron_scores(acts["hidden"]))
    np.testing.assert_allclose(scores, np.array([1.0, 0.0, 0.005]) / (1.005 / 3), rtol=1e-5)
    assert float(topo.dormant_ratio(acts["hidden"], 0.0)) == pytest.approx(1 / 3)
    assert float(topo.dormant_ratio(acts["hidden"], 0.025)) == pytest.approx(2 / 3)
    stats = jax.jit(lambda p, x: topo.dormant_stats(topo.capture_activations(net.apply, p, x)))(params, x)
    assert float(stats["total"]["tau0"]) == pytest.approx(1 / 3)
    assert float(stats["layers"]["hidden"]["tau0.025"]) == pytest.approx(2 / 3)
    with_out = topo.capture_activations(net.apply, params, x, include_output=True)
    assert list(with_out) == ["hidden", "out"]


def test_fan_in_and_dead_units():
    m = np.zeros((4, 3), bool)
    m[:, 0] = True
    m[1, 1] = True
    masks = {"l": {"w": m, "b": np.ones(3, bool)}}
    assert topo.fan_in(masks)["l/w"].tolist() == [4, 1, 0]
    assert topo.dead_units(masks)["l/w"] == {"units": 3, "dead": 1, "dead_fraction": 1 / 3}


# --- the recorder with a real agent ---------------------------------------------------------------

Batch = collections.namedtuple("Batch", "obs action reward discount next_obs")


def fake_batch(rng, n=16):
    return Batch(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 2, n).astype(np.int32),
                 rng.normal(size=n).astype(np.float32), np.ones(n, np.float32),
                 rng.normal(size=(n, 4)).astype(np.float32))


@pytest.fixture(scope="module")
def dqn_agent():
    from sparse_rl import envs
    from sparse_rl.agents import dqn

    cfg = dataclasses.replace(
        dqn.PRESETS["classic"], widths=(16, 16), batch_size=16, learning_starts=0,
        sparsity=SparsityConfig(method="rigl", sparsity=0.8, update_every=10),
        schedule_start_fraction=None, schedule_end_fraction=None)
    cfg = dataclasses.replace(cfg, sparsity=dataclasses.replace(cfg.sparsity, end_step=30))
    return dqn.make(cfg, envs.env_spec("CartPole-v1"), 100)


def drive(agent, recorder, state, steps, start=0, seed=0):
    for i in range(start, start + steps):
        b = fake_batch(np.random.default_rng(1000 * seed + i))
        recorder.before_update(state, b)
        state, _ = agent.update(state, b, jax.random.PRNGKey(i))
        recorder.after_update(state, b, i + 1)
    return state


def test_recorder_writes_rows_and_resumes(tmp_path, dqn_agent):
    from sparse_rl.train.metrics import read_metrics

    agent = dqn_agent
    state = agent.init(jax.random.PRNGKey(0))
    rec = recorder.make_recorder(agent, state, tmp_path, every=20, snr_every=2)
    state = drive(agent, rec, state, 45)
    meta = rec.close(loop_seconds=10.0)
    assert meta["records"] == {"periodic": 2, "snr": 1, "topology": 4}  # updates at 0, 10, 20, 30
    assert (tmp_path / "init_params.npz").exists() and (tmp_path / "ever_active.npz").exists()
    assert json.loads((tmp_path / "analysis.json").read_text())["every"] == 20
    m = read_metrics(tmp_path / "analysis.csv")
    # topology rows carry the step count the update ran at (sparsify's pre-increment count);
    # periodic rows the count after the update call
    assert m["event"].tolist() == ["topology", "topology", "periodic", "topology", "topology", "periodic"]
    assert m["grad_step"].tolist() == [0, 10, 20, 20, 30, 40]
    assert m["step"].tolist() == [1, 11, 20, 21, 31, 40]
    periodic = m["event"] == "periodic"
    topology = m["event"] == "topology"
    for col in ("gf/q/total/dense_grad_norm", "gf/q/mlp/~/linear_0/w/dist_from_init",
                "dormant/q/total/tau0.025", "dormant/q/mlp/~/linear_1/tau0"):
        assert np.all(np.isfinite(m[col][periodic])), col
    assert np.all(m["gf/q/total/masked_grad_norm"][periodic] <= m["gf/q/total/dense_grad_norm"][periodic])
    snr = m["snr/q/total/median"][periodic]
    assert np.isfinite(snr[0]) and np.isnan(snr[1])  # SNR on the 1st, 3rd, ... periodic row
    churn = m["topo/q/total/churn"][topology]
    assert np.all(churn[:3] > 0) and churn[3] == 0.0  # the drop fraction decays to 0 at end_step
    ever = m["topo/q/total/ever_active"][topology]
    assert np.all(np.diff(ever) >= 0) and ever[-1] > 0.2 + 1e-6
    np.testing.assert_allclose(m["topo/q/total/sparsity"][topology], 0.8, atol=0.02)

    # resume from "step 25": later rows are dropped, init params and ever-active are read back
    rec2 = recorder.make_recorder(agent, state, tmp_path, every=20, snr_every=2, resume_step=25)
    assert rec2.grad_step == 45
    np.testing.assert_array_equal(rec2.init_params["q"]["q_head/~/linear"]["w"],
                                  rec.init_params["q"]["q_head/~/linear"]["w"])
    drive(agent, rec2, state, 20, start=45, seed=1)
    rec2.close()
    m2 = read_metrics(tmp_path / "analysis.csv")
    assert m2["step"].tolist() == [1, 11, 20, 21, 60]
    assert m2["grad_step"].tolist() == [0, 10, 20, 20, 60]


def test_recorder_off_without_hook_or_interval(tmp_path, dqn_agent):
    state = dqn_agent.init(jax.random.PRNGKey(0))
    assert recorder.make_recorder(dqn_agent, state, tmp_path, every=0) is None
    assert recorder.make_recorder(dqn_agent._replace(analysis=None), state, tmp_path, every=10) is None


# --- per-component tables (training-time sensitivity sweeps) -------------------------------------

def fake_run(path, agent, nets, ret, seed=0, method=None):
    """A finished run directory with a summary.json: nets = {name: (total, nonzero)}."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    networks = {n: {"layers": {"l/w": {"total": t, "nonzero": nz, "sparsity": 1 - nz / t}}}
                for n, (t, nz) in nets.items()}
    (path / "summary.json").write_text(json.dumps(
        {"agent": agent, "env": "Pendulum-v1", "seed": seed, "final_eval_return": ret,
         "networks": networks, **({} if method is None else {"method": method})}))


def test_component_table_names_swept_and_fixed_components(tmp_path):
    from sparse_rl.analysis import plots
    from sparse_rl.analysis.sensitivity import component_table, write_table

    for i, nz in enumerate((50, 10)):  # actor only sparse, at 0.5 and 0.9
        fake_run(tmp_path / "actor" / f"r{i}", "sac",
                 {"actor": (100, nz), "critic1": (100, 100), "critic2": (100, 100)}, 10.0 + i)
    for i, nz in enumerate((20, 5)):  # actor fixed at 0.8, critics swept
        fake_run(tmp_path / "split" / f"r{i}", "sac",
                 {"actor": (100, 20), "critic1": (100, nz), "critic2": (100, nz)}, 5.0 + i)
    fake_run(tmp_path / "dense" / "r0", "sac", {"actor": (100, 100), "critic1": (100, 100)}, 20.0)
    rows = component_table([tmp_path / "actor", tmp_path / "split", tmp_path / "dense"])
    labels = [(r["component"], round(r["sparsity"], 3)) for r in rows]
    assert labels == [("actor", 0.5), ("actor", 0.9), ("critic1+critic2 (actor 0.80)", 0.8),
                      ("critic1+critic2 (actor 0.80)", 0.95), ("dense", 0.0)]
    files = write_table(rows, tmp_path / "c.csv", tmp_path / "c.md")
    assert "sparsity_critic2" in files[0].read_text().splitlines()[0]
    assert plots.plot_components(rows, tmp_path / "plots", formats=("png",))[0].stat().st_size > 0


def test_component_summary_is_mean_std_n_per_component_and_level(tmp_path, capsys):
    from sparse_rl.analysis.cli import main as analyze_main
    from sparse_rl.analysis.sensitivity import component_summary, component_table

    fake_run(tmp_path / "actor" / "dense", "sac", {"actor": (100, 100), "critic1": (100, 100)}, 20.0, 0, "dense")
    for seed, ret in enumerate((10.0, 14.0)):
        fake_run(tmp_path / "actor" / f"a{seed}", "sac", {"actor": (100, 10), "critic1": (100, 100)}, ret, seed,
                 "rigl")
        fake_run(tmp_path / "critic" / f"c{seed}", "sac", {"actor": (100, 100), "critic1": (100, 10)},
                 ret - 8.0, seed)
    fake_run(tmp_path / "critic" / "c9", "sac", {"actor": (100, 100), "critic1": (100, 50)}, 3.0, 9)
    fake_run(tmp_path / "critic" / "nan", "sac", {"actor": (100, 100), "critic1": (100, 50)}, None, 8)
    rows = component_summary(component_table([tmp_path / "actor", tmp_path / "critic"]))
    got = [(r["series"], r["component"], r["sparsity"], r["return_mean"], round(r["return_std"], 4), r["n"])
           for r in rows]
    assert got == [("actor", "actor", 0.9, 12.0, 2.8284, 2),   # not "actor rigl": the dense run is no method
                   ("dense", "dense", 0.0, 20.0, 0.0, 1), ("critic", "critic1", 0.9, 4.0, 2.8284, 2),
                   ("critic", "critic1", 0.5, 3.0, 0.0, 1)]
    assert analyze_main(["components", str(tmp_path / "actor"), str(tmp_path / "critic"),
                         "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "components_summary.md").read_text()
    assert "| sac | Pendulum-v1 | critic | critic1 | 0.9 | 4 | 2.828 | 2 |" in table, table


def test_observation_noise_keeps_integer_dtype():
    from sparse_rl.analysis.sensitivity import _noisy

    obs = np.full((2, 3), 250, np.uint8)
    out = _noisy(obs, 20.0, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.max() <= 255
    f = _noisy(np.zeros(1000, np.float32), np.float64(0.5), np.random.default_rng(0))
    assert f.dtype == np.float32 and abs(f.std() - 0.5) < 0.05


def test_recorder_error_stops_recording_not_training(tmp_path, dqn_agent, monkeypatch):
    monkeypatch.setattr(recorder.GradientFlowRecorder, "raise_errors", False)
    state = dqn_agent.init(jax.random.PRNGKey(0))
    rec = recorder.make_recorder(dqn_agent, state, tmp_path, every=5)
    monkeypatch.setattr(rec, "_periodic_stats", lambda *a: 1 / 0)
    with pytest.warns(RuntimeWarning, match="analysis recording stopped: ZeroDivisionError"):
        drive(dqn_agent, rec, state, 12)
    assert json.loads(json.dumps(rec.close()))["error"].startswith("ZeroDivisionError")


def test_recorder_resumes_exactly_after_a_kill(tmp_path, dqn_agent):
    """Rows (ever-active fractions included) of a run killed after its checkpoint and resumed from
    it equal those of an uninterrupted run."""
    import csv

    agent = dqn_agent
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir(), killed.mkdir()
    rec = recorder.make_recorder(agent, agent.init(jax.random.PRNGKey(0)), ref, every=20, snr_every=2)
    drive(agent, rec, agent.init(jax.random.PRNGKey(0)), 45)
    rec.close()

    state = agent.init(jax.random.PRNGKey(0))
    rec = recorder.make_recorder(agent, state, killed, every=20, snr_every=2)
    state = drive(agent, rec, state, 5)
    checkpoint = jax.device_get(state)                   # "checkpoint" at env step 5
    drive(agent, rec, state, 20, start=5)                # lost to the kill: mask updates at 11, 21
    rec.writer.close()
    state = jax.tree_util.tree_map(jnp.asarray, checkpoint)
    rec = recorder.make_recorder(agent, state, killed, every=20, snr_every=2, resume_step=5)
    drive(agent, rec, state, 40, start=5)
    rec.close()
    rows = lambda d: list(csv.DictReader(open(d / "analysis.csv")))  # noqa: E731
    assert rows(killed) == rows(ref)
