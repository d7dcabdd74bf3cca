"""A finished run's tables and summary: the same ``Result`` from the simulator and from the engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from servesim import __version__
from servesim.hwmodels.ops import decode_shape, prefill_shape
from servesim.sim.config import Scenario
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import SLO, saturation, summarize, summarize_timeline
from servesim.sim.table import Table
from servesim.sim.workload import Workload

if TYPE_CHECKING:
    import pandas as pd


class Result:
    """Everything one simulation produced (the same shapes the engine produces). ``requests`` and ``timeline``
    are pandas DataFrames, built from the run's tables on first use (``request_table`` and ``timeline_table``
    read them without pandas)."""

    def __init__(self, scenario: Scenario, requests: pd.DataFrame | Table, timeline: pd.DataFrame | Table,
                 itl_s: np.ndarray, itl_weights: np.ndarray, summary: dict, meta: dict) -> None:
        self.scenario, self.itl_s, self.itl_weights, self.summary, self.meta = (
            scenario, itl_s, itl_weights, summary, meta)
        self._requests, self._timeline = requests, timeline

    @property
    def requests(self) -> pd.DataFrame:
        if isinstance(self._requests, Table):
            self._requests = self._requests.frame()
        return self._requests

    @requests.setter
    def requests(self, value: pd.DataFrame | Table) -> None:
        self._requests = value

    @property
    def timeline(self) -> pd.DataFrame:
        if isinstance(self._timeline, Table):
            self._timeline = self._timeline.frame()
        return self._timeline

    @timeline.setter
    def timeline(self, value: pd.DataFrame | Table) -> None:
        self._timeline = value

    @property
    def request_table(self) -> Table:
        return Table.of(self._requests)

    @property
    def timeline_table(self) -> Table:
        return Table.of(self._timeline)


def ideal_e2el(dep: Deployment, requests: pd.DataFrame | Table, decode: Deployment | None = None,
               handoff_s: Callable[[int], float] | None = None) -> np.ndarray:
    """Each request's E2E latency alone on an idle replica (chunked prefill as configured); under P/D, the
    prompt alone on ``dep`` (the prefill pool), ``handoff_s(prompt)`` (its KV transfer), the rest on ``decode``."""
    cost, budget = dep.cost, dep.scheduler.max_num_batched_tokens
    decode_cost = cost if decode is None else decode.cost
    chunked = dep.scheduler.batching == "chunked"
    prompts = np.asarray(requests["input_tokens"]).tolist()
    outputs = np.asarray(requests["output_tokens"]).tolist()
    # A lone decode step's time depends on its context alone, so one vector call prices every context once:
    # step_s[c - 1] is the step at context c, the same bits as each request's own decode_run_s.
    longest = max((p + o - 1 for p, o in zip(prompts, outputs) if o > 1), default=0)
    step_s = decode_cost.decode_run_s(decode_shape(1, 1), longest) if longest else np.zeros(0)
    prefill_memo: dict[int, float] = {}
    memo: dict[tuple[int, int], float] = {}
    out = np.full(len(requests), np.nan)
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        key = (p, o)
        if key not in memo:
            t = prefill_memo.get(p)
            if t is None:
                t, done = 0.0, 0
                while done < p:
                    chunk = min(p - done, budget) if chunked else p - done
                    s = prefill_shape(chunk, done)
                    t += cost.step_time_s(s if done + chunk == p else replace(s, sampled_tokens=0))
                    done += chunk
                prefill_memo[p] = t
            if o > 1:
                if handoff_s is not None:
                    t += handoff_s(p)
                t += float(step_s[p:p + o - 1].sum())  # contexts p + 1 .. p + o - 1
            memo[key] = t
        out[i] = memo[key]
    return out


def finish_run(scenario: Scenario, dep: Deployment, w: Workload, requests: pd.DataFrame | Table,
               timeline: pd.DataFrame | Table,
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
