"""The README's benchmark table, made from benchmarks/results/*.json.

    python benchmarks/table.py            # prints Markdown
"""

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _fmt(value, spec=".0f"):
    return "" if value is None else format(value, spec)


def speed_rows() -> list[str]:
    """Cold: first run of a configuration (empty compilation cache). Warm: a later run with the
    same programs (filled cache), for both libraries."""
    lines = [
        "| benchmark | library | method | SPS cold | SPS warm | steady SPS | compile s cold / warm "
        "| peak MiB cold / warm | vs our dense (cold) | vs sbx cold / warm | memory vs sbx cold / warm |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if "rows" not in data or "steps" not in data:
            continue
        name = f"{data['benchmark']} {data['env']} ({data['steps']} steps)"
        for row in data["rows"]:
            if "sps" not in row:
                lines.append(f"| {name} | {row.get('library', '?')} | {row.get('method', '?')} | failed: {row.get('error', '')} ||||||||")
                continue
            lines.append(
                f"| {name} | {row['library']} | {row['method']} | {_fmt(row['sps'])} | {_fmt(row.get('sps_warm'))} "
                f"| {_fmt(row.get('steady_sps'))} | {_pair(row, 'compile_seconds', '.1f')} | {_pair(row, 'peak_rss_mib')} "
                f"| {_fmt(row.get('vs_dense'), '.2f')} | {_pair(row, 'vs_sbx', '.2f')} | {_pair(row, 'memory_vs_sbx', '.2f')} |"
            )
    return lines


def _pair(row: dict, key: str, spec: str = ".0f") -> str:
    cold, warm = row.get(key), row.get(f"{key}_warm")
    return _fmt(cold, spec) if warm is None else f"{_fmt(cold, spec)} / {_fmt(warm, spec)}"


def sweep_rows() -> list[str]:
    path = RESULTS / "sweep.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    lines = [
        "| sweep benchmark | mode | processes | SPS (end to end) | steady SPS | throughput vs separate | memory vs separate | compile vs separate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in data.get("configs", []):
        c, r, q = entry["config"], entry["results"], entry["ratios"]
        label = f"{c['agent']} {c['env']} {c['method']}-{c['sparsity']} x{c['seeds']} seeds, {c['widths']}, {c['steps']} steps"
        for mode, m in r.items():
            if mode == "separate":
                ratios = "| 1.00 | 1.00 | 1.00 |"
            else:
                ratios = (f"| {q[f'throughput_{mode}_vs_separate']:.2f} | {q[f'memory_{mode}_vs_separate']:.2f} "
                          f"| {q[f'compile_{mode}_vs_separate']:.2f} |")
            lines.append(f"| {label} | {mode} | {m.get('processes', '')} | {_fmt(m['sps'])} | "
                         f"{_fmt(m.get('steady_sps'))} " + ratios)
    return lines


def _read_json(path: Path):
    """A results file's content, or None when it is missing or not JSON (results are data, not trusted)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rows_or_nothing(make_rows, data) -> list[str]:
    """`make_rows(data)`, or no rows when the file's content is not what the benchmark writes."""
    if not isinstance(data, dict):
        return []
    try:
        return make_rows(data)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return []


def act_us(case: str) -> tuple[float | None, float | None]:
    """(act_us, act_us_before) of one case of act.json (written by bench_act.py), None where absent."""
    data = _read_json(RESULTS / "act.json")
    entry = data.get(case) if isinstance(data, dict) else None
    if not isinstance(entry, dict):
        return None, None
    values = [entry.get(key) for key in ("act_us", "act_us_before")]
    return tuple(v if isinstance(v, (int, float)) else None for v in values)


def flops_rows() -> list[str]:
    """Update cost per call (both settings); act per call for sbx's defaults (bench_act.py's cases)."""
    return _rows_or_nothing(_flops_lines, _read_json(RESULTS / "update_flops.json"))


def _flops_lines(data: dict) -> list[str]:
    lines = ["| update (dense) | settings | CPU threads | MFLOP per update | us per update (per gradient step) "
             "| GFLOP/s | matmul GFLOP/s (shape) | fraction of the matmul rate | act us (before issue 15) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in data.get("cases", []):
        settings = c.get("settings", "paper")
        shape = "x".join(str(d) for d in c["matmul_shape"])
        us = c["update_us"] if "update_us" in c else c["update_ms"] * 1e3  # files from before update_us
        steps = c.get("gradient_steps_per_update", 1)
        per_step = f"{us:.0f}" if steps == 1 else f"{us:.0f} ({c.get('gradient_step_us', us / steps):.0f})"
        act, act_before = act_us(f"{c['agent']} {c['env']}") if settings == "sbx defaults" else (None, None)
        act_cell = "" if act is None else f"{act:.0f}" + ("" if act_before is None else f" ({act_before:.0f})")
        lines.append(f"| {c['agent']} {c['env']} | {settings} | {_fmt(c.get('cpu_threads'))} "
                     f"| {_fmt(c.get('update_mflop'))} | {per_step} "
                     f"| {_fmt(c.get('update_gflops'))} | {c['matmul_gflops']:.0f} ({shape}) "
                     f"| {_fmt(c.get('fraction_of_matmul_rate'), '.2f')} | {act_cell} |")
    return lines


def threads_rows() -> list[str]:
    """bench_cpu_threads.py: an update's cost on one XLA CPU thread and on every core."""
    return _rows_or_nothing(_threads_lines, _read_json(RESULTS / "cpu_threads.json"))


def _threads_lines(data: dict) -> list[str]:
    cores = str(data["cores"])
    lines = [f"| update (dense) | settings | largest layer, M multiply-adds | us per update, 1 thread / {cores} "
             f"| 1 thread faster by | `sparse-rl train` picks |",
             "|---|---|---|---|---|---|"]
    for c in data.get("cases", []):
        macs = c.get("largest_layer_macs")
        lines.append(f"| {c['agent']} {c['env']} | {c['settings']} | {'' if macs is None else f'{macs / 1e6:.1f}'} "
                     f"| {c['update_us']['1']:.0f} / {c['update_us'][cores]:.0f} | {c['one_thread_speedup']:.2f}x "
                     f"| {c['rule_threads']} |")
    return lines


def _range(stats: dict | None, spec: str = ".2f") -> str:
    """'median (min-max)' of a statistic over the pairs; the median alone for one pair."""
    if not isinstance(stats, dict) or "median" not in stats:
        return ""
    if stats.get("n", 1) == 1:
        return format(stats["median"], spec)
    return f"{stats['median']:{spec}} ({stats['min']:{spec}}-{stats['max']:{spec}})"


def sbx_defaults_rows() -> list[str]:
    """bench_sbx_defaults.py: whole processes at sbx's defaults, cold / warm compilation cache."""
    return _rows_or_nothing(_sbx_defaults_lines, _read_json(RESULTS / "sbx_defaults.json"))


def _sbx_defaults_lines(data: dict) -> list[str]:
    lines = [f"| workload at sbx's defaults ({data.get('pairs', '?')} pairs) | library | method | wall s cold / warm "
             "| speed-up vs sbx cold / warm | peak MiB cold / warm | memory vs sbx cold / warm "
             "| speed vs our dense cold / warm |",
             "|---|---|---|---|---|---|---|---|"]
    for w in data.get("workloads", []):
        name = f"{w['workload'].upper()} {w['env']}, {w['steps']:,} steps"
        for row in w.get("summary", []):
            theirs = row["library"] == "sbx"

            def both(key, spec=".2f", row=row):
                return f"{_range(row['cold'].get(key), spec)} / {_range(row['warm'].get(key), spec)}"

            method = row["method"] if row["method"] == "dense" else f"{row['method']} {w.get('sparsity', 0.9):.0%}"
            lines.append(f"| {name} | {row['library']} | {method} | {both('wall_s', '.1f')} "
                         f"| {'' if theirs else both('speedup_vs_sbx')} | {both('peak_rss_mib', '.0f')} "
                         f"| {'' if theirs else both('memory_vs_sbx')} "
                         f"| {'' if theirs or row['method'] == 'dense' else both('speed_vs_our_dense')} |")
    return lines


def memory_rows() -> list[str]:
    """One table per memory_floor_<agent>.json: resident / peak MiB after each stage of a cold start."""
    lines = []
    for path in sorted(RESULTS.glob("memory_floor_*.json")):
        data = json.loads(path.read_text())
        rows = [r for r in data["rows"] if "stages" in r]
        if lines:
            lines.append("")
        lines.append(f"| {data['agent'].upper()} {data['env']}, cold: MiB resident / peak so far | "
                     + " | ".join(f"{r['library']} {r['method']}" for r in rows) + " |")
        lines.append("|---" * (1 + len(rows)) + "|")
        for name in dict.fromkeys(name for r in rows for name in r["stages"]):
            cells = [f"{v['current_mib']:.0f} / {v['peak_mib']:.0f}" if (v := r["stages"].get(name)) else ""
                     for r in rows]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    print("\n".join(speed_rows()))
    print()
    print("\n".join(sbx_defaults_rows()))
    print()
    print("\n".join(flops_rows()))
    print()
    print("\n".join(threads_rows()))
    print()
    print("\n".join(memory_rows()))
    print()
    print("\n".join(sweep_rows()))
