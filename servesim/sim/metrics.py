"""Per-request records -> a summary with vLLM's metric keys, SLO goodput, timeline aggregates, slowdown.

The simulator and the engine hand over the same tables (``REQUEST_COLUMNS``, ``TIMELINE_COLUMNS``), so
one summary and one comparison serve both. Definitions follow vLLM's ``benchmark_serving.py``: TTFT
and E2E over completed requests; TPOT = (e2el − ttft)/(generated − 1) over those with more than one
token; population std; numpy's default (linear) percentiles; throughputs over ``duration``.
ITL comes as a weighted sample (a decode step's duration once per sequence that produced a token in
it), so its statistics are those of the expanded sample, computed without expanding it.

Every table argument is a pandas DataFrame or a :class:`~servesim.sim.table.Table`; the summary is numpy
alone, so pandas is imported only where a DataFrame is returned (``request_latencies``, ``slowdown_by_size``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from servesim.errors import ConfigError, InputError
from servesim.sim.table import Table

if TYPE_CHECKING:
    import pandas as pd


REQUEST_COLUMNS = {
    "request_id": "int64", "replica": "int64", "arrival_s": "float64",
    "input_tokens": "int64", "output_tokens": "int64", "generated_tokens": "int64",
    "cached_tokens": "int64", "first_scheduled_s": "float64", "first_token_s": "float64",
    "finish_s": "float64", "num_preemptions": "int64", "rejected_reason": "string",
    "ideal_e2el_s": "float64",
}  # optional: priority, token_times_s (list of floats, only when asked for)
TIMELINE_COLUMNS = (
    "replica", "start_s", "end_s", "steps", "batch_size", "prefill_tokens", "decode_tokens",
    "num_running", "num_waiting", "kv_blocks_used", "kv_blocks_total",
)  # one row per iteration, or per run of identical decode iterations (``steps`` of them)
PERCENTILES = (50, 90, 95, 99)
SLO_METRICS = ("ttft", "tpot", "e2el")


def percentile(values: np.ndarray, q: float | np.ndarray) -> np.ndarray:
    """``np.percentile(values, q)`` to the bit (linear interpolation between order statistics, numpy's lerp from
    the nearer end), by one partition at the order statistics it needs: np.percentile's own partition goes
    through np.unique, whose first call imports numpy.ma (10 ms of a 100-request command). NaN: np.percentile."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0 or np.isnan(v).any():
        return np.percentile(v, q)
    qf = np.asarray(q, dtype=np.float64) / 100.0
    h = (n - 1) * qf
    lo = np.floor(h)
    t = h - lo
    i = lo.astype(np.intp)
    j = np.minimum(i + 1, n - 1)
    part = np.partition(v, sorted({*np.atleast_1d(i).tolist(), *np.atleast_1d(j).tolist()}))
    a, b = part[i], part[j]
    out = np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)
    return out[()] if out.ndim == 0 else out


def weighted_percentile(values: np.ndarray, weights: np.ndarray | None, q: float | np.ndarray) -> np.ndarray:
    """Percentiles ``q`` (0-100) of the sample where ``values[i]`` appears ``weights[i]`` times.

    Uses numpy's default linear interpolation between order statistics, so the result equals
    ``np.percentile(np.repeat(values, weights), q)`` (vLLM's definition) without expanding the sample.
    """
    v = np.asarray(values, dtype=np.float64)
    if weights is None:
        return percentile(v, q)
    w = np.asarray(weights, dtype=np.int64)
    order = np.argsort(v)  # tie order is irrelevant: tied values are equal
    v, w = v[order], w[order]
    cum = np.cumsum(w)  # expanded positions < cum[j] hold values <= v[j]
    qf = np.asarray(q, dtype=np.float64) / 100.0
    h = (cum[-1] - 1) * qf
    lo = np.floor(h)
    t = h - lo
    a = v[np.searchsorted(cum, lo, side="right")]
    b = v[np.searchsorted(cum, np.minimum(lo + 1, cum[-1] - 1), side="right")]
    # numpy's lerp: from the nearer end, so equal neighbours give exactly that value
    return np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)


def latency_stats(name: str, values_s: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """``{mean,median,std,p50,p90,p95,p99}_<name>_ms``; NaN for an empty sample (null in JSON, "—" in tables:
    a statistic of nothing is unknown, not 0 ms)."""
    v = np.asarray(values_s, dtype=np.float64) * 1000.0
    w = None if weights is None else np.asarray(weights, dtype=np.int64)
    if w is not None:
        keep = w > 0
        v, w = v[keep], w[keep]
    if len(v) == 0:
        keys = ("mean", "std", "median", *(f"p{p}" for p in PERCENTILES))
        return {f"{k}_{name}_ms": math.nan for k in keys}
    mean = float(np.average(v, weights=w))
    pct = weighted_percentile(v, w, np.array(PERCENTILES, dtype=np.float64))
    out = {
        f"mean_{name}_ms": mean,
        f"std_{name}_ms": float(np.sqrt(np.average((v - mean) ** 2, weights=w))),
        f"median_{name}_ms": float(pct[0]),
    }
    out.update({f"p{p}_{name}_ms": float(x) for p, x in zip(PERCENTILES, pct, strict=True)})
    return out


@dataclass(frozen=True)
class SLO:
    """Latency limits in ms; a request meets the SLO when every given limit holds (``joint``).

    ``per-metric`` additionally reports attainment and goodput for each limit on its own.
    A request with a single output token has no TPOT and passes that limit (as in vLLM).
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None
    mode: Literal["joint", "per-metric"] = "joint"

    def __post_init__(self) -> None:
        for metric in SLO_METRICS:
            limit = getattr(self, f"{metric}_ms")
            if limit is not None and not (isinstance(limit, (int, float)) and 0 < limit < math.inf):
                raise ConfigError(f"must be a positive number of ms, got {limit!r}", field=f"slo.{metric}_ms")
        if not self.limits_ms():
            raise ConfigError("give at least one of ttft_ms, tpot_ms, e2el_ms", field="slo")
        if self.mode not in ("joint", "per-metric"):
            raise ConfigError(f"must be 'joint' or 'per-metric', got {self.mode!r}", field="slo.mode")

    def limits_ms(self) -> dict[str, float]:
        """The given limits, by metric name (``ttft``, ``tpot``, ``e2el``)."""
        given = {m: getattr(self, f"{m}_ms") for m in SLO_METRICS}
        return {m: float(limit) for m, limit in given.items() if limit is not None}

    def as_dict(self) -> dict[str, object]:
        """The limits and mode, for echoing in a summary."""
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2el_ms": self.e2el_ms, "mode": self.mode}


def check_columns(df: pd.DataFrame | Table, required, what: str) -> None:
    """Raise InputError naming the first required column that ``df`` lacks."""
    for column in required:
        if column not in df.columns:
            raise InputError(f"{what} table lacks a required column", column=column)


def _floats(t: Table, column: str) -> np.ndarray:
    return np.asarray(t[column], dtype=np.float64)


def _rejected(t: Table) -> np.ndarray:
    """Requests with a rejection reason (a non-empty string)."""
    reasons = t["rejected_reason"]
    if reasons.dtype.kind in "US":
        return reasons != ""
    return np.fromiter((isinstance(x, str) and x != "" for x in reasons.tolist()), bool, len(reasons))


def completed_mask(requests: pd.DataFrame | Table) -> np.ndarray:
    """Requests that were served to the end (not rejected, with a finish time)."""
    t = Table.of(requests)
    return ~_rejected(t) & ~np.isnan(_floats(t, "finish_s"))


def _latencies(t: Table) -> dict[str, np.ndarray]:
    arrival = _floats(t, "arrival_s")
    ttft = _floats(t, "first_token_s") - arrival
    e2el = _floats(t, "finish_s") - arrival
    gen = _floats(t, "generated_tokens")
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(gen > 1, (e2el - ttft) / (gen - 1), np.nan)
        ideal = _floats(t, "ideal_e2el_s") if "ideal_e2el_s" in t else np.full(len(t), np.nan)
        slowdown = np.where(ideal > 0, e2el / ideal, np.nan)
    queueing = _floats(t, "first_scheduled_s") - arrival
    return {"ttft_s": ttft, "e2el_s": e2el, "tpot_s": tpot, "queueing_s": queueing, "slowdown": slowdown}


def request_latencies(requests: pd.DataFrame | Table) -> pd.DataFrame:
    """Per-request ``ttft_s``, ``e2el_s``, ``tpot_s`` (NaN below two tokens), ``queueing_s``, ``slowdown``.

    ``slowdown`` = E2E / ``ideal_e2el_s``; NaN where that column is absent (only slowdown needs it).
    """
    import pandas as pd

    return pd.DataFrame(_latencies(Table.of(requests)), index=getattr(requests, "index", None))


def _rate(count: float, duration_s: float) -> float:
    return float(count / duration_s) if duration_s > 0 else math.nan


def slo_metrics(lat, done: np.ndarray, slo: SLO, duration_s: float) -> dict[str, object]:
    """Goodput (req/s meeting the SLO) and attainment (fraction of all arrived requests); ``lat`` holds the
    columns of :func:`request_latencies`."""
    ms = {m: np.asarray(lat[f"{m}_s"], dtype=np.float64) * 1000.0 for m in SLO_METRICS}
    ms["tpot"] = np.nan_to_num(ms["tpot"], nan=0.0)  # one-token requests pass TPOT, as in vLLM
    passes = {m: done & (ms[m] <= limit) for m, limit in slo.limits_ms().items()}
    good = np.logical_and.reduce(list(passes.values()))
    arrived = len(done)
    out: dict[str, object] = {
        "slo": slo.as_dict(),
        "request_goodput": _rate(good.sum(), duration_s),
        "slo_attainment": float(good.sum() / arrived) if arrived else math.nan,
    }
    if slo.mode == "per-metric":
        for m, ok in passes.items():
            out[f"request_goodput_{m}"] = _rate(ok.sum(), duration_s)
            out[f"slo_attainment_{m}"] = float(ok.sum() / arrived) if arrived else math.nan
    return out


def summarize(
    requests: pd.DataFrame | Table,
    itl_s: np.ndarray,
    itl_weights: np.ndarray | None,
    duration_s: float,
    slo: SLO | None = None,
    *,
    gpus_total: int = 1,
    usd_per_hour_per_gpu: float = 0.0,
) -> dict[str, object]:
    """The run's summary: vLLM's keys plus queueing, preemptions, prefix-cache hits, SLO and cost.

    ``duration_s`` is first arrival to last finish, as the caller measures it; rejected requests
    (and any left unfinished) count as SLO failures in ``slo_attainment``.
    """
    check_columns(requests, (c for c in REQUEST_COLUMNS if c != "ideal_e2el_s"), "requests")
    t = Table.of(requests)
    itl_s = np.asarray(itl_s, dtype=np.float64)
    if itl_weights is not None and len(itl_weights) != len(itl_s):
        raise ValueError(f"itl_weights has {len(itl_weights)} entries for {len(itl_s)} ITL values")
    lat = _latencies(t)
    rejected = _rejected(t)
    done = ~rejected & ~np.isnan(_floats(t, "finish_s"))
    generated = np.asarray(t["generated_tokens"])
    gen = generated[done]
    inp = np.asarray(t["input_tokens"])[done]
    output_tokens = int(gen.sum())

    out: dict[str, object] = {}
    for name in ("ttft", "e2el"):
        out.update(latency_stats(name, lat[f"{name}_s"][done]))
    multi_token = done & (generated > 1)
    out.update(latency_stats("tpot", lat["tpot_s"][multi_token]))
    out.update(latency_stats("itl", itl_s, itl_weights))
    out.update(
        completed=int(done.sum()),
        rejected=int(rejected.sum()),
        duration=float(duration_s),
        total_input_tokens=int(inp.sum()),
        total_output_tokens=output_tokens,
        request_throughput=_rate(done.sum(), duration_s),
        output_throughput=_rate(output_tokens, duration_s),
        total_token_throughput=_rate(output_tokens + inp.sum(), duration_s),
    )

    scheduled = ~np.isnan(_floats(t, "first_scheduled_s"))
    queueing_ms = lat["queueing_s"][scheduled] * 1000.0
    preemptions = np.asarray(t["num_preemptions"])
    cached = np.asarray(t["cached_tokens"])[scheduled].sum()
    prompt = np.asarray(t["input_tokens"])[scheduled].sum()
    out.update(
        mean_queueing_delay_ms=float(queueing_ms.mean()) if len(queueing_ms) else math.nan,
        p99_queueing_delay_ms=float(percentile(queueing_ms, 99)) if len(queueing_ms) else math.nan,
        total_preemptions=int(preemptions.sum()),
        preempted_requests=int((preemptions > 0).sum()),
        prefix_cache_hit_rate=float(cached / prompt) if prompt > 0 else math.nan,
    )

    cost = gpus_total * usd_per_hour_per_gpu * duration_s / 3600.0
    out["cost_usd"] = float(cost)
    out["usd_per_million_output_tokens"] = float(cost / output_tokens * 1e6) if output_tokens else math.nan
    if slo is not None:
        out.update(slo_metrics(lat, done, slo, duration_s))
    return out


def summarize_timeline(timeline: pd.DataFrame | Table) -> dict[str, float]:
    """Time-weighted aggregates of the iteration timeline, over the time replicas were busy.

    Row values are per iteration; a row with ``steps`` > 1 stands for that many identical iterations.
    """
    check_columns(timeline, TIMELINE_COLUMNS, "timeline")
    timeline = Table.of(timeline)
    dt = _floats(timeline, "end_s") - _floats(timeline, "start_s")
    busy = float(dt.sum())
    kv_total = _floats(timeline, "kv_blocks_total")
    with np.errstate(divide="ignore", invalid="ignore"):
        kv_util = _floats(timeline, "kv_blocks_used") / kv_total

    def time_mean(x: np.ndarray) -> float:
        return float(np.dot(x, dt) / busy) if busy > 0 else math.nan

    waiting = _floats(timeline, "num_waiting")
    return {
        "iterations": int(np.asarray(timeline["steps"]).sum()),
        "busy_time_s": busy,
        "mean_batch_size": time_mean(_floats(timeline, "batch_size")),
        "mean_kv_utilization": time_mean(kv_util),
        "max_kv_utilization": float(np.nanmax(kv_util)) if len(kv_util) else math.nan,
        "mean_num_waiting": time_mean(waiting),
        "max_num_waiting": int(waiting.max()) if len(waiting) else 0,
    }


SATURATION_SERVED_FRACTION = 0.95  # served below this fraction of the offered rate ...
SATURATION_QUEUE_BUSY = 0.9  # ... with requests waiting through this fraction of the second half of the arrivals


def _waiting_at(timeline: Table, t: float) -> int:
    """Requests waiting over all replicas at time ``t``: each replica's count after its last step ending by t."""
    replica, waiting = np.asarray(timeline["replica"]), np.asarray(timeline["num_waiting"])
    done = np.nonzero(_floats(timeline, "end_s") <= t)[0]
    total = 0
    for r in sorted(set(replica[done].tolist())):
        total += int(waiting[done[replica[done] == r][-1]])
    return total


def _kahan_sum(values: list[float]) -> float:
    """Compensated sum, in the order given (pandas' groupby sum: the same bits as the summaries it gave)."""
    total = comp = 0.0
    for v in values:
        y = v - comp
        s = total + y
        comp = s - total - y
        total = s
    return total


def _queue_busy(timeline: Table, start_s: float, end_s: float) -> float:
    """The largest fraction, over replicas, of [start_s, end_s] during which requests were waiting."""
    start, end = _floats(timeline, "start_s"), _floats(timeline, "end_s")
    rows = (end > start_s) & (start < end_s)
    if not rows.any() or not end_s > start_s:
        return 0.0
    dt = np.minimum(end[rows], end_s) - np.maximum(start[rows], start_s)
    waited = dt * (np.asarray(timeline["num_waiting"])[rows] > 0)
    replica = np.asarray(timeline["replica"])[rows]
    best = max(_kahan_sum(waited[replica == r].tolist()) for r in sorted(set(replica.tolist())))
    return float(best / (end_s - start_s))


def saturation(requests: pd.DataFrame | Table, timeline: pd.DataFrame | Table, duration_s: float) -> dict[str, object]:
    """Did the deployment keep up? ``saturated`` when it served under 95% of the offered rate (completions over
    ``duration_s`` against arrivals over their span) *and* requests were waiting through at least 90% of the
    second half of the arrivals on some replica: a queue that never drained, whose latencies grow with the run's
    length. A short run that ends on long requests in flight has the shortfall without the queue; a burst that
    the running batch absorbs has neither.

    Returns ``saturated``, ``offered_rate`` and ``served_rate`` (requests/s), ``queue_busy_fraction`` and the
    waiting queue half-way through the arrivals and at the last one.
    """
    requests, timeline = Table.of(requests), Table.of(timeline)
    arrival = _floats(requests, "arrival_s")
    out: dict[str, object] = {"saturated": False, "offered_rate": math.nan, "served_rate": math.nan,
                              "queue_busy_fraction": 0.0, "waiting_at_half_arrivals": 0, "waiting_at_last_arrival": 0}
    if len(arrival) < 2 or not arrival.max() > arrival.min():
        return out
    t0, t1 = float(arrival.min()), float(arrival.max())
    tm = (t0 + t1) / 2
    offered = (len(arrival) - 1) / (t1 - t0)
    served = _rate(completed_mask(requests).sum(), duration_s)
    busy = _queue_busy(timeline, tm, t1)
    out.update(offered_rate=offered, served_rate=served, queue_busy_fraction=busy,
               waiting_at_half_arrivals=_waiting_at(timeline, tm), waiting_at_last_arrival=_waiting_at(timeline, t1),
               saturated=bool(served < SATURATION_SERVED_FRACTION * offered and busy >= SATURATION_QUEUE_BUSY))
    return out


SIZE_MEASURES = {
    "input_tokens": lambda r: r["input_tokens"],
    "output_tokens": lambda r: r["output_tokens"],
    "total": lambda r: r["input_tokens"] + r["output_tokens"],
}
SLOWDOWN_COLUMNS = (
    "bin", "size_min", "size_max", "count", "rejected",
    "mean_slowdown", "p50_slowdown", "p99_slowdown", "mean_ttft_ms", "mean_e2el_ms",
)


def slowdown_by_size(
    requests: pd.DataFrame, by: Literal["input_tokens", "output_tokens", "total"] = "total", bins: int = 5
) -> pd.DataFrame:
    """Slowdown (E2E over E2E alone on an idle replica) per request-size quantile bin.

    Bins are quantiles of the requested size over all arrived requests, so the same workload gives
    the same bins under every policy; statistics cover each bin's completed requests, and
    ``rejected`` counts the bin's rejections — the table that shows who SJF helps and who it starves.
    """
    if by not in SIZE_MEASURES:
        raise InputError(f"must be one of {sorted(SIZE_MEASURES)}, got {by!r}", field="by")
    if not isinstance(bins, int) or bins < 1:
        raise InputError(f"must be an integer >= 1, got {bins!r}", field="bins")
    import pandas as pd

    check_columns(requests, REQUEST_COLUMNS, "requests")
    requests = Table.of(requests)
    size = np.asarray(SIZE_MEASURES[by](requests), dtype=np.float64)
    if len(size) == 0:
        return pd.DataFrame(columns=SLOWDOWN_COLUMNS)
    codes, edges = pd.qcut(size, q=bins, labels=False, retbins=True, duplicates="drop")
    if len(edges) < 2:  # every request the same size: one bin
        codes, edges = np.zeros(len(size)), np.array([size[0], size[0]])
    lat = _latencies(requests)
    rejected = _rejected(requests)
    done = ~rejected & ~np.isnan(_floats(requests, "finish_s"))
    rows = []
    for i in range(len(edges) - 1):
        in_bin = codes == i
        sel = in_bin & done
        slow = lat["slowdown"][sel]
        slow = slow[~np.isnan(slow)]
        rows.append({
            "bin": i,
            "size_min": int(size[in_bin].min()) if in_bin.any() else int(edges[i]),
            "size_max": int(size[in_bin].max()) if in_bin.any() else int(edges[i + 1]),
            "count": int(sel.sum()),
            "rejected": int((in_bin & rejected).sum()),
            "mean_slowdown": float(slow.mean()) if len(slow) else math.nan,
            "p50_slowdown": float(np.percentile(slow, 50)) if len(slow) else math.nan,
            "p99_slowdown": float(np.percentile(slow, 99)) if len(slow) else math.nan,
            "mean_ttft_ms": float(lat["ttft_s"][sel].mean() * 1000) if sel.any() else math.nan,
            "mean_e2el_ms": float(lat["e2el_s"][sel].mean() * 1000) if sel.any() else math.nan,
        })
    return pd.DataFrame(rows, columns=SLOWDOWN_COLUMNS)
