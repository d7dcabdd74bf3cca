"""Soak: one long simulation (1M requests by default) with the process's RSS sampled as it runs.

The default scenario (Llama-3.1-8B on one H200, calibrated profile, chunked prefill, FCFS) serving the Azure 2023
conversation trace repeated end to end to N requests at its own times. What a run must keep grows with it: the
per-request table (one row per finished request), the timeline (one row per iteration or run of identical
decode iterations) and the inter-token gaps (one per step, weighted by the requests sharing it). Every sample
records RSS and those recorded arrays' bytes; the rest (RSS minus the recorded arrays) must stay flat: no
request, KV block or event is kept once it is done.

    python bench/soak.py                        # 1M requests; writes bench/results/soak-cpu-<date>.{md,json}
    python bench/soak.py --requests 50000 --out /tmp/soak   # a quick look

RSS is read from /proc/self/statm through psutil (Linux); the peak is the kernel's ru_maxrss.
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
from array import array
from pathlib import Path

import psutil

from servesim.sim.config import Scenario
from servesim.sim.deployment import build_deployment, build_workload
from servesim.sim.result import finish_run
from servesim.sim.simulator import Simulation

MIB = 2**20


def _arrays_bytes(recorder: object) -> int:
    """Bytes of the typed arrays a recorder holds, as allocated (``sys.getsizeof`` counts an array's spare
    capacity too: it grows by an eighth at a time)."""
    return sum(sys.getsizeof(v) for v in vars(recorder).values() if isinstance(v, array))


def recorded_bytes(sim: Simulation) -> tuple[int, int]:
    """(per-request table, timeline + inter-token gaps): bytes of the arrays the run keeps by design."""
    rest = _arrays_bytes(sim.timeline)
    for rep in sim.replicas:
        for e in rep.engines:
            rest += sys.getsizeof(e.sched.itl_s) + sys.getsizeof(e.sched.itl_weights)
    return _arrays_bytes(sim.requests), rest


def soak(n: int, samples: int = 100) -> dict:
    proc = psutil.Process()
    started = time.perf_counter()
    s = Scenario(num_requests=n, repeat=True)
    dep = build_deployment(s)
    w = build_workload(s)
    base_rss = proc.memory_info().rss
    rows: list[dict] = []
    every = max(1, n // samples)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    holder: dict[str, Simulation] = {}

    def tick(done: int) -> None:
        if done % every and done != n:
            return
        req_b, rest_b = recorded_bytes(holder["sim"])
        rss = proc.memory_info().rss
        rows.append({"requests_done": done, "wall_s": round(time.perf_counter() - wall0, 2),
                     "cpu_s": round(time.process_time() - cpu0, 2), "rss_mib": round(rss / MIB, 2),
                     "request_table_mib": round(req_b / MIB, 2), "timeline_and_itl_mib": round(rest_b / MIB, 2),
                     "rss_less_recorded_mib": round((rss - req_b - rest_b) / MIB, 2)})

    sim = Simulation(dep, w, seed=s.seed, fast_forward=s.fast_forward, on_progress=tick)
    holder["sim"] = sim
    sim.run()
    sim_cpu, sim_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    rss_after_run = proc.memory_info().rss
    result = finish_run(s, dep, w, sim.request_table(), sim.timeline.table(), sim.itl_s, sim.itl_weights,
                        sim.first_arrival_s, sim.last_finish_s, started)
    summary = result.summary
    flat = [r["rss_less_recorded_mib"] for r in rows if r["requests_done"] >= n // 10]
    return {
        "requests": n, "completed": summary["completed"], "rejected": summary["rejected"],
        "simulated_s": summary["duration"], "timeline_rows": len(result.timeline_table),
        "sim_cpu_s": sim_cpu, "sim_wall_s": sim_wall, "req_per_cpu_s": n / sim_cpu,
        "rss_before_run_mib": base_rss / MIB, "rss_after_run_mib": rss_after_run / MIB,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_less_recorded_from_10pct_mib": {"min": min(flat), "max": max(flat), "spread": max(flat) - min(flat)},
        "request_table_bytes_per_request": rows[-1]["request_table_mib"] * MIB / n,
        "timeline_and_itl_bytes_per_request": rows[-1]["timeline_and_itl_mib"] * MIB / n,
        "samples": rows, "load_1min_end": os.getloadavg()[0],
    }


def _machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "load_1min_start": os.getloadavg()[0]}


def markdown(doc: dict) -> str:
    r, m = doc["run"], doc["meta"]
    f = r["rss_less_recorded_from_10pct_mib"]
    lines = [
        f"# Soak: {r['requests']:,} requests — {m['date']}", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}; shared with other "
        f"engineers' jobs (load {m['load_1min_start']:.1f} at the start, {r['load_1min_end']:.1f} at the end), so "
        "wall times are long; CPU time is the process's own.",
        f"Command: `{m['command']}` at {m.get('commit', '?')}" + (f" ({m['note']})" if m.get("note") else ""), "",
        f"Default scenario (Llama-3.1-8B on one H200, calibrated profile, chunked prefill, FCFS), the azure-conv trace "
        f"repeated to {r['requests']:,} requests: {r['completed']:,} completed, {r['rejected']:,} rejected, "
        f"{r['simulated_s'] / 3600:,.1f} simulated hours, {r['timeline_rows']:,} timeline rows; "
        f"{r['sim_cpu_s']:,.0f} s of CPU ({r['req_per_cpu_s']:,.0f} requests per CPU-second), {r['sim_wall_s']:,.0f} s "
        "wall.", "",
        f"- Peak RSS {r['peak_rss_mib']:,.0f} MiB (before the run, workload built: {r['rss_before_run_mib']:,.0f} MiB; "
        f"after it: {r['rss_after_run_mib']:,.0f} MiB).",
        f"- The per-request table: {r['request_table_bytes_per_request']:.0f} bytes per request; the timeline and "
        f"inter-token gaps: {r['timeline_and_itl_bytes_per_request']:.0f} bytes per request (they grow with steps).",
        f"- RSS less the recorded arrays (request table, timeline, inter-token gaps) from 10% of the run to its end: "
        f"{f['min']:,.1f} to {f['max']:,.1f} MiB (spread {f['spread']:.1f} MiB), while those arrays grow to "
        f"{(r['samples'][-1]['request_table_mib'] + r['samples'][-1]['timeline_and_itl_mib']):,.0f} MiB.", "",
        "| requests done | CPU s | RSS MiB | request table MiB | timeline + ITL MiB | RSS less recorded MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    step = max(1, len(r["samples"]) // 20)
    shown = r["samples"][::step] + ([r["samples"][-1]] if (len(r["samples"]) - 1) % step else [])
    lines += [f"| {s['requests_done']:,} | {s['cpu_s']:,.0f} | {s['rss_mib']:,.1f} | {s['request_table_mib']:,.1f} | "
              f"{s['timeline_and_itl_mib']:,.1f} | {s['rss_less_recorded_mib']:,.1f} |" for s in shown]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, help="path without suffix (default: bench/results/soak-cpu-<date>)")
    args = ap.parse_args()
    date = dt.date.today().isoformat()
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    meta = {"date": date, **_machine(), "command": "python bench/soak.py " + " ".join(sys.argv[1:]), "commit": commit}
    doc = {"meta": meta, "run": soak(args.requests)}
    out = args.out or Path(__file__).parent / "results" / f"soak-cpu-{date}"
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
