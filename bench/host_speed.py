"""Which host-speed proxy explains a validation run's host time: offline, on the committed H200 suite.

For every case of ``validation/results`` (engine iteration logs and the reports' launch probes) against the
calibration run the profile was fitted on (``validation/calibration/h200-2026-12-04-steps.parquet``):

- proxies: the launch probe beside the run (``case.host_launch_us``: before, after, their mean; relative to the
  profile's ``StepFit.host_launch_us`` of the case's format), and the run's own scheduler time per step against
  calibration's at the same load (median of ``schedule_s / StepFit.schedule_s(running, waiting)``; also the plain
  ratio of the graph steps' median ``schedule_s``);
- host-bound targets, each as measured / the profile's term: graph steps' ``host_s`` (against calibration's graph
  steps at the same batch), graph steps' ``step_s - gpu_s`` (the ``graph_host_s`` fit the cost model prices),
  piecewise and eager steps' ``step_s - gpu_s``, and the device span of piecewise steps the floor binds (their
  ``gpu_s`` over the floor: launch-bound); and, to tell host from device, the piecewise and eager gaps (device span
  over the operators of steps clear of the floor);
- the Pearson correlation of each proxy with each target over the cases (with and without the speculative case,
  whose graph steps run another runner path), and the slope of target ratio on proxy ratio;
- the suite re-priced (``servesim validate --reprice``) at host speed 1.0 and at each case's scheduler-measured
  factor, every error side by side.

Run: ``PYTHONPATH=. .venv/bin/python bench/host_speed.py`` (CPU, about 15 s); writes
``bench/results/host_speed-h200-2026-12-04.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from servesim.hwmodels.profile import load_profile, shipped_profiles
from servesim.validate.hostspeed import measure
from servesim.validate.suite import COLUMNS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "validation" / "results"
CALIBRATION = ROOT / "validation" / "calibration" / "h200-2026-12-04-steps.parquet"
OUT = ROOT / "bench" / "results" / "host_speed-h200-2026-12-04.md"


def _lin(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(np.column_stack([np.ones(len(x)), x]), y, rcond=None)
    return coef


class _Fit:
    def __init__(self, fit) -> None:
        self.step_fit = fit


def case_rows(profile) -> pd.DataFrame:
    cal = pd.read_parquet(CALIBRATION)
    ref = {}
    for fmt, g in cal.groupby("format"):
        gg = g[g["mode"] == "graph"]
        ref[fmt] = {"graph_sched": float(gg.schedule_s.median()),
                    "graph_host": _lin(gg.decode_seqs.to_numpy(float), gg.host_s.to_numpy(float))}
    rows = []
    for rep in sorted(RESULTS.glob("*/report.json")):
        doc = json.loads(rep.read_text())
        case, d = doc["case"], rep.parent
        fmt = case["scenario"].get("quant", "bf16")
        fit = profile.steps[fmt]
        e = pd.read_parquet(d / "engine_iterations.parquet")
        it = pd.read_parquet(d / "iterations.parquet")  # the run-time pricing's breakdown (host speed 1.0)

        def col(k, it=it):
            return it[k].to_numpy() if k in it else np.zeros(len(it))

        mode = it["mode"].to_numpy()
        g, pw, ea = mode == "graph", mode == "piecewise", mode == "eager"
        seqs = (e.prefill_seqs + e.decode_seqs).to_numpy(float)
        kv = (e.decode_ctx_tokens + e.prefill_ctx_tokens).to_numpy(float)
        b0, b1, b2 = fit.graph_host_s
        over = (e.step_s - e.gpu_s).to_numpy()
        po = it.predicted_overhead_s.to_numpy()
        a, b = ref[fmt]["graph_host"]
        floor_bound = col("op_piecewise_floor") > 0
        mixed = ((e.decode_seqs > 0) & (e.prefill_tokens > 0)).to_numpy()
        floor = np.where(mixed, fit.piecewise_floor_mixed_s, fit.piecewise_floor_s)
        kernels = (it.predicted_s.to_numpy() - po - col("op_piecewise_gap") - col("op_piecewise_floor")
                   - col("op_step_gap") - col("op_eager_floor"))
        clear_pw, clear_e = pw & ~floor_bound, ea & ~(col("op_eager_floor") > 0)
        gpu = e.gpu_s.to_numpy()
        probe = case["host_launch_us"]
        hs = measure(e, _Fit(fit))

        def med(x, rows_):
            return float(np.median(x[rows_])) if rows_.any() else np.nan

        rows.append({
            "case": d.name, "format": fmt,
            "probe_before": probe[0] / fit.host_launch_us, "probe_after": probe[1] / fit.host_launch_us,
            "probe_mean": float(np.mean(probe)) / fit.host_launch_us,
            "sched": hs["factor"],
            "sched_graph_plain": float(e.schedule_s[g].median()) / ref[fmt]["graph_sched"],
            "graph_host_s": med(e.host_s.to_numpy() / (a + b * e.decode_seqs.to_numpy(float)), g),
            "graph_overhead": med(over / (b0 + b1 * seqs + b2 * kv), g),
            "piecewise_overhead": med(over / po, pw), "eager_overhead": med(over / po, ea),
            "piecewise_floor": med(gpu / floor, pw & floor_bound), "floor_steps": int((pw & floor_bound).sum()),
            "piecewise_gap": med(gpu - kernels, clear_pw) / fit.piecewise_gap_s,
            "eager_gap": med(gpu - kernels, clear_e) / fit.eager_gap_s,
            "graph_error": med(it.error.to_numpy(), g),
            "schedule_ms": float(e.schedule_s.median() * 1e3),
        })
    return pd.DataFrame(rows)


PROXIES = ("probe_before", "probe_after", "probe_mean", "sched", "sched_graph_plain")
TARGETS = ("graph_host_s", "graph_overhead", "piecewise_overhead", "eager_overhead", "piecewise_floor",
           "piecewise_gap", "eager_gap", "graph_error")


def correlations(df: pd.DataFrame) -> list[str]:
    lines = ["| target (measured / profile) | " + " | ".join(PROXIES) + " |", "|---|" + "---:|" * len(PROXIES)]
    nospec = df[~df.case.str.contains("spec")]
    for t in TARGETS:
        cells = []
        for p in PROXIES:
            ok = df[[p, t]].dropna()
            ok_ns = nospec[[p, t]].dropna()
            cells.append(f"{ok[p].corr(ok[t]):+.2f} / {ok_ns[p].corr(ok_ns[t]):+.2f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def reprice(on: bool) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "servesim", "validate", "--reprice", tmp, "--out-dir", str(RESULTS),
               "--host-norm" if on else "--no-host-norm"]
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        return json.loads((Path(tmp) / "summary.json").read_text())


def main() -> None:
    profile = load_profile(shipped_profiles()["H200"])
    df = case_rows(profile)
    ns = df[~df.case.str.contains("spec")]
    slopes = {t: np.polyfit(ns.sched, ns[t], 1) for t in ("graph_overhead", "piecewise_floor", "graph_host_s")}
    off, on = reprice(False), reprice(True)
    keys = [k for _, k in COLUMNS]
    lines = [f"# Host speed of the H200 validation runs ({profile.profile_id})", "",
             "`bench/host_speed.py`, offline on the committed suite (`validation/results`, run at 376432b in one "
             "process) and the calibration's iterations (`validation/calibration/h200-2026-12-04-steps.parquet`). "
             "Every figure is a ratio to the profile's (or calibration's) value; 1.0 = as calibrated.", "",
             "## Proxies and host-bound targets by case", "",
             "| case | probe before | probe after | probe mean | scheduler (factor) | graph sched plain | graph host_s "
             "| graph step-gpu | piecewise step-gpu | eager step-gpu | piecewise floor (steps) | piecewise gap | "
             "eager gap | graph steps' median error (1.0) |",
             "|---|" + "---:|" * 13]
    for r in df.itertuples():
        lines.append(f"| {r.case} | {r.probe_before:.2f} | {r.probe_after:.2f} | {r.probe_mean:.2f} | {r.sched:.3f} | "
                     f"{r.sched_graph_plain:.2f} | {r.graph_host_s:.2f} | {r.graph_overhead:.2f} | "
                     f"{r.piecewise_overhead:.2f} | {r.eager_overhead:.2f} | {r.piecewise_floor:.2f} "
                     f"({r.floor_steps}) | {r.piecewise_gap:.2f} | {r.eager_gap:.2f} | {r.graph_error:+.1%} |")
    lines += ["", "## Correlation of each proxy with each target over the cases (all ten / without the speculative "
              "case)", ""] + correlations(df)
    lines += ["", "Slopes of target on the scheduler factor (without the speculative case): " + "; ".join(
        f"{t} = {s[1]:+.2f} + {s[0]:.2f} x factor" for t, s in slopes.items()), "",
        "## The suite re-priced at host speed 1.0 and at each case's measured factor", "",
        "| case | factor | " + " | ".join(c for c, _ in COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for a, b in zip(off, on, strict=True):
        cells = [f"{a[k]:+.1%} → {b[k]:+.1%}" if "abs" not in k else f"{a[k]:.1%} → {b[k]:.1%}" for k in keys]
        lines.append(f"| {a['case']} | {b.get('host_speed', 1.0):.3f} | " + " | ".join(cells) + " |")
    for label, pick in (("all ten cases", lambda r: True), ("without the speculative case",
                                                           lambda r: "spec" not in r["case"])):
        x = np.array([[abs(r[k]) for k in keys] for r in off if pick(r)])
        y = np.array([[abs(r[k]) for k in keys] for r in on if pick(r)])
        better, worse = int((y < x - 1e-4).sum()), int((y > x + 1e-4).sum())
        lines.append(f"\nMean |error| over the 9 latency/throughput columns, {label}: {x[:, :9].mean():.2%} → "
                     f"{y[:, :9].mean():.2%}; iteration median / p90: {x[:, 9].mean():.2%} / {x[:, 10].mean():.2%} → "
                     f"{y[:, 9].mean():.2%} / {y[:, 10].mean():.2%}; cells better / worse: {better} / {worse} of "
                     f"{x.size}.")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
