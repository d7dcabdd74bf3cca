"""Compare: several policies or configurations on the same workload across offered rates — p50/p99 TTFT, TPOT
and E2E against rate with the SLO lines, and slowdown by request size (whom SJF helps, whom it starves)."""

import streamlit as st

from servesim.app import analysis, cache, figures, knobs
from servesim.errors import ConfigError, InputError
from servesim.hwmodels.gpus import GPUS
from servesim.sim.config import make_scenario

KEY = "compare"
MAX_RUNS = 60
VARIANTS = {  # field -> (choices, default selection)
    "policy": (knobs.POLICIES, ["fcfs", "sjf", "srpt"]),
    "gpu": (list(GPUS), ["H100-SXM", "H200", "A100-80GB-SXM"]),
    "quant": (knobs.WEIGHT_FORMATS, ["bf16", "fp8", "w4a16"]),
    "kv_dtype": (knobs.KV_DTYPES, ["bf16", "fp8"]),
    "tp": (knobs.TP_CHOICES, [1, 2]),
    "batching": (knobs.BATCHING, ["continuous", "chunked"]),
    "max_num_seqs": ((8, 16, 32, 64, 128, 256, 512, 1024), [64, 256]),
    "spec_k": ((0, 1, 2, 3, 4, 6, 8), [0, 4]),
}


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.replace(";", ",").split(",") if r.strip()]
    except ValueError:
        raise ConfigError(f"rates must be numbers separated by commas, got {text!r}", field="rates") from None
    if not rates or any(not r > 0 for r in rates):
        raise ConfigError(f"give one or more rates > 0 requests/s, got {text!r}", field="rates")
    return sorted(set(rates))


st.header("Compare")
sb = st.sidebar
sb.subheader("Compare")
by = sb.selectbox("Compare by", list(VARIANTS), key=f"{KEY}.by",
                  help="the field that differs between the runs; it overrides its value below")
choices, default = VARIANTS[by]
values = sb.multiselect("Values", choices, [d for d in default if d in choices], key=f"{KEY}.values.{by}")
rates_text = sb.text_input("Offered rates (req/s)", "10, 20, 30, 40", key=f"{KEY}.rates")
size_by = sb.selectbox("Slowdown by size of", ("total", "input_tokens", "output_tokens"), key=f"{KEY}.size_by")
k = knobs.Knobs()
sb.subheader("Deployment")
knobs.deployment(k, KEY)
sb.subheader("Scheduler")
knobs.scheduler(k, KEY, policy=by != "policy")
sb.subheader("Workload")
knobs.workload(k, KEY, window_s=None, num_requests=400, arrivals=False)
sb.subheader("SLOs")
knobs.slos(k, KEY, ttft_ms=500.0, tpot_ms=50.0)

for problem in k.errors:
    st.error(problem)
if k.errors:
    st.stop()
try:
    rates = parse_rates(rates_text)
except InputError as exc:
    st.error(str(exc))
    st.stop()
if not values:
    st.info(f"Pick at least one value of {by} to compare.")
    st.stop()
if len(values) * len(rates) > MAX_RUNS:
    st.error(f"{len(values)} values × {len(rates)} rates = {len(values) * len(rates)} runs; the page runs at most "
             f"{MAX_RUNS} (use `servesim compare` or a sweep for more).")
    st.stop()

results, failed = {}, {}
bar = st.progress(0.0, text="simulating")
runs = [(v, r) for v in values for r in rates]
for i, (v, rate) in enumerate(runs):
    label = str(v) if by in ("policy", "gpu", "quant", "batching") else f"{by}={v}"
    if label in failed:
        continue
    try:
        scenario = make_scenario({**k.fields, by: v, "rate": rate})
        results[(label, rate)] = cache.run(scenario, label=f"{label} at {rate:g} req/s")
    except InputError as exc:
        failed[label] = str(exc)
    bar.progress((i + 1) / len(runs), text=f"simulated {label} at {rate:g} req/s")
bar.empty()
for label, problem in failed.items():
    st.warning(f"{label} cannot run: {problem}")
if not results:
    st.stop()

some = next(iter(results.values()))
st.caption(f"Workload {some.meta['workload']['name']}: {some.meta['workload']['requests']:,} requests, arrivals "
           f"{'the trace’s own, scaled to each rate' if some.scenario.arrival == 'trace' else some.scenario.arrival}"
           f" · cost model {some.meta['profile_id']} · {len(results)} runs")
table = analysis.compare_table(results)
slo = {"ttft": k.fields.get("slo_ttft_ms"), "tpot": k.fields.get("slo_tpot_ms"), "e2el": k.fields.get("slo_e2el_ms")}
cols = st.columns(3)
for col, metric in zip(cols, ("ttft", "tpot", "e2el")):
    col.plotly_chart(figures.metric_vs_rate(table, metric, slo[metric]), key=f"vs_rate.{metric}")

st.subheader("Slowdown by request size")
at = st.select_slider("At offered rate (req/s)", rates, value=rates[-1], key=f"{KEY}.slowdown_rate")
at_rate = {label: r for (label, rate), r in results.items() if rate == at}
slow = analysis.slowdown_table(at_rate, by=size_by)
cols = st.columns(2)
cols[0].plotly_chart(figures.slowdown(slow, "p50_slowdown"), key="slowdown.p50")
cols[1].plotly_chart(figures.slowdown(slow, "p99_slowdown"), key="slowdown.p99")
st.caption("Slowdown = a request's E2E latency over its E2E alone on an idle replica; bins are quantiles of "
           "request size over the workload, the same for every variant.")
st.subheader("All runs")
st.dataframe(table, hide_index=True)
