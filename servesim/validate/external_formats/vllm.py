"""vLLM ``vllm bench serve --save-result --save-detailed`` result JSON (also ``benchmarks/benchmark_serving.py``).

One JSON object: the run's settings (``date``, ``backend``, ``model_id``, ``request_rate``, ``burstiness``,
``max_concurrency``, ...), its aggregates under the keys servesim reports (``mean_ttft_ms``, ``p99_tpot_ms``,
``request_throughput``, ...), and with ``--save-detailed`` one array per request field, all in send order:
``input_lens``, ``output_lens``, ``ttfts`` (s), ``itls`` (s, one list per request), ``generated_texts``,
``errors`` ("" when the request succeeded). Later versions add ``start_times`` (vLLM 0.15, Jan 2026:
``time.perf_counter()`` at each send) and ``latencies``/``queue_times`` (s). Without ``start_times``
the send times are reconstructed where vLLM's client makes them determined (``request_rate`` inf), and
unknown otherwise.
"""

from __future__ import annotations

import heapq
import math
import re
from typing import Literal

import numpy as np

from servesim.errors import InputError
from servesim.validate.external_formats.common import (
    Count,
    ExternalRun,
    Lax,
    Number,
    Seconds,
    error_text,
    parse,
    requests_frame,
)

DETAIL_ARRAYS = ("input_lens", "output_lens", "ttfts", "itls")
SCALARS = ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
           "request_goodput", "output_throughput", "total_token_throughput", "max_output_tokens_per_s",
           "max_concurrent_requests")
LATENCY_KEY = re.compile(r"^(mean|median|std|p\d+(?:\.\d+)?)_(ttft|tpot|itl|e2el)_ms$")


class _Result(Lax):
    date: str | None = None
    backend: str | None = None
    endpoint_type: str | None = None
    label: str | None = None
    model_id: str | None = None
    tokenizer_id: str | None = None
    num_prompts: Count | None = None
    request_rate: Number | Literal["inf"] | None = None
    burstiness: Number | None = None
    max_concurrency: Count | None = None
    ramp_up_strategy: str | None = None
    input_lens: list[Count]
    output_lens: list[Count]
    ttfts: list[Seconds]
    itls: list[list[Seconds]]
    start_times: list[Seconds] | None = None
    latencies: list[Seconds] | None = None
    queue_times: list[Number] | None = None
    errors: list[str | None] | None = None
    successes: list[bool] | None = None


def looks_like(doc: object) -> bool:
    """A vLLM result: an object with the per-request arrays, or vLLM's run keys beside its aggregates."""
    if not isinstance(doc, dict):
        return False
    return any(k in doc for k in DETAIL_ARRAYS) or (
        "request_throughput" in doc and any(k in doc for k in ("num_prompts", "endpoint_type", "burstiness")))


def _summary(doc: dict, file: str) -> dict[str, float]:
    values = parse(dict[str, Number | None], {k: v for k, v in doc.items() if k in SCALARS or LATENCY_KEY.match(k)},
                   file)
    return {k: float(v) for k, v in values.items() if v is not None}


def replay_semaphore(latency_s: np.ndarray, slots: int) -> np.ndarray:
    """Send times of a client that dispatches every request at t=0 through a FIFO semaphore of ``slots``:
    request i waits for the earliest of the in-flight requests to finish (vLLM's ``--max-concurrency``)."""
    free = [0.0] * slots
    send = np.empty(len(latency_s))
    for i, latency in enumerate(latency_s):
        t = heapq.heappop(free)
        send[i] = t
        heapq.heappush(free, t + latency)
    return send


def load(doc: object, file: str) -> list[ExternalRun]:
    """The run in a vLLM result document (parsed JSON) read from ``file``."""
    if not isinstance(doc, dict):
        raise InputError("a vLLM result is a JSON object", file=file)
    missing = [k for k in DETAIL_ARRAYS if k not in doc]
    if missing:
        raise InputError(f"no per-request arrays ({', '.join(missing)}); save the run with "
                         "vllm bench serve --save-result --save-detailed", file=file, field=missing[0])
    r = parse(_Result, doc, file)
    n = len(r.input_lens)
    if n == 0:
        raise InputError("the run has no requests", file=file, field="input_lens")
    for name in ("output_lens", "ttfts", "itls", "start_times", "latencies", "queue_times", "errors", "successes"):
        arr = getattr(r, name)
        if arr is not None and len(arr) != n:
            raise InputError(f"has {len(arr)} entries for {n} requests (input_lens)", file=file, field=name)

    ttft = np.array(r.ttfts, dtype=np.float64)
    out = np.array(r.output_lens, dtype=np.int64)
    if r.successes is not None:
        ok = np.array(r.successes, dtype=bool)
    elif r.errors is not None:
        ok = np.array([not e for e in r.errors], dtype=bool)
    else:  # the oldest files: a failed request is left with no token and no TTFT
        ok = (out > 0) | (ttft > 0)
    if r.latencies is not None:
        e2el = np.array(r.latencies, dtype=np.float64)
    else:  # vLLM's latency is the last chunk's time: ttft plus the chunk gaps (inf on overflow: refused below)
        with np.errstate(over="ignore"):
            e2el = ttft + np.array([np.sum(gaps, dtype=np.float64) for gaps in r.itls])
    good = np.flatnonzero(ok)
    late = good[e2el[good] < ttft[good] - 1e-9]
    if len(late):
        raise InputError(f"request {late[0]} ends before its first token", file=file, field=f"latencies[{late[0]}]")
    summary = _summary(doc, file)
    if "completed" in summary and int(summary["completed"]) != len(good):
        raise InputError(f"says {int(summary['completed'])} requests completed but {len(good)} have no error",
                         file=file, field="completed")

    rate = math.inf if r.request_rate in (None, "inf") else float(r.request_rate)
    concurrency = r.max_concurrency if r.max_concurrency else None
    if r.start_times is not None:
        send, send_kind = np.array(r.start_times, dtype=np.float64), "measured"
        how = "send times: the file's start_times (time.perf_counter() at each send, after any --max-concurrency wait)"
    elif math.isinf(rate) and r.ramp_up_strategy is None:
        send_kind = "reconstructed"
        if concurrency is None:
            send = np.zeros(n)
            how = ("send times: not in this file (vLLM before 0.15); request_rate inf sends every request at "
                   "once, so every arrival is 0 (client dispatch jitter, typically well under 1 ms, is lost)")
        else:
            send = replay_semaphore(np.where(ok, e2el, 0.0), concurrency)
            how = (f"send times: not in this file (vLLM before 0.15); reconstructed by replaying the client's "
                   f"--max-concurrency {concurrency} semaphore (each send when the earliest in-flight request "
                   "ends; failed requests taken to end at once)")
    else:
        send, send_kind = np.full(n, np.nan), "unknown"
        how = (f"send times: not in this file (vLLM before 0.15) and not determined by request_rate {rate:g} "
               "(random gaps, or a ramp-up); arrival_s, first_token_s and finish_s are NaN, ttft_s/e2el_s hold "
               "the latencies")

    reasons = ["" if ok[i] else error_text(r.errors[i] if r.errors else None, "failed (vLLM gave no error)")
               for i in range(n)]
    requests = requests_frame(
        file=file, send_s=send, ttft_s=ttft, e2el_s=e2el, input_tokens=np.array(r.input_lens, dtype=np.int64),
        output_tokens=out, reasons=reasons, itl_s=[list(g) if ok[i] else None for i, g in enumerate(r.itls)])
    variant = ("start_times, latencies" if r.latencies is not None else "start_times") if r.start_times else \
        "no start_times (vLLM < 0.15)"
    meta = {
        "model": r.model_id, "tool_version": None, "date": r.date,
        "schema": f"vllm bench serve --save-detailed ({variant})",
        "rate_per_s": rate, "concurrency": concurrency,
        "loop": "closed" if concurrency is not None and math.isinf(rate) else "open",
        "send_times": send_kind,
        "backend": r.backend or r.endpoint_type, "label": r.label, "tokenizer_id": r.tokenizer_id,
        "num_prompts": r.num_prompts, "burstiness": r.burstiness, "ramp_up_strategy": r.ramp_up_strategy,
    }
    return [ExternalRun("vllm", file, requests, summary, _alignment(how, concurrency, rate), meta)]


def _alignment(how: str, concurrency: int | None, rate: float) -> list[str]:
    cap = (f" With --max-concurrency {concurrency} and a finite request_rate the client also held requests back; "
           "the send times include that wait, the latencies do not (as in vLLM)." if concurrency and
           not math.isinf(rate) else "")
    return [
        "TTFT: vLLM's own (first streamed chunk minus the send, on the client); taken as is.",
        "TPOT: (e2el - ttft) / (output_tokens - 1) over completed requests with more than one token, vLLM's "
        "definition; the rows give it exactly.",
        "ITL: vLLM's gaps between successive streamed chunks (a chunk may carry several tokens), per request in "
        "itl_s; vLLM's ITL statistics pool every gap of every completed request.",
        "E2E: send to the last streamed chunk: the file's latencies where present, else ttft + sum(itls), which "
        "is how vLLM measures latency (equal up to rounding).",
        "Failures: a request with an error message (vLLM's success flag is not saved) is failed; vLLM leaves it "
        "out of every statistic and so do its rows (NaN times, rejected_reason set).",
        "Throughput: vLLM divides by its own duration (the whole dispatch loop on the benchmark clock); a "
        "recomputation from the rows divides by first send to last finish, slightly shorter.",
        how[0].upper() + how[1:] + "." + cap,
    ]
