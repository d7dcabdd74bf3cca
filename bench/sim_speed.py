"""Simulator speed: simulated requests per CPU-second on one core, and memory per request.

Scenario (issue 8): Llama-3.1-8B on one H100-SXM, TP1, chunked prefill, Poisson arrivals with
arXiv-summarization lengths (Vidur's trace) at ~80% of the replica's measured capacity.

    python bench/sim_speed.py                   # 20k and 100k requests
    python bench/sim_speed.py --sizes 1000000   # the 1M-request memory check

Each size runs in a fresh subprocess so its peak RSS is its own. Capacity is measured first by a
saturated run (all requests arriving at once).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from servesim.sim import workload as wl
from servesim.sim.config import Scenario
from servesim.sim.deployment import build_deployment
from servesim.sim.simulator import Simulation

# The deployment (the workload is synthesized below): the roofline H100-SXM of the 2026-11-27 results.
SCENARIO = Scenario(trace="arxiv-summarization", arrival="poisson", rate=1.0, gpu="H100-SXM")


def _workload(n: int, rate: float, seed: int = 0) -> wl.Workload:
    arxiv = wl.load_trace("arxiv-summarization")
    lengths = wl.Empirical(arxiv)  # resample (prompt, output) pairs: any n
    return wl.synthesize(n, wl.Poisson(rate), lengths, np.random.default_rng(seed), name="arxiv-poisson")


def capacity_req_per_s(n: int = 4000) -> float:
    """Throughput of one replica kept saturated (every request queued at t≈0)."""
    dep = build_deployment(SCENARIO)
    sim = Simulation(dep, _workload(n, 1e6), seed=0)
    sim.run()
    return n / (sim.last_finish_s - sim.first_arrival_s)


def one_run(n: int, rate: float) -> dict:
    dep = build_deployment(SCENARIO)
    w = _workload(n, rate)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sim = Simulation(dep, w, seed=0)
    sim.run()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = len(sim.timeline.table())
    return {
        "requests": n, "rate_req_per_s": rate, "cpu_s": cpu, "wall_s": wall,
        "req_per_cpu_s": n / cpu, "timeline_rows": rows, "us_per_row": cpu / rows * 1e6,
        "simulated_span_s": sim.last_finish_s - sim.first_arrival_s,
        "peak_rss_mib": rss1 / 1024, "rss_growth_bytes_per_request": (rss1 - rss0) * 1024 / n,
        "load_1min": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,100000", help="comma-separated request counts")
    ap.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity")
    ap.add_argument("--out", type=Path, help="write a Markdown + JSON result here (path without suffix)")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(one_run(int(args._child[0]), float(args._child[1]))))
        return
    cap = capacity_req_per_s()
    rate = args.load * cap
    print(f"capacity {cap:.2f} req/s; running at {args.load:.0%} = {rate:.2f} req/s")
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--_child", str(n), str(rate)], check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        print(f"{n:>9,} requests: {r['req_per_cpu_s']:>7,.0f} req/CPU-s ({r['cpu_s']:.1f} s CPU, "
              f"{r['wall_s']:.1f} s wall), {r['us_per_row']:.1f} µs/iteration row, peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB ({r['rss_growth_bytes_per_request']:.0f} B/request), "
              f"load {r['load_1min']:.2f}")
    if args.out:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
        meta = {"date": dt.date.today().isoformat(), "cpu": cpu, "python": platform.python_version(),
                "command": "python bench/sim_speed.py " + " ".join(sys.argv[1:]),
                "capacity_req_per_s": cap, "load": args.load}
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
        lines = [f"# Simulator speed — {meta['date']}", "",
                 f"CPU: {cpu} (one core; CPU time of the simulating process). Python {meta['python']}.",
                 f"Command: `{meta['command']}`", "",
                 f"Llama-3.1-8B / H100-SXM, TP1, chunked prefill, Poisson arrivals, arXiv-summarization lengths; "
                 f"measured capacity {cap:.2f} req/s, run at {args.load:.0%} ({rate:.2f} req/s).", "",
                 "| requests | req / CPU-s | CPU s | wall s | µs / iteration row | peak RSS MiB | RSS B / request | "
                 "load (1 min) |",
                 "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['requests']:,} | {r['req_per_cpu_s']:,.0f} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} | "
                  f"{r['us_per_row']:.1f} | {r['peak_rss_mib']:.0f} | {r['rss_growth_bytes_per_request']:.0f} | "
                  f"{r['load_1min']:.2f} |" for r in rows]
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
