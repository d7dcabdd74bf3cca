"""A validation report as files: ``report.md`` (the error tables), ``report.json`` (everything, for suites and
the dashboard), ``report.html`` (self-contained plotly: CDF overlays, latency over time, iteration errors)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from servesim.sim.outputs import to_json_value, write_files


@dataclass
class Report:
    title: str
    case: dict  # what was run: scenario, workload, engine/profile ids, time scale
    metrics: list[dict]  # compare.metric_rows
    requests: pd.DataFrame  # compare.per_request
    iterations: pd.DataFrame | None = None  # compare.iteration_table
    bins: pd.DataFrame | None = None  # compare.binned
    summary: dict = field(default_factory=dict)  # compare.summary_errors
    notes: list[str] = field(default_factory=list)
    modes: pd.DataFrame | None = None  # compare.by_mode: graph / eager / piecewise steps
    # priced at the run's measured host speed (case.host_speed): the errors at the scenario's own host speed,
    # {host_speed, metrics, summary, iteration_modes} (run.unnormalised); None: not normalised, or no change
    unnormalised: dict | None = None

    def to_json(self) -> dict:
        doc = {"title": self.title, "case": self.case, "summary": self.summary, "metrics": self.metrics,
               "notes": self.notes}
        if self.bins is not None:
            doc["iteration_bins"] = self.bins.to_dict(orient="records")
        if self.modes is not None:
            doc["iteration_modes"] = self.modes.to_dict(orient="records")
        if self.unnormalised is not None:
            doc["unnormalised"] = self.unnormalised
        return to_json_value(doc)


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:+.1%}"


def _num(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:,.2f}"


def _table(title: str, header: tuple[str, ...], rule: str, rows) -> list[str]:
    """A markdown section: ``## title``, the header row, its alignment ``rule``, one line per row of cells."""
    return ["", f"## {title}", "", "| " + " | ".join(header) + " |", rule] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def markdown(r: Report) -> str:
    from servesim.validate.hostspeed import describe

    lines = [f"# {r.title}", ""]
    for k, v in r.case.items():
        if not isinstance(v, dict):
            lines.append(f"- {k}: {v}")
    if isinstance(r.case.get("host_speed"), dict):
        lines.append(f"- {describe(r.case['host_speed'])}")
    raw = r.unnormalised
    raw_by = {m["key"]: m for m in raw["metrics"]} if raw else {}
    head = f" predicted at host speed {raw['host_speed']:g} | its error |" if raw else ""
    lines += ["", "## Latency and throughput: predicted vs measured", "",
              "| metric | stat | predicted | measured | error |" + head, "|---|---|---:|---:|---:|" + (
                  "---:|---:|" if raw else "")]
    for m in r.metrics:
        tail = ""
        if raw:
            u = raw_by.get(m["key"], {})
            tail = f" {_num(u.get('predicted'))} | {_pct(u.get('error'))} |"
        lines.append(f"| {m['metric']} | {m['stat']} | {_num(m['predicted'])} | {_num(m['measured'])} | "
                     f"{_pct(m['error'])} |" + tail)
    if r.summary:
        lines += ["", "## Summary", ""] + [f"- {k}: {v:.2%}" if isinstance(v, float) and "error" in k else
                                           f"- {k}: {v}" for k, v in r.summary.items()]
    if raw:
        lines += ["", f"At host speed {raw['host_speed']:g} (unnormalised): " + ", ".join(
            f"{k} {v:.2%}" for k, v in raw["summary"].items() if isinstance(v, float) and "error" in k)]
    if r.modes is not None and len(r.modes):
        lines += _table("Iterations by step mode (how the engine ran them)",
                        ("mode", "iterations", "median error", "p90 abs error", "share of engine time",
                         "priced as another mode"), "|---|---:|---:|---:|---:|---:|",
                        ((m.mode, m.iterations, f"{m.median_error:+.1%}", f"{m.p90_abs_error:.1%}",
                          f"{m.time_share:.0%}", m.priced_otherwise) for m in r.modes.itertuples()))
    if r.bins is not None and len(r.bins):
        lines += _table("Iterations by batch composition (predicted / measured step time - 1)",
                        ("prefill tokens", "decode seqs", "mean context", "iterations", "median error",
                         "p90 abs error", "mean step ms", "overhead share", "largest predicted terms"),
                        "|---|---|---|---:|---:|---:|---:|---:|---|",
                        ((b.prefill_tokens, b.decode_seqs, b.mean_context, b.iterations, f"{b.median_error:+.1%}",
                          f"{b.p90_abs_error:.1%}", f"{b.mean_step_ms:.2f}", f"{b.overhead_share:.0%}", b.top_ops)
                         for b in r.bins.itertuples()))
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def html(r: Report) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = ["TTFT CDF", "TPOT CDF", "E2E CDF", "TTFT over time", "E2E over time", "iteration step time"]
    fig = make_subplots(rows=2, cols=3, subplot_titles=titles)
    req = r.requests
    colors = {"pred": "#1f77b4", "meas": "#d62728"}
    names = {"pred": "predicted", "meas": "measured"}
    for c, metric in enumerate(("ttft_s", "tpot_s", "e2el_s"), start=1):
        for side in ("pred", "meas"):
            v = np.sort(req[f"{metric}_{side}"].dropna().to_numpy() * 1e3)
            fig.add_trace(go.Scatter(x=v, y=np.arange(1, len(v) + 1) / max(len(v), 1), mode="lines",
                                     name=names[side], legendgroup=side, showlegend=c == 1,
                                     line=dict(color=colors[side])), row=1, col=c)
        fig.update_xaxes(title_text="ms", type="log", row=1, col=c)
    for c, metric in enumerate(("ttft_s", "e2el_s"), start=1):
        for side in ("pred", "meas"):
            fig.add_trace(go.Scatter(x=req[f"arrival_s_{side}"], y=req[f"{metric}_{side}"] * 1e3, mode="markers",
                                     marker=dict(size=4, color=colors[side]), name=names[side], legendgroup=side,
                                     showlegend=False), row=2, col=c)
        fig.update_xaxes(title_text="arrival (s)", row=2, col=c)
        fig.update_yaxes(title_text="ms", row=2, col=c)
    if r.iterations is not None and len(r.iterations):
        it = r.iterations
        modes = it["mode"].to_numpy() if "mode" in it else np.where(it.graph, "graph", "eager")
        color = np.select([modes == "graph", modes == "piecewise"], ["#2ca02c", "#9467bd"], "#ff7f0e")
        fig.add_trace(go.Scatter(x=it.step_s * 1e3, y=it.predicted_s * 1e3, mode="markers",
                                 marker=dict(size=4, color=color),
                                 text=[f"{m}: prefill {p}, decode {d}"
                                       for m, p, d in zip(modes, it.prefill_tokens, it.decode_seqs)],
                                 name="iterations (green: graph, orange: eager, purple: piecewise)"), row=2, col=3)
        hi = float(max(it.step_s.max(), it.predicted_s.max()) * 1e3)
        fig.add_trace(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", line=dict(dash="dot", color="gray"),
                                 name="predicted = measured"), row=2, col=3)
        fig.update_xaxes(title_text="measured ms", row=2, col=3)
        fig.update_yaxes(title_text="predicted ms", row=2, col=3)
    fig.update_layout(height=800, width=1400, title=r.title)
    return fig.to_html(include_plotlyjs=True, full_html=True)


def write_report(r: Report, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write the report's files (and ``extra`` name -> writer ones, e.g. both runs' folders), all or none. The
    HTML page needs plotly; where it is missing (a bare GPU machine) the page is left out and can be drawn later
    from the other files (:func:`load_report`, ``servesim validate --rerender DIR``)."""
    return write_files(out_dir, report_writers(r, extra))


def report_writers(r: Report, extra: dict | None = None) -> dict:
    """The report's files as name -> writer of that path (see :func:`write_report`)."""
    writers = {"report.md": lambda p: p.write_text(markdown(r), encoding="utf-8"),
               "report.json": lambda p: p.write_text(json.dumps(r.to_json(), indent=1), encoding="utf-8"),
               "requests.parquet": lambda p: r.requests.to_parquet(p, index=False)}
    try:
        import plotly  # noqa: F401

        writers["report.html"] = lambda p: p.write_text(html(r), encoding="utf-8")
    except ImportError:
        pass
    if r.iterations is not None:
        writers["iterations.parquet"] = lambda p: r.iterations.to_parquet(p, index=False)
    writers.update(extra or {})
    return writers


def load_report(case_dir: str | Path) -> Report:
    """A report back from its files (for redrawing its page, or a suite table)."""
    d = Path(case_dir)
    doc = json.loads((d / "report.json").read_text())
    it = d / "iterations.parquet"
    bins = pd.DataFrame(doc["iteration_bins"]) if doc.get("iteration_bins") else None
    modes = pd.DataFrame(doc["iteration_modes"]) if doc.get("iteration_modes") else None
    return Report(title=doc["title"], case=doc["case"], metrics=doc["metrics"],
                  requests=pd.read_parquet(d / "requests.parquet"),
                  iterations=pd.read_parquet(it) if it.exists() else None, bins=bins, summary=doc["summary"],
                  notes=doc.get("notes", []), modes=modes, unnormalised=doc.get("unnormalised"))


def rerender(case_dir: str | Path) -> Path:
    """Redraw ``report.md`` and ``report.html`` of a case directory from its data files."""
    d = Path(case_dir)
    r = load_report(d)
    write_files(d, {"report.md": lambda p: p.write_text(markdown(r), encoding="utf-8"),
                    "report.html": lambda p: p.write_text(html(r), encoding="utf-8")})
    return d
