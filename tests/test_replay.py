import io

import numpy as np
import pytest

from sparse_rl.envs import make_env
from sparse_rl.errors import ConfigError
from sparse_rl.replay import ReplayBuffer, Transition


def _collect_atari(n_steps, max_episode_steps, seed=0):
    """(obs, action, reward, discount, next_obs, first) from the real Pong env."""
    env = make_env("ALE/Pong-v5", seed, max_episode_steps=max_episode_steps, noop_max=3)
    rng = np.random.default_rng(seed)
    out = []
    ts = env.reset()
    first = True
    while len(out) < n_steps:
        a = int(rng.integers(6))
        nxt = env.step(a)
        out.append((ts.observation, a, nxt.reward, nxt.discount, nxt.observation, first))
        first = False
        ts = nxt
        if nxt.last():
            ts = env.reset()
            first = True
    return out


def _check_all(buf, data):
    """Every sampleable transition rebuilds exactly the env's stacks."""
    g = np.arange(buf._lo, buf._t)
    obs, nxt = buf._obs(g), buf._next_obs(g)
    for j, i in enumerate(g):
        np.testing.assert_array_equal(obs[j], data[i][0])
        np.testing.assert_array_equal(nxt[j], data[i][4])


def test_atari_frames_stored_once_and_rebuilt_exactly():
    data = _collect_atari(120, max_episode_steps=25)      # 5 episodes: truncations + resets
    buf = ReplayBuffer(50, (84, 84, 4), np.uint8, seed=3, frame_stack=4)
    assert buf.frame_capacity < 2 * 50
    for t, tr in enumerate(data):
        buf.add(*tr)
        if t in (3, 30, 49, 77, 119):
            _check_all(buf, data)
    assert len(buf) == 50
    assert buf._storage["frames"].shape == (buf.frame_capacity, 84, 84)
    # sample() returns those same stacks, in the order its generator draws them
    batch = buf.sample(16)
    g = np.random.default_rng(3).integers(buf._lo, buf._t, size=16)
    for j, i in enumerate(g):
        np.testing.assert_array_equal(batch.obs[j], data[i][0])
        np.testing.assert_array_equal(batch.next_obs[j], data[i][4])
        assert batch.action[j] == data[i][1] and batch.reward[j] == data[i][2]
        assert batch.discount[j] == data[i][3]
    assert batch.obs.dtype == np.uint8 and batch.obs.shape == (16, 84, 84, 4)


def test_atari_short_episodes_drop_overwritten_frames():
    data = _collect_atari(60, max_episode_steps=1)        # 2 frames per one-step episode
    buf = ReplayBuffer(40, (84, 84, 4), np.uint8, frame_stack=4)
    for tr in data:
        buf.add(*tr)
    assert 0 < len(buf) < 40                              # oldest ones lost their frames
    _check_all(buf, data)
    buf.sample(8)


def test_frame_stack_misuse_is_refused():
    buf = ReplayBuffer(10, (2, 2, 3), np.uint8, frame_stack=3)
    obs = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    with pytest.raises(ValueError, match="reset frame"):
        buf.add(obs, 0, 0.0, 1.0, obs, first=True)
    f0 = np.zeros((2, 2, 3), np.uint8)
    f1 = f0.copy()
    f1[..., -1] = 1
    buf.add(f0, 0, 0.0, 1.0, f1, first=True)
    with pytest.raises(ValueError, match="does not continue"):
        buf.add(f0, 0, 0.0, 1.0, f1, first=False)
    with pytest.raises(ConfigError, match="^frame_stack"):
        ReplayBuffer(10, (84, 84, 4), np.uint8, frame_stack=3)
    with pytest.raises(ConfigError, match="^capacity"):
        ReplayBuffer(0, (4,))


def _fill_plain(buf, n, seed=0):
    rng = np.random.default_rng(seed)
    for t in range(n):
        obs = rng.normal(size=(3,)).astype(np.float32)
        buf.add(obs, rng.integers(2), rng.normal(), float(rng.random() > 0.1), obs + 1, t % 7 == 0)


def _equal(a: Transition, b: Transition):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_sampling_determinism_and_wraparound():
    a, b = ReplayBuffer(30, (3,), seed=9), ReplayBuffer(30, (3,), seed=9)
    _fill_plain(a, 45)
    _fill_plain(b, 45)
    assert len(a) == 30
    _equal(a.sample(10), b.sample(10))
    _equal(a.sample(10, n_step=3, gamma=0.9), b.sample(10, n_step=3, gamma=0.9))
    c = ReplayBuffer(30, (3,), seed=10)
    _fill_plain(c, 45)
    assert not np.array_equal(a.sample(10).obs, c.sample(10).obs)
    s = a.sample(5)
    assert s.obs.dtype == np.float32 and s.action.dtype == np.int32 and s.obs.shape == (5, 3)
    np.testing.assert_array_equal(s.next_obs, s.obs + 1)


def _npz(d):
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in d.values())
    f = io.BytesIO()
    np.savez(f, **d)
    f.seek(0)
    with np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("atari", [False, True])
def test_state_dict_round_trip(atari):
    if atari:
        data = _collect_atari(70, max_episode_steps=20)
        make = lambda: ReplayBuffer(30, (84, 84, 4), np.uint8, seed=1, frame_stack=4)
    else:
        rng = np.random.default_rng(0)
        data = [(rng.normal(size=3).astype(np.float32), rng.integers(2), rng.normal(), 1.0,
                 rng.normal(size=3).astype(np.float32), t % 9 == 0) for t in range(70)]
        make = lambda: ReplayBuffer(30, (3,), seed=1)
    a = make()
    for tr in data[:50]:
        a.add(*tr)
    a.sample(4)
    state = _npz(a.state_dict())
    b = make()
    b.load_state_dict(state)
    assert len(b) == len(a)
    for tr in data[50:]:                  # continue adding to both, then sample: identical
        a.add(*tr)
        b.add(*tr)
    _equal(a.sample(8), b.sample(8))
    _equal(a.sample(8, n_step=3), b.sample(8, n_step=3))
    empty = make()
    e2 = make()
    e2.load_state_dict(_npz(empty.state_dict()))
    assert len(e2) == 0
    with pytest.raises(ConfigError, match="^replay"):
        ReplayBuffer(31, (3,)).load_state_dict(_npz(ReplayBuffer(30, (3,)).state_dict()))


def test_n_step_hand_built():
    # episode 1: idx 0-3, rewards 1,2,3,4, terminated at idx 3 (discount 0)
    # episode 2: idx 4-6, rewards 10,20,30, truncated at idx 6 (discount 1, then first=True)
    # episode 3: idx 7-11, rewards 1 each, still running
    rewards = [1, 2, 3, 4, 10, 20, 30, 1, 1, 1, 1, 1]
    discounts = [1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    firsts = {0, 4, 7}
    buf = ReplayBuffer(20, (1,), seed=0)
    for i, (r, d) in enumerate(zip(rewards, discounts)):
        buf.add([i], 0, r, d, [100 + i], i in firsts)
    # n = 3, gamma = 0.5: (reward, discount, index of next_obs)
    expected = {
        0: (1 + 0.5 * 2 + 0.25 * 3, 0.25, 2),
        1: (2 + 0.5 * 3 + 0.25 * 4, 0.0, 3),
        2: (3 + 0.5 * 4, 0.0, 3),
        3: (4, 0.0, 3),
        4: (10 + 0.5 * 20 + 0.25 * 30, 0.25, 6),
        5: (20 + 0.5 * 30, 0.5, 6),          # truncated: bootstraps with gamma^1
        6: (30, 1.0, 6),
        7: (1.75, 0.25, 9),
        8: (1.75, 0.25, 10),
        9: (1.75, 0.25, 11),
    }
    batch = buf.sample(400, n_step=3, gamma=0.5)
    seen = set()
    for o, r, d, n in zip(batch.obs[:, 0], batch.reward, batch.discount, batch.next_obs[:, 0]):
        i = int(o)
        assert i in expected, i                 # the newest n-1 = 2 transitions are not drawn
        er, ed, en = expected[i]
        assert r == pytest.approx(er) and d == pytest.approx(ed) and int(n) == 100 + en
        seen.add(i)
    assert seen == set(expected)
    # n = 1: raw transitions, env discount
    b1 = buf.sample(200)
    for o, r, d, n in zip(b1.obs[:, 0], b1.reward, b1.discount, b1.next_obs[:, 0]):
        i = int(o)
        assert r == rewards[i] and d == discounts[i] and int(n) == 100 + i
    with pytest.raises(ValueError, match="too few"):
        ReplayBuffer(5, (1,)).sample(1)


def test_memory_budget():
    big = ReplayBuffer(1_000_000, (84, 84, 4), np.uint8, frame_stack=4)
    assert big._storage is None                           # nothing allocated yet
    assert 7.0e9 < big.nbytes < 8.0e9                     # vs 56 GB for obs + next_obs stacks
    small = ReplayBuffer(1000, (84, 84, 4), np.uint8, frame_stack=4)
    f = np.zeros((84, 84, 4), np.uint8)
    small.add(f, 0, 0.0, 1.0, f, True)
    assert sum(v.nbytes for v in small._storage.values()) == small.nbytes
    plain = ReplayBuffer(100, (17,), action_shape=(6,), action_dtype=np.float32)
    plain.add(np.zeros(17), np.zeros(6), 0.0, 1.0, np.zeros(17), True)
    assert sum(v.nbytes for v in plain._storage.values()) == plain.nbytes
    assert plain.sample(2).action.shape == (2, 6)
