"""Capacity: given SLOs and a target rate, the cheapest configurations (``servesim.plan``: a search over rate
for each GPU × weight format × TP, then replicas and $/hour) and the Pareto frontiers of its probes."""

import json
import os
import tempfile
from pathlib import Path

import streamlit as st

from servesim.app import analysis, figures, inputs, knobs
from servesim.errors import InputError
from servesim.hwmodels.gpus import GPUS
from servesim.plan import DEFAULT_GPUS, plan
from servesim.plan.pareto import cost_frontier, throughput_frontier

KEY = "capacity"
SHOWN = ("label", "pd", "ep", "replicas", "gpus_total", "usd_per_hour", "usd_per_million_output_tokens", "capacity_rps",
         "headroom", "limited_by", "verified", "prefill_busy_fraction_at_capacity", "decode_busy_fraction_at_capacity",
         "p99_kv_transfer_ms_at_capacity", "profile_id")

st.header("Capacity")
sb = st.sidebar
k = knobs.Knobs()
sb.subheader("Question")
knobs.model(k, KEY)
target = sb.number_input("Target rate (req/s)", 0.01, 1e6, 20.0, key=f"{KEY}.target")
cols = sb.columns(3)
slo = {"ttft_p99_ms": cols[0].number_input("p99 TTFT ms", 0.1, 1e7, 1000.0, key=f"{KEY}.ttft", placeholder="none"),
       "tpot_p99_ms": cols[1].number_input("p99 TPOT ms", 0.1, 1e7, 50.0, key=f"{KEY}.tpot", placeholder="none"),
       "e2el_p99_ms": cols[2].number_input("p99 E2E ms", 0.1, 1e8, None, key=f"{KEY}.e2el", placeholder="none")}
budget = sb.number_input("Budget ($/hour)", 0.01, 1e7, None, key=f"{KEY}.budget", placeholder="none")
sb.subheader("Candidates")
gpus = sb.multiselect("GPUs", list(GPUS), list(DEFAULT_GPUS), key=f"{KEY}.gpus")
quants = sb.multiselect("Weight formats", knobs.WEIGHT_FORMATS, ["bf16", "w4a16"], key=f"{KEY}.quants")
tps = sb.multiselect("TP", knobs.TP_CHOICES, [1, 2], key=f"{KEY}.tps")
cols = sb.columns(2)
pd_ratios = cols[0].text_input("P:D units", "off", key=f"{KEY}.pd",
                               help="prefill/decode units beside colocated replicas: ratios (2:1,1:3), auto, or off")
eps = cols[1].text_input("EP (MoE)", "1", key=f"{KEY}.ep", help="expert-parallel degrees (1,2,4) or auto")
kv_link = sb.selectbox("KV link (P:D)", ("ib", "nvlink", "roce", "pcie"), key=f"{KEY}.kv_link")
sb.subheader("Workload")
knobs.workload(k, KEY, window_s=None, num_requests=400, arrivals=False)
sb.subheader("Search")
cols = sb.columns(2)
verify = cols[0].number_input("Verify cheapest", 0, 20, 2, key=f"{KEY}.verify",
                              help="simulate this many of the cheapest as whole deployments at the target rate")
jobs = cols[1].number_input("Processes", 1, 256, os.cpu_count() or 1, key=f"{KEY}.jobs")

for problem in k.errors:
    st.error(problem)
if k.errors:
    st.stop()
if not (gpus and quants and tps):
    st.info("Pick at least one GPU, weight format and TP degree.")
    st.stop()

limits = {name: v for name, v in slo.items() if v is not None}
base = {f: v for f, v in k.fields.items() if f not in ("model", "trace") and v is not None}
question = dict(model=k.fields["model"], rate=target, slo=limits, workload=k.fields["trace"], gpus=gpus,
                quants=quants, tps=tps, base=base, budget_usd_per_hour=budget, verify=int(verify))
if pd_ratios.strip().lower() not in ("", "off"):
    question.update(pd=pd_ratios, kv_links=[kv_link])
if eps.strip() not in ("", "1"):
    question["eps"] = "auto" if eps.strip().lower() == "auto" else [int(e) if e.strip().isdigit() else e.strip()
                                                                    for e in eps.split(",") if e.strip()]
qkey = json.dumps(question, sort_keys=True, default=str)
n = len(gpus) * len(quants) * len(tps)
st.caption(f"{n} candidate configurations of {Path(k.fields['model']).name} for {target:g} req/s of "
           f"{Path(k.fields['trace']).name}; each probe simulates {k.fields.get('num_requests', 'all'):,} requests. "
           "More requests per probe come closer to steady state and take longer; probes are cached on disk, so a "
           "repeated or widened search reuses what it ran.")
if st.button("Find the cheapest configurations", type="primary", key=f"{KEY}.go"):
    bar = st.progress(0.0, text="searching")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{done:,} of about {total:,} probes")

    try:
        result = plan(**question, jobs=int(jobs), cache_dir=inputs.store_dir() / "plan-cache", on_progress=progress)
    except InputError as exc:
        st.error(f"The planner cannot search this: {exc}")
        st.stop()
    finally:
        bar.empty()
    st.session_state[f"{KEY}.result"] = (qkey, result)

found = st.session_state.get(f"{KEY}.result")
if found is None or found[0] != qkey:
    if found is not None:
        st.info("The question changed since the last search: press the button to search again.")
    st.stop()
result = found[1]
best = result.cheapest(10)
profiles = sorted({str(p) for p in result.configs["profile_id"].dropna()}) if "profile_id" in result.configs else []
st.caption(f"{len(result.probes):,} probes in {result.wall_s:.1f} s on {result.workers} worker(s) · cost model: "
           f"{', '.join(profiles) or '–'}")
if best.empty:
    st.warning("No configuration serves the target under these SLOs; the rejected ones say why.")
else:
    top = best.iloc[0]
    st.subheader(f"Cheapest: {top['label']}")
    cols = st.columns(4)
    cols[0].metric("$ per hour", f"{top['usd_per_hour']:,.2f}")
    cols[1].metric("Replicas × GPUs", f"{int(top['replicas'])} × {int(top['gpus_per_replica'])}")
    cols[2].metric("Capacity per replica (req/s)", f"{top['capacity_rps']:,.2f}")
    cols[3].metric("$ per M output tokens", f"{top['usd_per_million_output_tokens']:,.3f}")
    st.dataframe(best[[c for c in SHOWN if c in best]], hide_index=True)

latency_key = next((key for key in result.limits.limits_ms if "ttft" in key or "e2el" in key),
                   next(iter(result.limits.limits_ms)))
cols = st.columns(2)
cols[0].plotly_chart(figures.pareto(throughput_frontier(result.probes), "per_user", "per_gpu",
                                    "Throughput vs interactivity", "output tokens/s per user (1 / mean TPOT)",
                                    "output tokens/s per GPU"), key="pareto.throughput")
cols[1].plotly_chart(figures.pareto(cost_frontier(result.probes, result.target_rps, latency_key), "usd_per_hour",
                                    "latency_ms", f"Cost to serve {result.target_rps:g} req/s vs latency",
                                    "$/hour (replicas × GPUs × price)", latency_key), key="pareto.cost")
st.caption("Points: probes that met the SLOs (a configuration at one rate per replica); the line: those no other "
           "probe beats on both axes.")
rejected = result.rejected()
if len(rejected):
    st.subheader("Rejected")
    st.dataframe(rejected[["label", "reject_kind", "reason"]], hide_index=True)


def _bundle() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = result.write(Path(tmp) / "plan")
        return analysis.zip_dir(out)


st.download_button("Plan (zip: configs, probes, verifications as CSV/Parquet, pareto.html, plan.json)", _bundle,
                   "servesim-plan.zip", "application/zip", key=f"{KEY}.download", on_click="ignore")
