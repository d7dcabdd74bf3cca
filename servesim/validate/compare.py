"""Prediction against measurement: the error tables of a validation report.

Both sides are runs in servesim's own shapes (a requests table, a summary under vLLM's keys): the simulator's
prediction, and the engine's replay of the same workload (or an external engine's results). Because the engine
runs the simulator's scheduler, both make the same policy decisions; what the tables measure is the cost model.
The iteration view prices every measured engine iteration with the cost model and bins the errors by batch
composition, so a term that is off shows up where it dominates.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

METRICS = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "p90", "p99")
THROUGHPUT = ("request_throughput", "output_throughput", "total_token_throughput")
# Iteration bins: (column, edges, label); a bin holds edges[i] < x <= edges[i+1]
BINS = {
    "prefill_tokens": (-1, 0, 64, 512, 2048, math.inf),
    "decode_seqs": (-1, 0, 8, 32, 128, math.inf),
    "mean_context": (-1, 512, 2048, 8192, math.inf),
}


def signed_error(pred: float, meas: float) -> float:
    """``pred / meas - 1`` (NaN when either is missing or the measurement is 0)."""
    if pred is None or meas is None or not math.isfinite(pred) or not math.isfinite(meas) or meas == 0:
        return math.nan
    return pred / meas - 1


def metric_rows(pred: dict, meas: dict) -> list[dict]:
    """TTFT, TPOT, ITL, E2E at mean, p50, p90 and p99, then throughputs: predicted, measured, signed error."""
    rows = []
    for m in METRICS:
        for s in STATS:
            key = f"{s}_{m}_ms"
            rows.append({"metric": m, "stat": "p50" if s == "median" else s, "key": key, "predicted": pred.get(key),
                         "measured": meas.get(key), "error": signed_error(pred.get(key), meas.get(key))})
    for key in THROUGHPUT:
        rows.append({"metric": key, "stat": "", "key": key, "predicted": pred.get(key), "measured": meas.get(key),
                     "error": signed_error(pred.get(key), meas.get(key))})
    return rows


def latencies(df: pd.DataFrame) -> pd.DataFrame:
    """A run's served requests: arrival, TTFT, E2E (seconds), output tokens and TPOT."""
    ok = df[df.rejected_reason.fillna("") == ""]
    out = pd.DataFrame({"request_id": ok.request_id, "arrival_s": ok.arrival_s,
                        "ttft_s": ok.first_token_s - ok.arrival_s, "e2el_s": ok.finish_s - ok.arrival_s,
                        "output_tokens": ok.output_tokens})
    many = out.output_tokens > 1
    out["tpot_s"] = np.where(many, (out.e2el_s - out.ttft_s) / (out.output_tokens - 1).clip(lower=1), np.nan)
    return out


def per_request(pred: pd.DataFrame, meas: pd.DataFrame) -> pd.DataFrame:
    """Both runs' served requests side by side (by request id): TTFT, E2E and TPOT in seconds."""
    return latencies(pred).merge(latencies(meas), on="request_id", suffixes=("_pred", "_meas"))


def step_modes(iterations: pd.DataFrame) -> np.ndarray:
    """How the engine ran each iteration: ``graph`` (a decode graph), ``piecewise`` or ``eager`` (logs from before
    the ``piecewise`` column: graph or eager)."""
    graph = iterations.graph.to_numpy(bool)
    pw = iterations.piecewise.to_numpy(bool) if "piecewise" in iterations else np.zeros(len(iterations), bool)
    return np.where(graph, "graph", np.where(pw, "piecewise", "eager"))


def iteration_table(iterations: pd.DataFrame, cost, swap_s_per_block: float = 0.0, draft_cost=None,
                    spec_k: int = 0) -> pd.DataFrame:
    """Every measured iteration priced by ``cost`` (``step_time(shape)``, plus the swap copies and, speculating,
    the draft's proposal steps as the simulator prices them): predicted and measured seconds, the signed error,
    the bins, the predicted seconds of each operator (the draft's as ``draft``); ``mode``, how the engine ran it,
    and ``priced_as``, the mode the cost model priced (where it has modes: the calibrated one)."""
    from servesim.hwmodels.ops import BatchShape
    from servesim.sim.spec import draft_step_s

    rows, ops = [], []
    for r in iterations.itertuples():
        shape = BatchShape(prefill_seqs=int(r.prefill_seqs), prefill_tokens=int(r.prefill_tokens),
                           prefill_attn_pairs=float(r.prefill_attn_pairs), prefill_ctx_tokens=int(r.prefill_ctx_tokens),
                           decode_seqs=int(r.decode_seqs), decode_query_tokens=int(r.decode_query_tokens),
                           decode_ctx_tokens=int(r.decode_ctx_tokens), sampled_tokens=int(r.sampled_tokens),
                           decode_ctx_max=int(getattr(r, "decode_ctx_max", 0)))
        st = cost.step_time(shape)
        pred = st.total_s + (r.swap_in_blocks + r.swap_out_blocks) * swap_s_per_block
        op_s = dict(st.op_s)
        if spec_k and draft_cost is not None:
            op_s["draft"] = draft_step_s(draft_cost, shape, spec_k, cost)
            pred += op_s["draft"]
        rows.append((pred, st.overhead_s, cost.step_mode(shape) if hasattr(cost, "step_mode") else ""))
        ops.append(op_s)
    out = iterations[["iteration", "end_s", "step_s", "gpu_s", "graph", "prefill_tokens", "decode_seqs",
                      "decode_ctx_tokens", "sampled_tokens"]].copy()
    out["mode"] = step_modes(iterations)
    out["priced_as"] = [m for _, _, m in rows]
    out["predicted_s"] = [p for p, _, _ in rows]
    out["predicted_overhead_s"] = [o for _, o, _ in rows]
    out["error"] = out.predicted_s / out.step_s - 1
    out["mean_context"] = np.where(out.decode_seqs > 0, out.decode_ctx_tokens / out.decode_seqs.clip(lower=1), 0)
    op_frame = pd.DataFrame(ops).fillna(0.0).add_prefix("op_")
    return pd.concat([out.reset_index(drop=True), op_frame.reset_index(drop=True)], axis=1)


def _bin_label(edges, i: int) -> str:
    lo, hi = edges[i], edges[i + 1]
    if lo < 0:
        return f"{hi:g}" if hi == 0 else f"<={hi:g}"
    return f">{lo:g}" if hi == math.inf else f"{lo + 1:g}-{hi:g}"


def binned(it: pd.DataFrame) -> pd.DataFrame:
    """Iteration errors by (prefill tokens, decode batch, mean context) bin: count, median and p90 |error|,
    measured mean step, and the predicted operators that dominate the bin's time."""
    keys = []
    for col, edges in BINS.items():
        idx = np.clip(np.searchsorted(np.asarray(edges), it[col].to_numpy(), side="left") - 1, 0, len(edges) - 2)
        keys.append([_bin_label(edges, int(i)) for i in idx])
    frame = it.assign(b_prefill=keys[0], b_decode=keys[1], b_context=keys[2])
    op_cols = [c for c in it.columns if c.startswith("op_")]
    out = []
    for (p, d, c), g in frame.groupby(["b_prefill", "b_decode", "b_context"], sort=False):
        shares = g[op_cols].sum()
        top = shares.sort_values(ascending=False).head(3)
        total = g.predicted_s.sum()
        out.append({"prefill_tokens": p, "decode_seqs": d, "mean_context": c, "iterations": len(g),
                    "median_error": float(g.error.median()), "median_abs_error": float(g.error.abs().median()),
                    "p90_abs_error": float(g.error.abs().quantile(0.9)), "mean_step_ms": float(g.step_s.mean() * 1e3),
                    "overhead_share": float(g.predicted_overhead_s.sum() / total) if total else math.nan,
                    "top_ops": ", ".join(f"{k[3:]} {v / total:.0%}" for k, v in top.items() if v > 0)})
    return pd.DataFrame(out).sort_values("iterations", ascending=False, ignore_index=True)


def by_mode(it: pd.DataFrame) -> pd.DataFrame:
    """Iteration errors by how the engine ran the step (graph / eager / piecewise): count, median signed and p90
    |error|, the share of the engine's time, and how many the cost model priced as another mode."""
    modes = it["mode"] if "mode" in it else pd.Series(np.where(it.graph.astype(bool), "graph", "eager"))
    total = float(it.step_s.sum())
    out = []
    for mode in ("graph", "eager", "piecewise"):
        g = it[modes.to_numpy() == mode]
        if not len(g):
            continue
        other = int((g.priced_as != mode).sum()) if "priced_as" in g and (g.priced_as != "").all() else 0
        out.append({"mode": mode, "iterations": len(g), "median_error": float(g.error.median()),
                    "p90_abs_error": float(g.error.abs().quantile(0.9)),
                    "time_share": float(g.step_s.sum() / total) if total else math.nan, "priced_otherwise": other})
    return pd.DataFrame(out)


def summary_errors(metric_rows_: list[dict], it: pd.DataFrame | None) -> dict:
    """The numbers a suite aggregates: |error| of the p50/p99 of TTFT, TPOT, E2E and of throughput, of the means,
    and of the iterations."""
    by = {(r["metric"], r["stat"]): r["error"] for r in metric_rows_}
    tails = [by[(m, s)] for m in ("ttft", "tpot", "e2el") for s in ("p50", "p99")] + [by[("output_throughput", "")]]
    means = [by[(m, "mean")] for m in ("ttft", "tpot", "e2el")]
    out = {"max_abs_tail_error": float(np.nanmax(np.abs(tails))), "max_abs_mean_error": float(np.nanmax(np.abs(means)))}
    if it is not None and len(it):
        out.update(iteration_median_abs_error=float(it.error.abs().median()),
                   iteration_p90_abs_error=float(it.error.abs().quantile(0.9)), iterations=int(len(it)))
    return out
