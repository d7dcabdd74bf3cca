"""Paged attention for the engine and for calibration: one import point.

* ``kv_cache``: the paged layout, :func:`write_kv` (scatter new K/V through a slot mapping), fp8 scales.
* ``prefill``: FlashAttention-2 style causal prefill, GQA, varlen, paged or contiguous KV.
* ``decode``: split-KV decode with GQA packing and 1+k query tokens, plus the LSE merge.

Each kernel has a float32 torch reference (``*_ref``) and FLOPs/bytes helpers that calibration and the
roofline reuse. The cache layout is documented in ``kv_cache.py``.
"""

from .decode import (
    DECODE_CONFIGS,
    choose_num_splits,
    decode_attention,
    decode_attention_ref,
    decode_bytes,
    decode_flops,
)
from .kv_cache import allocate_kv_cache, gather_kv_ref, write_kv, write_kv_bytes, write_kv_ref
from .prefill import (
    PREFILL_CONFIGS,
    causal_attention_ref,
    prefill_attention,
    prefill_attention_contiguous,
    prefill_attention_contiguous_ref,
    prefill_attention_ref,
    prefill_bytes,
    prefill_flops,
)

__all__ = [
    "DECODE_CONFIGS", "PREFILL_CONFIGS", "allocate_kv_cache", "causal_attention_ref", "choose_num_splits",
    "decode_attention", "decode_attention_ref", "decode_bytes", "decode_flops", "gather_kv_ref",
    "prefill_attention", "prefill_attention_contiguous", "prefill_attention_contiguous_ref",
    "prefill_attention_ref", "prefill_bytes", "prefill_flops", "write_kv", "write_kv_bytes", "write_kv_ref",
]
