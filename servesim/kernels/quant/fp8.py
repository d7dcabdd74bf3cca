"""FP8 (W8A8-FP8) linears: e4m3 weights with an fp32 scale per output channel, activations quantized to e4m3 per
token on every call, through ``torch._scaled_mm`` with row-wise scales (cuBLASLt; Hopper and Ada). No Triton kernel
of ours: this is the baseline the issue names, used by the engine and by ``bench/quant_gemm.py --w8a8``.

``fp8_linear`` is the GPU path; ``fake_quant_fp8_per_token`` and ``dequantize_fp8`` give the values it multiplies,
for the CPU engine and the tests (float32 math on e4m3-rounded operands).
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn


def quantize_fp8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e4m3 [N, K], fp32 scale [N])`` with ``w ≈ q * scale[:, None]``: each row's amax maps to 448."""
    wf = w.float()
    scale = wf.abs().amax(dim=1).clamp_min(1e-12) / FP8_MAX
    return (wf / scale[:, None]).to(FP8), scale


def quantize_fp8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e4m3 [M, K], fp32 scale [M, 1])`` of the rows of ``x [..., K]``."""
    xf = x.reshape(-1, x.shape[-1]).float()
    scale = xf.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    return (xf / scale).to(FP8), scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 ``q * scale`` (``scale`` per row: ``[N]`` or ``[N, 1]``)."""
    return q.float() * scale.reshape(-1, 1).float()


def fake_quant_fp8_per_token(x: torch.Tensor) -> torch.Tensor:
    """``x`` quantized to e4m3 per token and back (fp32, ``x``'s shape): what the FP8 GEMM sees of its input."""
    return dequantize_fp8(*quantize_fp8_per_token(x)).reshape(x.shape)


def fp8_linear(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., K]`` through an FP8 linear (``torch._scaled_mm``, row-wise scales), ``x.dtype`` out."""
    q_x, s_x = quantize_fp8_per_token(x)
    y = torch._scaled_mm(q_x, q_w.t(), scale_a=s_x, scale_b=s_w[None, :], out_dtype=x.dtype)
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], q_w.shape[0])
