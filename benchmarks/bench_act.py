"""Per-call cost of acting: the call an env loop makes once per env step, before and after issue 15.

    python benchmarks/bench_act.py                 # every case, 7 alternated rounds of 2000 calls
    python benchmarks/bench_act.py --rounds 3 --calls 500 --cases "dqn CartPole-v1"

"before": the release's path: one jitted call over the whole agent state (PPO: its state without
optimiser states) that folds the step into the run's key and draws its noise with threefry, then
one host transfer per output (PPO: action, log-probability, value).
"after": the loops' path now (`offpolicy.act_step`, `onpolicy.act_step`): `StateChunks.program`
over the agent's `acting_view`, the noise of the step sliced on the device from a block drawn ahead
(`sparse_rl.train.acting`; the block draws are included, amortised), one host transfer.
Both are timed in the same process with synchronous CPU dispatch and as many XLA CPU threads as
`sparse-rl train` gives the run, as it runs them (`sparse_rl.train.dispatch`; a child process per
case, since XLA sizes its pool once per process), alternated round by round; the result is the median over
rounds of microseconds per call, and the ratio. Writes benchmarks/results/act.json:
{case: {"act_us", "act_us_before", "ratio", "rounds", "calls", "machine"}} (case "dqn CartPole-v1",
"dqn CartPole-v1 rigl-0.9", ...), read by table.py for the FLOP table's "act us" column.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, run_worker, write_results  # noqa: E402
from sparse_rl.train.dispatch import auto_cpu_threads, use_synchronous_cpu_dispatch  # noqa: E402

from sparse_rl import envs  # noqa: E402
from sparse_rl.agents import dqn, ppo, sac  # noqa: E402
from sparse_rl.sparsity import SparsityConfig  # noqa: E402
from sparse_rl.train.acting import NoiseBlocks, NoiseDrawer  # noqa: E402
from sparse_rl.train.chunks import StateChunks  # noqa: E402
from sparse_rl.train import offpolicy, onpolicy  # noqa: E402
from sparse_rl.train.onpolicy import unpack_step  # noqa: E402

DENSE = SparsityConfig(method="dense")
RIGL = SparsityConfig(method="rigl", sparsity=0.9, update_every=1000, drop_fraction=0.5, sparse_init=True)


MODULES = {"dqn": dqn, "sac": sac, "ppo": ppo}


def agent_config(name: str, sparsity: SparsityConfig):
    """sbx's default network sizes (issue 15's workloads)."""
    if name == "dqn":
        return dqn.Config(widths=(256, 256), batch_size=32, train_every=4, sparsity=sparsity)
    if name == "sac":
        return sac.Config(actor_widths=(256, 256), critic_widths=(256, 256), actor_sparsity=sparsity,
                          critic_sparsity=sparsity)
    return ppo.Config(actor_widths=(64, 64), value_widths=(64, 64), num_envs=1, actor_sparsity=sparsity,
                      value_sparsity=DENSE if sparsity.method == "dense" else sparsity)


def make_agent(name: str, env_id: str, sparsity: SparsityConfig):
    return MODULES[name].make(agent_config(name, sparsity), envs.env_spec(env_id), 20_480 if name == "ppo" else 20_000)


def case_threads(case: str) -> int:
    """The XLA CPU threads `sparse-rl train` gives a run of this case (sparse_rl.train.dispatch)."""
    name, _, sparsity = CASES[case]
    return auto_cpu_threads(MODULES[name].SPEC.update_layer_macs(agent_config(name, sparsity)))


def before_path(name: str, agent, state, obs):
    """The release's per-step call (chunks.program of a group of one, keys folded in the call)."""
    key = np.asarray(jax.random.PRNGKey(1))[None]
    if name == "ppo":
        state = state._replace(actor_opt_state=None, value_opt_state=None)  # the release's acting_view

        @jax.jit
        def call(states, per_run, shared):
            o, k = jax.tree_util.tree_map(lambda x: x[0], per_run)
            out = agent.act_with_info(states[0], o, jax.random.fold_in(k, *shared))
            return jax.tree_util.tree_map(lambda x: x[None], out)

        return lambda step: jax.device_get(call([state], (obs[None], key), (np.int32(step),)))

    @jax.jit
    def call(states, per_run, shared):
        o, k = jax.tree_util.tree_map(lambda x: x[0], per_run)
        step = shared[0]
        return agent.act(states[0], o[None], jax.random.fold_in(k, step), step)[0][None]

    return lambda step: np.asarray(call([state], (obs[None], key), (step,)))


def after_path(name: str, agent, state, obs):
    """The loops' per-step call now."""
    chunks = StateChunks.for_one(state)
    keys = np.asarray(jax.random.PRNGKey(1))[None]
    if name == "ppo":
        act = chunks.program(onpolicy.act_step(agent), "act", view=agent.acting_view)
        noise = NoiseBlocks(NoiseDrawer(lambda key: agent.act_noise(key, (obs.shape[0],), False)), keys, 2048)
        return lambda step: unpack_step(np.asarray(act((obs[None], noise.block_at(step)), (step,))), agent.loop)
    act = chunks.program(offpolicy.act_step(agent), "act", view=agent.acting_view)
    noise = NoiseBlocks(NoiseDrawer(lambda key: agent.act_noise(key, (1,), False)), keys)
    return lambda step: np.asarray(act((obs[None], noise.block_at(step)), (step,)))


def time_calls(call, first: int, calls: int) -> float:
    started = time.perf_counter()
    for step in range(first, first + calls):
        call(step)
    return (time.perf_counter() - started) / calls * 1e6


CASES = {
    "dqn CartPole-v1": ("dqn", "CartPole-v1", DENSE),
    "dqn CartPole-v1 rigl-0.9": ("dqn", "CartPole-v1", RIGL),
    "sac HalfCheetah-v5": ("sac", "HalfCheetah-v5", DENSE),
    "sac HalfCheetah-v5 rigl-0.9": ("sac", "HalfCheetah-v5", RIGL),
    "ppo HalfCheetah-v5": ("ppo", "HalfCheetah-v5", DENSE),
    "ppo HalfCheetah-v5 rigl-0.9": ("ppo", "HalfCheetah-v5", RIGL),
}


def measure(case: str, rounds: int, calls: int) -> dict:
    name, env_id, sparsity = CASES[case]
    agent = make_agent(name, env_id, sparsity)
    state = agent.init(jax.random.PRNGKey(0))
    spec = envs.env_spec(env_id)
    batch = (1,) if name == "ppo" else ()
    obs = np.zeros((*batch, *spec.observation_spec.shape), spec.observation_spec.dtype)
    paths = {"before": before_path(name, agent, state, obs), "after": after_path(name, agent, state, obs)}
    for call in paths.values():  # compile, and draw the first block
        call(0)
    times = {"before": [], "after": []}
    for r in range(rounds):
        for label in (("before", "after") if r % 2 == 0 else ("after", "before")):
            times[label].append(time_calls(paths[label], 1 + r * calls, calls))
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    return {"act_us": after, "act_us_before": before, "ratio": before / after, "rounds": rounds, "calls": calls,
            "all_us": times, "machine": machine()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {list(CASES)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one case in this process, its thread pool sized by the parent (PJRT_NPROC)
        use_synchronous_cpu_dispatch()  # as `sparse-rl train` runs its programs (sparse_rl.train.dispatch)
        print(json.dumps(measure(args.child, args.rounds, args.calls)), flush=True)
        return 0
    results = {}
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"--cases: unknown case {case!r}; allowed: {', '.join(CASES)}")
        threads = case_threads(case)
        row = run_worker([__file__, "--child", case, "--rounds", str(args.rounds), "--calls", str(args.calls)],
                         env={"PJRT_NPROC": str(threads)})
        if "error" in row:
            raise SystemExit(f"{case}: {row['error']}")
        row.pop("process_seconds", None)
        row["cpu_threads"] = threads
        results[case] = row
        print(f"{case:32s} before {row['act_us_before']:7.1f} us  after {row['act_us']:7.1f} us  "
              f"x{row['ratio']:.2f}", flush=True)
    print(write_results("act", results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
