"""One XLA CPU thread or every core: the update's cost per call, and the rule `sparse-rl train`
follows (sparse_rl.train.dispatch: one thread when the largest layer does fewer than
SMALL_LAYER_MACS multiply-adds per gradient step).

    python benchmarks/bench_cpu_threads.py               # every case, 3 alternated rounds
    python benchmarks/bench_cpu_threads.py --rounds 1

Each case runs in a child process per thread count (XLA sizes its CPU pool once per process, from
PJRT_NPROC), with synchronous dispatch as `sparse-rl train` runs it; the two counts alternate round
by round and the result is the median over rounds of the update's microseconds per call (best of
3 repetitions of 100 calls within a child, bench_update_flops.update_case). Cases: the update
cases of bench_update_flops.py (the paper's settings and sbx's defaults) and DQN 256-256 at batch
64, near the crossover. Writes benchmarks/results/cpu_threads.json.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_update_flops import CASES, Case, case_layer_macs  # noqa: E402
from common import machine, run_worker, write_results  # noqa: E402

EXTRA = (Case("sbx defaults, batch 64", "dqn", "CartPole-v1", (64, 256, 256),
              tuple(CASES[2].flags) + ("--dqn.batch-size", "64")),)
ALL = CASES + EXTRA


def child(index: int) -> None:
    from bench_update_flops import update_case
    from sparse_rl.train.dispatch import use_synchronous_cpu_dispatch

    use_synchronous_cpu_dispatch()
    row = update_case(ALL[index])
    print(json.dumps({"update_us": row["update_us"], "gradient_step_us": row["gradient_step_us"]}), flush=True)


def run_child(index: int, threads: int) -> dict:
    row = run_worker([__file__, "--child", str(index)], env={"PJRT_NPROC": str(threads)})
    if "error" in row:
        raise SystemExit(f"case {index} at {threads} threads failed: {row['error']}")
    return row


def main(argv=None) -> int:
    from sparse_rl.train.dispatch import SMALL_LAYER_MACS, auto_cpu_threads, available_cores

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child)
        return 0
    cores = available_cores()
    counts = sorted({1, cores})
    rows = []
    for index, case in enumerate(ALL):
        times = {n: [] for n in counts}
        for r in range(args.rounds):
            for n in (counts if r % 2 == 0 else counts[::-1]):
                times[n].append(run_child(index, n)["update_us"])
        macs = case_layer_macs(case)
        median = {n: statistics.median(v) for n, v in times.items()}
        row = {"settings": case.settings, "agent": case.agent, "env": case.env, "largest_layer_macs": macs,
               "update_us": {str(n): median[n] for n in counts}, "all_us": {str(n): times[n] for n in counts},
               "one_thread_speedup": median[cores] / median[1], "rule_threads": auto_cpu_threads(macs, cores)}
        row["rule_picks_faster"] = median[row["rule_threads"]] <= min(median.values()) * 1.05
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "all_us"}), flush=True)
    path = write_results("cpu_threads", {"benchmark": "cpu_threads", "machine": machine(), "cores": cores,
                                         "small_layer_macs": SMALL_LAYER_MACS, "rounds": args.rounds,
                                         "cases": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
