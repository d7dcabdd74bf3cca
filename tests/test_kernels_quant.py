"""Quantizers, packing and the W4A16 / W8A16 Triton kernels (CPU interpreter; `gpu` marker for CUDA)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from servesim.kernels.counters import SplitCounters  # noqa: E402
from servesim.kernels.quant import gemm as QG  # noqa: E402
from servesim.kernels.quant import quantize as Q  # noqa: E402
from servesim.kernels.quant.configs import CONFIGS, LARGE_W, LARGE_W_ELEMS, bucket, config_for, tables  # noqa: E402
from servesim.kernels.quant.linear import QuantLinear  # noqa: E402

DTYPES = [torch.bfloat16, torch.float16]
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}  # ||y - ref|| / ||ref||: dtype rounding of W and y


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weights(bits, gs, n, k, seed=0, device="cpu"):
    """(packed, sz, fp32 dequantized reference weight) for a random [n, k] weight."""
    w = torch.randn(n, k, generator=torch.Generator(device).manual_seed(seed), device=device)
    if bits == 8:
        q, scale = Q.quantize_int8_per_channel(w)
        packed = Q.pack_int8(q)
        return packed, scale, Q.dequantize_w8_packed(packed, scale, k)
    q, s, z = Q.quantize_int4_groupwise(w, gs)
    packed, sz = Q.pack_int4(q), Q.pack_scales_zeros(s, z)
    return packed, sz, Q.dequantize_w4_packed(packed, sz, gs, k)


def _rel(y, ref):
    assert torch.isfinite(y.float()).all()
    return ((y.float() - ref).norm() / ref.norm()).item()


# --------------------------------------------------------------------------------- quantizers
@pytest.mark.parametrize("k", [128, 200, 64 * 3])
def test_pack_roundtrip(k):
    g = _gen(1)
    q4 = torch.randint(0, 16, (5, k), generator=g, dtype=torch.uint8)
    q8 = torch.randint(-127, 128, (5, k), generator=g).to(torch.int8)
    p4, p8 = Q.pack_int4(q4), Q.pack_int8(q8)
    assert p4.shape == (-(-k // 128), 5, 16) and p8.shape == (-(-k // 128), 5, 32)
    assert torch.equal(Q.unpack_int4(p4, k), q4)
    assert torch.equal(Q.unpack_int8(p8, k), q8)


def test_pack_layout_is_block_major_with_code_j_of_word_p_at_k_eq_16j_plus_p():
    q = torch.zeros(3, 256, dtype=torch.uint8)
    q[2, 128 + 16 * 5 + 3] = 9  # row 2, block 1, code j = 5, word p = 3
    words = Q.pack_int4(q)
    assert words.is_contiguous() and words.shape == (2, 3, 16)
    assert int(words[1, 2, 3]) & 0xFFFFFFFF == 9 << 20
    assert int(words.abs().sum()) == 9 << 20


def test_int8_rtn_error_at_most_half_a_step():
    w = torch.randn(64, 300, generator=_gen(2)) * torch.rand(64, 1, generator=_gen(3))
    q, scale = Q.quantize_int8_per_channel(w)
    err = (w - Q.dequantize_int8_per_channel(q, scale)).abs()
    assert (err <= scale[:, None] / 2 * (1 + 1e-5)).all()
    assert q.abs().max() == 127  # the range is used


@pytest.mark.parametrize("gs", [64, 128])
def test_int4_rtn_error_at_most_half_a_step(gs):
    w = torch.randn(48, 512, generator=_gen(4)) + 0.3
    w[:, :gs] = 0.0  # an all-zero group
    q, s, z = Q.quantize_int4_groupwise(w, gs)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    assert s.dtype == torch.bfloat16 and s.shape == (48, 512 // gs)
    deq = Q.dequantize_int4_groupwise(q, s, z, gs)
    step = s.float().repeat_interleave(gs, dim=1)
    assert ((w - deq).abs() <= step / 2 * (1 + 1e-5)).all()
    assert torch.equal(deq[:, :gs], w[:, :gs])  # zero stays exactly zero
    sz = Q.pack_scales_zeros(s, z)
    assert torch.equal(Q.dequantize_w4_packed(Q.pack_int4(q), sz, gs, 512), deq)


def test_int4_rejects_ragged_groups():
    with pytest.raises(ValueError, match="in_features 4100 is not a multiple of group_size 128"):
        Q.quantize_int4_groupwise(torch.zeros(2, 4100), 128)


def test_awq_search_beats_rtn_on_outlier_channels():
    g = _gen(5)
    n, k = 96, 256
    w = torch.randn(n, k, generator=g)
    gain = torch.ones(k)
    gain[torch.randperm(k, generator=g)[:8]] = 30.0  # outlier input channels
    x_cal = torch.randn(512, k, generator=g) * gain
    x_test = torch.randn(512, k, generator=g) * gain
    q, s, z = Q.quantize_int4_groupwise(w, 128)
    rtn = Q.dequantize_int4_groupwise(q, s, z, 128)
    act, alpha = Q.awq_search_scales(w, x_cal, 128)
    qa, sa, za = Q.quantize_int4_groupwise(w * act, 128)
    awq = Q.dequantize_int4_groupwise(qa, sa, za, 128) / act
    ref = x_test @ w.t()
    e_rtn = (x_test @ rtn.t() - ref).norm()
    e_awq = (x_test @ awq.t() - ref).norm()
    assert alpha > 0
    assert e_awq < 0.9 * e_rtn  # held-out activations from the same distribution


# ------------------------------------------------------------------------------- kernels (CPU)
CASES = [  # (bits, group, M, N, K, config)
    (4, 128, 1, 40, 384, dict(kernel="gemv", BLOCK_N=32, num_warps=4, split_k=1)),
    (4, 128, 1, 40, 384, dict(kernel="gemv", BLOCK_N=32, num_warps=4, split_k=2, DENORM=False)),
    (4, 64, 1, 40, 192, dict(kernel="gemv", BLOCK_N=32, num_warps=4, split_k=2, PREFETCH=0)),
    (4, 128, 1, 40, 640, dict(kernel="gemv", BLOCK_N=32, num_warps=4, split_k=2, PREFETCH=2)),
    (8, None, 1, 33, 200, dict(kernel="gemv", BLOCK_N=32, num_warps=4, split_k=2)),
    (4, 128, 3, 40, 384, dict(kernel="gemm", BLOCK_M=16, BLOCK_N=32, num_warps=4, split_k=3)),
    (4, 64, 17, 33, 192, dict(kernel="gemm", BLOCK_M=16, BLOCK_N=32, num_warps=4, split_k=1, JOIN=False)),
    (4, 128, 70, 24, 256, dict(kernel="gemm", BLOCK_M=32, BLOCK_N=16, num_warps=4, split_k=1, GROUP_M=2)),
    (4, 128, 17, 40, 384, dict(kernel="gemm", BLOCK_M=16, BLOCK_N=64, num_warps=4, split_k=2, SWAP=True)),
    (4, 64, 70, 40, 192, dict(kernel="gemm", BLOCK_M=32, BLOCK_N=64, num_warps=4, split_k=1, SWAP=True,
                              JOIN=False)),
    (4, 64, 17, 40, 256, dict(kernel="gemm", BLOCK_M=16, BLOCK_N=32, num_warps=4, split_k=2, DENORM=False)),
    (8, None, 3, 40, 200, dict(kernel="gemm", BLOCK_M=16, BLOCK_N=32, num_warps=4, split_k=2, SWAP=True)),
    (8, None, 70, 33, 128, dict(kernel="gemm", BLOCK_M=32, BLOCK_N=16, num_warps=4, split_k=1, JOIN=False)),
    # x prefetched with the weights; EVEN (unmasked, clamped prefetch) and ragged N / K
    (4, 128, 1, 64, 384, dict(kernel="gemv", BLOCK_N=32, num_warps=4, split_k=2, XPF=True)),
    (4, 64, 1, 40, 192, dict(kernel="gemv", BLOCK_N=32, num_warps=4, split_k=1, XPF=True, PREFETCH=2)),
    (8, None, 1, 64, 200, dict(kernel="gemv", BLOCK_N=32, num_warps=4, split_k=2, XPF=True)),
    (8, None, 1, 64, 256, dict(kernel="gemv", BLOCK_N=32, num_warps=4, split_k=2, XPF=True, PREFETCH=2)),
    # scale/zero words prefetched past a split of 3 blocks (fill: 132 * 0.1 // 2 tiles = 6 -> kb // 2 = 3)
    (4, 64, 1, 64, 768, dict(kernel="gemv", BLOCK_N=32, num_warps=4, fill=0.1, XPF=True, PREFETCH=2)),
    # group scale applied after the dot (DEQ 1; fp16 falls back to DEQ 0), joined and per-slice
    (4, 128, 17, 40, 384, dict(kernel="gemm", BLOCK_M=16, BLOCK_N=64, num_warps=4, split_k=2, SWAP=True, DEQ=1)),
    (4, 128, 5, 40, 256, dict(kernel="gemm", BLOCK_M=16, BLOCK_N=32, num_warps=4, split_k=1, DEQ=1, JOIN=False)),
    (4, 64, 17, 40, 384, dict(kernel="gemm", BLOCK_M=16, BLOCK_N=64, num_warps=4, split_k=2, SWAP=True, DEQ=2)),
    (4, 64, 5, 40, 256, dict(kernel="gemm", BLOCK_M=16, BLOCK_N=32, num_warps=4, split_k=1, DEQ=1, DENORM=False)),
    (8, None, 3, 40, 200, dict(kernel="gemm", BLOCK_M=16, BLOCK_N=32, num_warps=4, split_k=2, SWAP=True, DEQ=1)),
    (4, 128, 33, 40, 256, dict(kernel="gemm", BLOCK_M=0, BLOCK_N=32, num_warps=4, split_k=1, SWAP=True, DEQ=1)),
    # DEQ 3 (PTX, GPU only) runs as DEQ 0 here: the launcher's mapping is what this checks
    (4, 64, 40, 40, 256, dict(kernel="gemm", BLOCK_M=32, BLOCK_N=32, num_warps=4, split_k=1, SWAP=True, DEQ=3)),
]


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("bits,gs,m,n,k,config", CASES)
def test_kernel_matches_dequantize_then_matmul(bits, gs, m, n, k, config, dtype):
    packed, sz, w = _weights(bits, gs, n, k, seed=m + n)
    x = torch.randn(m, k, generator=_gen(m)).to(dtype)
    y = QG.quant_matmul(x, packed, sz, bits, gs, config)
    assert y.shape == (m, n) and y.dtype == dtype
    assert _rel(y, x.float() @ w.t()) < TOL[dtype]


@pytest.mark.interpret
def test_split_k_is_deterministic_and_leaves_counters_zero():
    packed, sz, _ = _weights(4, 128, 40, 512)
    x = torch.randn(2, 512, generator=_gen(7)).to(torch.bfloat16)
    cfg = dict(kernel="gemm", BLOCK_M=16, BLOCK_N=16, num_warps=4, split_k=4)
    counters = SplitCounters(x.device)  # the caller's state, reused by both launches
    y1 = QG.quant_matmul(x, packed, sz, 4, 128, cfg, counters)
    y2 = QG.quant_matmul(x, packed, sz, 4, 128, cfg, counters)
    assert torch.equal(y1, y2) and torch.equal(y1, QG.quant_matmul(x, packed, sz, 4, 128, cfg))  # fresh zeros
    assert int(counters.take(3).abs().sum()) == 0


def test_auto_split_targets_waves_and_keeps_blocks_per_split():
    assert QG._auto_split(tiles=112, kb=64, waves=4, sms=132) == 8  # 896 CTAs >= 528
    assert QG._auto_split(tiles=16, kb=32, waves=4, sms=132) == 16  # capped: 2 K blocks per split
    assert QG._auto_split(tiles=16, kb=8, waves=4, sms=132) == 4
    assert QG._auto_split(tiles=1000, kb=64, waves=1, sms=132) == 1


def test_fill_split_gives_one_resident_wave_and_keeps_blocks_per_split():
    assert QG._fill_split(tiles=112, kb=64, fill=3, sms=132) == 3  # 336 CTAs <= 396 slots (not 4: 448)
    assert QG._fill_split(tiles=224, kb=64, fill=6, sms=132) == 3
    assert QG._fill_split(tiles=16, kb=32, fill=3, sms=132) == 16  # capped: 2 K blocks per split
    assert QG._fill_split(tiles=1000, kb=64, fill=3, sms=132) == 1


def test_bytes_and_flops_closed_form():
    assert QG.quant_gemm_flops(2, 3, 4) == 48
    # 28672 x 8192 int4 g128: 117.4 MB codes + 2 bytes x 2 per group for scale/zero
    n, k = 28672, 8192
    assert QG.quant_gemm_bytes(1, n, k, 4, 128) == n * k // 2 + 2 * n * 64 * 2 + 2 * (k + n)
    assert QG.quant_gemm_bytes(1, n, k, 8, None) == n * k + 4 * n + 2 * (k + n)


def test_every_bucket_has_a_config():
    assert [bucket(m) for m in (1, 2, 16, 17, 64, 65, 256, 257)] == ["1", "16", "16", "64", "64", "256",
                                                                     "256", "large"]
    for bits in (4, 8):
        for m in (1, 16, 64, 256, 1024):
            assert config_for(bits, m) is CONFIGS[(bits, bucket(m))]


def test_large_weights_take_the_override_only_at_or_above_the_threshold():
    assert LARGE_W and all(key in CONFIGS for key in LARGE_W)
    big, small = (28672, 8192), (8192, 8192)  # 235M and 67M weights: the sweep's evidence on either side
    assert big[0] * big[1] >= LARGE_W_ELEMS > small[0] * small[1]
    for (bits, bkt), cfg in LARGE_W.items():
        m = {"1": 1, "16": 16, "64": 64, "256": 256, "large": 1024}[bkt]
        assert config_for(bits, m, *big) is cfg
        assert config_for(bits, m, *small) is CONFIGS[(bits, bkt)]
        assert config_for(bits, m) is CONFIGS[(bits, bkt)]  # no shape: the bucket's config
        assert config_for(bits, m, LARGE_W_ELEMS, 1) is cfg  # the boundary belongs to the override
        assert config_for(bits, m, LARGE_W_ELEMS - 1, 1) is CONFIGS[(bits, bkt)]
    for bits in (4, 8):  # buckets without an override keep theirs at any size
        for m in (16, 64, 256, 1024):
            if (bits, bucket(m)) not in LARGE_W:
                assert config_for(bits, m, *big) is CONFIGS[(bits, bucket(m))]


@pytest.mark.interpret
@pytest.mark.parametrize("key", sorted(LARGE_W), ids=lambda k: f"W{k[0]}-{k[1]}")
def test_large_weight_configs_run_correctly(key):
    """The override configs on a small (ragged) weight: same kernel paths as on the large one."""
    bits, bkt = key
    gs = 128 if bits == 4 else None
    m = {"1": 1, "16": 5, "64": 40, "256": 70, "large": 300}[bkt]
    packed, sz, w = _weights(bits, gs, 300, 640, seed=21)
    x = torch.randn(m, 640, generator=_gen(22)).to(torch.bfloat16)
    y = QG.quant_matmul(x, packed, sz, bits, gs, LARGE_W[key])
    assert _rel(y, x.float() @ w.t()) < TOL[torch.bfloat16]


# ----------------------------------------------------------------------------------- QuantLinear
@pytest.mark.interpret
@pytest.mark.parametrize("weight_dtype", ["int4", "int8"])
def test_quant_linear_matches_its_dequantized_weight(weight_dtype):
    w = torch.randn(48, 256, generator=_gen(8))
    bias = torch.randn(48, generator=_gen(9)).to(torch.bfloat16)
    layer = QuantLinear.from_float(w, weight_dtype, group_size=128, bias=bias)
    x = torch.randn(2, 3, 256, generator=_gen(10)).to(torch.bfloat16)
    y = layer(x)
    ref = x.float() @ layer.dequantized_weight().t() + bias.float()
    assert y.shape == (2, 3, 48)
    assert _rel(y, ref) < TOL[torch.bfloat16]
    assert _rel(layer.dequantized_weight(), w) < (0.1 if weight_dtype == "int4" else 0.01)


@pytest.mark.interpret
def test_quant_linear_awq_input_scale():
    g = _gen(11)
    w = torch.randn(32, 256, generator=g)
    x_cal = torch.randn(64, 256, generator=g) * (1 + 20 * (torch.rand(256, generator=g) > 0.97))
    layer = QuantLinear.from_float(w, "int4", 128, x_calib=x_cal)
    assert layer.input_scale is not None and layer.input_scale.shape == (256,)
    x = x_cal[:1].to(torch.bfloat16)
    ref = (x.float() / layer.input_scale) @ layer.dequantized_weight().t()
    assert _rel(layer(x), ref) < TOL[torch.bfloat16]


def test_quant_linear_errors_name_the_problem():
    with pytest.raises(ValueError, match="in_features 4100 is not a multiple of group_size 128"):
        QuantLinear.from_float(torch.zeros(8, 4100), "int4", 128)
    layer = QuantLinear.from_float(torch.randn(8, 256), "int4", 64)
    with pytest.raises(ValueError, match="packed weight has shape \\(2, 8, 16\\), expected \\(4, 8, 16\\)"):
        QuantLinear(512, 8, "int4", layer.packed, layer.scales, 64)
    with pytest.raises(ValueError, match="int4 scales must be int32 scale/zero words of shape \\(2, 8\\)"):
        QuantLinear(256, 8, "int4", layer.packed, layer.scales, 128)
    with pytest.raises(ValueError, match="input has 255 features, QuantLinear expects 256"):
        layer(torch.zeros(1, 255, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="float16 or bfloat16 activations, got torch.float32"):
        layer(torch.zeros(1, 256))
    with pytest.raises(ValueError, match="weight_dtype must be one of"):
        QuantLinear.from_float(torch.zeros(8, 256), "int3")


# ----------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("bits,gs", [(4, 128), (4, 64), (8, None)])
@pytest.mark.parametrize("m", [1, 3, 16, 33, 128, 300, 1024])
def test_gpu_tuned_kernels_match_reference(bits, gs, m, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    n, k = 14336, 4096
    packed, sz, w = _weights(bits, gs, n, k, seed=m, device="cuda")
    x = torch.randn(m, k, device="cuda").to(dtype)
    y = QG.quant_matmul(x, packed, sz, bits, gs, config_for(bits, m))
    assert _rel(y, x.float() @ w.t()) < TOL[dtype]
    override = tables().large_w.get((bits, bucket(m)))  # this GPU's (servesim/kernels/tuned.py)
    if override is not None:  # the large-weight config, on this (smaller) shape
        assert _rel(QG.quant_matmul(x, packed, sz, bits, gs, override), x.float() @ w.t()) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("config", [
    dict(kernel="gemv", BLOCK_N=128, num_warps=4, split_k=8, DENORM=False),
    dict(kernel="gemm", BLOCK_M=16, BLOCK_N=64, num_warps=4, num_stages=3, split_k=4, JOIN=False),
    dict(kernel="gemm", BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=3, split_k=1, DENORM=False),
    dict(kernel="gemm", BLOCK_M=16, BLOCK_N=128, num_warps=4, num_stages=3, split_k=2, SWAP=True),
    dict(kernel="gemm", BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=3, split_k=1, SWAP=True, JOIN=False),
    dict(kernel="gemv", BLOCK_N=128, num_warps=4, num_stages=3, split_k=2, PREFETCH=0),
    dict(kernel="gemv", BLOCK_N=128, num_warps=4, split_k=3, PREFETCH=2),
    dict(kernel="gemv", BLOCK_N=64, num_warps=4, split_k=4, PREFETCH=2, XPF=True),
    dict(kernel="gemv", BLOCK_N=128, num_warps=4, split_k=5, XPF=True, EVEN=False),
    dict(kernel="gemv", BLOCK_N=256, num_warps=4, fill=3, XPF=True),
    dict(kernel="gemm", BLOCK_M=16, BLOCK_N=64, num_warps=4, num_stages=3, split_k=4, SWAP=True, DEQ=1),
    dict(kernel="gemm", BLOCK_M=16, BLOCK_N=64, num_warps=4, num_stages=3, split_k=4, SWAP=True, DEQ=2),
    dict(kernel="gemm", BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=3, split_k=2, DEQ=2),
    dict(kernel="gemm", BLOCK_M=16, BLOCK_N=64, num_warps=4, num_stages=3, split_k=2, SWAP=True, DEQ=2, JOIN=False),
    dict(kernel="gemm", BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, split_k=1, SWAP=True, DEQ=3),
    dict(kernel="gemm", BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=3, split_k=2, DEQ=3, JOIN=False),
])
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("gs", [128, 64])
def test_gpu_kernel_variants_match_reference(config, gs, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    packed, sz, w = _weights(4, gs, 4096 + 64, 4096 + 128, seed=3, device="cuda")
    m = 1 if config["kernel"] == "gemv" else 37
    x = torch.randn(m, 4096 + 128, device="cuda").to(dtype)
    y = QG.quant_matmul(x, packed, sz, 4, gs, config)
    assert _rel(y, x.float() @ w.t()) < TOL[dtype]
