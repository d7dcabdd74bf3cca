"""One scenario -> one tidy row: the function every worker runs (a joblib process or a Dask worker).

A row holds every Scenario field, what the run used (``profile_id``: which cost model, so a table says
which figures are calibrated and which roofline; KV blocks; GPUs and their price) and the summary's
scalar metrics under their vLLM keys (under P/D each pool's too, ``POOL_COLUMNS``). A configuration that
cannot run (the model does not fit, TP does not divide the heads) is a row too, ``status = "infeasible"``
with the planner's reason; a crash is ``status = "error"`` (not cached, so a rerun retries it).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict

from servesim.errors import ConfigError
from servesim.sim.config import FIELD_GROUPS, Scenario

# The fields build_workload reads (the "Workload" group, plus the seed of synthetic arrivals).
WORKLOAD_FIELDS = (*FIELD_GROUPS["Workload"], "seed")
# Under P/D, each pool's figures and the KV transfers' (the summary's nested ``pd``) as flat row columns.
POOL_FIGURES = ("gpus", "busy_fraction", "mean_batch_size", "max_kv_utilization", "kv_blocks_per_replica")
TRANSFER_FIGURES = ("mean_kv_transfer_ms", "p99_kv_transfer_ms", "mean_kv_wait_ms", "p99_kv_wait_ms")
POOL_COLUMNS = (*(f"{pool}_{k}" for pool in ("prefill", "decode") for k in POOL_FIGURES), *TRANSFER_FIGURES)
_MEMO: OrderedDict[tuple, object] = OrderedDict()
_MEMO_SIZE = 16
_MEMO_LOCK = threading.Lock()  # Dask workers may run several threads in one process


def _scales(s: Scenario) -> bool:
    return s.arrival == "trace" and s.rate is not None


def workload_key(s: Scenario) -> tuple:
    """Scenarios with equal keys share one unscaled workload."""
    return tuple(getattr(s, f) for f in WORKLOAD_FIELDS if not (_scales(s) and f == "rate"))


def workload_for(s: Scenario):
    """The scenario's workload (what ``build_workload`` gives), built once per process for scenarios that
    differ only in deployment, and for a trace at its own times once for all rates (only scaling repeats)."""
    from servesim.sim import workload as wl
    from servesim.sim.deployment import build_workload

    scale = _scales(s)
    key = workload_key(s)
    with _MEMO_LOCK:
        w = _MEMO.get(key)
        if w is not None:
            _MEMO.move_to_end(key)
    if w is None:
        w = build_workload(s.model_copy(update={"rate": None}) if scale else s)
        with _MEMO_LOCK:
            _MEMO[key] = w
            while len(_MEMO) > _MEMO_SIZE:
                _MEMO.popitem(last=False)
    # build_workload scales last, so scaling the unscaled workload here is the same sequence of steps.
    return wl.scale_rate(w, s.rate) if scale else w


def scalar_summary(summary: dict) -> dict:
    """The summary's numbers and strings (nested entries such as the echoed ``slo`` dict left out)."""
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}


def pool_columns(pools: dict) -> dict:
    """The summary's ``pd`` entry (servesim.sim.disagg) as the flat POOL_COLUMNS of a row."""
    out = {f"{pool}_{k}": pools[pool][k] for pool in ("prefill", "decode") for k in POOL_FIGURES}
    out.update({k: pools["kv_transfer"][k] for k in TRANSFER_FIGURES})
    return out


def _base_row(s: Scenario) -> dict:
    return {**s.model_dump(mode="json"), "config_hash": s.config_hash()}


def evaluate(s: Scenario) -> tuple[dict, float, float]:
    """Simulate ``s``; its row, and the wall and CPU seconds it took (kept out of the row, so tables are
    reproducible)."""
    from servesim.sim.simulator import simulate

    started, cpu = time.perf_counter(), time.thread_time()
    row = _base_row(s)
    try:
        result = simulate(s, workload_for(s))
    except ConfigError as exc:
        row.update(status="infeasible", reason=str(exc))
        return row, time.perf_counter() - started, time.thread_time() - cpu
    except Exception as exc:  # a bug, not an answer: report it, keep the sweep going
        last = traceback.extract_tb(exc.__traceback__)[-1]
        row.update(status="error", reason=f"{type(exc).__name__}: {exc} ({last.filename}:{last.lineno})")
        return row, time.perf_counter() - started, time.thread_time() - cpu
    meta, summary = result.meta, result.summary
    gpus_per_replica = meta["gpus_total"] // s.replicas  # under P/D, one prefill:decode unit
    price = float(meta["usd_per_hour_per_gpu"])
    row.update(
        status="ok", reason="", profile_id=meta["profile_id"],
        cost_extrapolated=",".join(meta.get("cost_extrapolated", ())),  # terms priced outside the profile
        warnings="; ".join(meta.get("warnings", ())),  # e.g. a profile measured on another GPU, a roofline fallback
        gpus_per_replica=gpus_per_replica, gpus_total=meta["gpus_total"], usd_per_hour_per_gpu=price,
        usd_per_hour=price * meta["gpus_total"], kv_blocks_per_replica=meta["kv_blocks_per_replica"],
    )
    clash = set(summary) & set(row)
    if clash:
        raise RuntimeError(f"summary keys clash with row columns: {sorted(clash)}")
    row.update(scalar_summary(summary))
    if "pd" in summary:
        row.update(pool_columns(summary["pd"]))
    tpot = float(summary["mean_tpot_ms"])
    row["output_tokens_per_s_per_gpu"] = float(summary["output_throughput"]) / meta["gpus_total"]
    row["output_tokens_per_s_per_user"] = 1000.0 / tpot if tpot > 0 else float("nan")
    return row, time.perf_counter() - started, time.thread_time() - cpu


def evaluate_indexed(i: int, s: Scenario) -> tuple[int, dict, float, float]:
    """:func:`evaluate` tagged with the caller's index (results come back in completion order)."""
    return (i, *evaluate(s))
