"""Shared pieces of the quantized GEMM kernels: code extraction, group scales and zeros, tile loads,
and the split-K epilogue. The packed format and the dequantization tricks are described in
``gemm.py``."""

from __future__ import annotations

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
def _sz_words(sz_ptr, b, offs_n, n_mask, N, G, KB, GS: tl.constexpr, PER_CHANNEL: tl.constexpr,
              EVEN: tl.constexpr):
    """The raw scale/zero words of block b for BN channels: (codes 0-3, codes 4-7); one load for g128.

    Loaded a block ahead by the kernels: a word used in the iteration that loads it put a DRAM round
    trip (the words are read once, never from L2) into every K block. EVEN: unmasked, b clamped.
    Per-channel (int8) has no per-block words: zeros.
    """
    if PER_CHANNEL:
        w0 = offs_n * 0
        w1 = w0
    else:
        PER_BLOCK: tl.constexpr = 128 // GS
        if EVEN:
            g = tl.minimum(b, KB - 1) * PER_BLOCK
            w0 = tl.load(sz_ptr + g * N + offs_n)
        else:
            g = b * PER_BLOCK
            ok = n_mask & (offs_n * 0 + g < G)  # a tensor mask: the interpreter wants one
            w0 = tl.load(sz_ptr + g * N + offs_n, mask=ok, other=0)
        if PER_BLOCK == 2:
            if EVEN:
                w1 = tl.load(sz_ptr + (g + 1) * N + offs_n)
            else:
                w1 = tl.load(sz_ptr + (g + 1) * N + offs_n, mask=n_mask & (offs_n * 0 + g + 1 < G), other=0)
        else:
            w1 = w0
    return w0, w1


@triton.jit
def _split_sz(word, sz_ptr, offs_n, n_mask, PER_CHANNEL: tl.constexpr):
    """(scale fp32, zero int32) as [BN, 1] columns from a ``_sz_words`` word.

    int4: bf16 scale bits low, zero high. int8 per-channel: the fp32 scale per channel (loaded here:
    once per kernel, outside the K loop) and the storage bias 128 as zero. Expanding to 2-D at once
    makes Triton move that one vector into the tile's row layout, not each value derived from it.
    """
    if PER_CHANNEL:
        s = tl.load(sz_ptr + offs_n, mask=n_mask, other=0.0)[:, None]
        zb = (offs_n * 0 + 128)[:, None]
    else:
        w = word[:, None]
        s = (w << 16).to(tl.float32, bitcast=True)  # bf16 -> fp32 is a 16-bit shift
        zb = (w >> 16) & 0xFFFF
    return s, zb


@triton.jit
def _pick_word(J: tl.constexpr, E: tl.constexpr, w0, w1):
    """The scale/zero word of code slice J: w0 for the first half of the block's codes, else w1."""
    if J < E // 2:  # noqa: SIM108
        r = w0
    else:
        r = w1
    return r


@triton.jit
def _tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile, column tiles) of program ``pid`` in grouped order: GROUP_M row tiles side by side
    share the weight tiles they stream through L2."""
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    rows = tl.minimum(grid_m - first_m, GROUP_M)
    return first_m + (pid % width) % rows, (pid % width) // rows, grid_n


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


@triton.jit
def _w_block(w_ptrs, b, b1, KB, stride_wb, n_mask, offs_p, EVEN: tl.constexpr):
    """Word tile of block b (zeros past the split; EVEN: unmasked, b clamped to a valid block)."""
    if EVEN:
        w = tl.load(w_ptrs + tl.minimum(b, KB - 1) * stride_wb)
    else:
        w = tl.load(w_ptrs + b * stride_wb, mask=n_mask[:, None] & (offs_p * 0 + b < b1)[None, :], other=0)
    return w


@triton.jit
def _x_load(ptrs, k, K, ok, EVEN: tl.constexpr):
    if EVEN:  # noqa: SIM108
        v = tl.load(ptrs)
    else:
        v = tl.load(ptrs, mask=ok & (k < K), other=0.0)
    return v


@triton.jit
def _x_block(x_ptr, b, offs_p, K, KB, ok, P: tl.constexpr, E: tl.constexpr, EVEN: tl.constexpr):
    """The activations of K block b as E slices of P (8 values; for E = 4 the last four repeat)."""
    if EVEN:
        b = tl.minimum(b, KB - 1)
    k = b * 128 + offs_p
    ok = (offs_p * 0 + ok) != 0  # a tensor mask for the interpreter
    x0 = _x_load(x_ptr + k, k, K, ok, EVEN)
    x1 = _x_load(x_ptr + k + P, k + P, K, ok, EVEN)
    x2 = _x_load(x_ptr + k + 2 * P, k + 2 * P, K, ok, EVEN)
    x3 = _x_load(x_ptr + k + 3 * P, k + 3 * P, K, ok, EVEN)
    if E == 8:
        x4 = _x_load(x_ptr + k + 4 * P, k + 4 * P, K, ok, EVEN)
        x5 = _x_load(x_ptr + k + 5 * P, k + 5 * P, K, ok, EVEN)
        x6 = _x_load(x_ptr + k + 6 * P, k + 6 * P, K, ok, EVEN)
        x7 = _x_load(x_ptr + k + 7 * P, k + 7 * P, K, ok, EVEN)
    else:
        x4, x5, x6, x7 = x0, x1, x2, x3
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _pick(J: tl.constexpr, c0, c1, c2, c3, c4, c5, c6, c7):
    """c_J for a compile-time J (one return: see ``_code``)."""
    if J == 0:
        r = c0
    elif J == 1:
        r = c1
    elif J == 2:
        r = c2
    elif J == 3:
        r = c3
    elif J == 4:
        r = c4
    elif J == 5:
        r = c5
    elif J == 6:
        r = c6
    else:
        r = c7
    return r


# M, split and block counts only feed arithmetic: one compile serves every value
