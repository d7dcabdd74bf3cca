"""Host speed (issue 16): the calibrated cost model's host-time factor, its scenario field, the run's measured
factor (servesim.validate.hostspeed) and the reports that carry the unnormalised errors beside (CPU, no torch)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from servesim.hwmodels.buckets import PieceBuckets
from servesim.hwmodels.calibrated import CalibratedCostModel
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import get_model
from servesim.hwmodels.ops import decode_shape, prefill_shape
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.profile import load_profile, shipped_profiles
from servesim.validate import hostspeed
from tests.profile_helpers import synthetic_profile

PLACE = Placement(get_model("Llama-3.1-8B"), get_gpu("H200"))
MIXED = replace(decode_shape(16, 900), prefill_seqs=1, prefill_tokens=256, prefill_ctx_tokens=1256,
                prefill_attn_pairs=256 * 1000 + 256 * 257 / 2, sampled_tokens=17)
SHAPES = [decode_shape(1, 512), decode_shape(64, 2048), prefill_shape(1000, 300), prefill_shape(1, 1),
          decode_shape(300, 100), MIXED, replace(MIXED, prefill_tokens=1, prefill_attn_pairs=1001.0)]


@pytest.fixture(scope="module", params=["synthetic", "h200"])
def profile(request):
    return synthetic_profile(noise=0.02) if request.param == "synthetic" else load_profile(shipped_profiles()["H200"])


@pytest.mark.parametrize("pieces", [None, PieceBuckets.for_limits(2048, 256)])
def test_host_speed_one_prices_bit_for_bit_as_without_it(profile, pieces):
    a = CalibratedCostModel(PLACE, profile, piecewise=pieces)
    b = CalibratedCostModel(PLACE, profile, piecewise=pieces, host_speed=1.0)
    assert [a.step_time_s(s) for s in SHAPES] == [b.step_time_s(s) for s in SHAPES]
    s = decode_shape(7, 3000)
    assert a.decode_run_s(s, 300).tolist() == b.decode_run_s(s, 300).tolist()


@pytest.mark.parametrize("pieces", [None, PieceBuckets.for_limits(2048, 256)])
@pytest.mark.parametrize("h", [0.8, 1.7])
def test_host_speed_scales_overheads_and_floors_not_device_time(profile, pieces, h):
    base = CalibratedCostModel(PLACE, profile, piecewise=pieces)
    fast = CalibratedCostModel(PLACE, profile, piecewise=pieces, host_speed=h)
    floors = 0
    for s in SHAPES:
        a, b = base.step_time(s), fast.step_time(s)
        assert b.overhead_s == pytest.approx(h * a.overhead_s, rel=1e-12)
        assert b.total_s == fast.step_time_s(s)
        for op in ("qkv", "attn_decode", "attn_prefill", "step_gap", "piecewise_gap", "padding"):
            assert b.op_s.get(op) == a.op_s.get(op)  # device time: unchanged
        # the floor the step is priced against scales: kernels + gap + floor excess
        floor_a = sum(a.op_s.values()) if a.op_s.get("eager_floor", 0) or a.op_s.get("piecewise_floor", 0) else None
        floor_b = sum(b.op_s.values()) if b.op_s.get("eager_floor", 0) or b.op_s.get("piecewise_floor", 0) else None
        if floor_a is not None and floor_b is not None:
            assert floor_b == pytest.approx(h * floor_a, rel=1e-9)
            floors += 1
    assert floors or h < 1 or not profile.provenance.host_launch_us  # the H200's one-token prefill: floor-bound


def test_a_floor_bound_step_scales_whole():
    p = synthetic_profile()
    p = p.model_copy(update={"steps": {f: s.model_copy(update={"eager_floor_s": 0.5, "eager_floor_mixed_s": 0.5})
                                       for f, s in p.steps.items()}})
    s = prefill_shape(1000, 300)
    base, slow = CalibratedCostModel(PLACE, p), CalibratedCostModel(PLACE, p, host_speed=1.5)
    assert base.step_time(s).op_s["eager_floor"] > 0
    assert slow.step_time_s(s) == pytest.approx(1.5 * base.step_time_s(s), rel=1e-12)


def test_fast_forward_stays_exact_at_another_host_speed(profile):
    m = CalibratedCostModel(PLACE, profile, host_speed=1.37)
    for b, c, n in ((1, 100, 50), (7, 3000, 400), (300, 500, 20)):
        s = replace(decode_shape(b, c), decode_ctx_max=int(c * 1.7))
        one = [m.step_time_s(replace(s, decode_ctx_tokens=s.decode_ctx_tokens + i * b,
                                     decode_ctx_max=s.decode_ctx_max + i)) for i in range(n)]
        assert m.decode_run_s(s, n).tolist() == one


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_host_speed_must_be_a_positive_factor(bad):
    with pytest.raises(ValueError, match="host_speed"):
        CalibratedCostModel(PLACE, synthetic_profile(), host_speed=bad)


def test_scenario_field_reaches_the_cost_models():
    from servesim.errors import InputError
    from servesim.sim.config import make_scenario
    from servesim.sim.deployment import build_deployment

    base = {"model": "Llama-3.1-8B", "gpu": "H200", "spec_k": 2}
    assert build_deployment(make_scenario(base)).cost.host_speed == 1.0  # capacity planning: as calibrated
    dep = build_deployment(make_scenario({**base, "host_speed": 1.25}))
    assert dep.cost.host_speed == 1.25 and dep.draft_cost.host_speed == 1.25
    with pytest.raises(InputError):
        make_scenario({**base, "host_speed": 0})


def _log(n: int, factor: float, ref) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    running, waiting = rng.integers(1, 128, n), rng.integers(0, 40, n)
    sched = factor * (ref[0] + ref[1] * running + ref[2] * waiting) * rng.uniform(0.95, 1.05, n)
    return pd.DataFrame({"num_running": running, "num_waiting": waiting, "schedule_s": sched})


def test_measure_recovers_the_scheduler_ratio_and_says_how():
    cost = CalibratedCostModel(PLACE, load_profile(shipped_profiles()["H200"]))
    ref = cost.step_fit.schedule_s
    assert all(v > 0 for v in ref)  # the shipped profile records calibration's scheduler time
    info = hostspeed.measure(_log(500, 1.6, ref), cost)
    assert info["method"] == hostspeed.METHOD and info["factor"] == pytest.approx(1.6, rel=0.02)
    assert info["steps"] == 500 and info["reference_ms_median"] > 0
    assert "1.6" in hostspeed.describe(info)
    assert hostspeed.measure(_log(10, 1.6, ref).drop(columns="schedule_s"), cost)["factor"] == 1.0
    bare = CalibratedCostModel(PLACE, synthetic_profile())  # no scheduler reference: not normalised
    info = hostspeed.measure(_log(10, 1.6, ref), bare)
    assert info["factor"] == 1.0 and info["method"].startswith("none")


def test_schedule_fit_is_the_reference_calibration_writes():
    pytest.importorskip("torch")
    from servesim.calibrate.run import schedule_fit

    ref = (3e-5, 4e-7, 8e-7)
    fit = schedule_fit(_log(2000, 1.0, ref))
    assert fit == pytest.approx(ref, rel=0.1)
    assert schedule_fit(pd.DataFrame({"num_running": [1]})) == (0.0, 0.0, 0.0)


def test_reports_carry_the_factor_and_the_unnormalised_errors(tmp_path):
    from servesim.validate.report import Report, load_report, markdown, write_report
    from servesim.validate.suite import suite_row, suite_table

    rows = [{"metric": "tpot", "stat": "p50", "key": "median_tpot_ms", "predicted": 11.0, "measured": 10.0,
             "error": 0.1}]
    raw = {"host_speed": 1.0, "metrics": [{**rows[0], "predicted": 9.0, "error": -0.1}],
           "summary": {"max_abs_tail_error": 0.1}, "iteration_modes": []}
    info = {"factor": 1.3, "method": hostspeed.METHOD, "schedule_ms_median": 0.05, "reference_ms_median": 0.04,
            "steps": 10, "profile_host_launch_us": 7.4}
    req = pd.DataFrame({"request_id": [1], **{f"{c}_{side}": [0.1] for c in ("arrival_s", "ttft_s", "tpot_s", "e2el_s")
                                              for side in ("pred", "meas")}})
    r = Report(title="t", case={"host_speed": info}, metrics=rows, requests=req, summary={"max_abs_tail_error": 0.1},
               unnormalised=raw)
    md = markdown(r)
    assert "host speed 1.300" in md and "predicted at host speed 1 | its error" in md and "-10.0%" in md
    write_report(r, tmp_path / "c")
    back = load_report(tmp_path / "c")
    assert back.unnormalised == raw and back.case["host_speed"] == info
    row = suite_row("c", "why", back.to_json())
    assert row["host_speed"] == 1.3 and row["unnormalised"]["median_tpot_ms_error"] == -0.1
    assert "host speed |" in suite_table([row]) and "1.300" in suite_table([row])
    assert "host speed" not in suite_table([{k: v for k, v in row.items() if k != "host_speed"}])
