"""Issue 13: any gymnasium env, the Python API (train / load / evaluate / callbacks), the eval
command, extras, and what the CLI tells a newcomer."""

import dataclasses
import importlib
import json
import sys
import types

import gymnasium as gym
import jax
import numpy as np
import pytest

import sparse_rl
from sparse_rl import agents, envs
from sparse_rl.api import configure_run
from sparse_rl.cli import main as cli_main
from sparse_rl.cli import parse_train_args
from sparse_rl.configure import choose_preset, run_warnings
from sparse_rl.envs.compat import check_agent_spaces
from sparse_rl.errors import ConfigError
from sparse_rl.extras import require
from sparse_rl.train.callbacks import Callback, WandbCallback
from sparse_rl.train.runner import RunConfig

# A tiny DQN: 64-64 MLP, updates from step 100, evaluations of 2 episodes.
TINY = dict(widths=(16, 16), learning_starts=100, batch_size=16, eval_episodes=2, progress=False)


class ImageEnv(gym.Env):
    """Pixels in, discrete actions out: the preset chosen for it is atari."""

    observation_space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


class Recorder(Callback):
    def __init__(self):
        self.started, self.rows, self.evaluations, self.ended = None, [], [], None

    def on_start(self, run_dir, config):
        self.started = (run_dir, config)

    def on_metrics(self, row):
        self.rows.append(row)

    def on_evaluation(self, step, return_mean, return_std):
        self.evaluations.append((step, return_mean, return_std))

    def on_end(self, summary):
        self.ended = summary


# --- environments --------------------------------------------------------------------------------

def test_any_registered_id_and_module_colon_id():
    assert envs.env_family("CartPole-v1") == "classic"
    assert envs.env_family("FrozenLake-v1") == "gym"
    assert envs.env_family("gymnasium.envs.classic_control:Acrobot-v1") == "gym"
    spec = envs.env_spec("gymnasium.envs.classic_control:Acrobot-v1")
    assert spec.observation_spec.dtype == np.float32 and spec.action_spec.num_values == 3


def test_unknown_env_suggests_the_nearest():
    with pytest.raises(ConfigError, match=r"^env: unknown environment 'CartPol-v1'; did you mean CartPole-v1"):
        envs.env_family("CartPol-v1")
    with pytest.raises(ConfigError, match=r"did you mean ALE/Pong-v5"):
        envs.env_family("ALE/Pongg-v5")
    with pytest.raises(ConfigError, match=r"^env: cannot import module 'no_such_module_xyz'"):
        envs.env_family("no_such_module_xyz:Foo-v0")
    with pytest.raises(ConfigError, match=r"^env: unknown environment 'Qqqqqqqq' \(allowed: a registered gymnasium id"):
        envs.env_family("Qqqqqqqq")


def test_factory_registration_is_stable():
    def my_env():
        return gym.make("CartPole-v1")

    first = envs.register_env_factory(my_env)
    assert first.startswith("sparse_rl_factory/my_env-v")
    assert envs.register_env_factory(my_env) == first
    other = envs.register_env_factory(lambda: gym.make("CartPole-v1"), name="my_env")
    assert other != first
    assert envs.env_family(first) == "gym"
    with pytest.raises(ConfigError, match="^env: must be an env id or a callable"):
        envs.register_env_factory(3)


def test_agent_space_checks_name_what_the_agent_needs():
    with pytest.raises(ConfigError, match=r"^env: dqn needs Box observations and Discrete actions; "
                                          r"Pendulum-v1 has Box observations and Box actions"):
        check_agent_spaces("dqn", agents.spec("dqn").spaces, envs.env_spec("Pendulum-v1"))
    with pytest.raises(ConfigError, match=r"^env: sac needs Box observations and Box actions"):
        check_agent_spaces("sac", agents.spec("sac").spaces, envs.env_spec("CartPole-v1"))
    with pytest.raises(ConfigError, match=r"^env: ppo needs Box observations and Discrete or Box actions; "
                                          r"FrozenLake-v1 has Discrete observations"):
        check_agent_spaces("ppo", agents.spec("ppo").spaces, envs.env_spec("FrozenLake-v1"))
    check_agent_spaces("ppo", agents.spec("ppo").spaces, envs.env_spec("Pendulum-v1"))
    # ... and before anything is written
    with pytest.raises(ConfigError, match="^env: dqn needs"):
        sparse_rl.train("dqn", "Pendulum-v1", steps=10, out="never-written")


def test_preset_from_the_observation_space(tmp_path):
    assert choose_preset("dqn", "Acrobot-v1") == "classic"
    assert choose_preset("dqn", envs.register_env_factory(ImageEnv)) == "atari"
    assert choose_preset("ppo", envs.register_env_factory(ImageEnv)) == "atari"
    assert choose_preset("ppo", "gymnasium.envs.classic_control:MountainCarContinuous-v0") == "mujoco"
    assert choose_preset("ppo", "FrozenLake-v1") == "classic"
    assert choose_preset("dqn", "Acrobot-v1", "atari") == "atari"
    with pytest.raises(ConfigError, match="^preset: unknown value 'nope'"):
        choose_preset("dqn", "Acrobot-v1", "nope")


def test_atari_flags():
    run, _, _ = parse_train_args(["--env", "ALE/Pong-v5", "--sticky-actions", "0", "--frame-skip", "2",
                                  "--full-action-space", "True", "--terminal-on-life-loss", "True"])
    assert run.env_options() == {"repeat_action_probability": 0.0, "frame_skip": 2,
                                 "full_action_space": True, "terminal_on_life_loss": True}
    assert RunConfig(env="ALE/Pong-v5").env_options() == {}
    spec = envs.env_spec("ALE/Pong-v5", **run.env_options())
    assert spec.action_spec.num_values == 18
    with pytest.raises(ConfigError, match="^frame_skip: is an Atari setting, but CartPole-v1"):
        RunConfig(env="CartPole-v1", frame_skip=2)
    with pytest.raises(ConfigError, match="^repeat_action_probability"):
        RunConfig(env="ALE/Pong-v5", sticky_actions=1.5)


def test_unset_atari_fields_stay_out_of_config_json(tmp_path):
    """Runs written before the Atari fields existed keep their config hash (they still resume)."""
    run = sparse_rl.train("dqn", "CartPole-v1", steps=120, out=str(tmp_path / "r"), eval_every=120,
                          checkpoint_every=0, **TINY)
    written = json.loads((run.dir / "config.json").read_text())["run"]
    assert not {"sticky_actions", "frame_skip", "full_action_space", "terminal_on_life_loss"} & set(written)


# --- the Python API ------------------------------------------------------------------------------

def test_api_and_cli_build_the_same_config():
    flags = ["--agent", "sac", "--env", "Pendulum-v1", "--method", "set", "--sparsity", "0.8",
             "--sac.actor-learning-rate", "0.0005", "--steps", "3000", "--eval-every", "500", "--seed", "3"]
    cli_run, cli_config, _ = parse_train_args(flags)
    api_run, api_config = configure_run("sac", "Pendulum-v1", method="set", sparsity=0.8,
                                        actor_learning_rate=0.0005, steps=3000, eval_every=500, seed=3)
    assert api_run == cli_run
    assert api_config == cli_config
    # the method's paper schedule came with it (SAC SET: every 250, drop 0.3)
    assert api_config.actor_sparsity.update_every == 250
    assert api_config.critic_sparsity.drop_fraction == pytest.approx(0.3)
    nested = configure_run("sac", "Pendulum-v1", critic_sparsity={"method": "dense"})[1]
    assert nested.critic_sparsity.method == "dense" and nested.actor_sparsity.method == "rigl"
    with pytest.raises(ConfigError, match="^learning_rat: is not a setting of dqn config"):
        configure_run("dqn", "CartPole-v1", learning_rat=1e-3)
    with pytest.raises(ConfigError, match="^sparsity: got 1.5"):
        configure_run("dqn", "CartPole-v1", sparsity=1.5)


def test_train_load_act_evaluate_with_a_factory_and_callbacks(tmp_path):
    def short_cartpole():
        return gym.wrappers.TimeLimit(gym.make("CartPole-v1"), max_episode_steps=50)

    recorder = Recorder()
    run = sparse_rl.train("dqn", short_cartpole, method="rigl", sparsity=0.8, steps=300, seed=1,
                          out=str(tmp_path / "run"), eval_every=150, log_every=100,
                          callbacks=[recorder], **TINY)
    assert isinstance(run, sparse_rl.Run) and (run.dir / "COMPLETE").is_file()
    assert run.summary["method"] == "rigl" and run.summary["final_eval_return"] <= 50
    assert recorder.started[0] == str(run.dir) and recorder.ended == run.summary
    assert [row["step"] for row in recorder.rows] == [100, 150, 200, 300]
    assert [step for step, _, _ in recorder.evaluations] == [150, 300]
    assert recorder.evaluations[-1][1] == pytest.approx(run.summary["eval_returns"][-1])

    policy = sparse_rl.load(run.dir)
    assert list(policy.networks) == ["q"]
    q = policy.networks["q"]
    kernels = [k for k in q.masks["mlp/~/linear_1"]]
    assert "w" in kernels and not np.asarray(q.masks["mlp/~/linear_1"]["w"]).all()
    np.testing.assert_array_equal(np.asarray(q.params["mlp/~/linear_1"]["w"])[~np.asarray(q.masks["mlp/~/linear_1"]["w"])], 0)
    single = policy.act(np.zeros(4, np.float32))
    batch = policy.act(np.zeros((5, 4), np.float32))
    assert np.shape(single) == () and batch.shape == (5,)
    # the trimmed act (acting view taken once, key folded in inside one program) is the agent's act
    many = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    key = jax.random.PRNGKey(7)
    want = np.asarray(policy.agent.act(policy.state, many, key, 0, evaluation=True))
    np.testing.assert_array_equal(policy.act(many, key=key), want)
    seeded = sparse_rl.load(run.dir, seed=3)
    for call in range(2):
        want = policy.agent.act(policy.state, many, jax.random.fold_in(jax.random.PRNGKey(3), call), 0, evaluation=True)
        np.testing.assert_array_equal(seeded.act(many), np.asarray(want))

    returns = sparse_rl.evaluate(policy, episodes=3, seed=0)
    assert len(returns) == 3 and all(r <= 50 for r in returns)
    assert returns == sparse_rl.evaluate(policy, episodes=3, seed=0)
    assert len(sparse_rl.evaluate(policy, "CartPole-v1", episodes=2)) == 2
    with pytest.raises(ConfigError, match="^episodes: must be a positive int"):
        sparse_rl.evaluate(policy, episodes=0)


def test_top_level_names():
    from sparse_rl import train

    assert callable(train) and train is sparse_rl.train
    runner = importlib.import_module("sparse_rl.train.runner")  # the package stays a package
    assert sparse_rl.train.runner is runner and runner.RunConfig is RunConfig
    assert sparse_rl.load is sparse_rl.api.load
    with pytest.raises(AttributeError):
        sparse_rl.no_such_name


def test_wandb_callback_logs_rows_offline(monkeypatch, tmp_path):
    calls = []

    class FakeRun:
        summary = {}

        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = sparse_rl.train("dqn", "CartPole-v1", steps=200, out=str(tmp_path / "w"), eval_every=200,
                          log_every=100, wandb="my-project", **TINY)
    assert calls[0][0] == "init" and calls[0][1]["project"] == "my-project"
    assert calls[0][1]["config"]["agent"]["widths"] == [16, 16]
    assert [c[1] for c in calls if c[0] == "log"] == [100, 200]
    assert calls[-1] == ("finish",)
    assert FakeRun.summary["final_eval_return"] == run.summary["final_eval_return"]


def test_a_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"^wandb: needs the optional package 'wandb' \(allowed: pip install \"sparse_rl\[wandb\]\"\)$"):
        WandbCallback()
    monkeypatch.setitem(sys.modules, "moviepy", None)
    with pytest.raises(ConfigError, match=r"sparse_rl\[video\]"):
        require("moviepy", "video")


# --- the command line ----------------------------------------------------------------------------

def test_cli_train_prints_run_directory_and_warns_without_updates(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["train", "--steps", "100", "--out", str(out), "--no-progress", "--eval-episodes", "1",
                     "--dqn.widths", "8", "8"]) == 0
    captured = capsys.readouterr()
    assert f"run directory {out}" in captured.err
    assert "warning: steps=100 <= 1000, the step of the first gradient update" in captured.err
    assert f"run directory: {out}" in captured.out
    assert "kernel sparsity 0.8" in captured.out and "of all parameters, biases dense)" in captured.out
    # a second run into the finished directory is refused with a suggestion
    assert cli_main(["train", "--steps", "100", "--out", str(out)]) == 2
    assert f"--out {out}-2" in capsys.readouterr().err


def test_run_warnings_per_agent():
    run, config = configure_run("ppo", "Pendulum-v1", steps=1000, preset="mujoco")
    assert run_warnings(run, config) and "2048" in run_warnings(run, config)[0]
    run, config = configure_run("ppo", "Pendulum-v1", steps=1000)  # classic: 8 x 32 per rollout
    assert run_warnings(run, config) == []
    run, config = configure_run("sac", "HalfCheetah-v5", steps=20_000)
    assert run_warnings(run, config) == []
    run, config = configure_run("sac", "HalfCheetah-v5", steps=5_000)
    assert "10000" in run_warnings(run, config)[0]


def test_progress_flags_and_help(capsys):
    assert parse_train_args(["--no-progress"])[0].progress is False
    assert parse_train_args(["--progress", "--steps", "10"])[0].progress is True
    assert parse_train_args(["--steps", "10", "--progress"])[0].progress is True
    assert parse_train_args([])[0].progress is None
    with pytest.raises(SystemExit):
        parse_train_args(["--help"])
    text = capsys.readouterr().out
    assert "Shortcuts(" not in text and "TrainArgs(" not in text
    assert "(default: the" not in text  # one default per flag: tyro's
    for flag in ("--dqn.sparsity.method", "--dqn.sparsity.update-every", "--sticky-actions"):
        line = text[text.index(flag):].split("\n")[1]
        assert line.strip(" │"), f"{flag} has no description"


def test_plain_progress_lines_every_few_percent():
    import io

    from sparse_rl.train.progress import Progress

    stream = io.StringIO()
    progress = Progress(1000, enabled=False, stream=stream, fraction_every=0.25)
    for step in range(100, 1001, 100):
        progress.update(step, ret=1.0)
    lines = stream.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["300/1,000", "500/1,000", "800/1,000", "1,000/1,000"]
    assert all("ETA" in line and "return 1" in line for line in lines)


def test_eval_command(tmp_path, capsys):
    run = sparse_rl.train("dqn", "CartPole-v1", steps=200, out=str(tmp_path / "e"), eval_every=200, **TINY)
    assert cli_main(["eval", str(run.dir), "--episodes", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "dqn on CartPole-v1, checkpoint at step 200: return" in out and "over 2 episodes" in out
    assert cli_main(["eval", str(run.dir), "--episodes", "x"]) == 2
    assert "error: episodes: got 'x'" in capsys.readouterr().err
    assert cli_main(["eval", str(tmp_path / "nothing")]) == 2
    assert "error: RUN_DIR:" in capsys.readouterr().err
    assert cli_main(["eval", str(run.dir), "--bogus"]) == 2


def test_eval_video(tmp_path):
    pytest.importorskip("moviepy")
    run = sparse_rl.train("dqn", "CartPole-v1", steps=200, out=str(tmp_path / "v"), eval_every=200, **TINY)
    policy = sparse_rl.load(run.dir)
    returns = sparse_rl.record_video(policy, tmp_path / "video", episodes=1)
    videos = list((tmp_path / "video").glob("*.mp4"))
    assert len(returns) == 1 and len(videos) == 1 and videos[0].stat().st_size > 1000


def test_sparsify_warns_without_a_key():
    import jax
    import optax

    from sparse_rl.sparsity import SparsityConfig, sparsify

    with pytest.warns(UserWarning, match="sparsify: no key given"):
        sparsify(optax.sgd(0.1), SparsityConfig(method="rigl"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsify(optax.sgd(0.1), SparsityConfig(method="rigl"), key=jax.random.PRNGKey(1))
        sparsify(optax.sgd(0.1), SparsityConfig(method="dense"))
        sparsify(optax.sgd(0.1), SparsityConfig(method="prune"))


def test_network_from_module_name():
    from sparse_rl.agents import dqn

    config = dataclasses.replace(dqn.PRESETS["classic"], network="sparse_rl.nets:MLP")
    from sparse_rl.nets import MLP

    assert config.network is MLP
    with pytest.raises(ConfigError, match="^network: cannot import 'sparse_rl.nets:Nope'"):
        dataclasses.replace(dqn.PRESETS["classic"], network="sparse_rl.nets:Nope")
    with pytest.raises(ConfigError, match="^network: unknown network 'transformer'"):
        dataclasses.replace(dqn.PRESETS["classic"], network="transformer")


def test_sweep_dry_run_prints_the_cost(tmp_path, capsys):
    assert cli_main(["sweep", "--agents", "dqn,ppo", "--envs", "CartPole-v1,Acrobot-v1", "--methods", "dense",
                     "--seeds", "0,1", "--steps", "36000", "--out", str(tmp_path / "s"), "--dry-run",
                     "--workers", "2"]) == 0
    out = capsys.readouterr().out
    # dqn: 2 runs x 36k steps at 360 steps/s per core = 200 s = 0.06 h; replay 1e5 x 2 float32 obs
    assert "dqn CartPole-v1 (classic): 2 runs, 72,000 env steps, ~0.7 GiB per run; " \
           "360 steps/s per core -> 0.1 h of CPU" in out
    assert "ppo Acrobot-v1 (classic): 2 runs, 72,000 env steps" in out and "not measured" in out
    assert "total: 8 runs, 288,000 env steps, 0.1 h of CPU (+ unmeasured: ppo/classic); on 2 workers" in out


def test_cost_of_an_atari_run():
    from sparse_rl.sweep.cost import GroupCost, format_estimate, replay_mib
    from sparse_rl.agents import dqn

    mib = replay_mib("dqn", dqn.PRESETS["atari"], envs.env_spec("ALE/Pong-v5"))
    assert 6.5 * 1024 < mib < 7.5 * 1024  # ~7.1 GB: frames stored once (replay.py)
    text = format_estimate([GroupCost("dqn", "ALE/Pong-v5", "atari", 10, 10 * 10_000_000, 700 + mib, 80.0)], 2)
    assert "14.5 days of CPU" in text and "sparse_rl[cuda]" in text


class CounterEnv(gym.Env):
    """Keeps its state in a private counter: nothing sparse_rl can snapshot."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self._t += 1
        return np.full(2, self._t / 10, np.float32), 1.0, self._t >= 10, False, {}


def test_snapshots_of_other_gym_envs():
    # an env keeping its state in `state` (here Acrobot under its module:Id, family "gym") resumes exactly
    env_id = "gymnasium.envs.classic_control:Acrobot-v1"
    a = envs.make_env(env_id, seed=3)
    a.reset()
    for t in range(20):
        a.step(t % 3)
    saved = a.get_state()
    b = envs.make_env(env_id, seed=3)
    b.set_state(saved)
    for t in range(30):
        np.testing.assert_array_equal(a.step(t % 3).observation, b.step(t % 3).observation)
    # an opaque one checkpoints (the agent can be loaded) but refuses to resume
    opaque = envs.make_env(envs.register_env_factory(CounterEnv), seed=0)
    opaque.reset()
    opaque.step(1)
    state = opaque.get_state()
    fresh = envs.make_env(envs.register_env_factory(CounterEnv), seed=0)
    with pytest.raises(ConfigError, match="^resume: .* keeps its state where sparse_rl cannot save it"):
        fresh.set_state(state)


def test_cli_wandb_flag(monkeypatch, tmp_path):
    projects = []

    class FakeRun:
        summary = {}

        def log(self, values, step):
            pass

        def finish(self):
            pass

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(
        init=lambda **kw: projects.append(kw["project"]) or FakeRun()))
    assert parse_train_args(["--wandb"])[2].wandb == "sparse_rl"
    assert parse_train_args(["--wandb", "mine", "--steps", "5"])[2].wandb == "mine"
    assert parse_train_args([])[2].wandb is None
    assert cli_main(["train", "--steps", "50", "--out", str(tmp_path / "w"), "--wandb", "--no-progress",
                     "--eval-episodes", "1", "--dqn.widths", "8", "8"]) == 0
    assert projects == ["sparse_rl"]
