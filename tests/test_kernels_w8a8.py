"""W8A8: per-token int8 activation quantization and the int8 x int8 scaled GEMM against their torch references
(CPU interpreter at small ragged shapes; `gpu` marker for CUDA at model shapes)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from servesim.kernels.counters import SplitCounters  # noqa: E402
from servesim.kernels.quant import quantize as Q  # noqa: E402
from servesim.kernels.quant import w8a8 as W  # noqa: E402
from servesim.kernels.quant.configs import bucket  # noqa: E402

DTYPES = [torch.bfloat16, torch.float16]
# ||y - ref|| / ||ref|| of the 16-bit output (the interpreter truncates fp32 -> bf16; a GPU rounds)
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rel(y, ref) -> float:
    assert torch.isfinite(y.float()).all()
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def _weight(n, k, seed, device="cpu"):
    w = torch.randn(n, k, generator=torch.Generator(device).manual_seed(seed), device=device)
    return Q.quantize_int8_per_channel(w)


def _check_codes(x, q, s):
    """Codes and scales as the reference gives them; a code may differ by one only at a rounding tie."""
    rq, rs = W.act_quant_ref(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert torch.allclose(s, rs, rtol=1e-6, atol=0)
    diff = (q.int() - rq.int()).abs()
    assert int(diff.max()) <= 1
    xf = x.reshape(-1, x.shape[-1]).float()
    v = xf * torch.where(rs > 0, 1 / rs.clamp_min(1e-30), 0)[:, None]
    frac = (v - v.floor() - 0.5).abs()
    assert (frac[diff > 0] < 1e-3).all()  # only values within 1e-3 of a half-integer
    assert int(q.abs().max()) <= 127


# ------------------------------------------------------------------------------------- act_quant (CPU)
@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [*DTYPES, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("m,k,block_k", [(1, 200, 1024), (5, 384, 128), (17, 130, 64)])
def test_act_quant_matches_reference(m, k, block_k, dtype):
    x = (torch.randn(m, k, generator=_gen(m + k)) * torch.rand(m, 1, generator=_gen(1)) * 10).to(dtype)
    x[0, 3] = 0.0
    q, s = W.act_quant(x, block_k=block_k)
    assert q.shape == (m, k) and s.shape == (m,)
    _check_codes(x, q, s)
    amax = x.float().abs().amax(1)
    assert torch.equal(q.abs().amax(1).int(), torch.full((m,), 127, dtype=torch.int32))  # each row's range is used
    assert torch.allclose(s * 127, amax, rtol=1e-6)


@pytest.mark.interpret
def test_act_quant_zero_row_and_leading_dims():
    x = torch.randn(2, 3, 64, generator=_gen(2)).to(torch.bfloat16)
    x[1, 2] = 0.0
    q, s = W.act_quant(x)
    assert q.shape == (6, 64)
    assert float(s[5]) == 0.0 and int(q[5].abs().sum()) == 0
    _check_codes(x, q, s)


# --------------------------------------------------------------------------------------- GEMM (CPU)
CASES = [  # (M, N, K, config): ragged M, N, K against the tiles; split K; SWAP; grouped order
    (1, 40, 200, None),
    (3, 33, 256, None),
    (17, 40, 130, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, num_warps=4, split_k=1)),
    (40, 24, 384, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, num_warps=4, split_k=3, GROUP_M=2)),
    (5, 64, 384, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, num_warps=4, split_k=2, SWAP=True)),
    (33, 40, 256, dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=128, num_warps=4, waves=4)),
    (70, 48, 128, dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, split_k=1, SWAP=True)),
]


@pytest.mark.interpret
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("m,n,k,config", CASES)
def test_scaled_mm_is_the_exact_integer_product_scaled(m, n, k, config, bias):
    """fp32 out: the int32 accumulation is exact and the epilogue multiplies in the reference's order."""
    qx = torch.randint(-127, 128, (m, k), generator=_gen(m)).to(torch.int8)
    sx = torch.rand(m, generator=_gen(3)) / 100
    qw, sw = _weight(n, k, seed=n)
    b = torch.randn(n, generator=_gen(4)) if bias else None
    y = W.int8_scaled_mm(qx, sx, qw, sw, torch.float32, b, config)
    ref = W.int8_scaled_mm_ref(qx, sx, qw, sw, torch.float32, b)
    assert y.shape == (m, n)
    split = (config or W.config_for(m)).get("split_k", 1)
    if split == 1 and not (config or {}).get("waves"):
        assert torch.equal(y, ref)
    else:  # partials summed in fp32
        assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("m,n,k,config", CASES[:5])
def test_w8a8_matmul_matches_reference(m, n, k, config, dtype):
    x = torch.randn(m, k, generator=_gen(m + 1)).to(dtype)
    qw, sw = _weight(n, k, seed=n + 1)
    bias = torch.randn(n, generator=_gen(5)).to(dtype)
    y = W.w8a8_matmul(x, qw, sw, bias, config)
    assert y.shape == (m, n) and y.dtype == dtype
    assert _rel(y, W.w8a8_ref(x, qw, sw, bias)) < TOL[dtype]
    exact = x.float() @ Q.dequantize_int8_per_channel(qw, sw).t() + bias.float()
    assert _rel(y, exact) < 2e-2  # activation rounding: half a step of amax/127 per element


@pytest.mark.interpret
def test_split_k_is_deterministic_and_leaves_counters_zero():
    qx = torch.randint(-127, 128, (2, 256), generator=_gen(6)).to(torch.int8)
    sx = torch.rand(2, generator=_gen(7))
    qw, sw = _weight(40, 256, seed=8)
    cfg = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, num_warps=4, split_k=4, SWAP=True)
    counters = SplitCounters(qx.device)
    y1 = W.int8_scaled_mm(qx, sx, qw, sw, torch.float32, None, cfg, counters)
    y2 = W.int8_scaled_mm(qx, sx, qw, sw, torch.float32, None, cfg, counters)
    assert torch.equal(y1, y2)
    assert int(counters.take(3).abs().sum()) == 0


def test_every_bucket_has_a_config_and_errors_name_the_problem():
    for m in (1, 16, 64, 256, 1024):
        assert W.config_for(m) is W.CONFIGS[bucket(m)]
    qw, sw = _weight(8, 64, seed=9)
    with pytest.raises(ValueError, match="int8 codes, got torch.float32"):
        W.int8_scaled_mm(torch.zeros(1, 64), torch.ones(1), qw, sw)
    with pytest.raises(ValueError, match="activations have 32 features, the weight 64"):
        W.int8_scaled_mm(torch.zeros(1, 32, dtype=torch.int8), torch.ones(1), qw, sw)
    with pytest.raises(ValueError, match="scales must be \\[1\\] and \\[8\\]"):
        W.int8_scaled_mm(torch.zeros(1, 64, dtype=torch.int8), torch.ones(2), qw, sw)
    with pytest.raises(ValueError, match="float16 or bfloat16 activations"):
        W.w8a8_matmul(torch.zeros(1, 64), qw, sw)


def test_bytes_closed_form():
    assert W.act_quant_bytes(3, 4096) == 3 * (3 * 4096 + 4)  # = hwmodels' ops.act_quant_bytes per token
    n, k = 4096, 4096
    assert W.w8a8_gemm_bytes(1, n, k) == n * k + k + 4 * (1 + n) + 2 * n


def test_act_quant_bytes_agree_with_the_cost_model():
    from servesim.hwmodels import ops

    assert W.act_quant_bytes(7, 5120) == 7 * ops.act_quant_bytes(5120)  # per token there


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("m", [1, 3, 16, 33, 128, 300, 1024])
@pytest.mark.parametrize("n,k", [(14336, 4096), (4096, 4096 + 128)])
def test_gpu_w8a8_matches_reference(m, n, k, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = torch.randn(m, k, device="cuda", generator=torch.Generator("cuda").manual_seed(m)).to(dtype)
    qw, sw = _weight(n, k, seed=m, device="cuda")
    q, s = W.act_quant(x)
    _check_codes(x, q, s)
    ref = W.int8_scaled_mm_ref(q, s, qw, sw, torch.float32)
    for cfg in [W.config_for(m), *W.tables().values()]:  # this GPU's configs (servesim/kernels/tuned.py)
        y = W.int8_scaled_mm(q, s, qw, sw, torch.float32, None, cfg)
        assert torch.allclose(y, ref, rtol=1e-5, atol=1e-4 * ref.abs().max().item()), cfg
    # end to end on the kernel's own codes (checked above: they differ from the reference's only at rounding ties,
    # and a few ties flipped moved fp16 results past TOL on the H200, 2026-12-04, from an unseeded x)
    y = W.w8a8_matmul(x, qw, sw)
    assert _rel(y, W.int8_scaled_mm_ref(q, s, qw, sw, dtype)) < TOL[dtype]
