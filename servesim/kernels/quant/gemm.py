"""Triton W4A16 / W8A16 GEMM: ``y = x @ dequant(W)^T`` with dequantization fused into the K loop.

Weights come in the packed layout of ``quantize.py`` (int32 words, 128-wide K blocks, code j of word p at
k = 128*b + P*j + p). A code becomes a float without any int->float conversion instruction (those run
at 1/4 rate on Hopper):

* ``DENORM`` (default): ``word & (mask << POS)`` read as fp32 *is* the denormal ``q * 2^POS * 2^-149``,
  exactly; one LOP3 with one immediate. The GEMV multiplies it straight into an activation pre-scaled
  by ``2^(96-POS)`` (one FFMA) and removes the zero point once per row and group as ``zero * sum(x)``.
  The GEMM lifts it with one exact FFMA (``t*2^100 - zero*2^(100+POS-149)``) and one FMUL by the scale.
* magic (fallback, for a target that flushes denormals): or-in the exponent of 2^23 and subtract
  ``2^23 + zero*2^POS`` (exact).

Kernels: ``_wq_gemv_kernel`` (M == 1, CUDA-core FMAs) and ``_wq_gemm_kernel`` (any M, ``tl.dot`` on a
dequantized tile: one [BN, 128] tile joined and permuted into k order, or E dots of K = P; with SWAP
it computes y^T = W x^T so on Hopper the dequantized tile is the wgmma A operand, kept in registers).

Both split K over a second grid axis for small M: each split writes an fp32 partial, bumps a per-tile
counter, and the last split to arrive sums the partials in a fixed order (deterministic) and resets
the counter, so one launch does the whole product. Tuned launch configs: ``configs.py``.
"""

from __future__ import annotations

import os

import triton

from ..counters import counters_for, sm_count
from .gemm_kernels import _wq_gemm_kernel, _wq_gemv_kernel


# ------------------------------------------------------------------------------------------ launch
def _deq_mode(deq: int, bits: int, dtype, interpret: bool) -> int:
    """The DEQ mode a config asks for, where it applies: 2 (inline PTX) is int4 on a GPU; 3 (PTX, scale
    per weight in bf16x2) int4 with bf16 on a GPU, else 0 (same math); 1 needs bf16 (its 2^-49-scaled
    codes underflow fp16); 0 always works."""
    import torch

    if deq == 3 and (bits != 4 or interpret or dtype != torch.bfloat16):
        deq = 0
    if deq == 2 and (bits != 4 or interpret):
        deq = 1
    if deq == 1 and dtype != torch.bfloat16:
        deq = 0
    return deq


def _auto_split(tiles: int, kb: int, waves: float, sms: int) -> int:
    """Smallest power-of-two split giving >= waves*SMs CTAs, keeping >= 2 K blocks per split."""
    split = 1
    while tiles * split < waves * sms and split * 4 <= kb:
        split *= 2
    return split


def _fill_split(tiles: int, kb: int, fill: float, sms: int) -> int:
    """Split (any integer, not only a power of two) giving at most fill*SMs CTAs: one resident wave
    when ``fill`` is the CTAs an SM holds. Keeps >= 2 K blocks per split."""
    return max(1, min(int(fill * sms) // tiles, kb // 2))


def split_for(tiles: int, kb: int, config: dict, sms: int) -> int:
    """The K split a launch of ``tiles`` output tiles over ``kb`` K blocks takes: the config's ``split_k``, else
    its ``fill`` (:func:`_fill_split`), else its ``waves`` (:func:`_auto_split`). The launchers' one rule (the
    calibration's launch-load model reads it too: ``servesim/calibrate/launch.py``)."""
    if config.get("split_k"):
        return config["split_k"]
    if config.get("fill"):
        return _fill_split(tiles, kb, config["fill"], sms)
    return _auto_split(tiles, kb, config.get("waves", 0), sms)


def row_block(m: int, config: dict) -> int:
    """Rows a CTA of :func:`quant_matmul` covers: 1 in the GEMV at M = 1, else the config's ``BLOCK_M``, whose 0
    means the smallest of 16, 32, 64 covering M (one row tile streams W once)."""
    if config["kernel"] == "gemv" and m == 1:
        return 1
    return config["BLOCK_M"] or min(64, max(16, triton.next_power_of_2(m)))


def quant_matmul(x, packed, sz, bits: int, group_size: int | None, config: dict, counters=None):
    """``x @ dequant(W)^T`` for packed W (``quantize.py`` layout); ``config`` from ``configs.config_for``.

    x: ``[..., K]`` fp16/bf16; packed: int32 ``[KB, N, P]``; sz: int4 scale/zero words ``[G, N]``, or
    for int8 (``group_size=None``) fp32 per-channel scales ``[N]``. Returns ``[..., N]`` in ``x.dtype``.
    ``counters`` (a :class:`~servesim.kernels.counters.SplitCounters`) saves zeroing fresh split-K counters.
    """
    import torch

    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    kb, n, p = packed.shape
    if packed.stride(2) != 1 or p != 128 // (32 // bits):
        raise ValueError(f"packed weight must be [K/128, N, {128 // (32 // bits)}] with unit last stride")
    per_channel = group_size is None
    g = 1 if per_channel else sz.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    gemv = config["kernel"] == "gemv" and m == 1
    bm, bn = row_block(m, config), config["BLOCK_N"]
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    split = split_for(tiles, kb, config, sm_count(x.device))
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else y
    # int32 in every launch (one kernel signature); read only when split > 1
    locks = counters_for(counters, x.device, tiles) if split > 1 else torch.empty(1, dtype=torch.int32, device=x.device)
    common = dict(BITS=bits, GS=group_size or 128, PER_CHANNEL=per_channel, DENORM=config.get("DENORM", True),
                  BLOCK_N=bn, num_warps=config["num_warps"],
                  num_stages=config.get("num_stages", 1))
    if gemv:
        _wq_gemv_kernel[(triton.cdiv(n, bn), split)](
            x2, packed, sz, y, ws, locks, n, k, g, kb, split, packed.stride(0), packed.stride(1), y.stride(0),
            PREFETCH=config.get("PREFETCH", 1), XPF=config.get("XPF", False),
            EVEN=config.get("EVEN", True) and n % bn == 0 and k % 128 == 0, **common)
    else:
        _wq_gemm_kernel[(tiles, split)](
            x2, packed, sz, y, ws, locks, m, n, k, g, kb, split, x2.stride(0), packed.stride(0), packed.stride(1),
            y.stride(0), BLOCK_M=bm, GROUP_M=config.get("GROUP_M", 8), JOIN=config.get("JOIN", True),
            SWAP=config.get("SWAP", False), DOT_FP32=interpret, DEQ=_deq_mode(config.get("DEQ", 0), bits, x.dtype,
                                                                                    interpret), **common)
    return y.reshape(*x.shape[:-1], n)


def quant_gemm_flops(m: int, n: int, k: int) -> int:
    """Multiply-adds x2 of one ``[m, k] @ [k, n]`` product."""
    return 2 * m * n * k


def quant_gemm_bytes(m: int, n: int, k: int, bits: int, group_size: int | None, act_bytes: int = 2,
                     scale_bytes: int = 2) -> int:
    """Fewest DRAM bytes: packed weights + scales (+ zeros) + activations in + outputs out.

    ``group_size=None`` means per-channel (int8): one fp32 scale per output channel.
    """
    weights = n * k * bits // 8
    meta = n * 4 if group_size is None else 2 * n * (k // group_size) * scale_bytes
    return weights + meta + (m * k + m * n) * act_bytes
