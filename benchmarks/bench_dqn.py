"""DQN speed: our dense DQN and every sparse method against sbx's DQN, same hyperparameters.

    python benchmarks/bench_dqn.py                      # CartPole-v1, 20k steps each
    python benchmarks/bench_dqn.py --env ALE/Pong-v5 --steps 3000 --methods dense,rigl
    python benchmarks/bench_dqn.py --sbx-python /path/to/venv/bin/python   # sbx in another venv

Each configuration runs in its own child process (peak memory and compile time are its own).
SPS is end to end: environment steps divided by the wall time of the whole training call
(acting, replay, updates, compilation), the way a user experiences it; our steady-state SPS
(without compilation and evaluation) is reported beside it. Results go to
benchmarks/results/dqn_<env>.json; the README's benchmark table is made from those files.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_parser, machine, measure_rows, peak_rss_mib, write_results  # noqa: E402

METHODS = ("dense", "static", "prune", "set", "rigl")


def ours(env_id: str, steps: int, method: str, sparsity: float) -> dict:
    import tempfile

    from sparse_rl.cli import build_train_args
    from sparse_rl.train.runner import train

    out = tempfile.mkdtemp(prefix="bench-dqn-")
    argv = ["--agent", "dqn", "--env", env_id, "--steps", str(steps), "--method", method,
            "--sparsity", str(sparsity), "--eval-every", str(steps), "--eval-episodes", "1",
            "--checkpoint-every", "0", "--log-every", str(max(steps // 10, 1)), "--out", out]
    if env_id.startswith("ALE/"):
        # A short CPU benchmark: start learning after 500 steps, a small replay.
        argv += ["--dqn.learning-starts", "500", "--dqn.replay-capacity", "20000"]
    run, config = build_train_args(argv)
    start = time.perf_counter()
    summary = train(run, config)
    wall = time.perf_counter() - start
    return {
        "library": "sparse_rl", "method": method, "sparsity": summary["sparsity"],
        "sps": steps / wall, "steady_sps": summary["steps_per_second"],
        "compile_seconds": summary["compile_seconds"], "peak_rss_mib": peak_rss_mib(),
        "steps": steps,
    }


def sbx(env_id: str, steps: int) -> dict:
    import gymnasium as gym
    from sbx import DQN

    if env_id.startswith("ALE/"):
        import ale_py

        gym.register_envs(ale_py)
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        env = gym.make(env_id, frameskip=1, repeat_action_probability=0.25)
        env = FrameStackObservation(AtariPreprocessing(env, frame_skip=4, screen_size=84), 4)
        kwargs = dict(policy="CnnPolicy", learning_rate=2.5e-4, buffer_size=20_000, learning_starts=500,
                      batch_size=32, train_freq=4, target_update_interval=2000,
                      exploration_final_eps=0.01, exploration_fraction=0.1)
    else:
        env = gym.make(env_id)
        kwargs = dict(policy="MlpPolicy", learning_rate=1e-3, buffer_size=100_000, learning_starts=1000,
                      batch_size=128, train_freq=1, target_update_interval=100,
                      exploration_final_eps=0.01, exploration_fraction=min(1.0, 1000 / steps),
                      policy_kwargs=dict(net_arch=[512, 512]))
    model = DQN(env=env, gamma=0.99, gradient_steps=1, seed=0, verbose=0, **kwargs)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - start
    return {"library": "sbx", "method": "dense", "sps": steps / wall, "peak_rss_mib": peak_rss_mib(),
            "steps": steps}


def main():
    parser = benchmark_parser(__doc__, "CartPole-v1", 20_000, METHODS)
    args = parser.parse_args()

    if args.worker == "ours":
        print(json.dumps(ours(args.env, args.steps, args.method, args.sparsity)))
        return
    if args.worker == "sbx":
        print(json.dumps(sbx(args.env, args.steps)))
        return

    script = str(Path(__file__).resolve())
    common = [script, "--env", args.env, "--steps", str(args.steps), "--sparsity", str(args.sparsity)]
    rows = measure_rows(common, args, args.methods.split(","))
    name = "dqn_" + args.env.replace("/", "_").replace("-", "_")
    path = write_results(name, {"benchmark": "dqn", "env": args.env, "steps": args.steps,
                                "machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
