"""Time the cost models' hot path (``step_time_s``) and ``decode_run_s``, roofline and calibrated; prints a table.

The roofline's ``step_time_s`` remembers the part of a step that depends on its token count alone; the warm
column repeats one shape (what a simulation mostly sees: token counts repeat), the cold column forgets before
every call.

Run: ``.venv/bin/python bench/cost_speed.py``. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import platform
import time

import numpy as np

from servesim.hwmodels.buckets import PieceBuckets
from servesim.hwmodels.calibrated import CalibratedCostModel
from servesim.hwmodels.cost import CostModel
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import get_model
from servesim.hwmodels.ops import BatchShape, decode_shape
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.profile import load_profile, shipped_profiles


def _per_call_us(fn, arg, n: int = 200_000, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(arg)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def _cold_us(cm, arg, n: int = 50_000, repeats: int = 5) -> float:
    """step_time_s with the roofline's per-token-count memo cleared before each call (nan for other models)."""
    memo = getattr(cm, "_tok_memo", None)
    if memo is None:
        return float("nan")
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            memo.clear()
            cm.step_time_s(arg)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    mixed = BatchShape(prefill_seqs=1, prefill_tokens=512, prefill_attn_pairs=512 * 1000 + 512 * 513 / 2,
                       prefill_ctx_tokens=1512, decode_seqs=40, decode_query_tokens=40, decode_ctx_tokens=60_000,
                       sampled_tokens=41)
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"{'config':50} {'step_time_s µs':>15} {'cold µs':>8} {'step_time µs':>13} "
          f"{'decode_run_s(1000) µs/step':>27}")
    h200 = load_profile(shipped_profiles()["H200"])
    models = [("roofline", CostModel(Placement(get_model(m), get_gpu(g), tp=tp)), f"{m} on {g} tp={tp}")
              for m, g, tp in (("Llama-3.1-8B", "H100-SXM", 1), ("Llama-3.1-70B", "H100-SXM", 4),
                               ("Mixtral-8x7B", "H100-SXM", 2))]
    models += [("calibrated", CalibratedCostModel(Placement(get_model(m), get_gpu("H200"), weight_format=f), h200),
                f"{m} {f} on H200") for m, f in (("Llama-3.1-8B", "bf16"), ("Llama-3.1-8B", "w4a16"),
                                                 ("Qwen2.5-7B", "bf16"))]
    pieces = PieceBuckets.for_limits(2048, 128)  # the mixed step of 552 tokens runs padded to 576 rows
    models += [("calibrated", CalibratedCostModel(Placement(get_model("Llama-3.1-8B"), get_gpu("H200")), h200,
                                                  piecewise=pieces), "Llama-3.1-8B bf16 on H200, piecewise")]
    for kind, cm, label in models:
        hot, full = _per_call_us(cm.step_time_s, mixed), _per_call_us(cm.step_time, mixed, n=20_000)
        cold = _cold_us(cm, mixed)
        dec = decode_shape(64, 1000)
        t0 = time.perf_counter()
        for _ in range(1000):
            cm.decode_run_s(dec, 1000)
        run_us = (time.perf_counter() - t0) / 1000 / 1000 * 1e6
        assert np.isclose(cm.decode_run_s(dec, 1)[0], cm.step_time_s(dec))
        print(f"{kind + ': ' + label:50} {hot:15.2f} {cold:8.2f} {full:13.1f} {run_us:27.3f}")


if __name__ == "__main__":
    main()
