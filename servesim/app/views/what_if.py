"""What-if: one deployment serving one workload. Every knob in the sidebar; the run's metrics (with the change
from the previous run), latency CDFs and over time, timelines, step time by operator, memory and cost."""

import math

import streamlit as st

from servesim.app import analysis, cache, figures, knobs
from servesim.errors import InputError
from servesim.sim.config import make_scenario

KEY = "whatif"
VIEWS = ("Latency", "Timelines", "Step time", "Memory & cost", "Downloads")

st.header("What-if")
k = knobs.Knobs()
st.sidebar.subheader("Deployment")
knobs.deployment(k, KEY)
st.sidebar.subheader("Scheduler")
knobs.scheduler(k, KEY)
st.sidebar.subheader("Speculative decoding")
knobs.speculative(k, KEY)
st.sidebar.subheader("Workload")
knobs.workload(k, KEY)
st.sidebar.subheader("SLOs")
knobs.slos(k, KEY)
k.fields["seed"] = st.sidebar.number_input("Seed", 0, 2**31 - 1, 0, key=f"{KEY}.seed")

for problem in k.errors:
    st.error(problem)
if k.errors:
    st.stop()
try:
    scenario = make_scenario(k.fields)
    dep = cache.deployment(scenario)
    result = cache.run(scenario)
except InputError as exc:
    st.error(f"This configuration cannot run: {exc}")
    st.stop()

s, meta = result.summary, result.meta
w = meta["workload"]
profile = meta["profile_id"]
roofline_note = " (datasheet peaks × fitted efficiencies)" if profile == "roofline" else " (calibrated)"
st.caption(
    f"{dep.model.name} on {dep.gpus_total}× {dep.gpu.name} (TP {scenario.tp}, {scenario.replicas} "
    f"{'replica' if scenario.replicas == 1 else 'replicas'}, weights {scenario.quant}, KV {scenario.kv_dtype}) · "
    f"{scenario.batching} batching, {scenario.policy} · workload {w['name']}: {w['requests']:,} requests · "
    f"cost model **{profile}**{roofline_note}"
    f" · config `{meta['config_hash']}` · simulated in {meta['wall_time_s']:.2f} s"
)
for note in w["notes"]:
    st.info(note)
for warning in meta.get("warnings", ()):
    st.warning(warning)
if meta.get("cost_extrapolated"):
    st.warning(f"The profile does not cover every step of this run; priced outside its grid: "
               f"{', '.join(meta['cost_extrapolated'])}.")
if s.get("saturated"):
    st.warning(f"Saturated: over the second half of the arrivals it served {s['served_rate']:.2f} of the "
               f"{s['offered_rate']:.2f} req/s offered while the queue grew ({s['waiting_at_half_arrivals']} → "
               f"{s['waiting_at_last_arrival']} waiting); latencies grow with the length of the run.")

# The previous run with a different scenario, for the deltas.
last = st.session_state.get(f"{KEY}.last")
if last and last[0] != meta["config_hash"]:
    st.session_state[f"{KEY}.previous"] = last
st.session_state[f"{KEY}.last"] = (meta["config_hash"], s)
prev = st.session_state.get(f"{KEY}.previous", (None, {}))[1]


def metric(col, label: str, key: str, fmt: str, scale: float = 1.0, better: str | None = "lower") -> None:
    """``st.metric`` of summary ``key``, with the change from the previous run (green when ``better``)."""
    value = s.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        col.metric(label, "–")
        return
    before = prev.get(key)
    delta = None
    if before is not None and not (isinstance(before, float) and math.isnan(before)) and before != value:
        delta = f"{(value - before) * scale:+{fmt}}"
    colour = {"lower": "inverse", "higher": "normal", None: "off"}[better]
    col.metric(label, f"{value * scale:{fmt}}", delta, delta_color=colour)


cols = st.columns(5)
metric(cols[0], "p50 TTFT (ms)", "p50_ttft_ms", ",.1f")
metric(cols[1], "p99 TTFT (ms)", "p99_ttft_ms", ",.1f")
metric(cols[2], "p50 TPOT (ms)", "p50_tpot_ms", ",.2f")
metric(cols[3], "p99 TPOT (ms)", "p99_tpot_ms", ",.2f")
metric(cols[4], "p99 E2E (ms)", "p99_e2el_ms", ",.0f")
cols = st.columns(5)
metric(cols[0], "Output tokens/s", "output_throughput", ",.0f", better="higher")
if "request_goodput" in s:
    metric(cols[1], "SLO attainment (%)", "slo_attainment", ".1f", 100, better="higher")
else:
    cols[1].metric("SLO attainment (%)", "–", help="set an SLO in the sidebar")
metric(cols[2], "$ per M output tokens", "usd_per_million_output_tokens", ",.3f")
metric(cols[3], "Mean batch", "mean_batch_size", ",.1f", better=None)
metric(cols[4], "Max KV used (%)", "max_kv_utilization", ".1f", 100, better=None)
if s["rejected"] or s["total_preemptions"]:
    reasons = result.requests.loc[result.requests.rejected_reason != "", "rejected_reason"]
    main = f"; most common reason: {reasons.mode().iloc[0]}" if len(reasons) else ""
    st.warning(f"{s['rejected']:,} requests rejected, {s['total_preemptions']:,} preemptions{main}")

# One view at a time: a knob change redraws only the figures on screen.
view = st.segmented_control("View", VIEWS, default=VIEWS[0], key=f"{KEY}.view", label_visibility="collapsed")
view = view or VIEWS[0]
if view == "Latency":
    lat = analysis.latencies_ms(result.requests)
    cols = st.columns(3)
    for col, (name, metric_key, limit) in zip(cols, (("TTFT", "ttft_ms", scenario.slo_ttft_ms),
                                                      ("TPOT", "tpot_ms", scenario.slo_tpot_ms),
                                                      ("E2E", "e2el_ms", scenario.slo_e2el_ms))):
        col.plotly_chart(figures.cdf({name: lat[metric_key]}, f"{name} CDF", limit=limit), key=f"cdf.{name}")
    st.plotly_chart(figures.latency_over_time(analysis.latency_over_time(result.requests), scenario.slo_ttft_ms,
                                              scenario.slo_e2el_ms), key="over_time")
elif view == "Timelines":
    st.plotly_chart(figures.timelines(analysis.binned_timeline(result.timeline)), key="timelines")
elif view == "Step time":
    rows = analysis.step_breakdown(dep, result)
    st.plotly_chart(figures.step_breakdown(rows), key="steps")
    st.caption(f"Cost model {profile}: each operator's time at three step shapes taken from this run; "
               "hover for whether it is compute-, memory- or link-bound (or measured, under a calibrated profile).")
elif view == "Memory & cost":
    mem = analysis.memory_rows(dep.memory)
    st.plotly_chart(figures.memory(mem, dep.gpu.memory_bytes / 1e9), key="memory")
    st.caption(f"KV cache: {dep.num_blocks:,} blocks of {scenario.block_size} tokens per replica "
               f"({dep.memory.kv_capacity_tokens:,} tokens).")
    c = analysis.cost_summary(s, meta)
    cols = st.columns(4)
    cols[0].metric("$ per hour", f"{c['usd_per_hour']:,.2f}", help=f"{dep.gpus_total} GPUs × "
                   f"${meta['usd_per_hour_per_gpu']:.2f}/h (catalog default; set usd_per_gpu_hour in a scenario)")
    cols[1].metric("$ per M output tokens", f"{c['usd_per_million_output_tokens']:,.3f}")
    cols[2].metric("$ per M tokens (in + out)", f"{c['usd_per_million_tokens']:,.3f}")
    cols[3].metric("Run cost ($)", f"{c['cost_usd']:,.4f}", help=f"over {s['duration']:,.1f} s")
else:
    scenario_text = analysis.scenario_yaml(scenario, {str(p): n for n, p in k.files.items()})
    st.download_button("Scenario (YAML)", scenario_text, "scenario.yaml", "application/yaml", key="dl.yaml",
                       on_click="ignore")
    if k.files:
        st.download_button("Scenario with its files (zip)", lambda: analysis.scenario_bundle(scenario, k.files),
                           "scenario.zip", "application/zip", key="dl.bundle", on_click="ignore")
        st.caption("The YAML names its files as the zip holds them: unzip, then run "
                   "`servesim simulate --config scenario.yaml` in that folder.")
    else:
        st.caption("Run it again with `servesim simulate --config scenario.yaml`.")
    st.download_button("Results (zip: requests and timeline Parquet, requests CSV, summary.json)",
                       lambda: analysis.results_zip(result), "servesim-results.zip", "application/zip",
                       key="dl.results", on_click="ignore")
    st.download_button("Requests (CSV)", lambda: result.requests.to_csv(index=False), "requests.csv", "text/csv",
                       key="dl.csv", on_click="ignore")
    with st.expander("scenario.yaml"):
        st.code(scenario_text, language="yaml")
    st.dataframe(result.requests.head(1000), height=300)
