"""Whole-process speed and memory at sbx's DEFAULT hyperparameters (issue 15): the runs most users
start (small networks, short runs), where a fixed cost per step and per process counts.

    python benchmarks/bench_sbx_defaults.py                    # full length, 3 pairs (the lead's quiet run)
    python benchmarks/bench_sbx_defaults.py --quick            # smoke run: 0.1x steps, 1 pair, dense + rigl
    python benchmarks/bench_sbx_defaults.py --workloads dqn --pairs 5 --methods dense,rigl

Workloads (full length): DQN CartPole-v1 30,000 steps; SAC HalfCheetah-v5 6,000 steps of which the
first 1,000 are uniformly random (both libraries); PPO HalfCheetah-v5 20,480 steps (10 rollouts).

Each run is a whole child process timed from outside: wall seconds from spawn to exit (imports,
start-up, compilation, training, our one final evaluation episode) and the child's own peak
resident memory (os.wait4's rusage, not RUSAGE_CHILDREN, which is a maximum over every child so
far). Ours is the `sparse-rl train` command line; sbx's is a worker of this script calling
`model.learn`. Every configuration runs cold (a new, empty JAX compilation cache directory) and
then warm (the same directory, second run), for both libraries. Within a pair, the order of the
configurations alternates (ours..., sbx, then sbx, ...ours), so that a drifting machine load falls
on both alike; ratios are taken within a pair and reported as median and range over the pairs.

Ours is set to sbx's defaults (sbx 0.28, paths under site-packages/sbx/):
  DQN (dqn/dqn.py DQN.__init__, dqn/policies.py QNetwork / DQNPolicy):
    net_arch 256-256 ReLU (QNetwork n_units=256)        --dqn.widths 256 256 --dqn.activation relu
    learning_rate 1e-4, optax.adam (eps 1e-8)           --dqn.learning-rate 1e-4 --dqn.adam-eps 1e-8
    no weight decay, no gradient clipping               --dqn.weight-decay 0
    batch_size 32, buffer_size 1e6                      --dqn.batch-size 32 --dqn.replay-capacity 1000000
    learning_starts 100                                 --dqn.learning-starts 100
    train_freq 4, gradient_steps 1                      --dqn.train-every 4
    target_update_interval 1000 env steps, tau 1.0      --dqn.target-update-every 250 (ours counts gradient steps)
    Huber loss (update_qnetwork: optax.huber_loss)      --dqn.loss huber
    epsilon 1.0 -> 0.05 over the first 10% of steps     --dqn.epsilon-start 1 --dqn.epsilon-end 0.05
                                                        --dqn.epsilon-decay-steps 0.1*steps-100 (ours counts from learning_starts)
    gamma 0.99, 1-step, no double Q                     (our defaults)
  SAC (sac/sac.py SAC.__init__, sac/policies.py SACPolicy, common/policies.py SquashedGaussianActor):
    net_arch 256-256 ReLU for actor and both critics    (our defaults)
    learning_rate 3e-4 (actor, critics, entropy coef)   (our defaults)
    optax.adam eps 1e-8                                 --sac.adam-eps 1e-8
    no reward scaling, no weight decay                  --sac.reward-scale 1 --sac.weight-decay 0
    log_std clipped to [-20, 2]                         --sac.log-std-min -20 --sac.log-std-max 2
    batch_size 256, buffer 1e6, tau 0.005, gamma 0.99   (our defaults)
    train_freq 1, gradient_steps 1, policy_delay 1      (our defaults)
    ent_coef "auto" from 1.0, target entropy -|A|       (our defaults)
    learning_starts 100 -> 1000 here, for both (issue 15: "6k steps (1k random)")  --sac.learning-starts 1000
  PPO (ppo/ppo.py PPO.__init__, ppo/policies.py PPOPolicy / Actor / Critic):
    net_arch 64-64 tanh for actor and critic            --ppo.value-activation tanh (actor: our default)
    n_steps 2048, batch_size 64, n_epochs 10            (our defaults)
    learning_rate 3e-4 constant, adam eps 1e-5          --ppo.no-anneal-learning-rate
    max_grad_norm 0.5, clip 0.2, vf_coef 0.5, ent 0     (our defaults)
    gamma 0.99, gae_lambda 0.95, advantage normalisation (our defaults)
    log_std parameter, init 0 (std 1), mean unsquashed  --ppo.std-transform exp --ppo.init-std 1 --ppo.no-squash-mean
    no observation or reward normalisation (no VecNormalize)  --ppo.no-normalize-observations --ppo.no-normalize-rewards
    no weight decay                                     --ppo.weight-decay 0
Left different (no effect on the cost per step): sbx's Flax layers start from lecun_normal, ours
from our presets' initialisers. Our run also evaluates one episode at its end (sbx's does not).

Results: benchmarks/results/sbx_defaults.json; `python benchmarks/table.py` prints its table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import compile_cache_env, machine, write_results  # noqa: E402

STEPS = {"dqn": 30_000, "sac": 6_000, "ppo": 20_480}
ENVS = {"dqn": "CartPole-v1", "sac": "HalfCheetah-v5", "ppo": "HalfCheetah-v5"}
SAC_RANDOM_STEPS = 1_000
PPO_ROLLOUT = 2_048
METHODS = {"dqn": ("dense", "static", "prune", "set", "rigl"), "sac": ("dense", "prune", "rigl"),
           "ppo": ("dense", "prune", "rigl")}
QUICK_METHODS = ("dense", "rigl")
SPARSITY = 0.9


def scaled_steps(workload: str, scale: float) -> int:
    """Steps of a workload at `scale`; PPO stays a whole number of sbx's 2048-step rollouts, SAC
    keeps more steps than its random warm-up."""
    steps = max(int(round(STEPS[workload] * scale)), 1)
    if workload == "ppo":
        return max(PPO_ROLLOUT, steps // PPO_ROLLOUT * PPO_ROLLOUT)
    if workload == "sac":
        return max(steps, sac_random_steps(scale) + 100)
    return max(steps, 1_000)


def sac_random_steps(scale: float) -> int:
    return max(int(round(SAC_RANDOM_STEPS * scale)), 100)


def our_flags(workload: str, steps: int, scale: float) -> list[str]:
    """`sparse-rl train` flags that set our agent to sbx's defaults (the docstring's table)."""
    if workload == "dqn":
        decay = max(int(0.1 * steps) - 100, 1)
        return ["--dqn.widths", "256", "256", "--dqn.activation", "relu", "--dqn.learning-rate", "1e-4",
                "--dqn.adam-eps", "1e-8", "--dqn.weight-decay", "0", "--dqn.batch-size", "32",
                "--dqn.replay-capacity", "1000000", "--dqn.learning-starts", "100", "--dqn.train-every", "4",
                "--dqn.target-update-every", "250", "--dqn.loss", "huber", "--dqn.epsilon-start", "1.0",
                "--dqn.epsilon-end", "0.05", "--dqn.epsilon-decay-steps", str(decay)]
    if workload == "sac":
        return ["--sac.adam-eps", "1e-8", "--sac.reward-scale", "1.0", "--sac.weight-decay", "0",
                "--sac.log-std-min", "-20", "--sac.log-std-max", "2",
                "--sac.learning-starts", str(sac_random_steps(scale))]
    return ["--ppo.value-activation", "tanh", "--ppo.no-anneal-learning-rate", "--ppo.std-transform", "exp",
            "--ppo.init-std", "1.0", "--ppo.no-squash-mean", "--ppo.no-normalize-observations",
            "--ppo.no-normalize-rewards", "--ppo.weight-decay", "0"]


def our_command(workload: str, steps: int, scale: float, method: str, out: str) -> list[str]:
    return [sys.executable, "-m", "sparse_rl.cli", "train", "--agent", workload, "--env", ENVS[workload],
            "--steps", str(steps), "--method", method, "--sparsity", str(SPARSITY), "--seed", "0",
            "--eval-every", str(steps), "--eval-episodes", "1", "--checkpoint-every", "0",
            "--analysis-every", "0", "--log-every", str(max(steps // 10, 1)), "--progress", "False",
            "--out", out, *our_flags(workload, steps, scale)]


def sbx_worker(workload: str, steps: int, scale: float) -> None:
    """sbx at its defaults (only the SAC warm-up set, as for ours)."""
    import gymnasium as gym

    env = gym.make(ENVS[workload])
    if workload == "dqn":
        from sbx import DQN

        model = DQN("MlpPolicy", env, seed=0, verbose=0)
    elif workload == "sac":
        from sbx import SAC

        model = SAC("MlpPolicy", env, learning_starts=sac_random_steps(scale), seed=0, verbose=0)
    else:
        from sbx import PPO

        model = PPO("MlpPolicy", env, seed=0, verbose=0)
    model.learn(total_timesteps=steps)


def timed_child(cmd: list[str], env: dict) -> dict:
    """Wall seconds from spawn to exit and the child's own peak RSS (MiB); the error's last line
    when it fails."""
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            lines = err.read().strip().splitlines()
            return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024.0}


def our_summary(out: str) -> dict:
    """Our run's own steady steps/s and compile seconds from its summary.json, when readable."""
    try:
        data = json.loads((Path(out) / "summary.json").read_text())
        return {key: float(data[key]) for key in ("steps_per_second", "compile_seconds")
                if isinstance(data.get(key), (int, float))}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def run_config(workload: str, steps: int, scale: float, library: str, method: str, sbx_python: str) -> dict:
    """One configuration, cold then warm on one new compilation cache directory."""
    row = {"library": library, "method": method}
    with tempfile.TemporaryDirectory(prefix="bench-sbxdef-") as tmp:
        cache = os.path.join(tmp, "xla")
        # SPARSE_RL_COMPILE_CACHE wins over JAX's variable in `sparse-rl train`: set both, so that a
        # cache the user keeps elsewhere cannot make a cold run warm.
        env = dict(os.environ, SPARSE_RL_COMPILE_CACHE=cache, **compile_cache_env(cache))
        for phase in ("cold", "warm"):
            out = os.path.join(tmp, f"run-{phase}")
            if library == "sbx":
                cmd = [sbx_python, str(Path(__file__).resolve()), "--worker", workload, "--steps", str(steps),
                       "--steps-scale", str(scale)]
            else:
                cmd = our_command(workload, steps, scale, method, out)
            result = timed_child(cmd, env)
            if library == "sparse_rl" and "error" not in result:
                result.update(our_summary(out))
            row[phase] = result
    return row


def pair_order(configs: list[tuple[str, str]], pair: int) -> list[tuple[str, str]]:
    return configs if pair % 2 == 0 else configs[::-1]


def ratio_stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: list[dict], methods: list[str]) -> list[dict]:
    """Per method and phase: median wall and memory, speed-up vs sbx (sbx wall / our wall) and
    memory vs sbx (our peak / sbx peak) within each pair, and speed vs our dense in each pair."""
    rows = []
    for library, method in [("sparse_rl", m) for m in methods] + [("sbx", "dense")]:
        row = {"library": library, "method": method}
        for phase in ("cold", "warm"):
            walls, rss, vs_sbx, mem_vs_sbx, vs_dense = [], [], [], [], []
            for pair in runs:
                mine = pair["rows"].get(f"{library}/{method}", {}).get(phase, {})
                peer = pair["rows"].get("sbx/dense", {}).get(phase, {})
                dense = pair["rows"].get("sparse_rl/dense", {}).get(phase, {})
                if "wall_s" not in mine:
                    continue
                walls.append(mine["wall_s"])
                rss.append(mine["peak_rss_mib"])
                if "wall_s" in peer:
                    vs_sbx.append(peer["wall_s"] / mine["wall_s"])
                    mem_vs_sbx.append(mine["peak_rss_mib"] / peer["peak_rss_mib"])
                if "wall_s" in dense:
                    vs_dense.append(dense["wall_s"] / mine["wall_s"])
            row[phase] = {"wall_s": ratio_stats(walls), "peak_rss_mib": ratio_stats(rss),
                          "speedup_vs_sbx": ratio_stats(vs_sbx), "memory_vs_sbx": ratio_stats(mem_vs_sbx),
                          "speed_vs_our_dense": ratio_stats(vs_dense)}
        rows.append(row)
    return rows


def measure_workload(workload: str, args, methods: list[str]) -> dict:
    steps = scaled_steps(workload, args.steps_scale)
    configs = [("sparse_rl", m) for m in methods] + ([] if args.no_sbx else [("sbx", "dense")])
    runs = []
    for pair in range(args.pairs):
        rows = {}
        for library, method in pair_order(configs, pair):
            row = run_config(workload, steps, args.steps_scale, library, method, args.sbx_python)
            rows[f"{library}/{method}"] = row
            print(json.dumps({"workload": workload, "pair": pair, **row}), flush=True)
        runs.append({"pair": pair, "order": [f"{l}/{m}" for l, m in pair_order(configs, pair)], "rows": rows})
    return {"workload": workload, "env": ENVS[workload], "steps": steps, "sparsity": SPARSITY,
            "runs": runs, "summary": summarize(runs, methods)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="dqn,sac,ppo", help="comma-separated subset of dqn,sac,ppo")
    parser.add_argument("--methods", default=None,
                        help="comma-separated sparsity methods (default: dqn dense,static,prune,set,rigl; "
                             "sac and ppo dense,prune,rigl); dense is always run, as the reference")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every workload's steps")
    parser.add_argument("--quick", action="store_true", help="smoke run: --steps-scale 0.1 --pairs 1, dense and rigl")
    parser.add_argument("--sbx-python", default=sys.executable, help="interpreter that has sbx installed")
    parser.add_argument("--no-sbx", action="store_true")
    parser.add_argument("--out", default="sbx_defaults", help="results name under benchmarks/results/")
    parser.add_argument("--worker", choices=tuple(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps_scale, args.pairs = 0.1, 1
        args.methods = args.methods or ",".join(QUICK_METHODS)
    workloads = args.workloads.split(",")
    bad = [w for w in workloads if w not in STEPS]
    if bad:
        parser.error(f"--workloads: unknown {bad} (allowed: {', '.join(STEPS)})")
    from sparse_rl.sparsity import METHODS as KNOWN_METHODS

    unknown = [m for m in (args.methods or "").split(",") if m and m not in KNOWN_METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown} (allowed: {', '.join(KNOWN_METHODS)})")
    if args.pairs < 1 or args.steps_scale <= 0:
        parser.error("--pairs must be >= 1 and --steps-scale > 0")
    args.workloads = workloads
    return args


def methods_for(workload: str, args) -> list[str]:
    chosen = args.methods.split(",") if args.methods else list(METHODS[workload])
    return ["dense"] + [m for m in chosen if m != "dense"]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        sbx_worker(args.worker, args.steps, args.steps_scale)
        return 0
    started = time.time()
    results = [measure_workload(w, args, methods_for(w, args)) for w in args.workloads]
    payload = {"benchmark": "sbx_defaults", "machine": machine(), "pairs": args.pairs,
               "steps_scale": args.steps_scale, "seconds": time.time() - started, "workloads": results}
    print(f"wrote {write_results(args.out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
