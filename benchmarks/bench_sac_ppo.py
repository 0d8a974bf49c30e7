"""SAC and PPO speed on MuJoCo: ours (dense and every sparse method) against sbx, same settings.

    python benchmarks/bench_sac_ppo.py --agent sac --steps 6000
    python benchmarks/bench_sac_ppo.py --agent ppo --steps 16384
    python benchmarks/bench_sac_ppo.py --agent sac --sbx-python /path/to/venv/bin/python

Each configuration runs in its own child process. SPS is end to end (environment steps divided
by the wall time of the whole training call, compilation included); our steady-state SPS (without
compilation and evaluation) is reported beside it. Results: benchmarks/results/<agent>_<env>.json.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_parser, machine, measure_rows, peak_rss_mib, write_results  # noqa: E402

METHODS = ("dense", "static", "prune", "set", "rigl")
LEARNING_STARTS = 1000  # the same short warm-up for both libraries in a short benchmark


def ours(agent: str, env_id: str, steps: int, method: str, sparsity: float) -> dict:
    import tempfile

    from sparse_rl.cli import build_train_args
    from sparse_rl.train.runner import train

    out = tempfile.mkdtemp(prefix=f"bench-{agent}-")
    argv = ["--agent", agent, "--env", env_id, "--steps", str(steps), "--method", method,
            "--sparsity", str(sparsity), "--eval-every", str(steps), "--eval-episodes", "1",
            "--checkpoint-every", "0", "--log-every", str(max(steps // 4, 1)), "--out", out]
    if agent == "sac":
        argv += ["--sac.learning-starts", str(LEARNING_STARTS)]
    run, config = build_train_args(argv)
    start = time.perf_counter()
    summary = train(run, config)
    wall = time.perf_counter() - start
    return {"library": "sparse_rl", "method": method, "sparsity": summary["sparsity"],
            "sps": steps / wall, "steady_sps": summary["steps_per_second"],
            "compile_seconds": summary["compile_seconds"], "peak_rss_mib": peak_rss_mib(), "steps": steps}


def sbx(agent: str, env_id: str, steps: int) -> dict:
    import gymnasium as gym

    env = gym.make(env_id)
    if agent == "sac":
        from sbx import SAC

        model = SAC("MlpPolicy", env, learning_rate=3e-4, buffer_size=1_000_000, learning_starts=LEARNING_STARTS,
                    batch_size=256, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1,
                    policy_kwargs=dict(net_arch=[256, 256]), seed=0, verbose=0)
    else:
        import flax.linen as nn
        from sbx import PPO

        model = PPO("MlpPolicy", env, learning_rate=3e-4, n_steps=2048, batch_size=64, n_epochs=10,
                    gamma=0.99, gae_lambda=0.95, clip_range=0.2, max_grad_norm=0.5, ent_coef=0.0,
                    policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=nn.tanh),
                    seed=0, verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - start
    return {"library": "sbx", "method": "dense", "sps": steps / wall, "peak_rss_mib": peak_rss_mib(), "steps": steps}


def main():
    parser = benchmark_parser(__doc__, "HalfCheetah-v5", None, METHODS)
    parser.add_argument("--agent", choices=("sac", "ppo"), default="sac")
    args = parser.parse_args()
    steps = args.steps or (6000 if args.agent == "sac" else 16384)

    if args.worker == "ours":
        print(json.dumps(ours(args.agent, args.env, steps, args.method, args.sparsity)))
        return
    if args.worker == "sbx":
        print(json.dumps(sbx(args.agent, args.env, steps)))
        return

    script = str(Path(__file__).resolve())
    common = [script, "--agent", args.agent, "--env", args.env, "--steps", str(steps), "--sparsity", str(args.sparsity)]
    rows = measure_rows(common, args, args.methods.split(","))
    name = f"{args.agent}_" + args.env.replace("/", "_").replace("-", "_")
    path = write_results(name, {"benchmark": args.agent, "env": args.env, "steps": steps,
                                "machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
