"""The host speed of a measured run relative to the calibration host's, for validation to price with.

The device machine's host (CPU) speed varies between runs and within one: in the committed H200 suite the graph
decode steps' host time over the device span ranged from 0.76x to 1.95x the profile's fit, case by case
(``bench/host_speed.py``). Validation judges the cost model, not the host, so with ``--host-norm`` (off by
default: on the committed suite it helped TPOT and E2E and hurt some TTFT tails) it prices a run with the profile's
host-time terms scaled by how fast that run's host was (``CalibratedCostModel(host_speed=...)``).

The measure is the engine's own pure-Python scheduler: every iteration logs its ``schedule_s``, and calibration
recorded the same scheduler's time per step as ``base + per running + per waiting request``
(``StepFit.schedule_s``). The factor is the median over the run's steps of measured / reference. It tracks the
graph steps' host time across the suite's cases (correlation 0.98 without the speculative case) far better than
the launch probe beside the run (``case.host_launch_us``, one-element adds before and after: 0.49 for their mean),
which samples the host at two instants only.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

METHOD = "scheduler"  # median over the run's steps of schedule_s / the profile's StepFit.schedule_s at its load


def measure(iterations: pd.DataFrame, cost) -> dict:
    """The run's host-time factor against ``cost``'s profile (a calibrated cost model's ``step_fit``), with how it
    was measured: ``factor`` (1.0 where it cannot be measured, ``method`` then says why), ``method``, the run's
    median scheduler time and the reference's at the same steps (ms), and the steps used."""
    fit = getattr(cost, "step_fit", None)
    ref = tuple(getattr(fit, "schedule_s", ()) or ())
    if fit is None or not any(ref):
        return {"factor": 1.0, "method": "none: the profile records no scheduler reference (StepFit.schedule_s)"}
    if iterations is None or "schedule_s" not in iterations or not len(iterations):
        return {"factor": 1.0, "method": "none: the run's iterations hold no schedule_s"}
    a, b, c = ref
    want = a + b * iterations.num_running.to_numpy(np.float64) + c * iterations.num_waiting.to_numpy(np.float64)
    got = iterations.schedule_s.to_numpy(np.float64)
    ok = (want > 0) & np.isfinite(got) & (got > 0)
    if not ok.any():
        return {"factor": 1.0, "method": "none: no step with a positive scheduler time"}
    factor = float(np.median(got[ok] / want[ok]))
    if not (factor > 0 and math.isfinite(factor)):
        return {"factor": 1.0, "method": "none: the scheduler ratio is not a positive number"}
    return {"factor": round(factor, 4), "method": METHOD,
            "schedule_ms_median": round(float(np.median(got[ok])) * 1e3, 5),
            "reference_ms_median": round(float(np.median(want[ok])) * 1e3, 5), "steps": int(ok.sum()),
            "profile_host_launch_us": None if fit.host_launch_us is None else round(fit.host_launch_us, 3)}


def describe(info: dict) -> str:
    """One line for a report: the factor and how it was measured."""
    if info.get("method") != METHOD:
        return f"host speed {info.get('factor', 1.0):.3f} ({info.get('method')})"
    return (f"host speed {info['factor']:.3f}: the profile's host-time terms (overheads, eager and piecewise floors) "
            f"x {info['factor']:.3f}, the run's scheduler median {info['schedule_ms_median'] * 1e3:.1f} µs a step "
            f"against calibration's {info['reference_ms_median'] * 1e3:.1f} µs at the same loads "
            f"(median of {info['steps']:,} steps' ratios)")
