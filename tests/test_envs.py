import io

import dm_env
import gymnasium as gym
import numpy as np
import pytest
from dm_env import specs

from sparse_rl.envs import (EnvSpec, env_family, env_spec, make_env, make_vector_env, wrap_env)
from sparse_rl.errors import ConfigError


def _policy(spec, seed=0):
    rng = np.random.default_rng(seed)
    if isinstance(spec, specs.DiscreteArray):
        return lambda: int(rng.integers(spec.num_values))
    return lambda: rng.uniform(spec.minimum, spec.maximum).astype(np.float32)


def _same(a: dm_env.TimeStep, b: dm_env.TimeStep) -> bool:
    return (a.step_type == b.step_type and a.reward == b.reward and a.discount == b.discount
            and np.array_equal(a.observation, b.observation))


def _roundtrip(state):
    """Through an .npz without pickle, as a checkpoint would."""
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_families_and_unknown_ids():
    assert env_family("CartPole-v1") == "classic"
    assert env_family("MountainCarContinuous-v0") == "classic"
    assert env_family("HalfCheetah-v5") == "mujoco"
    assert env_family("HumanoidStandup-v5") == "mujoco"
    assert env_family("ALE/Pong-v5") == "atari"
    assert env_family("ALE/MsPacman-v5") == "atari"
    assert env_family("HalfCheetah-v4") == "gym"  # any other registered id: as registered
    with pytest.raises(ConfigError, match=r"^env: PongNoFrameskip-v4 is an ale-py id without the "
                                          r"paper's Atari protocol; did you mean ALE/Pong-v5\?"):
        env_family("PongNoFrameskip-v4")
    for bad in ("CartPole-v9", "ALE/NotAGame-v5", "PongNoFrameskip-v4", 3, ""):
        with pytest.raises(ConfigError, match=r"^env: (unknown environment|PongNoFrameskip)"):
            env_family(bad)
        with pytest.raises(ConfigError, match="^env: "):
            make_env(bad, 0)


def test_bad_settings():
    with pytest.raises(ConfigError, match="^frame_skip: is an Atari setting"):
        make_env("CartPole-v1", 0, frame_skip=4)
    with pytest.raises(ConfigError, match="^sticky: unknown Atari setting"):
        make_env("ALE/Pong-v5", 0, sticky=0.1)
    with pytest.raises(ConfigError, match="^repeat_action_probability"):
        make_env("ALE/Pong-v5", 0, repeat_action_probability=2.0)
    with pytest.raises(ConfigError, match="^seed"):
        make_env("CartPole-v1", -1)
    with pytest.raises(ConfigError, match="^max_episode_steps"):
        make_env("CartPole-v1", 0, max_episode_steps=0)


class _DictObsEnv(gym.Env):
    observation_space = gym.spaces.Dict({"a": gym.spaces.Discrete(3)})
    action_space = gym.spaces.Discrete(2)


class _TextActEnv(gym.Env):
    observation_space = gym.spaces.Box(0, 1, (2,))
    action_space = gym.spaces.Text(5)


def test_unsupported_spaces():
    with pytest.raises(ConfigError, match=r"^observation_space: unsupported .*Dict.*allowed: Box"):
        wrap_env(_DictObsEnv(), 0)
    with pytest.raises(ConfigError, match=r"^action_space: unsupported .*Text"):
        wrap_env(_TextActEnv(), 0)


def test_specs():
    e = make_env("CartPole-v1", 0)
    assert e.observation_spec().shape == (4,) and e.observation_spec().dtype == np.float32
    assert isinstance(e.action_spec(), specs.DiscreteArray) and e.action_spec().num_values == 2
    assert e.reset().observation.dtype == np.float32
    s = env_spec("HalfCheetah-v5")
    assert isinstance(s, EnvSpec) and s.family == "mujoco" and s.env_id == "HalfCheetah-v5"
    assert s.observation_spec.shape == (17,) and s.observation_spec.dtype == np.float32
    assert isinstance(s.action_spec, specs.BoundedArray) and s.action_spec.shape == (6,)
    np.testing.assert_array_equal(s.action_spec.minimum, -np.ones(6))
    np.testing.assert_array_equal(s.action_spec.maximum, np.ones(6))
    s = env_spec("Pendulum-v1")
    assert s.action_spec.shape == (1,) and s.action_spec.dtype == np.float32


def test_discount_semantics_and_autoreset():
    # balancing policy: survives 5 steps -> truncated: LAST with discount 1
    e = make_env("CartPole-v1", 0, max_episode_steps=5)
    ts = e.reset()
    assert ts.first() and ts.reward is None and ts.discount is None
    types = []
    for i in range(5):
        ts = e.step(i % 2)
        types.append(ts.step_type)
    assert types[:4] == [dm_env.StepType.MID] * 4 and ts.last()
    assert ts.discount == 1.0 and ts.reward == 1.0
    assert e.episode_returns == [5.0] and e.episode_lengths == [5]
    assert e.step(0).first()                        # auto-reset after LAST
    # always push right: the pole falls -> terminated: LAST with discount 0
    e = make_env("CartPole-v1", 0)
    e.reset()
    n = 0
    while True:
        ts = e.step(1)
        n += 1
        if ts.last():
            break
        assert ts.mid() and ts.discount == 1.0
    assert ts.discount == 0.0 and n < 50 and e.episode_lengths == [n]


def test_same_seed_same_trajectory():
    def run(seed):
        e = make_env("CartPole-v1", seed, max_episode_steps=20)
        act = _policy(e.action_spec(), 1)
        return [e.reset()] + [e.step(act()) for _ in range(100)]
    a, b, c = run(3), run(3), run(4)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0].observation, c[0].observation)
    # resets after the first continue the generator: episodes start differently
    firsts = [t.observation for t in a if t.first()]
    assert len(firsts) >= 3 and not np.array_equal(firsts[0], firsts[1])


@pytest.mark.parametrize("env_id,before,after,kw", [
    ("CartPole-v1", 15, 60, {"max_episode_steps": 25}),   # crosses several episode boundaries
    ("Pendulum-v1", 10, 20, {}),
    ("HalfCheetah-v5", 20, 30, {}),
    ("Ant-v5", 10, 10, {}),        # reads pre-step body positions (saved derived quantities)
    ("ALE/Pong-v5", 20, 30, {"max_episode_steps": 30}),   # crosses a reset (no-op starts)
])
def test_get_set_state_exact_continuation(env_id, before, after, kw):
    e = make_env(env_id, 11, **kw)
    act = _policy(e.action_spec(), 2)
    e.reset()
    for _ in range(before):
        e.step(act())
    state = _roundtrip(e.get_state())
    actions = [act() for _ in range(after)]
    a = [e.step(x) for x in actions]
    fresh = make_env(env_id, 11, **kw)
    fresh.set_state(state)
    b = [fresh.step(x) for x in actions]
    assert all(_same(x, y) for x, y in zip(a, b))
    assert fresh.episode_returns == e.episode_returns
    assert fresh.episode_return == e.episode_return
    if kw:
        assert any(t.first() for t in a)


def test_set_state_before_first_reset():
    e = make_env("CartPole-v1", 5)
    state = e.get_state()
    fresh = make_env("CartPole-v1", 5)
    fresh.set_state(state)
    assert _same(fresh.reset(), make_env("CartPole-v1", 5).reset())


def test_atari_observations_and_overrides():
    e = make_env("ALE/Pong-v5", 0)
    assert e.observation_spec().shape == (84, 84, 4) and e.observation_spec().dtype == np.uint8
    assert e.action_spec().num_values == 6
    ts = e.reset()
    obs = ts.observation
    assert obs.shape == (84, 84, 4) and obs.dtype == np.uint8 and obs.flags.c_contiguous
    # FrameStackObservation pads with the reset frame
    assert all(np.array_equal(obs[..., 0], obs[..., j]) for j in range(4))
    nxt = e.step(0).observation
    np.testing.assert_array_equal(nxt[..., :3], obs[..., 1:])
    e = make_env("ALE/Breakout-v5", 0, frame_stack=2, screen_size=64, noop_max=0,
                 repeat_action_probability=0.0)
    assert e.reset().observation.shape == (64, 64, 2)


def test_vector_env_shapes_seeding_and_final_obs():
    v = make_vector_env("CartPole-v1", 3, seed=7, max_episode_steps=6)
    assert v.single_observation_space.shape == (4,)
    assert v.single_action_space.n == 2
    obs = v.reset()
    assert obs.shape == (3, 4) and obs.dtype == np.float32
    singles = [make_env("CartPole-v1", 7 + i, max_episode_steps=6) for i in range(3)]
    for i, s in enumerate(singles):
        np.testing.assert_array_equal(obs[i], s.reset().observation)
    for t in range(6):
        actions = np.array([t % 2] * 3)
        obs, rew, term, trunc, infos = v.step(actions)
        ts = [s.step(int(a)) for s, a in zip(singles, actions)]
        assert rew.shape == term.shape == trunc.shape == (3,)
        for i in range(3):
            np.testing.assert_array_equal(infos["next_obs"][i], ts[i].observation)
            assert bool(term[i] or trunc[i]) == ts[i].last()
    assert trunc.all() and not term.any()
    # SAME_STEP autoreset: obs already starts the next episode
    for i, s in enumerate(singles):
        np.testing.assert_array_equal(obs[i], s.step(0).observation)
    assert v.episode_returns == [6.0, 6.0, 6.0] and v.episode_lengths == [6, 6, 6]


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Hopper-v5"])
def test_vector_env_state(env_id):
    v = make_vector_env(env_id, 2, seed=1, max_episode_steps=12)
    rng = np.random.default_rng(0)
    sample = (lambda: rng.integers(0, 2, 2)) if env_id == "CartPole-v1" else (
        lambda: rng.uniform(-1, 1, (2, 3)).astype(np.float32))
    v.reset()
    for _ in range(7):
        v.step(sample())
    state = _roundtrip(v.get_state())
    actions = [sample() for _ in range(15)]
    a = [v.step(x) for x in actions]
    w = make_vector_env(env_id, 2, seed=1, max_episode_steps=12)
    w.set_state(state)
    b = [w.step(x) for x in actions]
    for x, y in zip(a, b):
        for i in range(4):
            np.testing.assert_array_equal(x[i], y[i])
        np.testing.assert_array_equal(x[4]["next_obs"], y[4]["next_obs"])
    assert v.episode_returns == w.episode_returns and len(v.episode_returns) >= 2


def test_vector_env_atari_shape():
    v = make_vector_env("ALE/Pong-v5", 2, seed=0, noop_max=2)
    obs = v.reset()
    assert obs.shape == (2, 84, 84, 4) and obs.dtype == np.uint8
    obs, *_ = v.step(np.array([0, 1]))
    assert obs.shape == (2, 84, 84, 4)
