"""``servesim calibrate report``: a profile's measured operator times against the roofline, as a table and a
self-contained plotly page. Needs no torch (it reads the JSON and the catalogs).

The roofline here prices one operator call the way ``hwmodels.cost`` prices the kernels of a step: the roofline
prior of the GPU's family (``hwmodels/prior.py``: a floor plus a smooth combination of the compute and memory
terms, efficiencies fitted to public measurements), FLOPs and bytes counted as in ``hwmodels/ops.py`` for that
operator alone. On a GPU with a profile its error is the honest estimate of the prior's error on GPUs without.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from servesim.hwmodels.gpus import GPU, get_gpu
from servesim.hwmodels.models import get_weight_format, kv_dtype_bytes
from servesim.hwmodels.ops import gemm_kind
from servesim.hwmodels.prior import GPUPrior, prior_for
from servesim.hwmodels.profile import OpTable, Profile

ACT = 2  # bf16 activations
KIND = {"gemm": "gemm", "attn_prefill": "attn_prefill", "attn_decode": "attn_decode",
        "attn_decode_ragged": "attn_decode", "sampling": "sampler", "spec_verify": "sampler",
        "rms_norm": "norm", "rotary": "rope", "silu_mul": "act"}  # the prior's kernel kinds; else elementwise
RING = {"allreduce": lambda tp: 2 * (tp - 1) / tp, "allgather": lambda tp: (tp - 1) / tp}  # bytes sent per byte
ROW_KINDS = ("norm", "rope", "act", "elementwise")  # one thread block per token: the row term applies


def flops_bytes(op: str, key: dict, point: tuple[float, ...]) -> tuple[float, float, str]:
    """(FLOPs, bytes, compute dtype) of one call of ``op`` at ``key`` and grid ``point``."""
    if op == "gemm":
        (m,) = point
        wf = get_weight_format(key["format"])
        n, k = key["n"], key["k"]
        return 2.0 * m * n * k, wf.matrix_bytes(k, n) + (k + n) * m * ACT, wf.compute_dtype
    if op == "rms_norm":
        return 0.0, 4.0 * point[0] * key["hidden"] * ACT, "bf16"
    if op == "rotary":
        return 0.0, 2.0 * point[0] * (key["q_heads"] + key["kv_heads"]) * key["head_dim"] * ACT, "bf16"
    if op == "kv_write":
        return 0.0, 2.0 * point[0] * key["kv_heads"] * key["head_dim"] * (ACT + kv_dtype_bytes(key["kv_dtype"])), "bf16"
    if op == "silu_mul":
        return 0.0, 3.0 * point[0] * key["intermediate"] * ACT, "bf16"
    if op in ("attn_prefill", "attn_decode", "attn_decode_ragged"):
        kvb = kv_dtype_bytes(key["kv_dtype"])
        qd, kvd = key["q_heads"] * key["head_dim"], key["kv_heads"] * key["head_dim"]
        if op == "attn_prefill":
            t, c = point
            return 4.0 * qd * (t * c + t * (t + 1) / 2), 2 * t * qd * ACT + 2 * (c + t) * kvd * kvb, "bf16"
        b, c = point
        return 4.0 * qd * b * c, 2 * b * qd * ACT + 2 * b * c * kvd * kvb, "bf16"
    if op == "sampling":
        return point[0] * key["vocab"], point[0] * key["vocab"] * ACT, "fp32"
    if op == "spec_verify":
        b, k = point
        v = key["vocab"]
        return 5.0 * b * (k + 1) * v, b * (k + 1) * v * ACT + b * k * v * 4, "fp32"
    raise ValueError(f"no roofline for {op}")


def roofline_s(gpu: GPU, op: str, key: dict, point: tuple[float, ...], prior: GPUPrior | None = None) -> float:
    """The roofline prior's seconds for one call of ``op`` at ``key`` and grid ``point`` on ``gpu`` (collectives:
    its NCCL line over the ring bytes, the engine issuing them through NCCL)."""
    if op in RING:
        tp = key["tp"]
        return float((prior or prior_for(gpu)).collective_s(RING[op](tp) * point[0], gpu, "nccl"))
    flops, nbytes, dtype = flops_bytes(op, key, point)
    kind = gemm_kind(key["format"]) if op == "gemm" else KIND.get(op, "elementwise")
    row = nbytes / point[0] if kind in ROW_KINDS and point[0] else 0.0
    shape = (point[0], float(key["n"])) if op == "gemm" else (None, 0.0)  # a GEMM's M and N: its wave term
    return float((prior or prior_for(gpu)).kernel_s(kind, flops, nbytes, gpu, dtype, row, *shape))


def _points(t: OpTable) -> list[tuple[float, ...]]:
    if len(t.grid) == 1:
        return [(x,) for x in t.grid[0]]
    return [(a, b) for a in t.grid[0] for b in t.grid[1]]


def comparison_rows(profile: Profile, gpu: GPU | None = None) -> list[dict]:
    """One row per measured point: measured (median, p20, p80, reference) and roofline seconds."""
    gpu = gpu or get_gpu(profile.gpu)
    rows = []
    for t in profile.tables:
        if t.op == "step_overhead":
            continue
        for i, pt in enumerate(_points(t)):
            roof = roofline_s(gpu, t.op, t.key, pt)
            ref = t.reference_s[i] if t.reference_s else None
            rows.append({"op": t.op, "key": t.key_str(), "point": pt, "measured_s": t.median_s[i],
                         "p20_s": t.p20_s[i], "p80_s": t.p80_s[i], "reference_s": ref, "roofline_s": roof,
                         "roofline_error": roof / t.median_s[i] - 1})
    return rows


def summary_by_op(rows: list[dict]) -> list[dict]:
    """Per operator family: the roofline's median signed and p90 absolute error against the measurements."""
    out = []
    for op in dict.fromkeys(r["op"] for r in rows):
        e = np.array([r["roofline_error"] for r in rows if r["op"] == op])
        out.append({"op": op, "points": len(e), "roofline_median_error": float(np.median(e)),
                    "roofline_p90_abs_error": float(np.quantile(np.abs(e), 0.9))})
    return out


def markdown(profile: Profile, rows: list[dict]) -> str:
    prov = profile.provenance
    lines = [f"# Calibration profile {profile.profile_id}", "",
             f"{prov.gpu_name} ({prov.memory_bytes / 2**30:.0f} GiB, driver {prov.driver}, CUDA {prov.cuda}), "
             f"torch {prov.torch}, Triton {prov.triton}, {prov.date}, commit {prov.git_commit}; timing condition "
             f"{prov.condition}; {prov.wall_s:.0f} s; `{prov.command}`", "",
             "## Roofline against the measurements (negative: the roofline is too fast)", "",
             "| operator | points | median signed error | p90 abs error |", "|---|---:|---:|---:|"]
    for s in summary_by_op(rows):
        lines.append(f"| {s['op']} | {s['points']} | {s['roofline_median_error']:+.1%} | "
                     f"{s['roofline_p90_abs_error']:.1%} |")
    how = ("points between the grid's, timed and priced from the whole grid" if profile.fit.method == "off-grid"
           else "each interior grid point from its two neighbours")
    lines += ["", f"## Fit quality (held out: {how})", "", "| operator | points | median abs error | p90 abs error |",
              "|---|---:|---:|---:|"]
    for op, s in profile.fit.ops.items():
        lines.append(f"| {op} | {s['points']:.0f} | {s['median_abs']:.2%} | {s['p90_abs']:.2%} |")
    for fmt, s in profile.fit.steps.items():
        lines.append(f"| whole steps, {fmt} | {s['points']:.0f} | {s['median_abs']:.2%} | {s['p90_abs']:.2%} |")
        for mode in ("graph", "eager", "piecewise"):  # per step mode, where the fit report has them
            if f"{mode}_median_abs" in s:
                lines.append(f"| whole steps, {fmt}, {mode} | {s[f'{mode}_steps']:.0f} | "
                             f"{s[f'{mode}_median_abs']:.2%} | {s[f'{mode}_p90_abs']:.2%} |")
    lines += ["", "## Whole-step terms", "",
              "| format | graph gap per kernel (us) | eager gap (us) | eager floor (ms) | piecewise gap (us) | "
              "piecewise floor (ms) |", "|---|---:|---:|---:|---:|---:|"]
    for fmt, f in profile.steps.items():
        pw = (f"{f.piecewise_gap_s * 1e6:.1f} | {f.piecewise_floor_s * 1e3:.3f}" if f.piecewise_steps
              else "not measured | not measured")
        lines.append(f"| {fmt} | {f.graph_gap_s * 1e6:.2f} | {f.eager_gap_s * 1e6:.1f} | {f.eager_floor_s * 1e3:.3f} | "
                     f"{pw} |")
    return "\n".join(lines) + "\n"


def html(profile: Profile, rows: list[dict]) -> str:
    """One panel per table: measured median with its p20-p80 band, the reference method, and the roofline."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    tables = [t for t in profile.tables if t.op != "step_overhead"]
    cols = 3
    nrows = math.ceil(len(tables) / cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[t.key_str()[:60] for t in tables],
                        vertical_spacing=min(0.3 / max(nrows, 1), 0.08))
    for i, t in enumerate(tables):
        r, c = i // cols + 1, i % cols + 1
        mine = [x for x in rows if x["key"] == t.key_str()]
        if len(t.grid) == 1:
            xs, series = [p["point"][0] for p in mine], [("", mine)]
        else:  # one line per value of the first axis, over the second
            xs = None
            series = [(f"{t.axes[0]}={a:g} ", [p for p in mine if p["point"][0] == a]) for a in t.grid[0]]
        for label, pts in series:
            x = xs if xs is not None else [p["point"][1] for p in pts]
            fig.add_trace(go.Scatter(x=x, y=[p["measured_s"] * 1e6 for p in pts], mode="lines+markers",
                                     name=f"{label}measured", legendgroup="measured", showlegend=i == 0 and not label,
                                     error_y=dict(type="data", symmetric=False,
                                                  array=[(p["p80_s"] - p["measured_s"]) * 1e6 for p in pts],
                                                  arrayminus=[(p["measured_s"] - p["p20_s"]) * 1e6 for p in pts])),
                          row=r, col=c)
            fig.add_trace(go.Scatter(x=x, y=[p["roofline_s"] * 1e6 for p in pts], mode="lines",
                                     line=dict(dash="dash"), name=f"{label}roofline", legendgroup="roofline",
                                     showlegend=i == 0 and not label), row=r, col=c)
        fig.update_xaxes(type="log", title_text=t.axes[-1], row=r, col=c)
        fig.update_yaxes(type="log", title_text="us", row=r, col=c)
    fig.update_layout(height=320 * nrows, width=1300,
                      title=f"servesim profile {profile.profile_id}: measured vs roofline")
    return fig.to_html(include_plotlyjs=True, full_html=True)


def write_report(profile: Profile, out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and ``report.html`` (all or none) into ``out_dir``."""
    import json

    from servesim.sim.outputs import write_files

    rows = comparison_rows(profile)
    texts = {"report.md": markdown(profile, rows),
             "report.json": json.dumps({"profile_id": profile.profile_id, "by_op": summary_by_op(rows),
                                        "fit": profile.fit.model_dump(), "rows": rows}, indent=1, default=float),
             "report.html": html(profile, rows)}
    write_files(out_dir, {name: (lambda p, s=s: p.write_text(s, encoding="utf-8")) for name, s in texts.items()})
    return {name: Path(out_dir) / name for name in texts}
