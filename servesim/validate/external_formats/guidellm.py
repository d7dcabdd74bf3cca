"""GuideLLM ``benchmarks.json`` (or ``.yaml``): a report of one or more benchmarks (a sweep has several).

Each ``benchmarks[i]`` holds its scheduling ``strategy`` (``config.strategy`` from GuideLLM 0.4, ``args.strategy``
before), ``metrics`` (per status, ``successful`` / ``incomplete`` / ``errored``: mean, median, std_dev,
percentiles p001..p999) and ``requests`` grouped by status. Two request layouts exist:

- GuideLLM 0.4 and later (report ``metadata.version`` 1 in 0.5-0.6, 2 from 0.7): ``info.timings`` with
  ``request_start``, ``first_token_iteration``, ``last_token_iteration``, ``request_end``, ``token_iterations``
  (Unix seconds), token counts in ``prompt_tokens`` / ``output_tokens`` (or ``input_metrics`` /
  ``output_metrics``), errors in ``info.error``;
- GuideLLM 0.2-0.3: flat ``start_time``, ``first_token_time``, ``last_token_time``, ``end_time``,
  ``prompt_tokens``, ``output_tokens``, ``error``.

GuideLLM keeps no per-token times (only the first and last token and the number of stream iterations).
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from servesim.errors import InputError
from servesim.validate.external_formats.common import (
    Count,
    ExternalRun,
    Lax,
    Number,
    Seconds,
    error_text,
    find_key,
    latency_summary,
    parse,
    requests_frame,
)

GROUPS = ("successful", "incomplete", "errored")


class _Timings(Lax):
    request_start: Seconds | None = None
    resolve_start: Seconds | None = None
    first_token_iteration: Seconds | None = None
    last_token_iteration: Seconds | None = None
    request_end: Seconds | None = None
    resolve_end: Seconds | None = None
    token_iterations: Count = 0


class _Info(Lax):
    timings: _Timings = _Timings()
    error: str | None = None


class _Usage(Lax):
    total_tokens: Count | None = None


class _Request(Lax):  # GuideLLM >= 0.4
    request_id: str | None = None
    info: _Info
    input_metrics: _Usage = _Usage()
    output_metrics: _Usage = _Usage()
    prompt_tokens: Count | None = None
    output_tokens: Count | None = None


class _FlatRequest(Lax):  # GuideLLM <= 0.3
    request_id: str | None = None
    prompt_tokens: Count
    output_tokens: Count
    start_time: Seconds
    end_time: Seconds
    first_token_time: Seconds | None = None
    last_token_time: Seconds | None = None
    error: str | None = None


class _Dist(Lax):
    mean: Number
    median: Number | None = None
    std_dev: Number | None = None
    percentiles: dict[str, Number] = {}


class _ByStatus(Lax):
    successful: _Dist | None = None


class _Metrics(Lax):
    time_to_first_token_ms: _ByStatus = _ByStatus()
    request_latency: _ByStatus = _ByStatus()
    inter_token_latency_ms: _ByStatus = _ByStatus()
    requests_per_second: _ByStatus = _ByStatus()
    output_tokens_per_second: _ByStatus = _ByStatus()
    tokens_per_second: _ByStatus = _ByStatus()
    request_totals: dict[str, Count | None] | None = None


class _Strategy(Lax):
    type_: str | None = None
    rate: Number | None = None
    streams: Count | None = None
    max_concurrency: Count | None = None


class _Window(Lax):
    measure_start_time: Seconds | None = None
    measure_end_time: Seconds | None = None


class _Config(Lax):
    strategy: _Strategy | None = None


class _Benchmark(Lax):
    config: _Config | None = None  # GuideLLM >= 0.4
    args: _Config | None = None  # GuideLLM <= 0.3
    metrics: _Metrics
    requests: dict[str, list[dict] | None]
    scheduler_metrics: _Window | None = None
    start_time: Seconds | None = None
    end_time: Seconds | None = None
    duration: Seconds | None = None
    request_totals: dict[str, Count | None] | None = None  # GuideLLM <= 0.3


def looks_like(doc: object) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list)


def _rows(bench: _Benchmark, file: str, root: str) -> tuple[dict[str, list], bool]:
    """Per-request lists (send, ttft, e2el, tokens, reason, start, end, id) over every status group, and
    whether the requests have GuideLLM 0.3's flat layout."""
    cols: dict[str, list] = {k: [] for k in ("send", "ttft", "e2el", "inp", "out", "reason", "start", "end", "id")}
    flat = None
    for group in GROUPS:
        for i, raw in enumerate(bench.requests.get(group) or []):
            where = f"{root}.requests.{group}[{i}]"
            if flat is None:
                flat = isinstance(raw, dict) and "info" not in raw and "start_time" in raw
            if flat:
                q = parse(_FlatRequest, raw, file, where)
                start, first, last, end = q.start_time, q.first_token_time, q.last_token_time, q.end_time
                inp, out, error, rid = q.prompt_tokens, q.output_tokens, q.error, q.request_id
            else:
                q = parse(_Request, raw, file, where)
                t = q.info.timings
                start = t.request_start if t.request_start is not None else t.resolve_start
                first, last = t.first_token_iteration, t.last_token_iteration
                end = t.request_end if t.request_end is not None else t.resolve_end
                inp = q.prompt_tokens if q.prompt_tokens is not None else q.input_metrics.total_tokens
                out = q.output_tokens if q.output_tokens is not None else (
                    q.output_metrics.total_tokens if q.output_metrics.total_tokens is not None else t.token_iterations)
                error, rid = q.info.error, q.request_id
            if group == "successful":
                for name, value in (("request start", start), ("prompt token count", inp),
                                    ("last token or request end", last if last is not None else end)):
                    if value is None:
                        raise InputError(f"a completed request without its {name}", file=file, field=where)
                done = last if last is not None else end
                for later, earlier, what in ((first, start, "first token before the request started"),
                                             (done, first if first is not None else start,
                                              "last token before the first")):
                    if later is not None and later < earlier - 1e-6:
                        raise InputError(what, file=file, field=where)
                cols["reason"].append("")
                cols["ttft"].append(first - start if first is not None else math.nan)
                cols["e2el"].append(done - start)
            else:
                cols["reason"].append(error_text(error, "errored") if group == "errored" else
                                      f"incomplete: {error_text(error, 'cancelled when the benchmark ended')}")
                cols["ttft"].append(math.nan)
                cols["e2el"].append(math.nan)
            cols["send"].append(math.nan if start is None else start)
            cols["inp"].append(inp or 0)
            cols["out"].append(out or 0)
            cols["start"].append(start)
            cols["end"].append(end)
            cols["id"].append(rid if rid is not None else f"{group}[{i}]")
    return cols, bool(flat)


def _in_window(start: float | None, end: float | None, lo: float | None, hi: float | None) -> bool:
    """GuideLLM's measurement-window test: the request ends after the window opens and starts (or, never
    started, ends) before it closes."""
    if lo is None or hi is None:
        return True
    if end is None:
        return False
    return end >= lo and (start if start is not None else end) <= hi


def _iso(ts: float | None) -> str | None:
    try:
        return None if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def _summary(bench: _Benchmark) -> dict[str, float]:
    m = bench.metrics
    out: dict[str, float] = {}
    for name, dist, scale in (("ttft", m.time_to_first_token_ms.successful, 1.0),
                              ("e2el", m.request_latency.successful, 1000.0)):  # request_latency is in seconds
        if dist is not None:
            p = dist.percentiles
            out.update(latency_summary({"mean": dist.mean, "median": dist.median, "std": dist.std_dev,
                                        "p50": p.get("p50"), "p90": p.get("p90"), "p95": p.get("p95"),
                                        "p99": p.get("p99")}, name, scale))
    if (itl := m.inter_token_latency_ms.successful) is not None:
        out["mean_itl_ms"] = itl.mean  # token-weighted: sum(last - first) / sum(output_tokens - 1)
    for key, dist in (("request_throughput", m.requests_per_second.successful),
                      ("output_throughput", m.output_tokens_per_second.successful),
                      ("total_token_throughput", m.tokens_per_second.successful)):
        if dist is not None:
            out[key] = dist.mean
    totals = m.request_totals or bench.request_totals or {}
    if totals.get("successful") is not None:
        out["completed"] = float(totals["successful"])
    if bench.duration is not None:
        out["duration"] = bench.duration
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}


ALIGNMENT = [
    "TTFT: GuideLLM's time_to_first_token_ms (first token iteration minus request start) is vLLM's TTFT; its "
    "mean and std (population) match vLLM's, but its median and percentiles are inverse-CDF order statistics "
    "(no interpolation), so they can differ from vLLM's numpy-interpolated ones by up to one neighbouring value.",
    "TPOT: vLLM's (e2el - ttft) / (output_tokens - 1) is GuideLLM's per-request inter_token_latency_ms; the rows "
    "give it exactly. GuideLLM's own time_per_output_token_ms includes the first token and is not used.",
    "ITL: GuideLLM keeps no per-token times (itl_s is None); its inter_token_latency_ms aggregate weights each "
    "request by output_tokens - 1, so its mean, sum(last - first) / sum(output_tokens - 1), is reported as "
    "mean_itl_ms: vLLM's mean ITL when every streamed chunk carries one token. ITL percentiles cannot be aligned.",
    "E2E: the rows end at the last token iteration, as vLLM's latency ends at the last streamed chunk; GuideLLM's "
    "request_latency (reported as *_e2el_ms) ends at request_end, after the stream closes, slightly later.",
    "Failures: errored and incomplete (cancelled at the benchmark's end) requests are failed rows; GuideLLM's "
    "successful statistics, like vLLM's, leave them out.",
    "Throughput: GuideLLM's requests_per_second / output_tokens_per_second / tokens_per_second means are "
    "time-weighted rates over the measurement window, which equal count / window duration.",
    "Window: rows outside GuideLLM's measurement window (warmup, cooldown) have measured=False; GuideLLM's "
    "aggregates cover the measured rows only, and a sampled report (sample_size) keeps only some rows.",
    "Send times: info.timings.request_start (Unix time the backend sent the request), after any scheduling lag.",
]


def _loop(strategy: _Strategy) -> tuple[str, int | None, float | None]:
    kind = strategy.type_ or ""
    if kind == "synchronous":
        return "closed", 1, None
    if kind == "concurrent":
        return "closed", strategy.streams, None
    if kind == "throughput" and strategy.max_concurrency:
        return "closed", strategy.max_concurrency, None
    return "open", strategy.max_concurrency, strategy.rate if kind != "throughput" else math.inf


def load(doc: object, file: str) -> list[ExternalRun]:
    """One run per benchmark in a GuideLLM report document read from ``file``."""
    if not looks_like(doc):
        raise InputError("a GuideLLM report is an object with a 'benchmarks' list", file=file, field="benchmarks")
    assert isinstance(doc, dict)
    meta_block = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    version = meta_block.get("guidellm_version")
    model = find_key(doc.get("args"), "model", str) or find_key(doc.get("config"), "model", str)
    if not doc["benchmarks"]:
        raise InputError("the report has no benchmarks", file=file, field="benchmarks")
    runs = []
    for b, raw in enumerate(doc["benchmarks"]):
        root = f"benchmarks[{b}]"
        bench = parse(_Benchmark, raw, file, root)
        cols, flat = _rows(bench, file, root)
        if not cols["reason"]:
            raise InputError("the benchmark has no requests", file=file, field=f"{root}.requests")
        holder = bench.config if bench.config is not None and bench.config.strategy is not None else bench.args
        strategy = (holder.strategy if holder is not None else None) or _Strategy()
        window = bench.scheduler_metrics or _Window()
        lo, hi = window.measure_start_time, window.measure_end_time
        measured = [_in_window(s, e, lo, hi) for s, e in zip(cols["start"], cols["end"])]
        requests = requests_frame(
            file=file, send_s=np.array(cols["send"], dtype=np.float64), ttft_s=np.array(cols["ttft"]),
            e2el_s=np.array(cols["e2el"]), input_tokens=np.array(cols["inp"], dtype=np.int64),
            output_tokens=np.array(cols["out"], dtype=np.int64), reasons=cols["reason"],
            measured=np.array(measured), tool_ids=[str(x) for x in cols["id"]])
        loop, users, rate = _loop(strategy)
        meta = {
            "model": (model or find_key(raw.get("config"), "model", str)
                      or find_key(raw.get("worker"), "backend_model", str)),
            "tool_version": version if isinstance(version, str) else None,
            "date": _iso(bench.start_time if bench.start_time is not None else lo),
            "schema": "guidellm <= 0.3 report (flat request times)" if flat else
                      f"guidellm >= 0.4 report (info.timings; metadata version {meta_block.get('version', '-')})",
            "rate_per_s": rate, "concurrency": users, "loop": loop, "send_times": "measured",
            "benchmark": b, "benchmarks": len(doc["benchmarks"]), "strategy": strategy.type_,
            "measure_window_s": None if lo is None or hi is None else hi - lo,
        }
        runs.append(ExternalRun("guidellm", file, requests, _summary(bench), list(ALIGNMENT), meta))
    return runs
