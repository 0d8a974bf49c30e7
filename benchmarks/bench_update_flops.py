"""How close each agent's update is to this machine's arithmetic limit.

    python benchmarks/bench_update_flops.py

For each case below (dense networks): the floating-point operations of one update (XLA's cost
analysis of the compiled program), its measured time (best of 3 repetitions of 100 calls, the first call compiled beforehand), the
achieved GFLOP/s, and the GFLOP/s of a plain jitted matmul of the update's largest layer shape,
which is about what XLA's CPU kernels reach at those sizes. An update that already runs near that
rate cannot be made much faster without doing less arithmetic; any other library doing the same
update is bound by the same limit. Results: benchmarks/results/update_flops.json.

Two sets of rows: the paper's settings (the presets) and sbx's defaults (issue 15: DQN 256-256
batch 32, SAC 256-256 batch 256, PPO 64-64 minibatch 64; the flags of bench_sbx_defaults.py).
Every row also gives the microseconds of one update call, dispatched synchronously and on as many
XLA CPU threads as `sparse-rl train` gives that run (`sparse_rl.train.dispatch`: one for small
networks, else every core; each case runs in a child process of its own, since XLA sizes its
pool once per process). PPO's row has no FLOP count: its update
is a loop over epochs and minibatches (one call learns from a whole 2048-step rollout), and XLA's
cost analysis counts a loop body once, not once per trip; its time per gradient step is given.
"""

import importlib
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).parent))
from bench_sbx_defaults import STEPS, our_flags  # noqa: E402
from common import machine, run_worker, write_results  # noqa: E402


class Case(NamedTuple):
    settings: str  # "paper" (the preset) or "sbx defaults"
    agent: str
    env: str
    matmul_shape: tuple[int, int, int]  # (batch, in, out) of the update's largest layer
    flags: tuple[str, ...] = ()


CASES = (
    Case("paper", "sac", "HalfCheetah-v5", (256, 256, 256)),
    Case("paper", "dqn", "CartPole-v1", (128, 512, 512)),
    Case("sbx defaults", "dqn", "CartPole-v1", (32, 256, 256), tuple(our_flags("dqn", STEPS["dqn"], 1.0))),
    Case("sbx defaults", "sac", "HalfCheetah-v5", (256, 256, 256), tuple(our_flags("sac", STEPS["sac"], 1.0))),
    Case("sbx defaults", "ppo", "HalfCheetah-v5", (64, 64, 64), tuple(our_flags("ppo", STEPS["ppo"], 1.0))),
)


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


def zeros_like_shapes(shapes):
    import jax

    return jax.tree_util.tree_map(lambda s: jax.numpy.zeros(s.shape, s.dtype), shapes)


def example_input(agent, spec, config):
    """A zero batch (off-policy) or rollout (PPO) of the shapes the agent's update takes."""
    from sparse_rl.agents.base import OnPolicyNeeds, example_rollout
    from sparse_rl.train.offpolicy import example_batch

    if isinstance(agent.loop, OnPolicyNeeds):
        return zeros_like_shapes(example_rollout(agent.loop))
    return zeros_like_shapes(example_batch(spec.observation_spec, spec.action_spec, config.batch_size))


def update_case(case: Case) -> dict:
    import jax

    from sparse_rl import envs
    from sparse_rl.cli import build_train_args

    module = importlib.import_module(f"sparse_rl.agents.{case.agent}")
    spec = envs.env_spec(case.env)
    run, config = build_train_args(["--agent", case.agent, "--env", case.env, "--method", "dense", *case.flags])
    agent = module.make(config, spec, run.steps)
    state = agent.init(jax.random.PRNGKey(0))
    batch = example_input(agent, spec, config)
    key = jax.random.PRNGKey(1)
    update = jax.jit(lambda s, b, k: agent.update(s, b, k, topology=False))
    compiled = update.lower(state, batch, key).compile()
    loops = case.agent == "ppo"  # a loop body is counted once by the cost analysis (see above)
    flops = None if loops else _flops(compiled)
    holder = {"state": state}

    def call():
        holder["state"], metrics = update(holder["state"], batch, key)
        return metrics

    seconds = _best_seconds(call, reps=10 if loops else 100)
    gradient_steps = agent.loop.gradient_steps
    return {"settings": case.settings, "agent": case.agent, "env": case.env,
            "update_mflop": None if flops is None else flops / 1e6, "update_ms": seconds * 1e3,
            "update_us": seconds * 1e6, "gradient_steps_per_update": gradient_steps,
            "gradient_step_us": seconds * 1e6 / gradient_steps,
            "update_gflops": None if flops is None else flops / seconds / 1e9}


def matmul_gflops(m: int, k: int, n: int) -> float:
    import jax
    import jax.numpy as jnp

    x, w = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
    f = jax.jit(lambda x, w: (x @ w) * 1.0001)
    return 2.0 * m * k * n / _best_seconds(lambda: f(x, w), reps=2000) / 1e9


def case_layer_macs(case: Case) -> int | None:
    """Multiply-adds of the case's largest layer per gradient step (`AgentSpec.update_layer_macs`)."""
    from sparse_rl import agents
    from sparse_rl.cli import build_train_args

    _, config = build_train_args(["--agent", case.agent, "--env", case.env, "--method", "dense", *case.flags])
    return agents.spec(case.agent).update_layer_macs(config)


def case_threads(case: Case) -> int:
    """The XLA CPU threads `sparse-rl train` gives a run of this case (sparse_rl.train.dispatch)."""
    from sparse_rl.train.dispatch import auto_cpu_threads

    return auto_cpu_threads(case_layer_macs(case))


def child(index: int) -> None:
    """One case in this process (its thread pool sized by the parent through PJRT_NPROC)."""
    from sparse_rl.train.dispatch import use_synchronous_cpu_dispatch

    use_synchronous_cpu_dispatch()  # as `sparse-rl train` runs its programs (sparse_rl.train.dispatch)
    case = CASES[index]
    row = update_case(case)
    row["matmul_shape"] = list(case.matmul_shape)
    row["matmul_gflops"] = matmul_gflops(*case.matmul_shape)
    row["fraction_of_matmul_rate"] = (None if row["update_gflops"] is None
                                      else row["update_gflops"] / row["matmul_gflops"])
    print(json.dumps(row), flush=True)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return
    rows = []
    for index, case in enumerate(CASES):
        threads = case_threads(case)
        row = run_worker([__file__, "--child", str(index)], env={"PJRT_NPROC": str(threads)})
        if "error" in row:
            raise SystemExit(f"{case}: {row['error']}")
        row.pop("process_seconds", None)
        row["cpu_threads"] = threads
        rows.append(row)
        print(json.dumps(row), flush=True)
    path = write_results("update_flops", {"benchmark": "update_flops", "machine": machine(), "cases": rows})
    print(f"wrote {path}")

if __name__ == "__main__":
    main()
