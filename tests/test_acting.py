"""The lean acting path (issue 15): noise drawn a block of steps ahead is bit for bit the noise of
one draw per step, and `policy` over the acting view with that noise acts exactly as `act` and as
the PRNG calls the agents made before acting was split (jax.random.categorical, the tanh-Gaussian
sample)."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dm_env import specs

from sparse_rl.agents import dqn, ppo, sac
from sparse_rl.sparsity import SparsityConfig
from sparse_rl.train.acting import NoiseBlocks, NoiseDrawer
from sparse_rl.train.onpolicy import pack_step, unpack_step

OBS_DIM = 5
DENSE = SparsityConfig(method="dense")
BOX = SimpleNamespace(env_id="FakeBox", family="mujoco", observation_spec=specs.Array((OBS_DIM,), np.float32),
                      action_spec=specs.BoundedArray((2,), np.float32, -2.0, 1.0))
DISCRETE = SimpleNamespace(env_id="FakeDiscrete", family="classic",
                           observation_spec=specs.Array((OBS_DIM,), np.float32),
                           action_spec=specs.DiscreteArray(3))


def _agents():
    small = dict(actor_widths=(16, 16), value_widths=(16, 16), actor_sparsity=DENSE, value_sparsity=DENSE,
                 num_envs=2, rollout_length=8, minibatch_size=8)
    return {
        # epsilon 0.5 after 0 learning starts: both branches of the epsilon-greedy choice are taken
        "dqn": dqn.make(dqn.Config(widths=(16, 16), sparsity=DENSE, learning_starts=0, epsilon_start=0.5,
                                   epsilon_end=0.5, eval_epsilon=0.3), DISCRETE, 1000),
        "sac": sac.make(sac.Config(actor_widths=(16, 16), critic_widths=(16, 16), actor_sparsity=DENSE,
                                   critic_sparsity=DENSE, learning_starts=10), BOX, 1000),
        "ppo_discrete": ppo.make(ppo.Config(**small, normalize_observations=False), DISCRETE, 1000),
        "ppo_box": ppo.make(ppo.Config(**small), BOX, 1000),
    }


AGENTS = _agents()
RUN_KEYS = np.stack([jax.random.split(jax.random.PRNGKey(seed), 3)[1] for seed in (0, 7)])
STEPS = [0, 7, 8, 1000]


@pytest.mark.parametrize("name", sorted(AGENTS))
@pytest.mark.parametrize("evaluation", [False, True])
def test_block_noise_equals_per_step_draws(name, evaluation):
    agent = AGENTS[name]
    draw = lambda key: agent.act_noise(key, (3,), evaluation)  # noqa: E731
    blocks = NoiseBlocks(NoiseDrawer(draw), RUN_KEYS, block=8)
    for step in STEPS:
        got = blocks.at(step)
        for i, key in enumerate(RUN_KEYS):
            want = jax.jit(draw)(jax.random.fold_in(key, step))  # one call per step, as the loops made
            assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
            for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
                np.testing.assert_array_equal(g[i], np.asarray(w))


@pytest.mark.parametrize("name", sorted(AGENTS))
@pytest.mark.parametrize("evaluation", [False, True])
def test_policy_with_drawn_noise_acts_as_act(name, evaluation):
    agent = AGENTS[name]
    state = agent.init(jax.random.PRNGKey(1))
    obs = jnp.asarray(np.random.default_rng(0).normal(size=(64, OBS_DIM)) * 3.0, jnp.float32)
    blocks = NoiseBlocks(NoiseDrawer(lambda key: agent.act_noise(key, (64,), evaluation)), RUN_KEYS[:1])
    view = agent.acting_view(state)
    for step in (3, 500):
        noise = jax.tree_util.tree_map(lambda x: x[0], blocks.at(step))
        want = agent.act(state, obs, jax.random.fold_in(RUN_KEYS[0], step), step, evaluation=evaluation)
        got = agent.policy(view, obs, noise, step, evaluation=evaluation)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_dqn_takes_both_branches():
    agent = AGENTS["dqn"]
    state = agent.init(jax.random.PRNGKey(1))
    obs = jnp.zeros((256, OBS_DIM), jnp.float32)
    actions = np.asarray(agent.act(state, obs, jax.random.PRNGKey(3), 5))
    assert len(np.unique(actions)) == 3  # a zero observation has one greedy action: the others are random


def test_ppo_discrete_sample_is_jax_categorical():
    """The Gumbel noise reproduces jax.random.categorical's bits (what PPO drew before issue 15)."""
    agent = AGENTS["ppo_discrete"]  # raw observations (no normaliser), so the logits are the actor's output
    state = agent.init(jax.random.PRNGKey(1))
    obs = jnp.asarray(np.random.default_rng(1).normal(size=(500, OBS_DIM)), jnp.float32)
    logits, _ = agent.analysis.forward["actor"](state.actor_params, {"x": obs})
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        action, _, _ = agent.act_with_info(state, obs, key)
        np.testing.assert_array_equal(np.asarray(action), np.asarray(jax.random.categorical(key, logits)))


def test_sac_loop_acts_as_the_release_act():
    """The loop's path (noise drawn apart, `policy`) equals SAC's act before acting was split: one
    jitted program sampling the tanh-Gaussian from the key."""
    agent = AGENTS["sac"]
    state = agent.init(jax.random.PRNGKey(2))
    obs = jnp.asarray(np.random.default_rng(2).normal(size=(32, OBS_DIM)), jnp.float32)
    actor = sac.actor_network(sac.Config(actor_widths=(16, 16)), (OBS_DIM,), 2)
    low, high = -2.0, 1.0

    @jax.jit
    def release_act(params, obs, key):
        squashed, _ = sac.sample_tanh_gaussian(key, *actor.apply(params, obs))
        return low + (squashed + 1.0) * 0.5 * (high - low)

    blocks = NoiseBlocks(NoiseDrawer(lambda key: agent.act_noise(key, (32,), False)), RUN_KEYS[:1], block=4)
    for step in (0, 5):
        got = agent.policy(agent.acting_view(state), obs, blocks.at(step)[0], step)
        want = release_act(state.actor_params, obs, jax.random.fold_in(RUN_KEYS[0], step))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("name", ["ppo_discrete", "ppo_box"])
def test_packed_step_round_trips(name):
    agent = AGENTS[name]
    state = agent.init(jax.random.PRNGKey(1))
    obs = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, OBS_DIM)), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    outs = [agent.act_with_info(state, obs[i], keys[i]) for i in range(2)]
    packed = np.asarray(jnp.stack([pack_step(*out) for out in outs]))
    needs = agent.loop
    action, log_prob, value = unpack_step(packed, needs)
    assert action.dtype == needs.action_dtype
    for i, (a, lp, v) in enumerate(outs):
        np.testing.assert_array_equal(action[i], np.asarray(a))
        np.testing.assert_array_equal(log_prob[i], np.asarray(lp))
        np.testing.assert_array_equal(value[i], np.asarray(v))


def test_acting_view_holds_no_optimiser_state():
    for name, agent in AGENTS.items():
        state = agent.init(jax.random.PRNGKey(0))
        view_leaves = len(jax.tree_util.tree_leaves(agent.acting_view(state)))
        assert view_leaves < len(jax.tree_util.tree_leaves(state)) / 2, name


def test_sac_warmup_draws_only_the_blocks_it_acts_on(tmp_path, monkeypatch):
    """After a random warm-up the first policy noise block drawn is the one holding
    `learning_starts` (not block 0 as well), and the warm-up's uniform actions are drawn ahead."""
    import sparse_rl
    from sparse_rl.train import acting

    drawn = []
    real_call = acting.NoiseDrawer.__call__

    def counting(self, keys, steps):
        drawn.append((id(self), int(steps[0])))
        return real_call(self, keys, steps)

    monkeypatch.setattr(acting.NoiseDrawer, "__call__", counting)
    sparse_rl.train("sac", "Pendulum-v1", steps=1100, seed=0, out=str(tmp_path / "run"), eval_every=1100,
                    log_every=1100, eval_episodes=1, progress=False, actor_widths=(8,), critic_widths=(8,),
                    learning_starts=1030, batch_size=8)
    drawers = {}
    for drawer, start in drawn:
        drawers.setdefault(drawer, []).append(start)
    # warm-up actions for steps 0..1029 (blocks 0 and 1024); policy noise for 1030..1099 (block 1024
    # only); SAC's evaluation is deterministic and draws nothing
    assert sorted(sorted(v) for v in drawers.values()) == [[0, 1024], [1024]]
