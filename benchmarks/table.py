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


def flops_rows() -> list[str]:
    path = RESULTS / "update_flops.json"
    if not path.exists():
        return []
    lines = ["| update (dense) | MFLOP per update | ms per update | GFLOP/s | matmul GFLOP/s (shape) | fraction of the matmul rate |",
             "|---|---|---|---|---|---|"]
    for c in json.loads(path.read_text())["cases"]:
        shape = "x".join(str(d) for d in c["matmul_shape"])
        lines.append(f"| {c['agent']} {c['env']} | {c['update_mflop']:.0f} | {c['update_ms']:.2f} | {c['update_gflops']:.0f} "
                     f"| {c['matmul_gflops']:.0f} ({shape}) | {c['fraction_of_matmul_rate']:.2f} |")
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
    print("\n".join(flops_rows()))
    print()
    print("\n".join(memory_rows()))
    print()
    print("\n".join(sweep_rows()))
