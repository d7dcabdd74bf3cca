"""Weight-only quantizers (RTN, AWQ-style), the packed formats the Triton kernels load, and references.

Plain functions first (gpt-fast style): ``quantize_*`` turns a float weight ``[N, K]`` (out, in) into
integer codes and scales, ``pack_*`` lays the codes out for the kernels in ``gemm.py``, and
``dequantize_*`` maps everything back to float: dequantize-then-matmul is the reference the kernels
are tested against.

Packed layout (both widths): int32 ``[KB, N, P]``. K is padded up to a multiple of ``PACK_BLOCK_K``
= 128 and cut into KB blocks of 128; row n of block b is ``P = 128 // E`` int32 words (E codes per
word: 8 for int4, 4 for int8). Word p holds the codes of k = 128*b + P*j + p at bits
[bits*j, bits*(j+1)), j = 0..E-1. Block-major storage makes the [BN, P] tile a CTA reads for one
block a single contiguous run (BN x 64 bytes for int4); with rows K/2 bytes apart, the same tile
was BN scattered 64-byte pieces and the H100 streamed it at ~55% of copy bandwidth.
So a [BN, P] tile of words, sliced at code j, is a [BN, P] tile of weights whose K indices are the
*contiguous* range 128*b + P*j + [0, P): the kernel loads activations with plain vector loads and
needs no shuffle. int8 codes are stored biased (q + 128, as unsigned bytes).

Kernel-side int4 scales and zero points travel as one int32 word per (group, channel), group-major
``[G, N]`` (G = K // group_size): low 16 bits the bf16 scale, high 16 bits the integer zero point. A
tile of BN channels reads BN contiguous words, and one load gives both.
"""

from __future__ import annotations

import torch

PACK_BLOCK_K = 128
INT4_GROUP_SIZES = (64, 128)


def _check_weight(w: torch.Tensor, name: str = "weight") -> None:
    if w.dim() != 2:
        raise ValueError(f"{name} must be 2-D [out_features, in_features], got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {w.dtype}")


def _round_up_to_dtype(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast positive fp32 scales to ``dtype`` rounding *up*, so the stored scale still covers the range."""
    q = s.to(dtype)
    if dtype == torch.float32:
        return q
    bits = torch.int16 if dtype in (torch.float16, torch.bfloat16) else None
    if bits is None:
        raise ValueError(f"unsupported scale dtype {dtype}")
    low = q.float() < s
    bumped = (q.view(bits) + 1).view(dtype)  # next representable value up (positive floats)
    return torch.where(low, bumped, q)


# ----------------------------------------------------------------------------------------- int8 RTN
def quantize_int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 round-to-nearest.

    Returns ``(q, scale)``: ``q`` int8 ``[N, K]`` in [-127, 127] and ``scale`` fp32 ``[N]`` with
    ``w ≈ q * scale[:, None]`` and ``|w - q*scale| <= scale/2`` elementwise.
    """
    _check_weight(w)
    wf = w.float()
    scale = wf.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(wf / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reference: ``q * scale`` in fp32, shape ``[N, K]``."""
    return q.float() * scale.float()[:, None]


# ----------------------------------------------------------------------------------------- int4 RTN
def quantize_int4_groupwise(
    w: torch.Tensor, group_size: int = 128, scale_dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise int4 round-to-nearest (min-max range per group of ``group_size`` inputs).

    Returns ``(q, scales, zeros)``: ``q`` uint8 ``[N, K]`` in [0, 15]; ``scales`` and ``zeros``
    ``[N, G]`` in ``scale_dtype`` (zeros are integers 0..15, exact in bf16/fp16). Dequantized weight is
    ``(q - zero) * scale``. Scales are rounded *up* to ``scale_dtype`` so no code clips and every
    element satisfies ``|w - dequant| <= scale/2``.
    """
    _check_weight(w)
    n, k = w.shape
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of group_size {group_size}")
    wg = w.float().reshape(n, k // group_size, group_size)
    scales, zeros = int4_group_params(wg, scale_dtype)
    q = quantize_int4_with(wg, scales.float()[..., None], zeros[..., None])
    return q.reshape(n, k).to(torch.uint8), scales, zeros.to(scale_dtype)


def int4_group_params(wg: torch.Tensor, scale_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max (scale, integer zero) over the last axis of ``wg``: the scale rounded up to ``scale_dtype`` (so no
    code clips), the zero an fp32 integer in [0, 15]; 0 stays representable (exact zero weights stay exact)."""
    lo = wg.amin(dim=-1).clamp_max(0.0)
    hi = wg.amax(dim=-1).clamp_min(0.0)
    scales = _round_up_to_dtype(((hi - lo) / 15.0).clamp_min(1e-8), scale_dtype)
    return scales, torch.round(-lo / scales.float()).clamp_(0, 15)


def quantize_int4_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """int4 codes (fp32, in [0, 15]) of ``w`` on a given grid: ``round(w / scale) + zero``, clamped."""
    return (torch.round(w / scale) + zero).clamp_(0, 15)


def dequantize_int4_groupwise(
    q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Reference: ``(q - zero) * scale`` per group, fp32 ``[N, K]`` (scales/zeros ``[N, G]``)."""
    n, k = q.shape
    qg = q.float().reshape(n, k // group_size, group_size)
    return ((qg - zeros.float()[..., None]) * scales.float()[..., None]).reshape(n, k)


# ---------------------------------------------------------------------------------------- AWQ-style
def awq_search_scales(
    w: torch.Tensor,
    x_calib: torch.Tensor,
    group_size: int = 128,
    n_grid: int = 20,
    scale_dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, float]:
    """Activation-aware per-input-channel scales (AWQ-style grid search).

    For alpha in ``{0, 1/n_grid, ..., (n_grid-1)/n_grid}`` the candidate is ``s = mean|x|^alpha``
    (normalised to geometric mean 1); the weight is quantized as ``Q(W * s)`` and applied to
    ``x / s``. Returns ``(s, alpha)`` minimising ``||x W^T - (x/s) Q(W*s)^T||``; alpha = 0 is plain
    RTN, so the result is never worse than RTN on the calibration set. Salient input channels (large
    activations) get larger s, hence finer effective quantization.
    """
    _check_weight(w)
    x = x_calib.float().reshape(-1, x_calib.shape[-1])
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x_calib has {x.shape[1]} features but the weight has in_features {w.shape[1]}")
    wf = w.float()
    ref = x @ wf.t()
    act = x.abs().mean(dim=0).clamp_min(1e-6)
    best = (float("inf"), torch.ones_like(act), 0.0)
    for i in range(n_grid):
        alpha = i / n_grid
        s = act.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        q, sc, z = quantize_int4_groupwise(wf * s[None, :], group_size, scale_dtype)
        wq = dequantize_int4_groupwise(q, sc, z, group_size) / s[None, :]
        err = (x @ wq.t() - ref).pow(2).mean().item()
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]


# ------------------------------------------------------------------------------------------ packing
def _pad_k(q: torch.Tensor, fill: int) -> torch.Tensor:
    n, k = q.shape
    kp = -(-k // PACK_BLOCK_K) * PACK_BLOCK_K
    if kp == k:
        return q
    return torch.cat([q, q.new_full((n, kp - k), fill)], dim=1)


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes: int64 ``[N, Kp]`` in [0, 2^bits); returns int32 ``[KB, N, P]`` (layout: module doc)."""
    n, kp = codes.shape
    e = 32 // bits
    p = PACK_BLOCK_K // e
    c = codes.reshape(n, kp // PACK_BLOCK_K, e, p)  # [n, block, j, p]
    shifts = torch.arange(e, device=codes.device, dtype=torch.int64).view(1, 1, e, 1) * bits
    words = (c << shifts).sum(dim=2)  # disjoint bit fields: sum == bitwise or
    words = torch.where(words >= 2**31, words - 2**32, words)  # reinterpret as signed int32
    return words.to(torch.int32).transpose(0, 1).contiguous()  # [block, n, p]


def _unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    kb, n, p = packed.shape
    e = 32 // bits
    w = packed.transpose(0, 1).to(torch.int64).reshape(n, kb, 1, p) & 0xFFFFFFFF
    shifts = torch.arange(e, device=packed.device, dtype=torch.int64).view(1, 1, e, 1) * bits
    codes = (w >> shifts) & ((1 << bits) - 1)  # [n, block, j, p]
    return codes.reshape(n, kb * e * p)[:, :k]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack uint8 int4 codes ``[N, K]`` into int32 ``[ceil(K/128), N, 16]`` (padding codes are 0)."""
    return _pack(_pad_k(q, 0).to(torch.int64), 4)


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 codes ``[N, k]``."""
    return _unpack(packed, 4, k).to(torch.uint8)


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """Pack int8 codes ``[N, K]`` (biased by +128) into int32 ``[ceil(K/128), N, 32]``."""
    return _pack(_pad_k(q.to(torch.int64) + 128, 128), 8)


def unpack_int8(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_int8`: int8 codes ``[N, k]``."""
    return (_unpack(packed, 8, k) - 128).to(torch.int8)


def pack_scales_zeros(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """bf16 scales and integer zeros ``[N, G]`` -> int32 ``[G, N]`` (scale bits low, zero high)."""
    if scales.dtype != torch.bfloat16:
        raise ValueError(f"int4 kernel scales must be bfloat16, got {scales.dtype}")
    lo = scales.t().contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    hi = zeros.t().float().round().to(torch.int32) << 16
    return (lo | hi).contiguous()


def unpack_scales_zeros(sz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_scales_zeros`: (bf16 scales ``[N, G]``, fp32 zeros ``[N, G]``)."""
    scales = (sz & 0xFFFF).to(torch.int16).view(torch.bfloat16).t()
    zeros = ((sz >> 16) & 0xFFFF).float().t()
    return scales, zeros


# --------------------------------------------------------------------- references in kernel format
def dequantize_w4_packed(packed: torch.Tensor, sz: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """fp32 ``[N, k]`` from the kernel format (packed int32 codes, scale/zero words ``[G, N]``)."""
    scales, zeros = unpack_scales_zeros(sz)
    return dequantize_int4_groupwise(unpack_int4(packed, k), scales, zeros, group_size)


def dequantize_w8_packed(packed: torch.Tensor, scale: torch.Tensor, k: int) -> torch.Tensor:
    """fp32 ``[N, k]`` from the kernel format (packed int32, per-channel scale ``[N]``)."""
    return dequantize_int8_per_channel(unpack_int8(packed, k), scale)


def w4a16_ref(x, packed, sz, group_size: int) -> torch.Tensor:
    """Reference for the W4A16 kernel: ``x @ dequant(W)^T`` in fp32, cast to ``x.dtype``."""
    w = dequantize_w4_packed(packed, sz, group_size, x.shape[-1])
    return (x.float() @ w.t()).to(x.dtype)


def w8a16_ref(x, packed, scale) -> torch.Tensor:
    """Reference for the W8A16 kernel: ``x @ dequant(W)^T`` in fp32, cast to ``x.dtype``."""
    w = dequantize_w8_packed(packed, scale, x.shape[-1])
    return (x.float() @ w.t()).to(x.dtype)
