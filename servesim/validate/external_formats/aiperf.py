"""NVIDIA AIPerf exports: ``profile_export.jsonl`` (one record per request) and ``profile_export_aiperf.json``
(the run's aggregates and configuration). Either file may be given; its sibling, when present, is read too.

A record (``MetricRecordInfo``): ``metadata`` (``session_num``, ``x_request_id``, ``request_start_ns`` and
``request_end_ns`` as wall-clock ``time.time_ns()``, ``benchmark_phase`` "warmup" | "profiling"), ``metrics``
(tag -> ``{"value", "unit"}`` in display units: ``time_to_first_token`` (``ttft`` in early releases),
``request_latency``, ``inter_chunk_latency`` (a list), ``input_sequence_length``, ``output_sequence_length``,
...), and ``error`` (``code``, ``type``, ``message``) for failed requests, whose only metric is ``error_isl``.
The aggregate file: one ``{"unit", "avg", "p50", ..., "std"}`` block per metric tag, ``input_config`` (the
user config: ``endpoint.model_names``, ``loadgen.concurrency`` / ``request_rate``), ``schema_version`` and
``aiperf_version`` (from schema 1.0), ``start_time``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from servesim.errors import InputError
from servesim.validate.external_formats.common import (
    Count,
    ExternalRun,
    Lax,
    Nanos,
    Number,
    Seconds,
    error_text,
    find_key,
    latency_summary,
    parse,
    read_json,
    read_jsonl,
    requests_frame,
)

TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "secs": 1.0, "seconds": 1.0}
TTFT_TAGS = ("time_to_first_token", "ttft")
LATENCIES = {"ttft": TTFT_TAGS, "tpot": ("inter_token_latency",), "itl": ("inter_chunk_latency",),
             "e2el": ("request_latency",)}
SCALARS = {"request_throughput": "request_throughput", "output_token_throughput": "output_throughput",
           "total_token_throughput": "total_token_throughput", "goodput": "request_goodput",
           "request_count": "completed", "error_request_count": "failed", "total_isl": "total_input_tokens",
           "total_osl": "total_output_tokens"}


class _Value(Lax):
    value: Number | list[Seconds]
    unit: str | None = None


class _Metadata(Lax):
    session_num: Count | None = None
    x_request_id: str | None = None
    turn_index: Count | None = None
    request_start_ns: Nanos
    request_end_ns: Nanos | None = None
    benchmark_phase: str | None = None


class _Error(Lax):
    code: int | None = None
    type: str | None = None
    message: str | None = None


class _Record(Lax):
    metadata: _Metadata
    metrics: dict[str, _Value] | None = None
    error: _Error | None = None


class _Stat(Lax):
    unit: str
    avg: Number | None = None
    std: Number | None = None
    p50: Number | None = None
    p90: Number | None = None
    p95: Number | None = None
    p99: Number | None = None


def looks_like_records(doc: object) -> bool:
    return (isinstance(doc, list) and bool(doc) and isinstance(doc[0], dict)
            and "metadata" in doc[0] and "metrics" in doc[0])


def looks_like_aggregate(doc: object) -> bool:
    if not isinstance(doc, dict):
        return False
    if "aiperf_version" in doc or ("input_config" in doc and "request_latency" in doc):
        return True
    block = doc.get("request_latency") or doc.get("request_throughput")
    return isinstance(block, dict) and "unit" in block and "avg" in block


def _seconds(value: _Value, tag: str, file: str, where: str, *, many: bool = False) -> Any:
    """A time metric in seconds: one number, or (``many``) a list of numbers."""
    scale = TIME_UNITS.get((value.unit or "").strip().lower())
    if scale is None:
        raise InputError(f"unknown time unit {value.unit!r}", file=file, field=f"{where}.metrics.{tag}.unit")
    if isinstance(value.value, list) != many:
        raise InputError("must be a list of times" if many else "must be one time, not a list", file=file,
                         field=f"{where}.metrics.{tag}.value")
    if isinstance(value.value, list):
        return [v * scale for v in value.value]
    if value.value < 0:
        raise InputError("a negative time", file=file, field=f"{where}.metrics.{tag}.value")
    return value.value * scale


def _count(value: _Value | None, tag: str, file: str, where: str) -> int | None:
    if value is None:
        return None
    v = value.value
    if isinstance(v, list) or v < 0 or v != int(v) or v > 2**40:
        raise InputError("not a token count", file=file, field=f"{where}.metrics.{tag}.value")
    return int(v)


def _records_frame(records: list, file: str):
    n = len(records)
    start_ns = np.zeros(n, dtype=np.int64)
    ttft, e2el = np.full(n, np.nan), np.full(n, np.nan)
    inp, out = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    reasons, itls, ids, measured = [], [], [], np.ones(n, dtype=bool)
    for i, raw in enumerate(records):
        where = f"line {i + 1}"
        r = parse(_Record, raw, file, where)
        m = r.metrics or {}
        start_ns[i] = r.metadata.request_start_ns
        measured[i] = r.metadata.benchmark_phase != "warmup"
        ids.append(r.metadata.x_request_id or str(r.metadata.session_num if r.metadata.session_num is not None else i))
        if r.error is not None:
            e = r.error
            reasons.append(error_text(": ".join(x for x in (e.type, e.message) if x) or
                                      (f"HTTP {e.code}" if e.code is not None else None), "failed"))
            isl_tag = "error_isl" if "error_isl" in m else "input_sequence_length"
            inp[i] = _count(m.get(isl_tag), isl_tag, file, where) or 0
            itls.append(None)
            continue
        latency = m.get("request_latency")
        if latency is None:
            raise InputError("a completed request without request_latency", file=file, field=f"{where}.metrics")
        e2el[i] = _seconds(latency, "request_latency", file, where)
        tag = next((t for t in TTFT_TAGS if t in m), None)
        if tag is not None:
            ttft[i] = _seconds(m[tag], tag, file, where)
            if ttft[i] > e2el[i] * (1 + 1e-9) + 1e-9:
                raise InputError("first token after the last", file=file, field=f"{where}.metrics.{tag}")
        isl = _count(m.get("input_sequence_length"), "input_sequence_length", file, where)
        osl_tag = "output_sequence_length" if "output_sequence_length" in m else "output_token_count"
        osl = _count(m.get(osl_tag), osl_tag, file, where)
        if isl is None or osl is None:
            raise InputError("a completed request without input_sequence_length and output_sequence_length",
                             file=file, field=f"{where}.metrics")
        inp[i], out[i] = isl, osl
        icl = m.get("inter_chunk_latency")
        itls.append(None if icl is None else _seconds(icl, "inter_chunk_latency", file, where, many=True))
        reasons.append("")
    send = (start_ns - start_ns.min()) / 1e9 if n else np.zeros(0)  # integer ns first: exact to the ns
    return requests_frame(file=file, send_s=send, ttft_s=ttft, e2el_s=e2el, input_tokens=inp, output_tokens=out,
                          reasons=reasons, itl_s=itls, measured=measured, tool_ids=ids)


def _aggregate(doc: dict, file: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric, tags in LATENCIES.items():
        tag = next((t for t in tags if t in doc), None)
        if tag is None:
            continue
        s = parse(_Stat, doc[tag], file, tag)
        scale = TIME_UNITS.get(s.unit.strip().lower())
        if scale is None:
            raise InputError(f"unknown time unit {s.unit!r}", file=file, field=f"{tag}.unit")
        out.update(latency_summary({"mean": s.avg, "median": s.p50, "std": s.std, "p50": s.p50, "p90": s.p90,
                                    "p95": s.p95, "p99": s.p99}, metric, scale * 1000.0))
    for tag, key in SCALARS.items():
        if tag in doc and (avg := parse(_Stat, doc[tag], file, tag).avg) is not None and math.isfinite(avg):
            out[key] = float(avg)
    if "benchmark_duration" in doc:
        s = parse(_Stat, doc["benchmark_duration"], file, "benchmark_duration")
        scale = TIME_UNITS.get(s.unit.strip().lower())
        if scale is None:
            raise InputError(f"unknown time unit {s.unit!r}", file=file, field="benchmark_duration.unit")
        if s.avg is not None:
            out["duration"] = s.avg * scale
    return out


def _sibling(path: Path, records: bool) -> Path:
    """profile_export.jsonl <-> profile_export_aiperf.json (also under a --profile-export-prefix)."""
    if records:
        return path.with_name(path.name.removesuffix(".jsonl") + "_aiperf.json")
    return path.with_name(path.name.removesuffix(".json").removesuffix("_aiperf") + ".jsonl")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def load(doc: object, file: str) -> list[ExternalRun]:
    """The run in an AIPerf records (JSONL, parsed to a list) or aggregate (JSON object) document."""
    path = Path(file)
    if isinstance(doc, list):
        records, records_file, agg_file = doc, file, _sibling(path, records=True)
        aggregate = read_json(agg_file) if agg_file.is_file() else None
    elif isinstance(doc, dict):
        aggregate, agg_file, rec_file = doc, path, _sibling(path, records=False)
        records, records_file = (read_jsonl(rec_file), str(rec_file)) if rec_file.is_file() else (None, file)
    else:
        raise InputError("an AIPerf export is a JSONL file of records or a JSON object of metrics", file=file)
    if aggregate is not None and not isinstance(aggregate, dict):
        raise InputError("the aggregate export is not a JSON object", file=str(agg_file))
    if records is not None and not records:
        raise InputError("no records", file=records_file)
    requests = _records_frame(records or [], records_file)
    summary = _aggregate(aggregate, str(agg_file)) if aggregate is not None else {}
    agg = aggregate or {}
    config = agg.get("input_config")
    concurrency = find_key(config, "concurrency", int)
    rate = find_key(config, "request_rate", (int, float))
    rate = float(rate) if rate is not None else None
    models = find_key(config, "model_names", list)
    parts = (["records"] if records is not None else []) + (
        [f"aggregate schema {_text(agg.get('schema_version')) or 'unversioned'}"] if aggregate is not None else [])
    meta = {
        "model": models[0] if isinstance(models, list) and models and isinstance(models[0], str) else None,
        "tool_version": _text(agg.get("aiperf_version")),
        "date": _text(agg.get("start_time")),
        "schema": "aiperf " + " + ".join(parts),
        "rate_per_s": rate, "concurrency": concurrency,
        "loop": "closed" if concurrency and rate is None else "open",
        "send_times": "measured" if records is not None else "unknown",
        "records_file": records_file if records is not None else None,
        "aggregate_file": str(agg_file) if aggregate is not None else None,
    }
    alignment = list(ALIGNMENT)
    if records is None:
        alignment.append("Requests: no profile_export.jsonl beside the aggregate file, so there are no rows; only "
                         "the aggregates can be compared.")
    return [ExternalRun("aiperf", file, requests, summary, alignment, meta)]


ALIGNMENT = [
    "TTFT: AIPerf's time_to_first_token (first non-empty content chunk minus the request start, perf clock) is "
    "vLLM's TTFT; reasoning chunks count as content, as in vLLM.",
    "TPOT: AIPerf's inter_token_latency, (request_latency - TTFT) / (output_sequence_length - 1), is vLLM's TPOT; "
    "its output_sequence_length includes reasoning tokens and by default comes from AIPerf's own tokenizer where "
    "vLLM takes the server's completion_tokens.",
    "ITL: AIPerf's inter_chunk_latency (gaps between content chunks) is vLLM's ITL, per request in itl_s; recent "
    "AIPerf versions may summarize it with a t-digest sketch, so its percentiles can be approximate.",
    "E2E: AIPerf's request_latency (last content chunk minus the start) is vLLM's E2EL.",
    "Statistics: AIPerf's request metrics use the population std and numpy's linear percentiles, as vLLM does; "
    "the median is its p50.",
    "Throughput: request_count (resp. total_osl) / benchmark_duration, with the duration from the first request "
    "to the last response on the wall clock; vLLM's duration times its whole dispatch loop instead.",
    "Failures and warmup: records with an error are failed rows; warmup-phase records are kept with "
    "measured=False (AIPerf's profiling aggregates leave them out).",
    "Send times: metadata.request_start_ns (wall clock when the worker sent the request), relative to the first.",
]
