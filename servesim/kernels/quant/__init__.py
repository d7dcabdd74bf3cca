"""Weight-only quantized linears (W8A16 per channel, W4A16 group-wise): quantizers, packing, the fused
dequantize-GEMM kernel and the ``QuantLinear`` module.

* ``quantize``: RTN and AWQ quantizers, packing, and the dequantize-then-matmul torch references;
* ``gemm``: the launcher over the GEMV/GEMM kernels (``gemm_kernels``, ``gemm_common``), FLOPs/bytes helpers;
* ``configs``: launch configs by (bits, M bucket, weight size);
* ``linear``: ``QuantLinear``, a drop-in ``nn.Linear`` over the packed weights.
"""

from .gemm import quant_gemm_bytes, quant_gemm_flops, quant_matmul
from .linear import QuantLinear
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
    "QuantLinear", "awq_search_scales", "dequantize_int4_groupwise", "dequantize_int8_per_channel",
    "quant_gemm_bytes", "quant_gemm_flops", "quant_matmul", "quantize_int4_groupwise", "quantize_int8_per_channel",
    "w4a16_ref", "w8a16_ref",
]
