"""The calibration profile format and the calibrated cost model, on a synthetic profile (no GPU, no torch)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from servesim.errors import InputError
from servesim.hwmodels.calibrated import CalibratedCostModel, ProfileMismatch
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import get_model
from servesim.hwmodels.ops import BatchShape, decode_shape, prefill_shape
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.profile import VERSION, load_profile, save_profile
from tests.profile_helpers import synthetic_profile

H200 = get_gpu("H200")


@pytest.fixture(scope="module")
def profile():
    return synthetic_profile(noise=0.02)


@pytest.fixture(scope="module")
def model(profile):
    return CalibratedCostModel(Placement(get_model("Llama-3.1-8B"), H200), profile)


def test_profile_round_trip(profile, tmp_path):
    path = tmp_path / "p.json"
    save_profile(profile, path)
    assert load_profile(path) == profile
    assert json.loads(path.read_text())["schema"] == "servesim-profile"


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.update(version=VERSION + 1), "version"),
    (lambda d: d.update(schema="something-else"), "schema"),
    (lambda d: d["tables"][0].update(median_s=[-1.0] * len(d["tables"][0]["median_s"])), "tables.0"),
    (lambda d: d["tables"][0].update(grid=[[4, 2, 1]]), "tables.0"),
    (lambda d: d.pop("provenance"), "provenance"),
    (lambda d: d["tables"][0].update(held_out_points=[[3.0]], held_out_s=[]), "tables.0"),
    (lambda d: d["tables"][0].update(held_out_points=[[3.0, 4.0]], held_out_s=[1e-5]), "tables.0"),
])
def test_malformed_profiles_are_one_line_errors_naming_the_field(profile, tmp_path, mutate, field):
    d = json.loads(json.dumps(profile.model_dump(mode="json", by_alias=True)))
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(InputError) as e:
        load_profile(path)
    assert str(path) in str(e.value) and field in str(e.value) and "\n" not in str(e.value)


def test_missing_and_invalid_json_files(tmp_path):
    with pytest.raises(InputError, match="no such profile file"):
        load_profile(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_profile(tmp_path / "x.json")


def test_interpolation_is_exact_at_grid_points_and_monotone_between(profile, model):
    # Token-proportional ops: each GEMM grid point gives the profile's own sum (plus nothing else).
    t = profile.table("gemm", format="bf16", n=6144, k=4096)
    layers = model.layers
    for i, m in enumerate(t.grid[0]):
        assert model.layers * np.interp(m, model._tx, model._token_parts["qkv"]) / layers == pytest.approx(
            t.median_s[i], rel=1e-12)
    dec = profile.table("attn_decode", kv_dtype="bf16", q_heads=32, kv_heads=8, head_dim=128)
    nb = len(dec.grid[1])
    for i, b in enumerate(dec.grid[0]):
        for j, c in enumerate(dec.grid[1]):
            assert model._decode(b, c) == pytest.approx(dec.median_s[i * nb + j], rel=1e-12)
    # monotone in context between points for a monotone table
    cs = np.linspace(64, 32768, 400)
    vals = [model._decode(8, c) for c in cs]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    ms = np.linspace(1, 8192, 500)
    tok = [model.step_time_s(BatchShape(prefill_seqs=1, prefill_tokens=int(m), prefill_ctx_tokens=int(m),
                                        prefill_attn_pairs=m * (m + 1) / 2, sampled_tokens=1)) for m in ms]
    assert all(b >= a * (1 - 1e-12) for a, b in zip(tok, tok[1:]))


@pytest.mark.parametrize("piecewise", [False, True])
def test_step_time_equals_its_breakdown(profile, model, piecewise):
    """Graph, eager and (with the engine's piecewise buckets: tests/test_piecewise_pricing.py) piecewise steps."""
    from servesim.hwmodels.buckets import PieceBuckets

    if piecewise:
        model = CalibratedCostModel(Placement(get_model("Llama-3.1-8B"), H200), profile,
                                    piecewise=PieceBuckets.for_limits(2048, 256))
    shapes = [decode_shape(1, 512), decode_shape(64, 2048), prefill_shape(1000, 300), decode_shape(300, 100),
              replace(decode_shape(16, 900), prefill_seqs=1, prefill_tokens=256, prefill_ctx_tokens=1256,
                      prefill_attn_pairs=256 * 1000 + 256 * 257 / 2, sampled_tokens=17)]
    assert not piecewise or [model.step_mode(s) for s in shapes] == ["graph", "graph", "eager", "eager", "piecewise"]
    for s in shapes:
        st = model.step_time(s)
        assert st.total_s == model.step_time_s(s)
        assert st.total_s == pytest.approx(st.overhead_s + sum(st.op_s.values()), rel=1e-9)
        assert st.total_s > 0


@pytest.mark.parametrize("weight,pairs", [(0.0, ()), (0.47, ()), (0.4, ((8.0, 0.5), (32.0, 0.33), (128.0, 0.07)))])
def test_decode_run_is_bit_exact_with_stepping(profile, weight, pairs):
    model = CalibratedCostModel(Placement(get_model("Llama-3.1-8B"), H200),
                                profile.model_copy(update={"decode_max_weight": weight, "decode_max_weights": pairs}))
    for b, c, n in ((1, 100, 50), (7, 3000, 400), (256, 30000, 40), (300, 500, 20)):  # graph, long, beyond grid
        s = replace(decode_shape(b, c), decode_ctx_max=int(c * 1.7))  # ragged: the longest is 1.7x the mean
        run = model.decode_run_s(s, n)
        one = [model.step_time_s(replace(s, decode_ctx_tokens=s.decode_ctx_tokens + i * b,
                                         decode_ctx_max=s.decode_ctx_max + i)) for i in range(n)]
        assert run.tolist() == one


def test_extrapolation_is_flagged(profile):
    m = CalibratedCostModel(Placement(get_model("Llama-3.1-8B"), H200), profile)
    assert not m.extrapolated
    m.step_time_s(prefill_shape(16000))
    assert "tokens(grid)" in m.extrapolated and "tokens(grid)" in m.step_time(prefill_shape(17000)).extrapolated
    assert "tokens(grid)" in m.step_time(prefill_shape(16000)).extrapolated  # a remembered token count too
    other = CalibratedCostModel(Placement(get_model("Qwen2.5-7B"), H200), profile)  # shapes not in the profile
    assert {"qkv(shape)", "attn_decode(shape)"} <= other.extrapolated
    assert other.step_time(decode_shape(8, 1000)).extrapolated
    # the scaled nearest shape is still in the right range (within 2x of the roofline-shaped truth)
    truth = CalibratedCostModel(Placement(get_model("Qwen2.5-7B"), H200),
                                synthetic_profile(models=("Qwen2.5-7B",), noise=0.0))
    for s in (decode_shape(8, 1000), prefill_shape(2000)):
        assert 0.5 < other.step_time_s(s) / truth.step_time_s(s) < 2


def test_missing_format_is_refused(profile):
    with pytest.raises(ProfileMismatch, match="w8a16"):
        CalibratedCostModel(Placement(get_model("Llama-3.1-8B"), H200, weight_format="w8a16"), profile)


def test_eager_steps_never_take_less_than_the_floor(model):
    tiny = prefill_shape(1)
    st = model.step_time(tiny)
    assert st.total_s >= model._eager_floor
    assert model.step_time_s(decode_shape(4, 100)) < model.step_time_s(replace(decode_shape(4, 100), prefill_seqs=1,
                                                                              prefill_tokens=1, prefill_ctx_tokens=1,
                                                                              prefill_attn_pairs=1, sampled_tokens=5))


def test_ragged_decode_weight_is_recovered_from_ragged_tables(profile):
    """Ragged tables made by pricing the uniform table at mean + 0.3 (longest - mean) give back w = 0.3."""
    from servesim.calibrate.fit import fit_max_weight
    from servesim.calibrate.grid import ragged_lengths
    from servesim.hwmodels.calibrated import _Grid2
    from servesim.hwmodels.profile import OpTable

    u = profile.table("attn_decode", kv_dtype="bf16")
    g = _Grid2(u)
    grid = ((8.0, 32.0, 128.0), (512.0, 2048.0, 8192.0))
    med = []
    for b in grid[0]:
        for c in grid[1]:
            lens = ragged_lengths(int(b), int(c), 0.9)
            mean = sum(lens) / len(lens)
            med.append(g(b, mean + 0.3 * (max(lens) - mean)))
    ragged = OpTable(op="attn_decode_ragged", key={**u.key, "spread": "0.9"}, axes=("batch", "context"), grid=grid,
                     median_s=tuple(med), p20_s=tuple(med), p80_s=tuple(med))
    w, err = fit_max_weight([u, ragged])
    assert w == pytest.approx(0.3, abs=0.011) and err["median_abs"] < 0.01
    model = CalibratedCostModel(Placement(get_model("Llama-3.1-8B"), H200),
                                profile.model_copy(update={"decode_max_weight": w}))
    flat, tilted = decode_shape(32, 2048), replace(decode_shape(32, 2048), decode_ctx_max=3800)
    assert model.step_time_s(tilted) > model.step_time_s(flat)  # the longest sequence costs


def test_ragged_decode_weights_per_batch_are_recovered_and_interpolated_in_log_batch(profile):
    """Ragged tables priced at a different weight per batch (0.5 at 8, 0.3 at 32, 0.1 at 128) give those weights
    back; between batches the weight is linear in log2(batch), held beyond; the cost model prices a wide ragged
    batch with its own weight, where the one fitted weight overprices it."""
    from servesim.calibrate.fit import fit_max_weight, fit_max_weights, refit
    from servesim.calibrate.grid import ragged_lengths
    from servesim.hwmodels.calibrated import _Grid2, max_weight_at
    from servesim.hwmodels.profile import OpTable

    u = profile.table("attn_decode", kv_dtype="bf16")
    g = _Grid2(u)
    grid = ((8.0, 32.0, 128.0), (512.0, 2048.0, 8192.0))
    true = {8.0: 0.5, 32.0: 0.3, 128.0: 0.1}
    med = []
    for b in grid[0]:
        for c in grid[1]:
            lens = ragged_lengths(int(b), int(c), 0.9)
            mean = sum(lens) / len(lens)
            med.append(g(b, mean + true[b] * (max(lens) - mean)))
    ragged = OpTable(op="attn_decode_ragged", key={**u.key, "spread": "0.9"}, axes=("batch", "context"), grid=grid,
                     median_s=tuple(med), p20_s=tuple(med), p80_s=tuple(med))
    pairs, err = fit_max_weights([u, ragged])
    assert [b for b, _ in pairs] == [8.0, 32.0, 128.0]
    assert all(w == pytest.approx(true[b], abs=0.011) for b, w in pairs) and err["median_abs"] < 0.01
    _, one = fit_max_weight([u, ragged])
    assert one["p90_abs"] > 3 * err["p90_abs"]  # one weight for every batch misprices some of them
    assert max_weight_at(pairs, 4) == pairs[0][1] and max_weight_at(pairs, 512) == pairs[-1][1]
    assert max_weight_at(pairs, 16) == pytest.approx((pairs[0][1] + pairs[1][1]) / 2)  # halfway in log2
    both = profile.model_copy(update={"tables": (*(t for t in profile.tables if t.op != "attn_decode_ragged"), ragged)})
    fitted = refit(both)
    assert fitted.decode_max_weights == pairs and any("by batch" in k for k in fitted.fit.ops)
    per_batch = CalibratedCostModel(Placement(get_model("Llama-3.1-8B"), H200), fitted)
    single = CalibratedCostModel(Placement(get_model("Llama-3.1-8B"), H200),
                                 fitted.model_copy(update={"decode_max_weights": ()}))
    wide = replace(decode_shape(128, 1000), decode_ctx_max=1900)
    lens = ragged_lengths(128, 1000, 0.9)
    assert per_batch._decode_s(wide) < single._decode_s(wide)  # 0.1 against the pooled weight
    assert per_batch._decode_s(wide) == pytest.approx(
        per_batch.layers * g(128, 1000 + max_weight_at(pairs, 128) * 900), rel=1e-9)
    assert len(lens) == 128


def test_extrapolation_is_proportional_and_positive_even_after_a_falling_segment():
    """Noisy timings can make the last measured segment fall; past the grid the time grows in proportion to the
    axis from the last point instead of continuing that slope below zero."""
    from servesim.hwmodels.calibrated import _extend, _lerp

    xs, ys = _extend([1.0, 32.0, 64.0], [5e-6, 9e-6, 7e-6])
    assert _lerp(xs, ys, 64.0) == pytest.approx(7e-6) and _lerp(xs, ys, 0.5) == pytest.approx(5e-6)
    assert _lerp(xs, ys, 640.0) == pytest.approx(7e-5, rel=1e-9)  # 10x the last point's axis: 10x its time
    assert all(_lerp(xs, ys, x) > 0 for x in (0, 100, 1e4, 1e7))


def test_off_grid_points_lie_between_grid_values():
    from servesim.calibrate.grid import Table, build_grid, off_grid_points

    tables = build_grid(["Llama-3.1-8B"], ("bf16",), ("bf16",), (1,))
    for t in tables:
        pts = off_grid_points(t)
        if t.op == "attn_decode_ragged":
            assert pts == []
            continue
        assert pts, t
        for p in pts:
            for v, g in zip(p, t.grid, strict=True):
                assert g[0] < v < g[-1] and v not in g
        if len(t.grid) == 1:  # every other interval: about half of them
            assert len(t.grid[0]) // 2 - 2 <= len(pts) <= len(t.grid[0]) // 2 + 1
        else:  # a checkerboard of the cells (less those of an interval with no integer inside, e.g. 1-2)
            cells = (len(t.grid[0]) - 1) * (len(t.grid[1]) - 1)
            assert cells // 2 - len(t.grid[1]) <= len(pts) <= cells // 2 + 1
        assert t.cost_points == t.points + len(pts)
    gemm = Table("gemm", (("format", "bf16"), ("k", 4096), ("n", 4096)), ("m",), ((1, 2, 4, 8, 16),))
    assert set(off_grid_points(gemm)) <= {(3,), (6,), (11,)}


def _table(op, grid, f, held):
    import itertools

    from servesim.hwmodels.profile import OpTable
    pts = list(itertools.product(*grid))
    med = tuple(f(*p) for p in pts)
    return OpTable(op=op, key={"hidden": 4096} if op == "rms_norm" else {"kv_dtype": "bf16", "q_heads": 32,
                                                                         "kv_heads": 8, "head_dim": 128},
                   axes=("tokens",) if op == "rms_norm" else ("batch", "context"), grid=grid, median_s=med,
                   p20_s=med, p80_s=med, held_out_points=tuple(held), held_out_s=tuple(f(*p) for p in held))


def test_held_out_error_is_zero_where_the_interpolation_is_exact_and_the_step_where_it_is_not():
    from servesim.calibrate.fit import held_out_errors, held_out_method

    grid = ((1.0, 2.0, 4.0, 8.0, 16.0),)
    linear = _table("rms_norm", grid, lambda m: 2e-6 + 1e-7 * m, [(3.0,), (11.0,)])
    errs = held_out_errors([linear])
    assert errs["rms_norm"]["median_abs"] == pytest.approx(0.0, abs=1e-12) and errs["rms_norm"]["points"] == 2
    step = _table("rms_norm", grid, lambda m: 1e-5 if m <= 8 else 2e-5, [(11.0,)])  # jumps at 8 < 11 <= 16
    # measured 2e-5 at 11; priced between (8, 1e-5) and (16, 2e-5): 1e-5 + 1e-5 * 3/8
    assert held_out_errors([step])["rms_norm"]["median_abs"] == pytest.approx(1 - 1.375 / 2)
    grid2 = ((1.0, 4.0, 16.0), (64.0, 256.0, 1024.0))
    exact = _table("attn_decode", grid2, lambda b, c: 1e-6 * b * c + 1e-8 * c, [(2.0, 128.0), (8.0, 512.0)])
    assert held_out_errors([exact])["attn_decode"]["median_abs"] == pytest.approx(0.0, abs=1e-12)  # bilinear
    # b^2 is not: at b = 2 (between 1 and 4) the table reads 1 + (16 - 1) / 3 = 6 against 4 measured
    curved = _table("attn_decode", grid2, lambda b, c: 1e-6 * b * b, [(2.0, 128.0)])
    assert held_out_errors([curved])["attn_decode"]["median_abs"] == pytest.approx(0.5)
    assert held_out_method([linear, step]) == "off-grid"
    bare = linear.model_copy(update={"held_out_points": (), "held_out_s": ()})
    assert held_out_method([linear, bare]) == "off-grid" and held_out_method([bare]) == "leave-one-out"
    assert held_out_errors([bare])["rms_norm"]["points"] == 3  # interior points from their neighbours


def test_quantized_gemm_tables_are_timed_at_the_first_m_of_each_launch_bucket():
    """W8A16/W4A16 GEMMs change launch config at the quant kernel's M buckets; the grid times each bucket's first
    M so interpolation never prices a bucket's rows at the previous one's tile (bf16 keeps the plain grid)."""
    from servesim.calibrate.grid import GEMM_M, QUANT_BUCKET_EDGES, build_grid

    pytest.importorskip("triton")
    from servesim.kernels.quant.configs import bucket

    assert all(bucket(m - 1) != bucket(m) for m in QUANT_BUCKET_EDGES)
    assert {bucket(m) for m in range(2, 2000)} == {bucket(m) for m in (2, *QUANT_BUCKET_EDGES)}  # every edge named
    tables = [t for t in build_grid(["Llama-3.1-8B"], tps=(1,)) if t.op == "gemm"]
    for t in tables:
        fmt = t.keyd["format"]
        assert set(QUANT_BUCKET_EDGES) <= set(t.grid[0]) if fmt != "bf16" else t.grid[0] == GEMM_M
