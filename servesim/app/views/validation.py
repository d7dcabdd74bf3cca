"""Validation: predicted vs measured from committed validation reports (``validation/results/<case>/``) or
uploaded ones — the error table, the errors by statistic, CDF overlays and the iteration-level view."""

import pandas as pd
import streamlit as st

from servesim.app import figures, reports
from servesim.errors import InputError
from servesim.validate.suite import BOUNDS, COLUMNS

KEY = "validation"

st.header("Validation")
committed = {name: reports.load_report(d) for name, d in reports.committed_reports().items()}
sb = st.sidebar
sb.subheader("Report")
choices = [*committed, "upload"]
choice = sb.radio("Report", choices, key=f"{KEY}.choice", label_visibility="collapsed")
report = committed.get(choice)
if choice == "upload":
    ups = sb.file_uploader("report.json, and requests.parquet / iterations.parquet if you have them",
                           type=["json", "parquet"], accept_multiple_files=True, key=f"{KEY}.upload")
    if ups:
        try:
            report = reports.parse_report("uploaded", {u.name: u.getvalue() for u in ups})
        except InputError as exc:
            st.error(f"Report not usable: {exc}")

if not committed:
    st.info("No validation report is committed yet: `servesim validate --suite validation/suite.yaml --out-dir "
            "validation/results` (on a CUDA machine) replays each case on the engine, simulates the same workload "
            "and writes its report there; `servesim validate SCENARIO` or `servesim validate --from-files` "
            "writes one report. Upload one in the sidebar to see it here.")
else:
    st.subheader("Suite")
    rows = reports.suite_rows(committed)
    shown = rows[["case", *(k for _, k in COLUMNS if k in rows), "within_bounds"]].rename(
        columns={k: label for label, k in COLUMNS})
    st.dataframe(shown.style.format({label: "{:+.1%}" for label, _ in COLUMNS if label in shown}), hide_index=True)
    st.caption("Signed error = predicted / measured − 1. Bounds: " +
               ", ".join(f"{k.replace('_', ' ')} ≤ {v:.0%}" for k, v in BOUNDS.items()) + ".")

if report is None:
    st.stop()
doc = report.doc
st.subheader(doc.get("title", report.name))
case = doc.get("case", {})
st.caption(" · ".join(f"{k}: {v}" for k, v in case.items() if not isinstance(v, dict)))
metrics = pd.DataFrame(doc["metrics"])
st.plotly_chart(figures.validation_errors(metrics), key="errors")
st.dataframe(metrics[["metric", "stat", "predicted", "measured", "error"]].style.format(
    {"predicted": "{:,.2f}", "measured": "{:,.2f}", "error": "{:+.2%}"}, na_rep="–"), hide_index=True)
if report.requests is not None:
    req = report.requests
    cols = st.columns(3)
    for col, (name, m) in zip(cols, (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("E2E", "e2el_s"))):
        col.plotly_chart(figures.cdf({"predicted": req[f"{m}_pred"] * 1e3, "measured": req[f"{m}_meas"] * 1e3},
                                     f"{name} CDF, predicted and measured"), key=f"cdf.{name}")
if report.iterations is not None:
    st.plotly_chart(figures.predicted_vs_measured(report.iterations), key="iterations")
bins = doc.get("iteration_bins")
if bins:
    st.caption("Iterations by batch composition (error = predicted / measured step time − 1):")
    st.dataframe(pd.DataFrame(bins), hide_index=True)
for note in doc.get("notes", ()):
    st.info(note)
