"""Sidebar widgets that turn into ``Scenario`` fields; shared by the What-if and Compare pages.

Each function draws one group of widgets and returns the fields it sets (a dict for ``make_scenario``).
Uploads and synthetic traces become files (:mod:`servesim.app.inputs`) named in the fields and listed in
``Knobs.files`` (name in a downloaded bundle -> path), and their problems in ``Knobs.errors``: a page shows
those and draws nothing else, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from servesim.app import inputs
from servesim.errors import InputError
from servesim.hwmodels.gpus import GPUS
from servesim.hwmodels.models import MODELS
from servesim.hwmodels.profile import shipped_profiles
from servesim.sim.config import Scenario, choices
from servesim.sim.workload import BUILTIN_TRACES, FORMATS

DEFAULTS = {name: info.default for name, info in Scenario.model_fields.items()}
POLICIES, BATCHING, ARRIVALS = choices("policy"), choices("batching"), choices("arrival")
WEIGHT_FORMATS, KV_DTYPES = choices("quant"), choices("kv_dtype")
TP_CHOICES = (1, 2, 4, 8)
LENGTH_ONLY = {name for name, b in BUILTIN_TRACES.items() if b.fmt == "vidur"}  # no arrival times
WINDOW_S = 300.0  # default workload window of the What-if page: the first 5 minutes of a trace


@dataclass
class Knobs:
    """What the widgets set: Scenario fields, the files they name, and problems to show instead of results."""

    fields: dict = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def attach(self, name: str, path: Path) -> None:
        self.files[name] = path


def _index(options, value) -> int:
    options = list(options)
    return options.index(value) if value in options else 0


def model(k: Knobs, key: str) -> None:
    """The model: a catalog preset or an uploaded HuggingFace config.json."""
    sb = st.sidebar
    source = sb.radio("Model from", ("catalog", "config.json"), horizontal=True, key=f"{key}.model_source")
    if source == "catalog":
        k.fields["model"] = sb.selectbox("Model", list(MODELS), index=_index(MODELS, DEFAULTS["model"]),
                                         key=f"{key}.model")
    else:
        up = sb.file_uploader("HuggingFace config.json", type=["json"], key=f"{key}.config_upload",
                              help="a decoder-only causal LM's config.json (at most 1 MiB)")
        if up is None:
            k.errors.append("Upload a HuggingFace config.json, or pick a catalog model.")
        else:
            try:
                path, spec = inputs.config_upload(up.name, up.getvalue())
            except InputError as exc:
                k.errors.append(f"config.json not usable: {exc}")
            else:
                k.fields["model"] = str(path)
                k.attach(f"{path.parent.name}/config.json", path)
                sb.caption(f"{spec.name}: {spec.param_count / 1e9:.2f} B parameters, {spec.num_layers} layers")


def cost_model(k: Knobs, key: str) -> None:
    """Which cost model prices the steps: the profile shipped for the GPU (else the roofline), the roofline, or an
    uploaded calibration profile; the caption says which one the run uses."""
    sb = st.sidebar
    gpu = k.fields["gpu"]
    shipped = shipped_profiles().get(gpu)
    source = sb.radio("Cost model", ("default", "roofline", "profile file"), horizontal=True, key=f"{key}.cost",
                      help="default: the calibration profile shipped for this GPU, else the roofline")
    calibrated = source == "profile file" or (source == "default" and shipped is not None)
    k.fields["piecewise_graphs"] = sb.checkbox(
        "Piecewise CUDA graphs", False, key=f"{key}.piecewise", disabled=not calibrated,
        help="price steps with prefill of up to 768 rows as the engine's piecewise CUDA graphs (TP 1, no "
             "speculation; calibrated profiles only)") and calibrated
    if source == "roofline":
        k.fields["profile"] = "roofline"
        sb.caption("Roofline: datasheet peaks × fitted efficiencies.")
    elif source == "default":
        sb.caption(f"Calibrated: {shipped.name} (shipped)." if shipped else
                   f"Roofline: no calibration profile ships for {gpu}.")
    else:
        up = sb.file_uploader("Calibration profile (JSON from servesim calibrate)", type=["json"],
                              key=f"{key}.profile_upload")
        if up is None:
            k.errors.append("Upload a calibration profile, or pick the default cost model.")
            return
        try:
            path, prof = inputs.profile_upload(up.name, up.getvalue())
        except InputError as exc:
            k.errors.append(f"Profile not usable: {exc}")
            return
        k.fields["profile"] = str(path)
        k.attach(path.name, path)
        sb.caption(f"Calibrated: {prof.profile_id}, measured on {prof.gpu} ({prof.provenance.date}).")


def deployment(k: Knobs, key: str, *, replicas: bool = True, cost: bool = True) -> None:
    """Model (catalog or uploaded config.json), GPU, cost model, replicas, TP, weight format, KV dtype."""
    model(k, key)
    sb = st.sidebar
    k.fields["gpu"] = sb.selectbox("GPU", list(GPUS), index=_index(GPUS, DEFAULTS["gpu"]), key=f"{key}.gpu")
    if cost:
        cost_model(k, key)
    else:
        k.fields["profile"] = "roofline"
    cols = sb.columns(2) if replicas else (sb,)
    if replicas:
        k.fields["replicas"] = cols[0].number_input("Replicas", 1, 256, 1, key=f"{key}.replicas")
    k.fields["tp"] = cols[-1].selectbox("TP", TP_CHOICES, key=f"{key}.tp", help="tensor-parallel GPUs per replica")
    cols = sb.columns(2)
    k.fields["quant"] = cols[0].selectbox("Weights", WEIGHT_FORMATS, key=f"{key}.quant")
    k.fields["kv_dtype"] = cols[1].selectbox("KV cache", KV_DTYPES, key=f"{key}.kv_dtype")


def scheduler(k: Knobs, key: str, *, policy: bool = True) -> None:
    """Batching mode and limits, queue policy, prefix caching."""
    sb = st.sidebar
    cols = sb.columns(2)
    k.fields["batching"] = cols[0].selectbox("Batching", BATCHING, index=_index(BATCHING, DEFAULTS["batching"]),
                                             key=f"{key}.batching")
    if policy:
        k.fields["policy"] = cols[1].selectbox("Policy", POLICIES, key=f"{key}.policy")
    cols = sb.columns(2)
    k.fields["max_num_seqs"] = cols[0].number_input("Max running", 1, 4096, DEFAULTS["max_num_seqs"],
                                                    key=f"{key}.max_num_seqs", help="max_num_seqs per replica")
    k.fields["max_num_batched_tokens"] = cols[1].number_input(
        "Token budget", 1, 1 << 20, None, key=f"{key}.max_num_batched_tokens",
        placeholder="default", help="max_num_batched_tokens per step (default: 2048 chunked, else max_model_len)")
    k.fields["prefix_caching"] = sb.checkbox("Prefix caching", False, key=f"{key}.prefix_caching")


def speculative(k: Knobs, key: str) -> None:
    """Speculative decoding: draft tokens k and per-token acceptance α."""
    sb = st.sidebar
    cols = sb.columns(2)
    k.fields["spec_k"] = cols[0].number_input("Spec. k", 0, 16, 0, key=f"{key}.spec_k",
                                              help="draft tokens per verification step (0: off)")
    k.fields["spec_alpha"] = cols[1].slider("Acceptance α", 0.0, 1.0, DEFAULTS["spec_alpha"], 0.05,
                                            key=f"{key}.spec_alpha", disabled=k.fields["spec_k"] == 0)
    if k.fields["spec_k"]:
        k.fields["draft_model"] = sb.selectbox("Draft model", list(MODELS),
                                               index=_index(MODELS, DEFAULTS["draft_model"]), key=f"{key}.draft")


def _arrival(k: Knobs, key: str, has_times: bool, default_rate: float) -> None:
    """Arrival process: the trace's own times (optionally scaled to a rate) or a synthetic process."""
    sb = st.sidebar
    choices = ARRIVALS if has_times else tuple(a for a in ARRIVALS if a != "trace")
    arrival = sb.selectbox("Arrivals", choices, key=f"{key}.arrival.{has_times}",
                           help="trace: the trace's own times; poisson/gamma/constant: synthetic at a rate; "
                                "closed: a fixed number of users")
    k.fields["arrival"] = arrival
    if arrival == "closed":
        cols = sb.columns(2)
        k.fields["users"] = cols[0].number_input("Users", 1, 100_000, DEFAULTS["users"], key=f"{key}.users")
        k.fields["think_time_s"] = cols[1].number_input("Think time (s)", 0.0, 3600.0, 0.0, key=f"{key}.think")
        return
    if arrival == "trace":
        k.fields["rate"] = sb.number_input("Scale to rate (req/s)", 0.01, 10_000.0, None, key=f"{key}.trace_rate",
                                           placeholder="the trace's own", help="stretch or squeeze the trace's "
                                           "arrival times to this rate; empty: as recorded")
        return
    k.fields["rate"] = sb.number_input("Rate (req/s)", 0.01, 10_000.0, default_rate, key=f"{key}.rate")
    if arrival == "gamma":
        k.fields["cv"] = sb.number_input("Inter-arrival CV", 0.05, 20.0, DEFAULTS["cv"], key=f"{key}.cv")


def _rows(trace: str, fmt: str | None) -> int:
    from servesim.errors import InputError
    from servesim.sim.deployment import trace_rows

    try:
        return trace_rows(trace, fmt)
    except InputError:  # the run reports a trace it cannot read
        return 10_000_000


def workload(k: Knobs, key: str, *, window_s: float | None = WINDOW_S, num_requests: int | None = None,
             arrivals: bool = True) -> None:
    """Built-in trace, uploaded trace, or synthetic lengths; the window or request count; arrivals."""
    sb = st.sidebar
    source = sb.radio("Workload", ("built-in trace", "upload", "synthetic"), horizontal=True,
                      key=f"{key}.workload_source")
    has_times = True
    if source == "built-in trace":
        names = list(BUILTIN_TRACES)
        trace = sb.selectbox("Trace", names, index=_index(names, DEFAULTS["trace"]), key=f"{key}.trace",
                             format_func=lambda n: f"{n}: {BUILTIN_TRACES[n].description}")
        k.fields["trace"] = trace
        has_times = trace not in LENGTH_ONLY
    elif source == "upload":
        up = sb.file_uploader("Trace file (CSV or JSON Lines)", type=["csv", "jsonl", "json"],
                              key=f"{key}.trace_upload", help="Azure, Mooncake, BurstGPT, Vidur or generic "
                              f"(input_tokens, output_tokens[, arrival_s]) format; at most "
                              f"{inputs.MAX_TRACE_BYTES >> 20} MiB")
        fmt = sb.selectbox("Format", ("detect", *FORMATS), key=f"{key}.trace_format")
        if up is None:
            k.errors.append("Upload a trace file, or pick a built-in trace.")
            return
        try:
            path, w = inputs.trace_upload(up.name, up.getvalue(), None if fmt == "detect" else fmt)
        except InputError as exc:
            k.errors.append(f"Trace not usable: {exc}")
            return
        k.fields["trace"] = str(path)
        k.fields["trace_format"] = None if fmt == "detect" else fmt
        k.attach(path.name, path)
        has_times = w.has_arrivals
        sb.caption(f"{up.name}: {len(w):,} requests" + ("" if has_times else ", no arrival times"))
    else:
        cols = sb.columns(2)
        n = cols[0].number_input("Requests", 1, 200_000, 500, key=f"{key}.syn_n")
        seed = cols[1].number_input("Length seed", 0, 2**31 - 1, 0, key=f"{key}.syn_seed")
        cols = sb.columns(2)
        pm = cols[0].number_input("Prompt median", 1.0, 1e6, 1000.0, key=f"{key}.syn_pm")
        ps = cols[1].number_input("Prompt σ (log)", 0.0, 4.0, 1.0, key=f"{key}.syn_ps")
        cols = sb.columns(2)
        om = cols[0].number_input("Output median", 1.0, 1e6, 200.0, key=f"{key}.syn_om")
        osg = cols[1].number_input("Output σ (log)", 0.0, 4.0, 0.8, key=f"{key}.syn_os")
        path = inputs.synthetic_lengths(int(n), pm, ps, om, osg, int(seed), max_tokens=128_000)
        k.fields["trace"] = str(path)
        k.attach(path.name, path)
        has_times = False
    if has_times and window_s is not None:
        cols = sb.columns(2)
        k.fields["start_s"] = cols[0].number_input("Window start (s)", 0.0, 1e7, 0.0, key=f"{key}.start")
        k.fields["duration_s"] = cols[1].number_input("Window length (s)", 1.0, 1e7, window_s,
                                                      key=f"{key}.duration")
    elif source != "synthetic":
        rows = _rows(k.fields["trace"], k.fields.get("trace_format"))  # at most the trace's own requests
        k.fields["num_requests"] = sb.number_input("Requests (first N)", 1, rows, min(num_requests or 500, rows),
                                                   key=f"{key}.num_requests.{has_times}")
    if arrivals:
        _arrival(k, key, has_times, default_rate=5.0)
    elif not has_times:
        k.fields["arrival"] = "poisson"


def slos(k: Knobs, key: str, ttft_ms: float | None = 500.0, tpot_ms: float | None = 50.0) -> None:
    """TTFT, TPOT and E2E limits (empty: no limit); goodput counts requests within all of them."""
    cols = st.sidebar.columns(3)
    k.fields["slo_ttft_ms"] = cols[0].number_input("TTFT ms", 0.1, 1e7, ttft_ms, key=f"{key}.slo_ttft",
                                                   placeholder="none")
    k.fields["slo_tpot_ms"] = cols[1].number_input("TPOT ms", 0.1, 1e7, tpot_ms, key=f"{key}.slo_tpot",
                                                   placeholder="none")
    k.fields["slo_e2el_ms"] = cols[2].number_input("E2E ms", 0.1, 1e8, None, key=f"{key}.slo_e2el",
                                                   placeholder="none")
