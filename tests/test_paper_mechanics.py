"""The training mechanics of the paper's code (issue 14), each against hand-computed values.

Reference: github google-research/rigl, folder rigl/rl, and rigl_tf2 init_utils.py; the settings'
sources are listed in docs/PRESETS.md.
"""

import collections
import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dm_env import specs

from sparse_rl.agents import common, dqn, ppo, provenance, sac
from sparse_rl.sparsity import SparsityConfig, apply_masks, get_masks, init_masks, num_zeros, sparse_init, sparsify
from sparse_rl.sparsity.init import nonzero_fans

Spec = collections.namedtuple("Spec", "env_id family observation_spec action_spec")
CARTPOLE = Spec("CartPole-v1", "classic", specs.Array((4,), np.float32), specs.DiscreteArray(2))
BOX = Spec("Toy-v0", "mujoco", specs.Array((3,), np.float32),
           specs.BoundedArray((2,), np.float32, minimum=[-2.0, 0.0], maximum=[2.0, 1.0]))


# --- presets and their provenance -----------------------------------------------------------

def test_presets_doc_is_generated_from_the_presets_and_complete():
    assert provenance.missing_sources() == []
    doc = pathlib.Path(__file__).resolve().parents[1] / "docs" / "PRESETS.md"
    assert doc.read_text() == provenance.render(), \
        "docs/PRESETS.md is stale: python -m sparse_rl.agents.provenance > docs/PRESETS.md"


# --- exact zero counts ------------------------------------------------------------------------

@pytest.mark.parametrize("shape, sparsity, zeros", [
    ((1200, 1001), 0.9, 1_081_080),     # 1,201,200 weights
    ((1200, 1001), 0.99, 1_189_188),
    ((1000, 1001), 0.95, 950_950),
    ((7744, 512), 0.9, 3_568_435),      # SAME Nature CNN dense layer: floor(0.9 * 3,964,928)
])
def test_static_mask_over_a_million_weights_has_exactly_floor_s_n_zeros(shape, sparsity, zeros):
    params = {"layer": {"w": jnp.zeros(shape, jnp.float32)}}
    cfg = SparsityConfig(method="static", sparsity=sparsity, distribution="uniform")
    masks = init_masks(jax.random.PRNGKey(0), params, cfg)
    assert int(np.sum(~np.asarray(masks["layer"]["w"]))) == zeros
    assert int(num_zeros(sparsity, math.prod(shape))) == zeros


# --- sparse init: conv fans, every sparsified layer -------------------------------------------

def test_conv_fans_sum_over_the_spatial_taps_as_glorot():
    # HWIO kernel 2x2, 3 inputs, 4 outputs. Input channel 0 feeds every output at every tap;
    # output 0 also receives input 1 at one tap.
    mask = np.zeros((2, 2, 3, 4), bool)
    mask[:, :, 0, :] = True
    mask[0, 0, 1, 0] = True
    fan_in, fan_out = (np.asarray(x) for x in nonzero_fans(jnp.asarray(mask)))
    assert fan_in.tolist() == [5, 4, 4, 4]          # per output: taps x active inputs
    assert fan_out.tolist() == [16, 1, 0]           # per input: taps x outputs (was 4 per (kh, kw, in) row)
    w = np.asarray(sparse_init(jax.random.PRNGKey(0), {"w": jnp.ones(mask.shape)}, {"w": jnp.asarray(mask)})["w"])
    limit = np.sqrt(3.0 / np.maximum(1.0, (fan_in[None, :] + fan_out[:, None]) / 2.0))
    assert (w[~mask] == 0).all()
    assert (np.abs(w) <= np.broadcast_to(limit, mask.shape) + 1e-6).all()
    # A dense 3x3 conv, 16 -> 32 channels: fan_in 3*3*16 = 144, fan_out 3*3*32 = 288, so every weight
    # is drawn from U(+-sqrt(3 / 216)) = Glorot uniform; the old per-(kh, kw, in)-row count (fan_out
    # 32) gave U(+-sqrt(3 / 88)), 1.57x wider.
    w = np.asarray(sparse_init(jax.random.PRNGKey(1), {"w": jnp.ones((3, 3, 16, 32))},
                               {"w": jnp.ones((3, 3, 16, 32), bool).at[0, 0, 0, 0].set(False)})["w"])
    assert math.sqrt(3 / 216) * 0.99 < np.abs(w).max() <= math.sqrt(3 / 215) + 1e-6   # 215: the masked entry


def test_sparse_init_redraws_every_sparsified_kernel_also_one_erk_left_dense():
    # CartPole MLP at 0.9 ERK: first and last layers dense (PAPER.md 0 / 0.9105 / 0); the reference
    # re-draws them too (rl/sparse_utils.py init_masks assigns unit_scaled_init to every wrapped layer).
    params = {f"l{i}": {"w": jnp.full(s, 9.0), "b": jnp.full(s[1], 9.0)}
              for i, s in enumerate([(4, 512), (512, 512), (512, 2)])}
    cfg = SparsityConfig(method="static", sparsity=0.9)
    masks = init_masks(jax.random.PRNGKey(1), params, cfg)
    assert bool(jnp.all(masks["l0"]["w"])) and bool(jnp.all(masks["l2"]["w"]))
    out = sparse_init(jax.random.PRNGKey(2), params, masks, cfg)
    w0 = np.asarray(out["l0"]["w"])
    assert np.abs(w0).max() <= math.sqrt(6.0 / (4 + 512)) + 1e-6 and np.abs(w0).max() > 0.05  # Glorot
    assert (np.asarray(out["l0"]["b"]) == 9.0).all()
    kept = sparse_init(jax.random.PRNGKey(2), params, masks)          # without config: dense kept
    assert (np.asarray(kept["l0"]["w"]) == 9.0).all()


# --- L2 on kernels, in the loss -----------------------------------------------------------------

def test_weight_decay_is_an_l2_term_on_kernels_added_to_the_loss_gradient():
    params = {"mlp/~/linear_0": {"w": jnp.array([[0.5, -2.0]]), "b": jnp.array([1.0, -1.0])},
              "q_head/~/linear": {"w": jnp.array([[3.0], [-4.0]]), "b": jnp.array([0.7])}}
    grads = {"mlp/~/linear_0": {"w": jnp.array([[0.1, 0.2]]), "b": jnp.array([0.3, 0.4])},
             "q_head/~/linear": {"w": jnp.array([[0.5], [0.6]]), "b": jnp.array([0.8])}}
    wd = 1e-3

    def l2(p):  # Keras L2(wd) on the hidden kernel only (tf-agents classic DQN)
        return wd * jnp.sum(p["mlp/~/linear_0"]["w"] ** 2)

    want_grads = jax.tree_util.tree_map(jnp.add, grads, jax.grad(l2)(params))
    assert np.allclose(want_grads["mlp/~/linear_0"]["w"], [[0.1 + 2 * wd * 0.5, 0.2 - 2 * wd * 2.0]])
    reference = optax.adam(1e-3, eps=1e-7)
    want, _ = reference.update(want_grads, reference.init(params), params)
    tx = common.adam_with_l2(1e-3, wd, 1e-7, exclude=("q_head",))
    got, _ = tx.update(grads, tx.init(params), params)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Biases and the excluded output kernel see no decay: with zero loss gradient they stay put.
    zero = jax.tree_util.tree_map(jnp.zeros_like, grads)
    moved, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(moved["q_head/~/linear"]["w"]).max()) == 0.0
    assert float(jnp.abs(moved["mlp/~/linear_0"]["b"]).max()) == 0.0
    assert float(jnp.abs(moved["mlp/~/linear_0"]["w"]).min()) > 0.9e-3   # ~lr: Adam normalises the L2 gradient


def test_kernel_mask_selects_kernels_only():
    params = {"a": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, "~": {"std_param": jnp.ones(3)},
              "conv": {"w": jnp.ones((3, 3, 2, 4))}, "q_head/~/linear": {"w": jnp.ones((3, 1))}}
    mask = common.kernel_mask(params, exclude=("q_head",))
    assert mask == {"a": {"w": True, "b": False}, "~": {"std_param": False}, "conv": {"w": True},
                    "q_head/~/linear": {"w": False}}


# --- when masks change ----------------------------------------------------------------------------

def _prune_step(timing):
    params = {"l": {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}}
    cfg = SparsityConfig(method="prune", sparsity=0.5, distribution="uniform", update_every=1,
                         start_step=0, end_step=1)
    tx = sparsify(optax.sgd(1.0), cfg, timing=timing)
    state = tx.init(params)
    zero = {"l": {"w": jnp.zeros((2, 2))}}
    updates, state = tx.update(zero, state, params)          # t = 0: target sparsity 0
    params = optax.apply_updates(params, updates)
    grads = {"l": {"w": jnp.array([[-10.0, 0.0], [0.0, 0.0]])}}   # the step makes w00 = 11
    updates, state = tx.update(grads, state, params)          # t = 1 = end: keep 2 of 4
    return np.asarray(optax.apply_updates(params, updates)["l"]["w"])


def test_mask_update_before_the_gradient_step_uses_the_weights_before_it():
    # tf-agents DQN / PPO: masks from |w| before the step (keep 3, 4), then the step.
    assert _prune_step("before").tolist() == [[0.0, 0.0], [3.0, 4.0]]
    # tf-agents SAC: the step first (w00 -> 11), then masks from the new weights (keep 11, 4).
    assert _prune_step("after").tolist() == [[11.0, 0.0], [0.0, 4.0]]


def test_atari_rigl_mask_update_replaces_the_gradient_step():
    params = {"l": {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}}
    cfg = SparsityConfig(method="rigl", sparsity=0.5, distribution="uniform", update_every=2,
                         drop_fraction=0.5, end_step=10)
    grads = {"l": {"w": jnp.ones((4, 4))}}
    results = {}
    for timing in ("before", "instead"):
        tx = sparsify(optax.adam(0.1), cfg, key=jax.random.PRNGKey(0), timing=timing)
        state = tx.init(params)
        p = apply_masks(params, get_masks(state))
        old = np.asarray(get_masks(state)["l"]["w"])
        updates, state = tx.update(grads, state, p)                     # t = 0: a mask update
        new_p = np.asarray(optax.apply_updates(p, updates)["l"]["w"])
        kept = old & np.asarray(get_masks(state)["l"]["w"])
        results[timing] = (np.asarray(p["l"]["w"])[kept], new_p[kept], state)
    before, after, _ = results["before"]
    assert np.all(after < before)                     # the gradient step ran
    before, after, state = results["instead"]
    np.testing.assert_array_equal(after, before)      # no gradient step on the update step
    assert int(state.inner[0].count) == 0             # nor an optimiser step


# --- agents ----------------------------------------------------------------------------------------

def test_dqn_classic_explores_with_constant_epsilon_and_evaluates_greedily():
    cfg = dataclasses.replace(dqn.PRESETS["classic"], widths=(16, 16),
                              sparsity=SparsityConfig(method="dense"))
    agent = dqn.make(cfg, CARTPOLE, 10_000)
    state = agent.init(jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (20_000, 4))
    greedy = np.asarray(agent.act(state, obs, jax.random.PRNGKey(2), 5_000, evaluation=True))
    q = np.asarray(dqn.q_network(cfg, 2).apply(state.params, obs))
    np.testing.assert_array_equal(greedy, q.argmax(-1))
    trained = np.asarray(agent.act(state, obs, jax.random.PRNGKey(3), 5_000))
    warmup = np.asarray(agent.act(state, obs, jax.random.PRNGKey(3), 10))
    assert 0.002 < np.mean(trained != greedy) < 0.01          # epsilon 0.01: half of it picks the other action
    assert 0.45 < np.mean(warmup != greedy) < 0.55            # random actions before learning_starts


def test_dqn_classic_init_is_tf_agents():
    cfg = dataclasses.replace(dqn.PRESETS["classic"], sparsity=SparsityConfig(method="dense"))
    params = dqn.make(cfg, CARTPOLE, 10_000).init(jax.random.PRNGKey(0)).params
    head = params["q_head/~/linear"]
    assert np.asarray(head["b"]).tolist() == pytest.approx([-0.2, -0.2])
    assert float(jnp.abs(head["w"]).max()) <= 0.03
    hidden = np.asarray(params["mlp/~/linear_1"]["w"])
    assert np.std(hidden) == pytest.approx(math.sqrt(2.0 / 512), rel=0.05)    # He, fan-in 512


def test_schedule_windows_are_the_papers_absolute_steps():
    prune = SparsityConfig(method="prune", sparsity=0.9, update_every=1000)
    agent = dqn.make(dataclasses.replace(dqn.PRESETS["classic"], widths=(8,), sparsity=prune), CARTPOLE, 100_000)
    assert (agent.mask_update_steps[0], agent.mask_update_steps[-1]) == (20_000, 75_000)
    rigl = SparsityConfig(method="rigl", sparsity=0.9, update_every=1000, drop_fraction=0.5)
    sac_cfg = dataclasses.replace(sac.PRESETS["mujoco"], actor_widths=(8,), critic_widths=(8,),
                                  actor_sparsity=rigl, critic_sparsity=rigl, learning_starts=10_000)
    assert sac.make(sac_cfg, BOX, 1_000_000).mask_update_steps[-1] == 800_000


def test_sac_scales_rewards_and_leaves_the_log_std_unclipped():
    cfg = sac.PRESETS["mujoco"]
    assert cfg.reward_scale == 0.1 and cfg.log_std_min is None and cfg.log_std_max is None
    net = sac.actor_network(dataclasses.replace(cfg, actor_widths=(4,)), (3,), 2)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
    params = jax.tree_util.tree_map(lambda x: x * 100.0, params)
    _, log_std = net.apply(params, jnp.full((1, 3), 10.0))
    assert float(jnp.abs(log_std).max()) > 20.0                     # the old clip was [-20, 2]


def test_ppo_actor_starts_at_std_035_with_the_mean_inside_the_bounds():
    cfg = dataclasses.replace(ppo.PRESETS["mujoco"], actor_widths=(8,), value_widths=(8,),
                              actor_sparsity=SparsityConfig(method="dense"),
                              value_sparsity=SparsityConfig(method="dense"), normalize_observations=False)
    agent = ppo.make(cfg, BOX, 4096)
    state = agent.init(jax.random.PRNGKey(0))
    assert np.asarray(jax.nn.softplus(state.actor_params["~"]["std_param"])).tolist() == pytest.approx([0.35] * 2)
    params = state.actor_params
    big = jax.tree_util.tree_map(lambda x: x * 1e3, params)
    mean = np.asarray(agent.act(state._replace(actor_params=big), jnp.full((5, 3), 50.0), jax.random.PRNGKey(1),
                                evaluation=True))
    assert (mean >= [-2.0, 0.0]).all() and (mean <= [2.0, 1.0]).all()
    assert set(np.unique(np.round(mean, 4))) - {-2.0, 0.0, 1.0, 2.0} == set()    # saturated tanh
