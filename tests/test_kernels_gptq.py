"""GPTQ against round-to-nearest: lower output error on correlated inputs, RTN exactly when the inputs are
uncorrelated (no error to feed back), the RTN formats out."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from servesim.kernels.quant import gptq as G  # noqa: E402
from servesim.kernels.quant import quantize as Q  # noqa: E402


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _correlated(n: int, k: int, seed: int) -> torch.Tensor:
    """Inputs with strongly correlated channels: a few latent factors mixed into k channels, plus noise and
    some channels of large magnitude (as transformer activations have)."""
    g = _gen(seed)
    mix = torch.randn(16, k, generator=_gen(99))  # the same mixing for calibration and test draws
    gain = torch.ones(k)
    gain[torch.randperm(k, generator=_gen(98))[:6]] = 8.0
    return (torch.randn(n, 16, generator=g) @ mix + 0.3 * torch.randn(n, k, generator=g)) * gain


def _out_err(x, w, wq) -> float:
    return ((x @ w.t() - x @ wq.t()).norm() / (x @ w.t()).norm()).item()


@pytest.mark.parametrize("act_order", [False, True], ids=["natural", "act-order"])
@pytest.mark.parametrize("gs", [64, 128])
def test_int4_gptq_beats_rtn_on_correlated_inputs(gs, act_order):
    n, k = 64, 256
    w = torch.randn(n, k, generator=_gen(1))
    x_cal, x_test = _correlated(1024, k, 2), _correlated(1024, k, 3)
    rtn = Q.dequantize_int4_groupwise(*Q.quantize_int4_groupwise(w, gs), gs)
    q, s, z = G.gptq_quantize(w, G.hessian(x_cal), 4, gs, act_order=act_order)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and s.dtype == torch.bfloat16 and s.shape == (n, k // gs)
    gptq = Q.dequantize_int4_groupwise(q, s, z, gs)
    e_rtn, e_gptq = _out_err(x_test, w, rtn), _out_err(x_test, w, gptq)
    assert e_gptq < 0.5 * e_rtn, (e_gptq, e_rtn)  # held-out inputs from the same distribution
    # the packed kernel format takes it as it takes RTN's output
    packed, sz = Q.pack_int4(q), Q.pack_scales_zeros(s, z)
    assert torch.equal(Q.dequantize_w4_packed(packed, sz, gs, k), gptq)


def test_int8_gptq_beats_rtn_on_correlated_inputs():
    n, k = 64, 256
    w = torch.randn(n, k, generator=_gen(4))
    x_cal, x_test = _correlated(1024, k, 5), _correlated(1024, k, 6)
    rtn = Q.dequantize_int8_per_channel(*Q.quantize_int8_per_channel(w))
    q, scale = G.gptq_quantize(w, G.hessian(x_cal), 8)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    assert _out_err(x_test, w, Q.dequantize_int8_per_channel(q, scale)) < 0.5 * _out_err(x_test, w, rtn)


@pytest.mark.parametrize("bits", [4, 8])
def test_uncorrelated_inputs_leave_nothing_to_feed_back(bits):
    """H = c I: the inverse's Cholesky factor is diagonal, every update is zero and GPTQ is RTN."""
    w = torch.randn(24, 256, generator=_gen(7))
    h = 3.0 * torch.eye(256)
    got = G.gptq_quantize(w, h, bits, 128, damp=0.0)
    want = Q.quantize_int4_groupwise(w, 128) if bits == 4 else Q.quantize_int8_per_channel(w)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_dead_inputs_get_zero_weight_and_errors_name_the_problem():
    w = torch.randn(8, 128, generator=_gen(8))
    x = torch.randn(64, 128, generator=_gen(9))
    x[:, 5] = 0.0
    q, s, z = G.gptq_quantize(w, G.hessian(x), 4, 128)
    assert float(Q.dequantize_int4_groupwise(q, s, z, 128)[:, 5].abs().max()) == 0.0
    with pytest.raises(ValueError, match="Hessian has shape \\(64, 64\\), expected \\(128, 128\\)"):
        G.gptq_quantize(w, torch.eye(64))
    with pytest.raises(ValueError, match="in_features 128 is not a multiple of group_size 64|bits must be"):
        G.gptq_quantize(w, torch.eye(128), bits=3)
    with pytest.raises(ValueError, match="in_features 100 is not a multiple of group_size 64"):
        G.gptq_quantize(torch.zeros(2, 100), torch.eye(100), 4, 64)
