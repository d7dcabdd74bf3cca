"""Plotly figures of the dashboard, built by plain functions from the tables in :mod:`servesim.app.analysis`.

Every function returns a ``plotly.graph_objects.Figure`` whose traces carry the plotted numbers, so a
test reads ``fig.data`` and a page calls ``st.plotly_chart(fig)``. Times are in ms on latency axes and in
seconds on time axes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))
DASH = {"p50": "dot", "p99": "solid"}


def _limit_line(fig: go.Figure, limit: float | None, label: str, axis: str = "y", **where) -> None:
    if limit:
        if axis == "y":
            fig.add_hline(y=limit, line_dash="dash", line_color="crimson", annotation_text=label, **where)
        else:
            fig.add_vline(x=limit, line_dash="dash", line_color="crimson", annotation_text=label, **where)


def cdf(series: Mapping[str, Sequence[float] | np.ndarray], title: str, unit: str = "ms",
        limit: float | None = None) -> go.Figure:
    """Empirical CDFs, one line per series (NaNs dropped), with an optional SLO limit as a vertical line."""
    fig = go.Figure()
    for name, values in series.items():
        v = np.sort(np.asarray(values, dtype=np.float64))
        v = v[~np.isnan(v)]
        y = np.arange(1, len(v) + 1) / max(len(v), 1)
        fig.add_trace(go.Scatter(x=v, y=y, mode="lines", name=name, line_shape="hv"))
    _limit_line(fig, limit, f"SLO {limit:g} {unit}" if limit else "", axis="x")
    fig.update_layout(title=title, xaxis_title=unit, yaxis_title="fraction of requests", yaxis_range=[0, 1.02],
                      **LAYOUT)
    return fig


def latency_over_time(binned: pd.DataFrame, slo_ttft_ms: float | None = None,
                      slo_e2el_ms: float | None = None) -> go.Figure:
    """p50/p99 TTFT and E2E by arrival time (``analysis.latency_over_time``), one panel each."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=("TTFT", "E2E"))
    for row, metric, limit in ((1, "ttft", slo_ttft_ms), (2, "e2el", slo_e2el_ms)):
        for stat in ("p50", "p99"):
            fig.add_trace(go.Scatter(x=binned["t_s"], y=binned[f"{stat}_{metric}_ms"], mode="lines+markers",
                                     name=f"{stat} {metric.upper().replace('E2EL', 'E2E')}",
                                     line_dash=DASH[stat]), row=row, col=1)
        if limit:
            fig.add_hline(y=limit, line_dash="dash", line_color="crimson", row=row, col=1,
                          annotation_text=f"SLO {limit:g} ms")
        fig.update_yaxes(title_text="ms", row=row, col=1)
    fig.update_xaxes(title_text="arrival time (s)", row=2, col=1)
    fig.update_layout(title="Latency over time", height=520, **LAYOUT)
    return fig


def timelines(binned: pd.DataFrame) -> go.Figure:
    """Batch size, KV-cache use and queue (running / waiting) over time (``analysis.binned_timeline``)."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=("Batch size", "KV cache used", "Queue"))
    t = binned["t_s"]
    fig.add_trace(go.Scatter(x=t, y=binned["batch_size"], name="batch size", mode="lines"), row=1, col=1)
    fig.add_trace(go.Scatter(x=t, y=100 * binned["kv_used_frac"], name="KV used %", mode="lines",
                             fill="tozeroy"), row=2, col=1)
    fig.add_trace(go.Scatter(x=t, y=binned["num_running"], name="running", mode="lines"), row=3, col=1)
    fig.add_trace(go.Scatter(x=t, y=binned["num_waiting"], name="waiting", mode="lines"), row=3, col=1)
    fig.update_yaxes(title_text="requests", row=1, col=1)
    fig.update_yaxes(title_text="%", range=[0, 100], row=2, col=1)
    fig.update_yaxes(title_text="requests", row=3, col=1)
    fig.update_xaxes(title_text="time (s)", row=3, col=1)
    fig.update_layout(title="Timelines (time-weighted means per bin, all replicas)", height=640, **LAYOUT)
    return fig


def step_breakdown(rows: pd.DataFrame) -> go.Figure:
    """Stacked horizontal bars: each representative step's time by operator (``analysis.step_breakdown``)."""
    fig = go.Figure()
    for op, part in rows.groupby("operator", sort=False):
        fig.add_trace(go.Bar(y=part["step"], x=part["ms"], name=op, orientation="h",
                             customdata=part["bound"], hovertemplate="%{y}<br>" + op + ": %{x:.3f} ms "
                             "(%{customdata})<extra></extra>"))
    fig.update_layout(title="Step time by operator", barmode="stack", xaxis_title="ms",
                      height=200 + 60 * rows["step"].nunique(), **{**LAYOUT, "legend": dict(orientation="h", y=-0.4)})
    fig.update_yaxes(autorange="reversed")  # steps top to bottom in the order given
    return fig


def memory(rows: pd.DataFrame, gpu_memory_gb: float) -> go.Figure:
    """One GPU's memory by use as a stacked bar (``analysis.memory_rows``)."""
    fig = go.Figure()
    for part, gb in zip(rows["part"], rows["GB"]):
        fig.add_trace(go.Bar(y=["one GPU"], x=[gb], name=part, orientation="h",
                             hovertemplate=f"{part}: %{{x:.2f}} GB<extra></extra>"))
    fig.update_layout(title=f"Memory per GPU ({gpu_memory_gb:.1f} GB)", barmode="stack", xaxis_title="GB",
                      height=220, **LAYOUT)
    return fig


_METRIC_LABEL = {"ttft": "TTFT", "tpot": "TPOT", "e2el": "E2E"}


def metric_vs_rate(table: pd.DataFrame, metric: str, limit_ms: float | None = None) -> go.Figure:
    """p50 (dotted) and p99 (solid) of ``metric`` (ttft, tpot, e2el) against offered rate, one colour per
    variant (``analysis.compare_table``), with the SLO limit as a horizontal line."""
    fig = go.Figure()
    colours = qualitative.Plotly
    for i, (variant, part) in enumerate(table.groupby("variant", sort=False)):
        part = part.sort_values("rate")
        for stat in ("p50", "p99"):
            fig.add_trace(go.Scatter(x=part["rate"], y=part[f"{stat}_{metric}_ms"], mode="lines+markers",
                                     name=f"{variant} {stat}", legendgroup=variant,
                                     line=dict(dash=DASH[stat], color=colours[i % len(colours)])))
    label = _METRIC_LABEL[metric]
    if limit_ms and len(table):
        # A trace, not a shape: on a log axis an annotation's y is log10 of the value, so a labelled hline
        # would stretch the axis to 10^limit.
        fig.add_trace(go.Scatter(x=[table["rate"].min(), table["rate"].max()], y=[limit_ms, limit_ms], mode="lines",
                                 name=f"SLO {limit_ms:g} ms", line=dict(dash="dash", color="crimson")))
    fig.update_layout(title=f"{label} vs offered rate", xaxis_title="offered rate (requests/s)",
                      yaxis_title=f"{label} (ms, log)", yaxis_type="log", **LAYOUT)
    return fig


def slowdown(table: pd.DataFrame, stat: str = "p50_slowdown") -> go.Figure:
    """Slowdown (E2E / E2E alone) by request-size bin, grouped bars per variant (``analysis.slowdown_table``)."""
    fig = go.Figure()
    for variant, part in table.groupby("variant", sort=False):
        labels = [f"{lo:,}–{hi:,}" for lo, hi in zip(part["size_min"], part["size_max"])]
        fig.add_trace(go.Bar(x=labels, y=part[stat], name=variant, customdata=part["count"],
                             hovertemplate="%{x} tokens: %{y:.2f}× (%{customdata} requests)<extra></extra>"))
    fig.update_layout(title=f"Slowdown by request size ({stat.split('_')[0]})", barmode="group",
                      xaxis_title="request size (tokens, quantile bins)", yaxis_title="slowdown (×)", **LAYOUT)
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
    return fig


def operator_sweep(rows: pd.DataFrame, x_title: str) -> go.Figure:
    """Stacked areas of per-operator step time against step size (``analysis.roofline_sweep``), log x."""
    fig = go.Figure()
    for op, part in rows.groupby("operator", sort=False):
        fig.add_trace(go.Scatter(x=part["size"], y=part["ms"], name=op, mode="lines", stackgroup="ops",
                                 customdata=part["bound"],
                                 hovertemplate=op + ": %{y:.3f} ms (%{customdata})<extra></extra>"))
    fig.update_layout(title="Step time by operator (roofline)", xaxis_title=x_title, xaxis_type="log",
                      yaxis_title="ms", **LAYOUT)
    return fig


def pareto(points: pd.DataFrame, x: str, y: str, title: str, x_title: str, y_title: str) -> go.Figure:
    """Probes as points, one colour per configuration (``label``), and the Pareto frontier (``on_frontier``)
    as a line: the tables of ``servesim.plan.pareto.throughput_frontier`` / ``cost_frontier``."""
    fig = go.Figure()
    for label, part in points.groupby("label", sort=False):
        fig.add_trace(go.Scatter(x=part[x], y=part[y], mode="markers", name=str(label), opacity=0.6,
                                 customdata=part["rate"], hovertemplate=f"{label}<br>%{{x:.4g}}, %{{y:.4g}}<br>"
                                 "at %{customdata:.3g} req/s per replica<extra></extra>"))
    front = points[points["on_frontier"].astype(bool)].sort_values(x)
    fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines+markers", name="Pareto frontier", text=front["label"],
                             line=dict(color="black", width=2), marker=dict(symbol="diamond-open", size=10),
                             hovertemplate="%{text}<extra>frontier</extra>"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=480,
                      **{**LAYOUT, "legend": dict(font=dict(size=10))})
    return fig


def measured_vs_roofline(rows: pd.DataFrame, axes: Sequence[str]) -> go.Figure:
    """One profile table (rows of ``analysis.profile_rows`` for one key): the measured median with its p20–p80
    band and the roofline, in µs against the table's last axis; a two-axis table gets a pair of lines per value
    of its first axis. Log–log."""
    fig = go.Figure()
    two = len(axes) > 1
    groups = rows.groupby("x0", sort=True) if two else [(None, rows)]
    for i, (first, part) in enumerate(groups):
        part = part.sort_values("x1" if two else "x0")
        x = part["x1" if two else "x0"]
        label = f"{axes[0]}={first:g} " if two else ""
        colour = qualitative.Plotly[i % len(qualitative.Plotly)]
        fig.add_trace(go.Scatter(
            x=x, y=part["measured_s"] * 1e6, mode="lines+markers", name=f"{label}measured", line=dict(color=colour),
            error_y=dict(type="data", symmetric=False, array=(part["p80_s"] - part["measured_s"]) * 1e6,
                         arrayminus=(part["measured_s"] - part["p20_s"]) * 1e6)))
        fig.add_trace(go.Scatter(x=x, y=part["roofline_s"] * 1e6, mode="lines", name=f"{label}roofline",
                                 line=dict(color=colour, dash="dash")))
    fig.update_layout(title="Measured vs roofline", xaxis_title=axes[-1], yaxis_title="µs", xaxis_type="log",
                      yaxis_type="log", **LAYOUT)
    return fig


def validation_errors(metrics: pd.DataFrame, bound: float | None = 0.03) -> go.Figure:
    """Signed error (predicted / measured − 1, %) of TTFT, TPOT, ITL and E2E at each statistic, grouped bars
    (the latency rows of a validation report's ``metrics``), with ±``bound`` as dashed lines."""
    fig = go.Figure()
    lat = metrics[metrics["stat"] != ""]
    for metric, part in lat.groupby("metric", sort=False):
        label = _METRIC_LABEL.get(metric, metric.upper())
        fig.add_trace(go.Bar(x=part["stat"], y=100 * part["error"].astype(float), name=label,
                             customdata=part[["predicted", "measured"]],
                             hovertemplate=label + " %{x}: %{y:+.2f}% (predicted %{customdata[0]:.2f} ms, "
                             "measured %{customdata[1]:.2f} ms)<extra></extra>"))
    for y in (bound, -bound) if bound else ():
        fig.add_hline(y=100 * y, line_dash="dash", line_color="crimson")
    fig.update_layout(title="Prediction error by latency statistic", barmode="group", yaxis_title="error (%)",
                      xaxis_title="statistic", **LAYOUT)
    return fig


def predicted_vs_measured(iterations: pd.DataFrame) -> go.Figure:
    """Every measured engine iteration against its predicted step time (ms), with the diagonal."""
    fig = go.Figure()
    x, y = iterations["step_s"] * 1e3, iterations["predicted_s"] * 1e3
    fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", name="iterations", marker=dict(size=4, opacity=0.6),
                               customdata=iterations[["prefill_tokens", "decode_seqs"]],
                               hovertemplate="measured %{x:.2f} ms, predicted %{y:.2f} ms<br>prefill %{customdata[0]}"
                               " tokens, %{customdata[1]} decoding<extra></extra>"))
    hi = float(max(x.max(), y.max())) if len(iterations) else 1.0
    fig.add_trace(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", name="predicted = measured",
                             line=dict(dash="dot", color="grey")))
    fig.update_layout(title="Iterations: predicted vs measured step time", xaxis_title="measured (ms)",
                      yaxis_title="predicted (ms)", **LAYOUT)
    return fig
