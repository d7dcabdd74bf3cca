"""Drop-in ``nn.Linear`` replacements: ``QuantLinear`` (the W4A16 / W8A16 Triton kernels), ``W8A8Linear`` (the W8A8
Triton kernels) and ``Fp8Linear`` (``torch._scaled_mm``)."""

from __future__ import annotations

import torch

from ..counters import SplitCounters
from . import fp8 as F8
from . import quantize as Q
from .configs import config_for
from .gemm import quant_matmul
from .w8a8 import w8a8_matmul

WEIGHT_DTYPES = ("int4", "int8")


class QuantLinear(torch.nn.Module):
    """``y = x @ dequant(W)^T (+ bias)`` with packed int4 (group-wise) or int8 (per-channel) weights.

    Build it with :meth:`from_float` (quantizes a float weight, optionally AWQ-style with calibration
    activations) or directly from packed tensors. The packed tensors live in buffers, so ``.to()``,
    ``state_dict`` and CUDA graphs work as for any module. ``input_scale`` (AWQ) divides the input
    channel-wise before the product; an engine can fold it into the preceding norm's weight instead.
    """

    def __init__(self, in_features: int, out_features: int, weight_dtype: str, packed: torch.Tensor,
                 scales: torch.Tensor, group_size: int | None = None, bias: torch.Tensor | None = None,
                 input_scale: torch.Tensor | None = None):
        super().__init__()
        _check(in_features, out_features, weight_dtype, packed, scales, group_size, bias, input_scale)
        self.in_features = in_features
        self.out_features = out_features
        self.weight_dtype = weight_dtype
        self.bits = 4 if weight_dtype == "int4" else 8
        self.group_size = group_size if weight_dtype == "int4" else None
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)
        self.register_buffer("input_scale", input_scale)
        self.counters: SplitCounters | None = None  # split-K counters, on the device of the last input

    @classmethod
    def from_float(cls, weight: torch.Tensor, weight_dtype: str = "int4", group_size: int = 128,
                   bias: torch.Tensor | None = None, x_calib: torch.Tensor | None = None) -> QuantLinear:
        """Quantize a float ``[out, in]`` weight (RTN; AWQ-style scale search when ``x_calib`` is given)."""
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPES}, got {weight_dtype!r}")
        Q._check_weight(weight)
        n, k = weight.shape
        if weight_dtype == "int8":
            q, scale = Q.quantize_int8_per_channel(weight)
            return cls(k, n, "int8", Q.pack_int8(q), scale, None, bias)
        if k % group_size:
            raise ValueError(f"in_features {k} is not a multiple of group_size {group_size}")
        input_scale = None
        w = weight.float()
        if x_calib is not None:
            s, _ = Q.awq_search_scales(w, x_calib, group_size)
            w = w * s[None, :]
            input_scale = s.to(weight.device)
        q, scales, zeros = Q.quantize_int4_groupwise(w, group_size)
        return cls(k, n, "int4", Q.pack_int4(q), Q.pack_scales_zeros(scales, zeros), group_size, bias,
                   input_scale)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the kernel multiplies by (reference for tests)."""
        if self.bits == 8:
            return Q.dequantize_w8_packed(self.packed, self.scales, self.in_features)
        return Q.dequantize_w4_packed(self.packed, self.scales, self.group_size, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, QuantLinear expects {self.in_features}")
        if x.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"QuantLinear takes float16 or bfloat16 activations, got {x.dtype}")
        if self.input_scale is not None:
            x = (x / self.input_scale).to(x.dtype)
        m = x.numel() // self.in_features
        config = config_for(self.bits, m, self.out_features, self.in_features)
        if self.counters is None or self.counters.device != x.device:
            self.counters = SplitCounters(x.device)
        y = quant_matmul(x, self.packed, self.scales, self.bits, self.group_size, config, self.counters)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.weight_dtype}{g}"


def _check(k, n, weight_dtype, packed, scales, group_size, bias, input_scale) -> None:
    """Shape and dtype checks whose messages name the offending tensor and the expected value."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPES}, got {weight_dtype!r}")
    bits = 4 if weight_dtype == "int4" else 8
    shape = (-(-k // Q.PACK_BLOCK_K), n, Q.PACK_BLOCK_K * bits // 32)
    if packed.dtype != torch.int32:
        raise ValueError(f"packed weight must be int32, got {packed.dtype}")
    if tuple(packed.shape) != shape:
        raise ValueError(f"packed weight has shape {tuple(packed.shape)}, expected {shape} for "
                         f"out_features {n}, in_features {k} and {weight_dtype}")
    if bits == 4:
        if group_size not in Q.INT4_GROUP_SIZES:
            raise ValueError(f"group_size must be one of {Q.INT4_GROUP_SIZES}, got {group_size}")
        if k % group_size:
            raise ValueError(f"in_features {k} is not a multiple of group_size {group_size}")
        if scales.dtype != torch.int32 or tuple(scales.shape) != (k // group_size, n):
            raise ValueError(f"int4 scales must be int32 scale/zero words of shape ({k // group_size}, {n}), "
                             f"got {scales.dtype} {tuple(scales.shape)}")
    elif scales.dtype != torch.float32 or tuple(scales.shape) != (n,):
        raise ValueError(f"int8 scales must be float32 of shape ({n},), got {scales.dtype} {tuple(scales.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({n},)")
    if input_scale is not None and tuple(input_scale.shape) != (k,):
        raise ValueError(f"input_scale has shape {tuple(input_scale.shape)}, expected ({k},)")


class W8A8Linear(torch.nn.Module):
    """``y = W8A8(x) (+ bias)``: int8 weights per output channel, activations quantized per token on every call
    (``w8a8.act_quant`` + ``w8a8.int8_scaled_mm``, the launch config by M from ``w8a8.config_for``)."""

    def __init__(self, q_w: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        n, k = q_w.shape
        if q_w.dtype != torch.int8 or s_w.dtype != torch.float32 or tuple(s_w.shape) != (n,):
            raise ValueError(f"W8A8 weights are int8 [N, K] codes and fp32 [N] scales, got {q_w.dtype} "
                             f"{tuple(q_w.shape)} and {s_w.dtype} {tuple(s_w.shape)}")
        self.in_features, self.out_features = k, n
        self.register_buffer("q_w", q_w.contiguous())
        self.register_buffer("s_w", s_w)
        self.register_buffer("bias", bias)
        self.counters: SplitCounters | None = None

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> W8A8Linear:
        return cls(*Q.quantize_int8_per_channel(weight), bias)

    def dequantized_weight(self) -> torch.Tensor:
        return Q.dequantize_int8_per_channel(self.q_w, self.s_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.counters is None or self.counters.device != x.device:
            self.counters = SplitCounters(x.device)
        return w8a8_matmul(x, self.q_w, self.s_w, self.bias, counters=self.counters)


class Fp8Linear(torch.nn.Module):
    """``y = FP8(x) (+ bias)``: e4m3 weights per output channel, activations to e4m3 per token, through
    ``torch._scaled_mm`` (``fp8.fp8_linear``; a GPU with FP8 tensor cores)."""

    def __init__(self, q_w: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = q_w.shape
        self.register_buffer("q_w", q_w.contiguous())
        self.register_buffer("s_w", s_w)
        self.register_buffer("bias", bias)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Fp8Linear:
        return cls(*F8.quantize_fp8_per_channel(weight), bias)

    def dequantized_weight(self) -> torch.Tensor:
        return F8.dequantize_fp8(self.q_w, self.s_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F8.fp8_linear(x, self.q_w, self.s_w, self.bias)
