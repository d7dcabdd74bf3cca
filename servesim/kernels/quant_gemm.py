"""Triton W4A16 / W8A16 GEMM: ``y = x @ dequant(W)^T`` with dequantization fused into the K loop.

Weights come in the packed layout of ``quant.py`` (int32 words, 128-wide K blocks, code j of word p at
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
the counter, so one launch does the whole product. Tuned launch configs: ``quant_gemm_configs.py``.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

MAGIC = tl.constexpr(0x4B000000)  # bits of 2.0**23: or-ing an integer v < 2^23 in gives 2^23 + v
X_EXP = tl.constexpr(96)  # GEMV (denorm): x scaled by 2^(96-POS) so denormal * x is a normal float
LIFT = tl.constexpr(2.0**100)  # GEMM (denorm): denormal code * 2^100 is normal, exactly


@triton.jit
def _code(w_lo, w_hi, J: tl.constexpr, BITS: tl.constexpr, DENORM: tl.constexpr):
    """Code J of every word as exact fp32: q*2^(POS-149) (denorm) or 2^23 + q*2^POS (magic).

    Codes whose bits end below bit 23 are masked in place (POS = BITS*J); the rest come from
    ``w_hi = w_lo >> (BITS + 8)``, so every field sits inside the 23-bit mantissa.
    """
    if BITS * J + BITS <= 23:
        POS: tl.constexpr = BITS * J
        src = w_lo
    else:
        POS: tl.constexpr = BITS * J - (BITS + 8)
        src = w_hi
    MASK: tl.constexpr = ((1 << BITS) - 1) << POS
    # one return per function: Triton 3.6 ignores an early return inside a constexpr if
    if DENORM:  # noqa: SIM108 (if/else, not a ternary: Triton's JIT resolves this at compile time)
        bits = src & MASK
    else:
        bits = (src & MASK) | MAGIC
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _pos_scale(J: tl.constexpr, BITS: tl.constexpr):
    """2^POS of code J (see ``_code``), as a compile-time float."""
    if BITS * J + BITS <= 23:
        POS: tl.constexpr = BITS * J
    else:
        POS: tl.constexpr = BITS * J - (BITS + 8)
    return (1 << POS) * 1.0


@triton.jit
def _zero_code(zb, J: tl.constexpr, BITS: tl.constexpr, DENORM: tl.constexpr):
    """The zero point in the units of ``_code``, built with integer ops from the integer zero ``zb``."""
    if BITS * J + BITS <= 23:
        POS: tl.constexpr = BITS * J
    else:
        POS: tl.constexpr = BITS * J - (BITS + 8)
    if DENORM:  # noqa: SIM108
        bits = zb << POS
    else:
        bits = (zb << POS) + MAGIC
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _group_params(sz_ptr, b, J: tl.constexpr, P: tl.constexpr, offs_n, n_mask, N, G,
                  GS: tl.constexpr, PER_CHANNEL: tl.constexpr):
    """(scale fp32, zero int32) of code J in block b for BN channels, as [BN, 1] columns.

    int4: one int32 word per (group, channel): bf16 scale bits low, zero high. int8 per-channel:
    fp32 scale per channel and the storage bias 128 as zero. Expanding the loaded word to 2-D at once
    makes Triton move that one vector into the tile's row layout, not each value derived from it.
    """
    if PER_CHANNEL:
        s = tl.load(sz_ptr + offs_n, mask=n_mask, other=0.0)[:, None]
        zb = (offs_n * 0 + 128)[:, None]
    else:
        g = b * (128 // GS) + (P * J) // GS  # code J covers k = 128*b + P*J + [0, P)
        g_ok = offs_n * 0 + g < G  # a tensor: the interpreter wants tensor masks
        word = tl.load(sz_ptr + g * N + offs_n, mask=n_mask & g_ok, other=0)[:, None]
        s = (word << 16).to(tl.float32, bitcast=True)  # bf16 -> fp32 is a 16-bit shift
        zb = (word >> 16) & 0xFFFF
    return s, zb


@triton.jit
def _finish(acc, y_ptr, ws_ptr, lock_ptr, offs_m, offs_n, M, N, stride_ym, tile, pid_k, SPLIT_K):
    """Store acc [BM, BN] to y, or (split-K) publish a partial and let the last split reduce."""
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        part = offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws_ptr + pid_k * M * N + part, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before the release below
        arrived = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            total = tl.zeros_like(acc)
            for s in range(SPLIT_K):
                total += tl.load(ws_ptr + s * M * N + part, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(lock_ptr + tile, 0)  # ready for the next launch


# M, split and block counts only feed arithmetic: one compile serves every value
@triton.jit(do_not_specialize=["G", "KB", "SPLIT_K"])
def _wq_gemv_kernel(
    x_ptr, w_ptr, sz_ptr, y_ptr, ws_ptr, lock_ptr,
    N, K, G, KB, SPLIT_K, stride_wb, stride_wn, stride_ym,
    BITS: tl.constexpr, GS: tl.constexpr, PER_CHANNEL: tl.constexpr, DENORM: tl.constexpr,
    BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr,
):
    """y[0, n] = sum_k x[0, k] * W[n, k]; one CTA = BLOCK_N channels x one K split."""
    E: tl.constexpr = 32 // BITS
    P: tl.constexpr = 128 // E
    J_PER_GROUP: tl.constexpr = E if (PER_CHANNEL or GS >= 128) else E * GS // 128
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = tl.arange(0, P)
    n_mask = offs_n < N
    per_split = tl.cdiv(KB, SPLIT_K)
    b0 = pid_k * per_split
    b1 = tl.minimum(b0 + per_split, KB)
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_p[None, :]
    # PREFETCH blocks ahead (1 or 2) are loaded while one is dequantized; 0 leaves it to num_stages
    if PREFETCH >= 1:
        w_n1 = tl.load(w_ptrs + b0 * stride_wb, mask=n_mask[:, None] & (offs_p * 0 + b0 < b1)[None, :], other=0)
    if PREFETCH >= 2:
        w_n2 = tl.load(w_ptrs + (b0 + 1) * stride_wb, mask=n_mask[:, None] & (offs_p * 0 + b0 + 1 < b1)[None, :],
                       other=0)
    acc = tl.zeros([BLOCK_N, P], dtype=tl.float32)
    for b in range(b0, b1):
        nxt = b + PREFETCH
        if PREFETCH == 0:
            w_lo = tl.load(w_ptrs + b * stride_wb, mask=n_mask[:, None], other=0)
        else:
            w_lo = w_n1
            w_new = tl.load(w_ptrs + nxt * stride_wb, mask=n_mask[:, None] & (offs_p * 0 + nxt < b1)[None, :], other=0)
            if PREFETCH == 1:
                w_n1 = w_new
            else:
                w_n1 = w_n2
                w_n2 = w_new
        w_hi = w_lo >> (BITS + 8)
        part = tl.zeros([BLOCK_N, P], dtype=tl.float32)
        xs = tl.zeros([P], dtype=tl.float32)
        for j in tl.static_range(E):
            if j % J_PER_GROUP == 0:
                s, zb = _group_params(sz_ptr, b, j, P, offs_n, n_mask, N, G, GS, PER_CHANNEL)
            k = b * 128 + j * P + offs_p
            xj = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            code = _code(w_lo, w_hi, j, BITS, DENORM)
            if DENORM:
                # q * 2^(POS-149) * x * 2^(96-POS) = q * x * 2^-53: exact product, normal range
                part += code * (xj * (2.0**X_EXP / _pos_scale(j, BITS)))[None, :]
                xs += xj
            else:
                part += (code - _zero_code(zb, j, BITS, DENORM)) * (xj / _pos_scale(j, BITS))[None, :]
            if j % J_PER_GROUP == J_PER_GROUP - 1:
                if DENORM:  # subtract zero * sum(x) in the same 2^-53 units
                    part -= (zb.to(tl.float32) * 2.0**-53) * xs[None, :]
                    xs = tl.zeros([P], dtype=tl.float32)
                if PER_CHANNEL:
                    acc += part
                else:
                    acc += part * (s * 2.0**53) if DENORM else part * s
                part = tl.zeros([BLOCK_N, P], dtype=tl.float32)
    y = tl.sum(acc, axis=1)
    if PER_CHANNEL:
        s_row = tl.load(sz_ptr + offs_n, mask=n_mask, other=0.0)
        y = y * (s_row * 2.0**53) if DENORM else y * s_row
    offs_m = tl.arange(0, 1)
    _finish(y[None, :], y_ptr, ws_ptr, lock_ptr, offs_m, offs_n, 1, N, stride_ym, pid_n, pid_k, SPLIT_K)


@triton.jit
def _deq(w_lo, w_hi, s, zb, J: tl.constexpr, BITS: tl.constexpr, E: tl.constexpr, DTYPE: tl.constexpr,
         DENORM: tl.constexpr):
    """Dequantized code J of a [BN, P] word tile, in the activation dtype."""
    c = _zero_code(zb, J, BITS, DENORM)
    code = _code(w_lo, w_hi, J, BITS, DENORM)
    if DENORM:  # (q - z) * 2^(POS-49), exact, then times scale * 2^(49-POS)
        w = (code * LIFT - c * LIFT) * (s * (2.0**49 / _pos_scale(J, BITS)))
    else:
        w = (code - c) * (s / _pos_scale(J, BITS))
    return w.to(DTYPE)


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr):
    # The CPU interpreter (Triton 3.9) multiplies bf16 operands as raw uint16: upcast there only.
    if DOT_FP32:  # noqa: SIM108
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def _mma(x, w, acc, SWAP: tl.constexpr, DOT_FP32: tl.constexpr):
    """acc += x @ w^T ([BM, BN]) or, swapped, acc += w @ x^T ([BN, BM])."""
    if SWAP:  # noqa: SIM108
        out = _dot(w, tl.trans(x), acc, DOT_FP32)
    else:
        out = _dot(x, tl.trans(w), acc, DOT_FP32)
    return out


@triton.jit(do_not_specialize=["M", "G", "KB", "SPLIT_K"])
def _wq_gemm_kernel(
    x_ptr, w_ptr, sz_ptr, y_ptr, ws_ptr, lock_ptr,
    M, N, K, G, KB, SPLIT_K, stride_xm, stride_wb, stride_wn, stride_ym,
    BITS: tl.constexpr, GS: tl.constexpr, PER_CHANNEL: tl.constexpr, DENORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
    JOIN: tl.constexpr, SWAP: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """y = x @ dequant(W)^T on tensor cores; one CTA = [BLOCK_M, BLOCK_N] x one K split."""
    E: tl.constexpr = 32 // BITS
    P: tl.constexpr = 128 // E
    J_PER_GROUP: tl.constexpr = E if (PER_CHANNEL or GS >= 128) else E * GS // 128
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    # grouped tile order: GROUP_M row-tiles share the W tiles they stream through L2
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    rows = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % rows
    pid_n = (pid % width) // rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = tl.arange(0, P)
    m_mask = offs_m < M
    n_mask = offs_n < N
    per_split = tl.cdiv(KB, SPLIT_K)
    b0 = pid_k * per_split
    b1 = tl.minimum(b0 + per_split, KB)
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_p[None, :]
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    # SWAP: accumulate y^T = W x^T so the dequantized tile is the MMA's A operand (registers on wgmma)
    if SWAP:  # noqa: SIM108
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for b in range(b0, b1):
        w_lo = tl.load(w_ptrs + b * stride_wb, mask=n_mask[:, None], other=0)
        w_hi = w_lo >> (BITS + 8)
        s, z = _group_params(sz_ptr, b, 0, P, offs_n, n_mask, N, G, GS, PER_CHANNEL)
        if J_PER_GROUP < E:
            s2, z2 = _group_params(sz_ptr, b, E - 1, P, offs_n, n_mask, N, G, GS, PER_CHANNEL)
        else:
            s2, z2 = s, z
        if JOIN:
            kk = b * 128 + tl.arange(0, 128)
            xt = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & (kk[None, :] < K), other=0.0)
            d0 = _deq(w_lo, w_hi, s, z, 0, BITS, E, DTYPE, DENORM)
            d1 = _deq(w_lo, w_hi, s, z, 1, BITS, E, DTYPE, DENORM)
            if E == 8:
                d2 = _deq(w_lo, w_hi, s, z, 2, BITS, E, DTYPE, DENORM)
                d3 = _deq(w_lo, w_hi, s, z, 3, BITS, E, DTYPE, DENORM)
                d4 = _deq(w_lo, w_hi, s2, z2, 4, BITS, E, DTYPE, DENORM)
                d5 = _deq(w_lo, w_hi, s2, z2, 5, BITS, E, DTYPE, DENORM)
                d6 = _deq(w_lo, w_hi, s2, z2, 6, BITS, E, DTYPE, DENORM)
                d7 = _deq(w_lo, w_hi, s2, z2, 7, BITS, E, DTYPE, DENORM)
                # minor index (b2, b1, b0) of the joined dims equals j; then move j in front of p
                t = tl.join(tl.join(tl.join(d0, d4), tl.join(d2, d6)),
                            tl.join(tl.join(d1, d5), tl.join(d3, d7)))
                t = tl.permute(t, (0, 2, 3, 4, 1))
            else:
                d2 = _deq(w_lo, w_hi, s2, z2, 2, BITS, E, DTYPE, DENORM)
                d3 = _deq(w_lo, w_hi, s2, z2, 3, BITS, E, DTYPE, DENORM)
                t = tl.permute(tl.join(tl.join(d0, d2), tl.join(d1, d3)), (0, 2, 3, 1))
            wt = tl.reshape(t, (BLOCK_N, 128))
            acc = _mma(xt, wt, acc, SWAP, DOT_FP32)
        else:
            for j in tl.static_range(E):
                kk = b * 128 + j * P + offs_p
                xj = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & (kk[None, :] < K), other=0.0)
                if j < J_PER_GROUP:
                    wj = _deq(w_lo, w_hi, s, z, j, BITS, E, DTYPE, DENORM)
                else:
                    wj = _deq(w_lo, w_hi, s2, z2, j, BITS, E, DTYPE, DENORM)
                acc = _mma(xj, wj, acc, SWAP, DOT_FP32)
    if SWAP:
        acc = tl.trans(acc)
    tile = pid_m * grid_n + pid_n
    _finish(acc, y_ptr, ws_ptr, lock_ptr, offs_m, offs_n, M, N, stride_ym, tile, pid_k, SPLIT_K)


# ------------------------------------------------------------------------------------------ launch
_LOCKS: dict = {}  # device -> int32 split-K counters (zero between launches: the last split resets)
_SMS: dict = {}


def _locks(device, n: int):
    import torch

    buf = _LOCKS.get(device)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _LOCKS[device] = buf
    return buf


def _num_sms(device) -> int:
    import torch

    if device.type != "cuda":
        return 132
    if device not in _SMS:
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device]


def _auto_split(tiles: int, kb: int, waves: float, sms: int) -> int:
    """Smallest power-of-two split giving >= waves*SMs CTAs, keeping >= 2 K blocks per split."""
    split = 1
    while tiles * split < waves * sms and split * 4 <= kb:
        split *= 2
    return split


def quant_matmul(x, packed, sz, bits: int, group_size: int | None, config: dict):
    """``x @ dequant(W)^T`` for packed W (``quant.py`` layout); ``config`` from ``quant_gemm_configs``.

    x: ``[..., K]`` fp16/bf16; packed: int32 ``[KB, N, P]``; sz: int4 scale/zero words ``[G, N]``, or
    for int8 (``group_size=None``) fp32 per-channel scales ``[N]``. Returns ``[..., N]`` in ``x.dtype``.
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
    gemv = config["kernel"] == "gemv" and m == 1
    bm = 1 if gemv else config["BLOCK_M"]
    bn = config["BLOCK_N"]
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    split = config.get("split_k") or _auto_split(tiles, kb, config.get("waves", 0), _num_sms(x.device))
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else y
    locks = _locks(x.device, tiles)
    common = dict(BITS=bits, GS=group_size or 128, PER_CHANNEL=per_channel, DENORM=config.get("DENORM", True),
                  BLOCK_N=bn, num_warps=config["num_warps"],
                  num_stages=config.get("num_stages", 1))
    if gemv:
        _wq_gemv_kernel[(triton.cdiv(n, bn), split)](
            x2, packed, sz, y, ws, locks, n, k, g, kb, split, packed.stride(0), packed.stride(1), y.stride(0),
            PREFETCH=config.get("PREFETCH", 1), **common)
    else:
        _wq_gemm_kernel[(tiles, split)](
            x2, packed, sz, y, ws, locks, m, n, k, g, kb, split, x2.stride(0), packed.stride(0), packed.stride(1),
            y.stride(0), BLOCK_M=bm, GROUP_M=config.get("GROUP_M", 8), JOIN=config.get("JOIN", True),
            SWAP=config.get("SWAP", False), DOT_FP32=os.environ.get("TRITON_INTERPRET") == "1", **common)
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
