"""How close each agent's update is to this machine's arithmetic limit.

    python benchmarks/bench_update_flops.py

For SAC on HalfCheetah-v5 and DQN on CartPole-v1 (dense, the presets' networks and batch sizes):
the floating-point operations of one update (XLA's cost analysis of the compiled program),
its measured time (best of 3 repetitions of 100 calls, the first call compiled beforehand), the
achieved GFLOP/s, and the GFLOP/s of a plain jitted matmul of the update's largest layer shape,
which is about what XLA's CPU kernels reach at those sizes. An update that already runs near that
rate cannot be made much faster without doing less arithmetic; any other library doing the same
update is bound by the same limit. Results: benchmarks/results/update_flops.json.

PPO is left out: its update is a loop over epochs and minibatches, and XLA's cost analysis counts
a loop body once, not once per trip.
"""

import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results  # noqa: E402

CASES = (("sac", "HalfCheetah-v5", (256, 256, 256)), ("dqn", "CartPole-v1", (128, 512, 512)))


def _best_seconds(call, reps: int = 100, rounds: int = 3) -> float:
    import jax

    jax.block_until_ready(call())
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            out = call()
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def update_case(agent_name: str, env_id: str) -> dict:
    import jax

    from sparse_rl import envs
    from sparse_rl.cli import build_train_args
    from sparse_rl.train.offpolicy import example_batch

    module = importlib.import_module(f"sparse_rl.agents.{agent_name}")
    spec = envs.env_spec(env_id)
    run, config = build_train_args(["--agent", agent_name, "--env", env_id, "--method", "dense"])
    agent = module.make(config, spec, run.steps)
    state = agent.init(jax.random.PRNGKey(0))
    shapes = example_batch(spec.observation_spec, spec.action_spec, config.batch_size)
    batch = jax.tree_util.tree_map(lambda s: jax.numpy.zeros(s.shape, s.dtype), shapes)
    key = jax.random.PRNGKey(1)
    update = jax.jit(lambda s, b, k: agent.update(s, b, k, topology=False))
    flops = _flops(update.lower(state, batch, key).compile())
    holder = {"state": state}

    def call():
        holder["state"], metrics = update(holder["state"], batch, key)
        return metrics

    seconds = _best_seconds(call)
    return {"agent": agent_name, "env": env_id, "update_mflop": flops / 1e6, "update_ms": seconds * 1e3,
            "update_gflops": flops / seconds / 1e9}


def matmul_gflops(m: int, k: int, n: int) -> float:
    import jax
    import jax.numpy as jnp

    x, w = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
    f = jax.jit(lambda x, w: (x @ w) * 1.0001)
    return 2.0 * m * k * n / _best_seconds(lambda: f(x, w), reps=2000) / 1e9


def main():
    rows = []
    for agent_name, env_id, shape in CASES:
        row = update_case(agent_name, env_id)
        row["matmul_shape"] = list(shape)
        row["matmul_gflops"] = matmul_gflops(*shape)
        row["fraction_of_matmul_rate"] = row["update_gflops"] / row["matmul_gflops"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    path = write_results("update_flops", {"benchmark": "update_flops", "machine": machine(), "cases": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
