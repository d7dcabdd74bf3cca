"""Sweep speed: wall time of a sweep on local processes, and whether the cost per scenario stays flat as the
grid grows.

The grid: Llama-3.1-8B, 300 requests of the Azure conversation trace per scenario, over 3 GPUs x 3 weight
formats x TP 1/2/4 x max_num_seqs 64/256 x 4 rates (216 scenarios), shuffled with a fixed seed; a sweep of
size N takes the first N, so every size has the same mix. Each size runs in a fresh process (its own worker
pool, no cache), so each pays the same start-up.

    python bench/plan_sweep.py                        # sizes 25 50 100 200 on 2 processes
    python bench/plan_sweep.py --sizes 200 --jobs 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

AXES = {"gpu": ["H100-SXM", "H200", "A100-80GB-SXM"], "quant": ["bf16", "w8a16", "w4a16"], "tp": [1, 2, 4],
        "max_num_seqs": [64, 256], "rate": [2.0, 4.0, 8.0, 16.0]}
BASE = {"model": "Llama-3.1-8B", "trace": "azure-conv", "num_requests": 300}


def scenarios(n: int) -> list[dict]:
    import numpy as np

    points = [dict(zip(AXES, combo)) for combo in itertools.product(*AXES.values())]
    order = np.random.default_rng(0).permutation(len(points))
    if n > len(points):
        raise SystemExit(f"the grid has {len(points)} scenarios, asked for {n}")
    return [{**BASE, **points[i]} for i in order[:n]]


def one(n: int, jobs: int) -> dict:
    from servesim.plan import sweep

    grid = scenarios(n)
    started, cpu = time.perf_counter(), time.process_time()
    r = sweep(grid, jobs=jobs)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"scenarios": n, "jobs": jobs, "wall_s": wall, "wall_per_scenario_s": wall / n,
            "sim_wall_s_mean": float(r.scenario_wall_s.mean()), "sim_cpu_s_mean": float(r.scenario_cpu_s.mean()),
            "driver_cpu_s_per_scenario": cpu / n,
            "ok": int((r.table.status == "ok").sum()), "load_after": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.jobs)))
        return
    rows = []
    for n in args.sizes:
        load = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--jobs", str(args.jobs)],
                              capture_output=True, text=True, check=True)
        rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "load_before": load})
        r = rows[-1]
        print(f"{n:4d} scenarios: {r['wall_s']:6.1f} s wall, {r['wall_per_scenario_s'] * 1e3:6.1f} ms/scenario; "
              f"per scenario: worker CPU {r['sim_cpu_s_mean'] * 1e3:6.1f} ms, "
              f"wall {r['sim_wall_s_mean'] * 1e3:6.1f} ms, "
              f"driver CPU {r['driver_cpu_s_per_scenario'] * 1e3:5.1f} ms; load {load:.2f} -> {r['load_after']:.2f}")
    for a, b in zip(rows, rows[1:]):
        marginal = (b["wall_s"] - a["wall_s"]) / (b["scenarios"] - a["scenarios"])
        b["marginal_s_per_scenario"] = marginal
    date = dt.date.today().isoformat()
    out = Path(__file__).parent / "results" / f"plan_sweep-cpu-{date}"
    meta = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "base": BASE, "axes": AXES}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# Sweep speed, {date}", "", f"`python bench/plan_sweep.py --sizes {' '.join(map(str, args.sizes))} "
             f"--jobs {args.jobs}` on {meta['machine']} (shared: load average in the table).", "",
             f"Scenario: {BASE['model']}, {BASE['num_requests']} requests of {BASE['trace']}; grid of "
             + " x ".join(f"{k} {v}" for k, v in AXES.items()) + ", shuffled (seed 0), first N.", "",
             "| scenarios | wall s | wall ms per scenario | marginal wall ms per scenario | worker CPU ms per scenario "
             "| worker wall ms per scenario | driver CPU ms per scenario | load before/after |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        m = r.get("marginal_s_per_scenario")
        lines.append(f"| {r['scenarios']} | {r['wall_s']:.1f} | {r['wall_per_scenario_s'] * 1e3:.0f} | "
                     f"{'-' if m is None else f'{m * 1e3:.0f}'} | {r['sim_cpu_s_mean'] * 1e3:.0f} | "
                     f"{r['sim_wall_s_mean'] * 1e3:.0f} | {r['driver_cpu_s_per_scenario'] * 1e3:.1f} | "
                     f"{r['load_before']:.2f} / {r['load_after']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
