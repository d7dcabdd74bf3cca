"""bench/quant_gemm.py's timed rows on the CPU interpreter at tiny shapes: every kernel gets the weights of its
width, the rows carry what the report reads, and the report renders them (the GPU run is the lead's)."""

from __future__ import annotations

import pytest

from tests.bench_helpers import load_bench

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

pytestmark = pytest.mark.interpret


@pytest.fixture(scope="module")
def bench():
    return load_bench("quant_gemm")


def _weights(bench, shapes):
    gen = torch.Generator().manual_seed(0)
    out = {}
    for n, k in shapes:
        w = (torch.randn(n, k, generator=gen) * 0.02).to(torch.bfloat16)
        out[(n, k)] = (w, *bench.quantize(w))
    return out


def test_shape_and_layer_rows_run_every_kernel_and_the_report_reads_them(bench):
    layer = [("qkv", 256, 128), ("o", 128, 128), ("gate_up", 384, 128), ("down", 128, 256)]
    weights = _weights(bench, [(n, k) for _, n, k in layer])
    shapes = {(256, 128): ["classic"], (384, 128): ["tiny TP1 gate_up"]}
    rows = bench.shape_rows(weights, shapes, [1, 3], 3e12, device="cpu")
    assert [(r["N"], r["K"], r["M"]) for r in rows] == [(256, 128, 1), (256, 128, 3), (384, 128, 1), (384, 128, 3)]
    assert all(r["w4_rel_err"] < 2e-2 for r in rows)
    assert all(r[f"{op}{sfx}_ms"] > 0 for r in rows for op in ("cublas", "w4", "w8") for sfx in ("", "_stream"))
    layers = bench.layer_rows(weights, [1, 2], 3e12, layers={("tiny", 1): layer}, device="cpu")
    assert [(r["model"], r["tp"], r["M"]) for r in layers] == [("tiny", 1, 1), ("tiny", 1, 2)]
    assert all(r["w4_stream_copy_frac"] > 0 for r in layers)
    meta = dict(card="cpu-smoke", date="2026-12-04", torch="x", triton="y", command="c", device_key="h100",
                floor_us={"cold_us": 5.0, "stream_us": 1.8}, tune_shapes=None, configs={})
    md = bench.report_md(meta, rows, layers, 3e12, None)
    assert "### N x K = 384 x 128 (tiny TP1 gate_up)" in md and "| tiny | 1 | 2 |" in md
    assert "## Targets (issue 17" in md  # an engine row is present


def test_a_layers_w8_launch_takes_the_int8_weights(bench, monkeypatch):
    """Each of a layer's W4/W8 launches gets the packed weights of its width (a swap ran W8 codes as W4 on the
    H200)."""
    layer = [("o", 128, 128)]
    weights = _weights(bench, [(128, 128)])
    seen = []
    monkeypatch.setattr(bench, "run_ours", lambda x, wq, bits, cfg: seen.append((bits, wq[0].shape[-1])))
    bench.layer_rows(weights, [1], 3e12, layers={("tiny", 1): layer}, device="cpu")
    assert set(seen) == {(4, 16), (8, 32)}  # int32 words per 128-wide K block: 16 for int4, 32 for int8


@pytest.mark.parametrize("bits", [4, 8])
def test_the_unsplit_gemv_candidates_compute_the_product(bench, bits):
    """Round 2's M = 1 candidates (K pipelined by Triton, split 1 or 2) on a ragged weight, as the sweep checks them
    before timing."""
    from servesim.kernels.quant import gemm as QG
    from servesim.kernels.quant import quantize as Q

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(72, 640, generator=gen)
    if bits == 4:
        q, s, z = Q.quantize_int4_groupwise(w, 128)
        packed, sz, gs = Q.pack_int4(q), Q.pack_scales_zeros(s, z), 128
        ref_w = Q.dequantize_w4_packed(packed, sz, 128, 640)
    else:
        q, scale = Q.quantize_int8_per_channel(w)
        packed, sz, gs = Q.pack_int8(q), scale, None
        ref_w = Q.dequantize_w8_packed(packed, sz, 640)
    x = torch.randn(1, 640, generator=gen).to(torch.bfloat16)
    ref = x.float() @ ref_w.t()
    for cfg in bench.NO_SPLIT_GEMV:
        assert cfg in bench.candidates(bits, "1")
        y = QG.quant_matmul(x, packed, sz, bits, gs, cfg)
        assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2, cfg
