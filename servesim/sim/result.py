"""A finished run's tables and summary: the same ``Result`` from the simulator and from the engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from servesim import __version__
from servesim.hwmodels.ops import decode_shape, prefill_shape
from servesim.sim.config import Scenario
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import SLO, saturation, summarize, summarize_timeline
from servesim.sim.workload import Workload


@dataclass
class Result:
    """Everything one simulation produced (the same shapes the engine produces)."""

    scenario: Scenario
    requests: pd.DataFrame
    timeline: pd.DataFrame
    itl_s: np.ndarray
    itl_weights: np.ndarray
    summary: dict
    meta: dict


def ideal_e2el(dep: Deployment, requests: pd.DataFrame, decode: Deployment | None = None,
               handoff_s: Callable[[int], float] | None = None) -> np.ndarray:
    """Each request's E2E latency alone on an idle replica (chunked prefill as configured); under P/D, the
    prompt alone on ``dep`` (the prefill pool), ``handoff_s(prompt)`` (its KV transfer), the rest on ``decode``."""
    cost, budget = dep.cost, dep.scheduler.max_num_batched_tokens
    decode_cost = cost if decode is None else decode.cost
    chunked = dep.scheduler.batching == "chunked"
    memo: dict[tuple[int, int], float] = {}
    out = np.full(len(requests), np.nan)
    for i, (p, o) in enumerate(zip(requests["input_tokens"].tolist(), requests["output_tokens"].tolist())):
        key = (p, o)
        if key not in memo:
            t, done = 0.0, 0
            while done < p:
                chunk = min(p - done, budget) if chunked else p - done
                s = prefill_shape(chunk, done)
                t += cost.step_time_s(s if done + chunk == p else replace(s, sampled_tokens=0))
                done += chunk
            if o > 1:
                if handoff_s is not None:
                    t += handoff_s(p)
                t += float(decode_cost.decode_run_s(decode_shape(1, p + 1), o - 1).sum())
            memo[key] = t
        out[i] = memo[key]
    return out


def finish_run(scenario: Scenario, dep: Deployment, w: Workload, requests: pd.DataFrame, timeline: pd.DataFrame,
               itl_s: np.ndarray, itl_weights: np.ndarray, first_arrival_s: float, last_finish_s: float,
               started: float, extra_meta: dict | None = None) -> Result:
    """Summarize a run's request and timeline tables (vLLM metric keys) and stamp its metadata."""
    if "ideal_e2el_s" not in requests.columns:  # P/D runs bring their own (two pools and a transfer)
        requests["ideal_e2el_s"] = ideal_e2el(dep, requests)
    duration = max(0.0, last_finish_s - first_arrival_s) if len(requests) else 0.0
    slo = None
    if scenario.slo_ttft_ms or scenario.slo_tpot_ms or scenario.slo_e2el_ms:
        slo = SLO(scenario.slo_ttft_ms, scenario.slo_tpot_ms, scenario.slo_e2el_ms, scenario.slo_mode)
    summary = summarize(requests, itl_s, itl_weights, duration, slo,
                        gpus_total=dep.gpus_total, usd_per_hour_per_gpu=dep.usd_per_gpu_hour)
    summary.update(summarize_timeline(timeline))
    summary.update(saturation(requests, timeline, duration))
    meta = {
        "version": __version__,
        "config_hash": scenario.config_hash(),
        "seed": scenario.seed,
        "profile_id": dep.cost.profile_id,
        "cost_extrapolated": sorted(getattr(dep.cost, "extrapolated", ())),  # terms priced outside the profile
        "scenario": scenario.model_dump(mode="json"),
        "workload": {"name": w.name, "source": w.source, "requests": len(w), "notes": list(w.notes)},
        "kv_blocks_per_replica": dep.num_blocks,
        "gpus_total": dep.gpus_total,
        "usd_per_hour_per_gpu": dep.usd_per_gpu_hour,
        "warnings": list(dep.warnings),
        "wall_time_s": time.perf_counter() - started,
        **(extra_meta or {}),
    }
    return Result(scenario, requests, timeline, itl_s, itl_weights, summary, meta)
