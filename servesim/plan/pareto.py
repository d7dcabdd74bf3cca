"""Pareto frontiers of a plan's probes, and the self-contained plotly page that shows them.

- Throughput vs interactivity: output tokens/s per GPU against output tokens/s per user (1 / mean TPOT), over
  the probes that met the SLOs; both are better higher.
- Cost vs latency: serving the target with a configuration run at a probe's per-replica rate ``r`` takes
  ``ceil(target / r)`` replicas; its $/h against that probe's p99 latency; both are better lower.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from servesim.plan.run import POOL_COLUMNS

if TYPE_CHECKING:
    from servesim.plan.capacity import PlanResult


def pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Points no other point beats in both ``x`` and ``y`` (higher is better in both)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.zeros(len(x), dtype=bool)
    best = -math.inf
    for i in np.lexsort((-y, -x)):  # x descending, ties by y descending
        if y[i] > best:
            keep[i], best = True, y[i]
    return keep


def throughput_frontier(probes: pd.DataFrame) -> pd.DataFrame:
    """Passing probes with ``per_user``, ``per_gpu`` and ``on_frontier``."""
    p = probes[probes["passed"]] if len(probes) else probes
    out = pd.DataFrame({"label": p.get("label", []), "rate": p.get("rate", []),
                        "per_user": p.get("output_tokens_per_s_per_user", []),
                        "per_gpu": p.get("output_tokens_per_s_per_gpu", [])})
    out["on_frontier"] = pareto_mask(out["per_user"], out["per_gpu"]) if len(out) else []
    return out.reset_index(drop=True)


def cost_frontier(probes: pd.DataFrame, target_rps: float, latency_key: str) -> pd.DataFrame:
    """Passing probes as deployments for the target: ``replicas``, ``usd_per_hour``, ``latency_ms``."""
    p = probes[probes["passed"]] if len(probes) else probes
    rate = p.get("rate", pd.Series(dtype=float)).to_numpy(dtype=float)
    replicas = np.ceil(target_rps / rate * (1 - 1e-12)) if len(p) else np.array([])
    usd = replicas * p["gpus_per_replica"].to_numpy() * p["usd_per_hour_per_gpu"].to_numpy() if len(p) else []
    out = pd.DataFrame({"label": p.get("label", []), "rate": rate, "replicas": replicas, "usd_per_hour": usd,
                        "latency_ms": p.get(latency_key, [])})
    out["on_frontier"] = pareto_mask(-out["usd_per_hour"], -out["latency_ms"]) if len(out) else []
    return out.reset_index(drop=True)


def _figure(df: pd.DataFrame, x: str, y: str, title: str, xlabel: str, ylabel: str, log_x: bool = False):
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    palette = qualitative.Dark24 + qualitative.Light24  # one colour per configuration, up to 48
    fig = go.Figure()
    for i, (label, g) in enumerate(df.groupby("label", sort=False)):
        marker = {"size": 7, "opacity": 0.7, "color": palette[i % len(palette)]}
        fig.add_trace(go.Scatter(x=g[x], y=g[y], mode="markers", name=str(label), marker=marker,
                                 customdata=g[["rate"]], hovertemplate=f"{label}<br>{xlabel} %{{x:.4g}}<br>{ylabel} "
                                 "%{y:.4g}<br>rate %{customdata[0]:.4g} req/s<extra></extra>"))
    front = df[df["on_frontier"]].sort_values(x)
    fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines+markers", name="Pareto frontier",
                             line={"color": "black", "width": 2}, marker={"size": 10, "symbol": "diamond-open"},
                             text=front["label"], hovertemplate="%{text}<extra>frontier</extra>"))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, template="plotly_white",
                      height=560, legend={"font": {"size": 10}})
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def plan_html(result: PlanResult) -> str:
    """The page: the question, the cheapest configurations, and both frontiers (plotly.js inlined)."""
    latency_key = next((k for k in result.limits.limits_ms if "ttft" in k or "e2el" in k),
                       next(iter(result.limits.limits_ms)))
    tf = throughput_frontier(result.probes)
    cf = cost_frontier(result.probes, result.target_rps, latency_key)
    f1 = _figure(tf, "per_user", "per_gpu", "Throughput vs interactivity (probes meeting the SLOs)",
                 "output tokens/s per user (1 / mean TPOT)", "output tokens/s per GPU")
    f2 = _figure(cf, "usd_per_hour", "latency_ms", f"Cost to serve {result.target_rps:g} req/s vs latency",
                 "$/hour (replicas x GPUs x price; log scale)", latency_key, log_x=True)
    cols = [c for c in ("label", "pd", "ep", "replicas", "gpus_total", "usd_per_hour", "capacity_rps", "headroom",
                        "verified", *(f"margin_{k}" for k in result.limits.limits_ms),
                        *(f"{k}_at_capacity" for k in POOL_COLUMNS), "profile_id") if c in result.configs]
    table = result.cheapest(10)[cols].to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)
    rejected = result.rejected()[["label", "reject_kind", "reason"]].to_html(index=False, border=0)
    title = f"servesim plan: {result.target_rps:g} req/s under {result.limits.label()}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{padding:2px 8px;text-align:right}</style></head><body>"
            f"<h2>{html.escape(title)}</h2><h3>Cheapest configurations</h3>{table}"
            f"{f1.to_html(full_html=False, include_plotlyjs=True)}"
            f"{f2.to_html(full_html=False, include_plotlyjs=False)}"
            f"<h3>Rejected configurations</h3>{rejected}</body></html>\n")
