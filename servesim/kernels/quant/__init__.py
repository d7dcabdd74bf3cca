"""Quantized linears: weight-only (W8A16 per channel, W4A16 group-wise; quantizers, packing, the fused
dequantize-GEMM kernel, ``QuantLinear``), W8A8 with per-token activation quantization (``w8a8``, ``W8A8Linear``)
and FP8 through ``torch._scaled_mm`` (``fp8``, ``Fp8Linear``).

* ``quantize``: RTN and AWQ quantizers, packing, and the dequantize-then-matmul torch references;
* ``gptq``: the GPTQ quantizer (Hessian-weighted, column by column with error feedback) into the same formats;
* ``w8a8``: the activation-quantization and int8 GEMM kernels, launchers and references;
* ``gemm``: the launcher over the GEMV/GEMM kernels (``gemm_kernels``, ``gemm_common``), FLOPs/bytes helpers;
* ``configs``: launch configs by (bits, M bucket, weight size);
* ``linear``: ``QuantLinear``, ``W8A8Linear``, ``Fp8Linear``: drop-in ``nn.Linear`` modules.
"""

from .gemm import quant_gemm_bytes, quant_gemm_flops, quant_matmul
from .linear import Fp8Linear, QuantLinear, W8A8Linear
from .quantize import (
    awq_search_scales,
    dequantize_int4_groupwise,
    dequantize_int8_per_channel,
    quantize_int4_groupwise,
    quantize_int8_per_channel,
    w4a16_ref,
    w8a16_ref,
)

__all__ = [
    "Fp8Linear", "QuantLinear", "W8A8Linear", "awq_search_scales", "dequantize_int4_groupwise",
    "dequantize_int8_per_channel", "quant_gemm_bytes", "quant_gemm_flops", "quant_matmul", "quantize_int4_groupwise",
    "quantize_int8_per_channel", "w4a16_ref", "w8a16_ref",
]
