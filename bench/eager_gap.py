"""Why eager engine steps take longer in calibration than in validation replays (issues 13 and 16).

    python3 bench/eager_gap.py --out bench/results [--requests 100] [--burn-s 60]

Calibration fits the eager-step gap (device time over the operator sum) on an engine run that follows minutes of
kernel timing in the same process; the validation suite replays on a GPU that has not just been loaded. In profile
h200-2026-12-04-783b3a4 the gap is 5.2 ms at every decode count, while suite replays of the same shapes show
0-3.5 ms, falling as the decode count grows. This script serves calibration's synthetic trace three times in one
fresh process, pricing every step with the shipped profile's operator tables (the same sum ``fit_steps`` uses).
(Its H200 run, bench/results/eager_gap-h200-2026-12-04.md, ruled the GPU's state out: 3.23 / 3.36 / 3.25 ms.)

* ``fresh``: right after the engine is built and warmed up;
* ``after-burn``: after ``--burn-s`` seconds of back-to-back bf16 8192^3 matmuls (the load calibration's kernel
  timing puts on the GPU before it fits steps);
* ``rested``: after ``--rest-s`` seconds idle.

``nvidia-smi`` samples SM clock, temperature and power every 100 ms throughout, so each phase's steps can be set
beside the clocks they ran at. Writes ``eager_gap-<gpu>-<date>.{json,md}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import subprocess
import sys
import time

import pandas as pd
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from servesim.calibrate.run import fit_steps  # noqa: E402
from servesim.hwmodels.profile import load_profile, shipped_profiles  # noqa: E402
from servesim.kernels import timing  # noqa: E402

MODEL = "Llama-3.1-8B"
DECODE_BUCKETS = [-1, 0, 5, 20, 60, 1000]
SMI_FIELDS = "timestamp,clocks.sm,clocks.mem,temperature.gpu,power.draw"


def burn(seconds: float) -> int:
    """Back-to-back bf16 8192^3 matmuls for ``seconds``; returns how many ran."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
        n += 20
    return n


def summarise(it: pd.DataFrame) -> dict:
    """Median eager gap (ms) of the big-chunk mixed steps by decode count, and graph steps' measured/summed ratio."""
    gap = (it.gpu_s - it.kernels_s) * 1e3
    eager = ~it.graph.astype(bool) & (it.prefill_tokens > 1000)
    by_decode = {}
    for lo, hi in zip(DECODE_BUCKETS, DECODE_BUCKETS[1:], strict=False):
        sel = eager & (it.decode_seqs > lo) & (it.decode_seqs <= hi)
        if sel.any():
            by_decode[f"{lo + 1}-{hi}"] = {"steps": int(sel.sum()), "gap_ms": float(gap[sel].median())}
    graph = it.graph.astype(bool)
    ratio = (it.gpu_s[graph] / it.kernels_s[graph]).median() if graph.any() else None
    big = float(gap[eager].median()) if eager.any() else None
    return {"eager_big_steps": int(eager.sum()), "eager_big_gap_ms": big,
            "eager_by_decode": by_decode, "graph_steps": int(graph.sum()),
            "graph_measured_over_sum": None if ratio is None else float(ratio),
            "start": float(it.start_s.min()), "end": float(it.end_s.max())}


def clocks_between(smi: pd.DataFrame, t0: float, t1: float) -> dict:
    sel = smi[(smi.t >= t0) & (smi.t <= t1)]
    if sel.empty:
        return {}
    return {"sm_mhz_median": float(sel.sm.median()), "sm_mhz_min": float(sel.sm.min()),
            "temp_c_max": float(sel.temp.max()), "power_w_median": float(sel.power.median())}


def read_smi(text: str) -> pd.DataFrame:
    df = pd.read_csv(io.StringIO(text), header=None, names=["ts", "sm", "mem", "temp", "power"], skipinitialspace=True)
    # nvidia-smi prints local time; the device runs in UTC
    df["t"] = (pd.to_datetime(df.ts, format="%Y/%m/%d %H:%M:%S.%f") - pd.Timestamp("1970-01-01")).dt.total_seconds()
    for c in ("sm", "mem", "temp", "power"):
        df[c] = pd.to_numeric(df[c].astype(str).str.split().str[0], errors="coerce")
    return df


def run_phases(args, profile, phases: dict, walls: dict) -> None:
    for name in ("fresh", "after-burn", "rested"):
        if name == "after-burn":
            print(f"burn: {burn(args.burn_s)} matmuls in {args.burn_s:.0f} s", flush=True)
        elif name == "rested":
            time.sleep(args.rest_s)
        t0 = time.time()
        _, _, it = fit_steps(MODEL, "bf16", profile, "cuda", args.requests)
        walls[name] = (t0, time.time())
        phases[name] = summarise(it)
        print(name, json.dumps(phases[name]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--requests", type=int, default=100, help="requests of calibration's synthetic trace per phase")
    ap.add_argument("--burn-s", type=float, default=60.0)
    ap.add_argument("--rest-s", type=float, default=20.0)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("eager_gap: needs a CUDA GPU")
    profile = load_profile(shipped_profiles()["H200"])  # the profile under test (its steps were fitted here)
    smi_path = os.path.join(args.out, ".smi.csv")
    os.makedirs(args.out, exist_ok=True)
    phases, walls = {}, {}
    with open(smi_path, "w") as log:
        smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader", "-lms", "100"],
                               stdout=log)
        try:
            run_phases(args, profile, phases, walls)
        finally:
            smi.terminate()
            smi.wait()
    with open(smi_path) as f:
        samples = read_smi(f.read())
    os.remove(smi_path)
    for name, (t0, t1) in walls.items():
        phases[name]["clocks"] = clocks_between(samples, t0, t1)
    date = datetime.date.today().isoformat()
    meta = {"card": timing.card(), "date": date, "profile": profile.profile_id, "torch": torch.__version__,
            "command": "python3 bench/eager_gap.py " + " ".join(sys.argv[1:]), "requests": args.requests,
            "burn_s": args.burn_s, "rest_s": args.rest_s}
    base = os.path.join(args.out, f"eager_gap-{timing.card_slug()}-{date}")
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "phases": phases}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(report(meta, phases))
    print(report(meta, phases))


def report(meta: dict, phases: dict) -> str:
    out = [f"# Eager-step gap by GPU state on {meta['card']} ({meta['date']})", "",
           f"Command: `{meta['command']}`; torch {meta['torch']}; steps priced with profile `{meta['profile']}`. "
           "Gap = measured device time of an eager mixed step (prefill chunk > 1000 tokens) minus its operator sum.",
           "", "| phase | SM MHz (median / min) | max °C | median W | eager steps | gap ms | graph measured/sum |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for name, p in phases.items():
        c = p.get("clocks", {})
        gap = p["eager_big_gap_ms"]
        ratio = p["graph_measured_over_sum"]
        out.append(f"| {name} | {c.get('sm_mhz_median', float('nan')):.0f} / {c.get('sm_mhz_min', float('nan')):.0f} | "
                   f"{c.get('temp_c_max', float('nan')):.0f} | {c.get('power_w_median', float('nan')):.0f} | "
                   f"{p['eager_big_steps']} | {'' if gap is None else f'{gap:.2f}'} | "
                   f"{'' if ratio is None else f'{ratio:.3f}'} |")
    buckets = [f"{lo + 1}-{hi}" for lo, hi in zip(DECODE_BUCKETS, DECODE_BUCKETS[1:], strict=False)]
    out += ["", "Eager gap (ms, steps) by decoding sequences in the step:", "",
            "| phase | " + " | ".join(f"decodes {k}" for k in buckets) + " |", "|---|" + "---:|" * len(buckets)]
    for name, p in phases.items():
        cells = [p["eager_by_decode"].get(k) for k in buckets]
        out.append(f"| {name} | " + " | ".join("" if v is None else f"{v['gap_ms']:.2f} ({v['steps']})"
                                             for v in cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
