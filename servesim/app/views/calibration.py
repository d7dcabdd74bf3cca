"""Calibration: a profile's measured operator times against the roofline (a shipped profile or an uploaded one,
as ``servesim calibrate report`` compares them), and the roofline's per-operator step time for any placement."""

import pandas as pd
import streamlit as st

from servesim.app import analysis, cache, figures, inputs, knobs
from servesim.errors import InputError
from servesim.hwmodels.profile import AXES, shipped_profiles
from servesim.sim.config import make_scenario

KEY = "calib"

st.header("Calibration")
sb = st.sidebar
sb.subheader("Profile")
shipped = shipped_profiles()  # GPU -> file
choices = [f"{gpu} (shipped)" for gpu in shipped] + ["upload"]
source = sb.radio("Profile", choices, key=f"{KEY}.source", label_visibility="collapsed")
profile = None
if source == "upload":
    up = sb.file_uploader("Profile JSON (servesim calibrate --out FILE)", type=["json"], key=f"{KEY}.upload")
    if up is not None:
        try:
            _, profile = inputs.profile_upload(up.name, up.getvalue())
        except InputError as exc:
            st.error(f"Profile not usable: {exc}")
else:
    profile = cache.profile(str(shipped[source.removesuffix(" (shipped)")]))

if profile is None:
    if not shipped:
        st.info("No calibration profile ships with this installation yet (servesim/hwmodels/profiles/ holds none): "
                "`servesim calibrate --out FILE` on a CUDA machine measures one. Upload it in the sidebar to see its "
                "kernel times against the roofline; until one ships, simulations of catalog GPUs use the roofline "
                "below.")
else:
    prov = profile.provenance
    st.subheader(f"Profile {profile.profile_id}: measured vs roofline")
    st.caption(f"{prov.gpu_name} ({prov.memory_bytes / 2**30:.0f} GiB, driver {prov.driver}, CUDA {prov.cuda}), "
               f"torch {prov.torch}, Triton {prov.triton}, {prov.date}, commit {prov.git_commit}; timing condition "
               f"{prov.condition}; `{prov.command}`")
    rows = analysis.profile_rows(profile)
    by_op = rows.groupby("op", sort=False)["roofline_error"]
    summary = pd.DataFrame({"points": by_op.size(), "roofline median error": by_op.median(),
                            "roofline p90 |error|": by_op.apply(lambda e: e.abs().quantile(0.9))})
    st.dataframe(summary.style.format({"roofline median error": "{:+.1%}", "roofline p90 |error|": "{:.1%}"}))
    st.caption("Error = roofline / measured − 1: negative where the roofline is too fast.")
    keys = list(dict.fromkeys(rows["key"]))
    chosen = st.selectbox("Operator table", keys, key=f"{KEY}.table")
    part = rows[rows["key"] == chosen]
    st.plotly_chart(figures.measured_vs_roofline(part, AXES[part["op"].iloc[0]]), key="measured")
    if profile.fit.ops:
        fit = pd.DataFrame(profile.fit.ops).T.rename(columns={"median_abs": "median |error|", "p90_abs": "p90 |error|"})
        st.caption("Fit quality on held-out grid points (the calibrated model's interpolation):")
        st.dataframe(fit.style.format({"median |error|": "{:.1%}", "p90 |error|": "{:.1%}", "points": "{:.0f}"}))

st.subheader("Roofline of a placement")
k = knobs.Knobs()
sb.subheader("Placement")
knobs.deployment(k, KEY, replicas=False, cost=False)
kind = sb.radio("Step kind", ("decode", "prefill"), horizontal=True, key=f"{KEY}.kind")
ctx = sb.number_input("Context per sequence (tokens)", 1, 1 << 20, 2048, key=f"{KEY}.ctx", disabled=kind == "prefill")
for problem in k.errors:
    st.error(problem)
if k.errors:
    st.stop()
try:
    dep = cache.deployment(make_scenario(k.fields))
except InputError as exc:
    st.error(f"This placement cannot run: {exc}")
    st.stop()

sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] if kind == "decode" else [16, 64, 256, 512, 1024, 2048, 4096, 8192]
rows = analysis.roofline_sweep(dep.cost, kind, sizes, int(ctx))
st.caption(f"{dep.model.name} on {dep.gpu.name}, TP {dep.tp}, weights {dep.cost.weight_format}, KV "
           f"{dep.cost.kv_dtype}: each operator takes max(FLOPs / (peak × efficiency), bytes / (bandwidth × "
           "efficiency)) from the GPU's datasheet peaks; hover for which bound applies.")
x_title = f"decode batch (sequences at {int(ctx):,} tokens)" if kind == "decode" else "prefill tokens"
st.plotly_chart(figures.operator_sweep(rows, x_title), key="sweep")
table = rows.pivot_table(index="size", columns="operator", values="ms", sort=False)
table["total"] = rows.groupby("size")["total_ms"].first()
st.dataframe(table.style.format("{:.3f}"))
