"""The numbers behind the dashboard's figures, as plain DataFrames (no streamlit, no plotly).

Everything here is computed from a simulation ``Result``, a ``Deployment`` or a ``MemoryPlan``; the
pages only lay it out, so tests check these tables directly.
"""

from __future__ import annotations

import io
import math
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from servesim.hwmodels.memory import MemoryPlan
from servesim.hwmodels.ops import decode_shape, prefill_shape
from servesim.sim.config import Scenario
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import completed_mask, request_latencies, slowdown_by_size
from servesim.sim.outputs import write_outputs
from servesim.sim.result import Result
from servesim.sim.spec import draft_step_s

GB = 1e9


def latencies_ms(requests: pd.DataFrame) -> pd.DataFrame:
    """Completed requests' ``arrival_s``, ``ttft_ms``, ``tpot_ms`` (NaN for one-token replies), ``e2el_ms``."""
    done = completed_mask(requests)
    lat = request_latencies(requests)[done]
    return pd.DataFrame({
        "arrival_s": requests["arrival_s"].to_numpy()[done],
        "input_tokens": requests["input_tokens"].to_numpy()[done],
        "output_tokens": requests["output_tokens"].to_numpy()[done],
        "ttft_ms": lat["ttft_s"].to_numpy() * 1e3,
        "tpot_ms": lat["tpot_s"].to_numpy() * 1e3,
        "e2el_ms": lat["e2el_s"].to_numpy() * 1e3,
    })


def latency_over_time(requests: pd.DataFrame, bins: int = 60) -> pd.DataFrame:
    """p50 and p99 of TTFT and E2E over arrival-time bins (completed requests; bins with none are left out)."""
    lat = latencies_ms(requests)
    cols = ["t_s", "requests", "p50_ttft_ms", "p99_ttft_ms", "p50_e2el_ms", "p99_e2el_ms"]
    if lat.empty:
        return pd.DataFrame(columns=cols)
    t = lat["arrival_s"].to_numpy()
    edges = np.linspace(t.min(), t.max() if t.max() > t.min() else t.min() + 1.0, bins + 1)
    codes = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    rows = []
    for b in np.unique(codes):
        sel = lat[codes == b]
        row = {"t_s": 0.5 * (edges[b] + edges[b + 1]), "requests": len(sel)}
        for m in ("ttft", "e2el"):
            row[f"p50_{m}_ms"], row[f"p99_{m}_ms"] = np.percentile(sel[f"{m}_ms"], [50, 99])
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _integral(starts: np.ndarray, ends: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """∫₀ᵗ Σᵢ valuesᵢ·[startsᵢ ≤ τ < endsᵢ] dτ at each ``t``: rows may overlap (pipeline engines, replicas)."""
    out = np.zeros(len(t))
    for edge, sign in ((starts, 1.0), (ends, -1.0)):
        order = np.argsort(edge, kind="stable")
        e, v = edge[order], values[order]
        cv, cve = np.concatenate(([0.0], np.cumsum(v))), np.concatenate(([0.0], np.cumsum(v * e)))
        k = np.searchsorted(e, t, side="right")
        out += sign * (cv[k] * t - cve[k])
    return out


def binned_timeline(timeline: pd.DataFrame, bins: int = 300) -> pd.DataFrame:
    """The iteration timeline as time-weighted means over ``bins`` equal time bins, summed over replicas:
    ``batch_size``, ``num_running``, ``num_waiting``, ``kv_used_frac`` (of all replicas' blocks) and
    ``tokens_per_s`` (prefill + decode tokens). Idle time counts as zero."""
    cols = ["t_s", "batch_size", "num_running", "num_waiting", "kv_used_frac", "tokens_per_s"]
    if timeline.empty:
        return pd.DataFrame(columns=cols)
    s = timeline["start_s"].to_numpy(np.float64)
    e = timeline["end_s"].to_numpy(np.float64)
    dur = np.maximum(e - s, 1e-12)
    edges = np.linspace(s.min(), max(e.max(), s.min() + 1e-9), bins + 1)
    width = np.diff(edges)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.diff(_integral(s, e, values.astype(np.float64), edges)) / width

    kv_total = timeline.groupby("replica")["kv_blocks_total"].max().sum()
    tokens = (timeline["prefill_tokens"] + timeline["decode_tokens"]).to_numpy(np.float64)
    return pd.DataFrame({
        "t_s": 0.5 * (edges[:-1] + edges[1:]),
        "batch_size": mean(timeline["batch_size"].to_numpy()),
        "num_running": mean(timeline["num_running"].to_numpy()),
        "num_waiting": mean(timeline["num_waiting"].to_numpy()),
        "kv_used_frac": mean(timeline["kv_blocks_used"].to_numpy()) / kv_total,
        "tokens_per_s": mean(tokens / dur),
    }, columns=cols)


def step_breakdown(dep: Deployment, result: Result) -> pd.DataFrame:
    """Where one step's time goes, per operator (ms), at three shapes taken from this run: a prefill of the
    mean prompt (one chunk of the token budget when chunked), a decode step at the run's mean batch and
    mean context, and one at its largest batch. Columns: ``step``, ``operator``, ``ms``, ``bound``."""
    req, sched = result.requests, dep.scheduler
    k = sched.spec_k
    prompt = max(1, int(round(req["input_tokens"].mean()))) if len(req) else 1
    chunk = min(prompt, sched.max_num_batched_tokens) if sched.batching == "chunked" else prompt
    ctx = max(1, int(round((req["input_tokens"] + req["output_tokens"] / 2).mean()))) if len(req) else 1
    tl = result.timeline
    decoding = tl[tl["decode_tokens"] > 0] if len(tl) else tl
    mean_b = max(1, int(round(np.average(decoding["batch_size"], weights=decoding["end_s"] - decoding["start_s"]))))\
        if len(decoding) and (decoding["end_s"] > decoding["start_s"]).any() else 1
    max_b = max(mean_b, int(decoding["batch_size"].max()) if len(decoding) else 1)
    shapes = {
        f"prefill {chunk:,} tokens": prefill_shape(chunk),
        f"decode batch {mean_b} (mean) at ctx {ctx:,}": decode_shape(mean_b, ctx, k),
        f"decode batch {max_b} (max) at ctx {ctx:,}": decode_shape(max_b, ctx, k),
    }
    rows = []
    for label, shape in shapes.items():
        st = dep.cost.step_time(shape)
        for op, sec in st.op_s.items():
            if sec > 0:
                rows.append({"step": label, "operator": op, "ms": sec * 1e3, "bound": st.bound[op]})
        rows.append({"step": label, "operator": "step overhead", "ms": st.overhead_s * 1e3, "bound": "cpu"})
        if k and dep.draft_cost is not None and shape.decode_seqs:
            draft = draft_step_s(dep.draft_cost, shape, k, dep.cost)
            rows.append({"step": label, "operator": f"draft model ×{k}", "ms": draft * 1e3, "bound": "draft"})
    return pd.DataFrame(rows, columns=["step", "operator", "ms", "bound"])


def memory_rows(plan: MemoryPlan) -> pd.DataFrame:
    """One GPU's memory by use, in GB (they add up to the GPU's memory)."""
    parts = {
        "weights": plan.weights_bytes,
        "activations": plan.activation_bytes,
        "runtime": plan.runtime_bytes,
        "KV cache": plan.kv_cache_bytes,
        "headroom": plan.headroom_bytes,
    }
    return pd.DataFrame({"part": list(parts), "GB": [v / GB for v in parts.values()]})


def cost_summary(summary: Mapping[str, object], meta: Mapping[str, object]) -> dict[str, float]:
    """Dollars per million output and total tokens, and the deployment's $/hour."""
    cost = float(summary.get("cost_usd") or 0.0)
    out_tok = float(summary.get("total_output_tokens") or 0)
    all_tok = out_tok + float(summary.get("total_input_tokens") or 0)
    return {
        "usd_per_hour": float(meta["gpus_total"]) * float(meta["usd_per_hour_per_gpu"]),
        "usd_per_million_output_tokens": cost / out_tok * 1e6 if out_tok else math.nan,
        "usd_per_million_tokens": cost / all_tok * 1e6 if all_tok else math.nan,
        "cost_usd": cost,
    }


def scenario_yaml(scenario: Scenario, rename: Mapping[str, str] | None = None) -> str:
    """The scenario as YAML that ``servesim simulate --config`` reads back, every field written (so a change
    of defaults cannot change what it means); ``rename`` maps attached file paths to the names they get
    beside the YAML file."""
    values = scenario.model_dump(mode="json")
    for key in ("model", "trace", "draft_model", "gpus_file", "profile"):
        if rename and values.get(key) in rename:
            values[key] = rename[values[key]]
    return yaml.safe_dump(values, sort_keys=False)


def scenario_bundle(scenario: Scenario, files: Mapping[str, Path]) -> bytes:
    """A zip of ``scenario.yaml`` and the files it names (``files``: name in the zip -> path on disk)."""
    buf = io.BytesIO()
    rename = {str(path): name for name, path in files.items()}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("scenario.yaml", scenario_yaml(scenario, rename))
        for name, path in files.items():
            z.write(path, name)
    return buf.getvalue()


def zip_dir(directory: Path) -> bytes:
    """The files of ``directory`` (not its subdirectories) as a zip, by name, each stamped 1980-01-01 (zip's
    epoch) rather than its file's time: the same files give the same zip bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(directory.iterdir()):
            if p.is_file():
                info = zipfile.ZipInfo(p.name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
                z.writestr(info, p.read_bytes())
    return buf.getvalue()


def results_zip(result: Result) -> bytes:
    """The files ``servesim simulate --output-dir`` writes (requests/timeline Parquet, summary.json, run.json),
    plus requests.csv, as one zip."""
    with tempfile.TemporaryDirectory() as tmp:
        out = write_outputs(Path(tmp) / "run", result.requests, result.timeline, result.summary, result.meta)
        result.requests.to_csv(out / "requests.csv", index=False)
        return zip_dir(out)


COMPARE_KEYS = ("p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms", "p50_e2el_ms", "p99_e2el_ms",
                "request_throughput", "output_throughput", "request_goodput", "slo_attainment", "rejected",
                "usd_per_million_output_tokens")


def compare_table(results: Mapping[tuple[str, float], Result]) -> pd.DataFrame:
    """One row per (variant, offered rate) with the summary keys the Compare page plots."""
    rows = []
    for (variant, rate), r in results.items():
        rows.append({"variant": variant, "rate": rate, **{k: r.summary.get(k, math.nan) for k in COMPARE_KEYS}})
    return pd.DataFrame(rows, columns=["variant", "rate", *COMPARE_KEYS])


def slowdown_table(results: Mapping[str, Result], by: str = "total", bins: int = 5) -> pd.DataFrame:
    """``slowdown_by_size`` of each variant's requests, stacked with a ``variant`` column; the bins are
    the same for every variant since they serve the same workload."""
    frames = [slowdown_by_size(r.requests, by=by, bins=bins).assign(variant=v) for v, r in results.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def roofline_sweep(cost, kind: str, sizes: Sequence[int], ctx_tokens: int = 2048) -> pd.DataFrame:
    """Per-operator step time (ms) of ``cost`` over step sizes: ``decode`` steps of ``sizes`` sequences at
    ``ctx_tokens`` context each, or ``prefill`` chunks of ``sizes`` tokens. Columns: ``size``, ``operator``,
    ``ms``, ``bound``, ``total_ms`` (the step's total, overhead included)."""
    if kind not in ("decode", "prefill"):
        raise ValueError(f"kind must be 'decode' or 'prefill', got {kind!r}")
    rows = []
    for n in sizes:
        shape = decode_shape(n, ctx_tokens) if kind == "decode" else prefill_shape(n)
        st = cost.step_time(shape)
        for op, sec in st.op_s.items():
            if sec > 0:
                rows.append({"size": n, "operator": op, "ms": sec * 1e3, "bound": st.bound[op],
                             "total_ms": st.total_s * 1e3})
        rows.append({"size": n, "operator": "step overhead", "ms": st.overhead_s * 1e3, "bound": "cpu",
                     "total_ms": st.total_s * 1e3})
    return pd.DataFrame(rows, columns=["size", "operator", "ms", "bound", "total_ms"])


def profile_rows(profile) -> pd.DataFrame:
    """A calibration profile's measured points against the roofline (``servesim.calibrate.report``), one row per
    point: ``op``, ``key``, the table's axis values as ``x0`` (and ``x1``), measured median/p20/p80, reference and
    roofline seconds, and ``roofline_error`` (roofline / measured - 1)."""
    from servesim.calibrate.report import comparison_rows

    rows = comparison_rows(profile)
    df = pd.DataFrame(rows, columns=["op", "key", "point", "measured_s", "p20_s", "p80_s", "reference_s",
                                     "roofline_s", "roofline_error"])
    points = df["point"].tolist()
    df["x0"] = [p[0] for p in points]
    df["x1"] = [p[1] if len(p) > 1 else np.nan for p in points]
    return df.drop(columns="point")
