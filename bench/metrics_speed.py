"""Metrics and output writers at a million requests: CPU time of summarize (with a 5M-value weighted ITL
sample), summarize_timeline, saturation, slowdown_by_size and write_outputs, on synthetic tables.

    python bench/metrics_speed.py        # one line per function (docs/outputs.md quotes it)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from servesim.sim.metrics import saturation, slowdown_by_size, summarize, summarize_timeline
from servesim.sim.outputs import write_outputs

N = 1_000_000
ITL_VALUES = 5_000_000


def tables(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A request table and a timeline of N rows each, over 100,000 s."""
    arrival = np.sort(rng.uniform(0, 100_000, N))
    ttft, e2el = rng.exponential(0.2, N), rng.exponential(3.0, N)
    out = rng.integers(2, 500, N)
    requests = pd.DataFrame({
        "request_id": np.arange(N), "replica": np.zeros(N, np.int64), "arrival_s": arrival,
        "input_tokens": rng.integers(10, 4000, N), "output_tokens": out, "generated_tokens": out,
        "cached_tokens": np.zeros(N, np.int64), "first_scheduled_s": arrival + ttft / 2,
        "first_token_s": arrival + ttft, "finish_s": arrival + ttft + e2el, "num_preemptions": np.zeros(N, np.int64),
        "rejected_reason": pd.array([""] * N, dtype="string"), "ideal_e2el_s": e2el / 2,
    })
    start = np.sort(rng.uniform(0, 100_000, N))
    timeline = pd.DataFrame({
        "replica": 0, "start_s": start, "end_s": start + 0.01, "steps": 1, "batch_size": 32, "prefill_tokens": 0,
        "decode_tokens": 32, "num_running": 32, "num_waiting": rng.integers(0, 5, N), "kv_blocks_used": 100,
        "kv_blocks_total": 1000,
    })
    return requests, timeline


def cpu_s(fn: Callable[[], object]) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    rng = np.random.default_rng(0)
    requests, timeline = tables(rng)
    itl, weights = rng.exponential(0.02, ITL_VALUES), rng.integers(1, 200, ITL_VALUES)
    summary = summarize(requests, itl, weights, 100_000.0)
    cases = {
        "summarize, 1M requests + 5M weighted ITL values": lambda: summarize(requests, itl, weights, 100_000.0),
        "summarize_timeline, 1M rows": lambda: summarize_timeline(timeline),
        "saturation, 1M requests and timeline rows": lambda: saturation(requests, timeline),
        "slowdown_by_size, 1M requests": lambda: slowdown_by_size(requests),
    }
    for label, fn in cases.items():
        print(f"{label}: {cpu_s(fn):.2f} s CPU")
    with tempfile.TemporaryDirectory() as d:
        t = cpu_s(lambda: write_outputs(f"{d}/run", requests, timeline, summary, {"version": "bench"}))
        print(f"write_outputs, 1M requests + 1M timeline rows: {t:.2f} s CPU")


if __name__ == "__main__":
    main()
