"""Quantized GEMMs priced by their launch load (``OpTable.launch_load``): the staircase between grid points."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from servesim.calibrate.fit import interpolated
from servesim.calibrate.launch import gemm_launch_load, launch_runs, with_launch_loads
from servesim.hwmodels.calibrated import CalibratedCostModel, staircase
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import get_model
from servesim.hwmodels.ops import decode_shape, prefill_shape
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.profile import OpTable
from tests.profile_helpers import synthetic_profile

H200 = get_gpu("H200")


def _value(nodes, m):
    return float(np.interp(m, *nodes))


def test_staircase_is_exact_at_the_grid_flat_in_a_launch_shape_and_jumps_where_one_starts():
    xs, ys = [1.0, 8.0, 16.0, 32.0], [1.0, 2.0, 4.0, 5.0]
    runs = ((1.0, 1.0), (10.0, 3.0), (13.0, 5.0))  # two rises inside (8, 16]; none inside (16, 32]
    nodes = staircase(xs, ys, runs)
    assert [_value(nodes, x) for x in xs] == ys
    assert _value(nodes, 9) == 2.0  # before the first rise: the segment's start
    assert _value(nodes, 10) == pytest.approx(2.0 + 2.0 * (3 - 1) / (5 - 1))  # the rise spread by load
    assert _value(nodes, 13) == _value(nodes, 15) == 4.0
    assert _value(nodes, 24) == pytest.approx(4.5)  # no launch change: linear in M
    dense = [_value(nodes, m) for m in range(1, 33)]
    assert all(b >= a for a, b in zip(dense, dense[1:]))  # monotone between monotone points
    assert staircase(xs, ys, ()) == (xs, ys)


def test_h200_launch_load_steps_by_waves_not_row_tiles():
    # W4A16 large-M config: 256-row tiles x 32 column tiles, one CTA per SM: M = 257..1024 is one wave of 132
    load = [gemm_launch_load(4, m, 4096, 14336, "h200", H200.sm_count) for m in (300, 512, 1024, 1025, 2048, 2049)]
    assert load[0] == load[1] == load[2] < load[3] == load[4] < load[5]
    runs = launch_runs({"format": "w4a16", "n": 4096, "k": 14336}, 2048, "h200", H200.sm_count)
    assert runs[0][0] == 1.0 and all(b[0] > a[0] and b[1] != a[1] for a, b in zip(runs, runs[1:]))


def test_with_launch_loads_covers_our_quantized_gemms_only_and_not_cpu_profiles():
    p = synthetic_profile()
    tables = with_launch_loads(p.tables, "NVIDIA H200")
    for t in tables:
        assert bool(t.launch_load) == (t.op == "gemm" and t.key["format"] == "w4a16")
    assert with_launch_loads(p.tables, "cpu") == list(p.tables)


@pytest.fixture(scope="module")
def stepped():
    p = synthetic_profile()  # noise-free: monotone grids
    return p, p.model_copy(update={"tables": tuple(with_launch_loads(p.tables, "NVIDIA H200"))})


def test_cost_model_with_launch_steps_keeps_grid_points_and_decode_runs_bit_exact(stepped):
    plain, steps = stepped
    place = Placement(get_model("Llama-3.1-8B"), H200, weight_format="w4a16")
    a, b = CalibratedCostModel(place, plain), CalibratedCostModel(place, steps)
    grid = sorted({x for t in plain.tables_of("gemm") for x in t.grid[0]})
    for m in grid:  # exact at the grid's token counts (the same operators, summed in another table)
        assert b.operators_s(prefill_shape(int(m), 0)) == pytest.approx(a.operators_s(prefill_shape(int(m), 0)),
                                                                         rel=1e-12)
    ts = [b.operators_s(prefill_shape(m, 0)) for m in range(1, 2049)]
    assert all(y >= x * (1 - 1e-12) for x, y in zip(ts, ts[1:]))  # monotone where the grid is
    for bs, c, n in ((7, 3000, 300), (91, 700, 50)):
        s = replace(decode_shape(bs, c), decode_ctx_max=int(c * 1.5))
        one = [b.step_time_s(replace(s, decode_ctx_tokens=s.decode_ctx_tokens + i * bs,
                                     decode_ctx_max=s.decode_ctx_max + i)) for i in range(n)]
        assert b.decode_run_s(s, n).tolist() == one


def test_fit_report_prices_held_out_points_on_the_launch_steps():
    t = OpTable(op="gemm", key={"format": "w4a16", "n": 4096, "k": 14336}, axes=("m",), grid=((256.0, 512.0),),
                median_s=(1.0, 2.0), p20_s=(1.0, 2.0), p80_s=(1.0, 2.0), held_out_points=((300.0,),),
                held_out_s=(2.0,), launch_load=((1.0, 1.0), (257.0, 2.0)))
    assert interpolated(t, (300.0,)) == 2.0  # 257..512 is one launch shape: the value of 512
    assert interpolated(t.model_copy(update={"launch_load": ()}), (300.0,)) == pytest.approx(1 + 44 / 256)
