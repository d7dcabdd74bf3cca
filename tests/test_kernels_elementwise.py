"""The engine's elementwise kernels (RMSNorm with fused residual add, rotary, SiLU-and-mul) vs their torch
references, under the Triton interpreter on the CPU (GPU cases: marker ``gpu``)."""

from __future__ import annotations

import math

import pytest
import torch

from servesim.kernels import elementwise as ew
from servesim.kernels.attention.kv_cache import interpreting

DTYPES = [torch.bfloat16, torch.float16]


def device() -> str:
    return "cpu" if interpreting() else "cuda"


def _close(a, b, dtype):
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    assert torch.isfinite(a).all()
    assert (a.float() - b.float()).norm() / b.float().norm() < tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(1, 64), (7, 96), (3, 1000)])
def test_rms_norm_with_and_without_residual(rows, hidden, dtype):
    dev = device()
    x = torch.randn(rows, hidden, device=dev).to(dtype)
    w = (1 + 0.1 * torch.randn(hidden, device=dev)).to(dtype)
    res = torch.randn(rows, hidden, device=dev).to(dtype)
    out = torch.full_like(x, float("nan"))
    ew.rms_norm(x, w, 1e-5, out=out)
    _close(out, ew.rms_norm_ref(x, w, 1e-5), dtype)
    r1, r2 = res.clone(), res.clone()
    y = ew.rms_norm(x, w, 1e-5, residual=r1)
    ref = ew.rms_norm_ref(x, w, 1e-5, residual=r2)
    _close(y, ref, dtype)
    _close(r1, r2, dtype)
    if not interpreting():  # the interpreter truncates float32 -> bf16; the GPU rounds to nearest even like torch
        assert torch.equal(r1, r2)  # the residual sum is rounded like HF's


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 2, 16), (6, 1, 64), (3, 3, 32)])
def test_rotary_matches_reference_on_strided_views(heads, kv_heads, head_dim, dtype):
    dev = device()
    t = 9
    qkv = torch.randn(t, (heads + 2 * kv_heads) * head_dim, device=dev).to(dtype)  # q, k as views of one buffer
    q = qkv[:, : heads * head_dim].view(t, heads, head_dim)
    k = qkv[:, heads * head_dim: (heads + kv_heads) * head_dim].view(t, kv_heads, head_dim)
    pos = torch.tensor([0, 1, 2, 50, 51, 7, 100, 3, 4], dtype=torch.int32, device=dev)
    cos, sin = ew.rope_tables(head_dim, 128, 10000.0, device=dev)
    q2, k2 = q.clone(), k.clone()
    v_before = qkv[:, (heads + kv_heads) * head_dim:].clone()
    ew.rotary(q, k, pos, cos, sin)
    ew.rotary_ref(q2, k2, pos, cos, sin)
    _close(q, q2, dtype)
    _close(k, k2, dtype)
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim:], v_before)  # v untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,inter", [(1, 64), (5, 300), (2, 8192)])
def test_silu_mul(rows, inter, dtype):
    gu = torch.randn(rows, 2 * inter, device=device()).to(dtype)
    _close(ew.silu_mul(gu), ew.silu_mul_ref(gu), dtype)


def test_llama3_rope_scaling_keeps_high_and_divides_low_frequencies():
    s = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 8192}
    plain, scaled = ew.rope_inv_freq(128, 500000.0), ew.rope_inv_freq(128, 500000.0, s)
    wavelen = 2 * math.pi / plain
    assert torch.equal(scaled[wavelen < 8192 / 4], plain[wavelen < 8192 / 4])
    assert torch.allclose(scaled[wavelen > 8192], plain[wavelen > 8192] / 8)
    mid = (wavelen >= 8192 / 4) & (wavelen <= 8192)
    assert ((scaled[mid] <= plain[mid]) & (scaled[mid] >= plain[mid] / 8)).all()
    with pytest.raises(ValueError, match="not supported"):
        ew.rope_inv_freq(64, 1e4, {"rope_type": "yarn"})


def test_bytes_helpers():
    assert ew.rms_norm_bytes(10, 64, residual=True) == 10 * 64 * 2 * 4
    assert ew.rotary_bytes(3, 4, 2, 16) == 2 * 3 * 6 * 16 * 2
    assert ew.silu_mul_bytes(5, 100) == 3 * 5 * 100 * 2


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 256, 8192])
def test_elementwise_gpu_shapes(rows):
    dtype = torch.bfloat16
    x = torch.randn(rows, 4096, device="cuda", dtype=dtype)
    w = torch.randn(4096, device="cuda", dtype=dtype)
    r1 = torch.randn_like(x)
    r2 = r1.clone()
    _close(ew.rms_norm(x, w, 1e-5, residual=r1), ew.rms_norm_ref(x, w, 1e-5, residual=r2), dtype)
    gu = torch.randn(rows, 2 * 14336, device="cuda", dtype=dtype)
    _close(ew.silu_mul(gu), ew.silu_mul_ref(gu), dtype)
    q = torch.randn(rows, 32, 128, device="cuda", dtype=dtype)
    k = torch.randn(rows, 8, 128, device="cuda", dtype=dtype)
    pos = torch.randint(0, 8192, (rows,), device="cuda", dtype=torch.int32)
    cos, sin = ew.rope_tables(128, 8192, 500000.0, device="cuda")
    q2, k2 = q.clone(), k.clone()
    ew.rotary(q, k, pos, cos, sin)
    ew.rotary_ref(q2, k2, pos, cos, sin)
    _close(q, q2, dtype)
    _close(k, k2, dtype)
