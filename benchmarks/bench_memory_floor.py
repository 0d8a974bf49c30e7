"""Where a run's peak memory goes, stage by stage (SAC or PPO on HalfCheetah-v5, dense and RigL).

    python benchmarks/bench_memory_floor.py [--agent sac|ppo] [--sbx-python PATH]

One fresh process per configuration (no compilation cache) reports its resident memory (current and
peak, MiB) after: importing JAX and starting its CPU client; importing our dependencies (haiku,
optax, rlax with distrax deferred, as the agents import it); making the MuJoCo environment and the
agent; compiling and running `init`; compiling and running one `update` with its mask-update branch
(`topology=True`) and one without. The peak before any of our programs is compiled is a floor no
change to our code can lower; compiling the update adds XLA's transient working memory on top. With
`--sbx-python`, the same for sbx: after importing it (it imports torch) and after building its
model.
Results: benchmarks/results/memory_floor_<agent>.json.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, run_worker, write_results  # noqa: E402

ENV = "HalfCheetah-v5"


class Stages(dict):
    """Resident memory (current and peak so far, MiB) after each named stage of this process."""

    def mark(self, name: str) -> None:
        import resource

        current = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        self[name] = {"current_mib": current, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}

    def start_jax(self) -> None:
        """Import JAX and start its CPU client (the first computation does)."""
        import jax.numpy as jnp

        jnp.ones(1).block_until_ready()
        self.mark("jax with its CPU client")


def ours(agent_name: str, method: str) -> dict:
    stages = Stages()
    stages.start_jax()
    import importlib

    import jax
    import jax.numpy as jnp

    import haiku  # noqa: F401
    import optax  # noqa: F401
    from sparse_rl.agents.rlax_import import rlax  # noqa: F401  (as the agents import it: distrax deferred)

    stages.mark("haiku, optax, rlax")
    from sparse_rl import envs
    from sparse_rl.cli import build_train_args
    from sparse_rl.train.memory import release_freed_memory
    from sparse_rl.train.offpolicy import example_batch
    from sparse_rl.agents.base import example_rollout

    module = importlib.import_module(f"sparse_rl.agents.{agent_name}")
    spec = envs.env_spec(ENV)
    env = envs.make_env(ENV, seed=0)
    run, config = build_train_args(["--agent", agent_name, "--env", ENV, "--method", method, "--sparsity", "0.9"])
    agent = module.make(config, spec, run.steps)
    stages.mark("environment and agent made")
    state = agent.init(jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    release_freed_memory()
    stages.mark("init compiled and run")
    if agent_name == "ppo":
        shapes = example_rollout(agent.loop)
    else:
        shapes = example_batch(spec.observation_spec, spec.action_spec, config.batch_size)
    batch = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    for topology in (True, False):
        state, _ = agent.update(state, batch, jax.random.PRNGKey(1), topology=topology)
        jax.block_until_ready(state)
        release_freed_memory()
        stages.mark(f"update (topology={topology}) compiled and run")
    del env
    return {"library": "sparse_rl", "agent": agent_name, "method": method, "stages": stages}


def sbx(agent_name: str) -> dict:
    stages = Stages()
    stages.start_jax()
    import gymnasium as gym
    import sbx as sbx_lib

    stages.mark("sbx (and torch) imported")
    env = gym.make(ENV)
    cls = sbx_lib.SAC if agent_name == "sac" else sbx_lib.PPO
    model = cls("MlpPolicy", env, seed=0, verbose=0)
    stages.mark("environment and model made")
    del model
    return {"library": "sbx", "agent": agent_name, "method": "dense", "stages": stages}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", choices=("sac", "ppo"), default="sac")
    parser.add_argument("--methods", default="dense,rigl")
    parser.add_argument("--sbx-python", default=None, help="interpreter that has sbx installed")
    parser.add_argument("--worker", choices=("ours", "sbx"), help=argparse.SUPPRESS)
    parser.add_argument("--method", default="dense", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "ours":
        print(json.dumps(ours(args.agent, args.method)))
        return
    if args.worker == "sbx":
        print(json.dumps(sbx(args.agent)))
        return
    script = str(Path(__file__).resolve())
    env = {"JAX_COMPILATION_CACHE_DIR": ""}  # cold: everything compiled
    rows = [run_worker([script, "--agent", args.agent, "--worker", "ours", "--method", m], env=env)
            for m in args.methods.split(",")]
    if args.sbx_python:
        rows.append(run_worker([script, "--agent", args.agent, "--worker", "sbx"], python=args.sbx_python, env=env))
    for row in rows:
        print(json.dumps(row))
    path = write_results(f"memory_floor_{args.agent}", {"benchmark": "memory_floor", "agent": args.agent, "env": ENV,
                                                        "machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
