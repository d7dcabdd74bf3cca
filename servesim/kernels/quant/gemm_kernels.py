"""The quantized GEMM kernels: ``_wq_gemv_kernel`` (M == 1, CUDA-core FMAs) and ``_wq_gemm_kernel``
(any M, ``tl.dot`` on a dequantized tile). The launcher and the format are in ``gemm.py``."""

from __future__ import annotations

import triton
import triton.language as tl

from .gemm_common import (  # noqa: F401  (Triton resolves these as globals)
    LIFT,
    MAGIC,
    X_EXP,
    _code,
    _finish,
    _pick,
    _pick_word,
    _pos_scale,
    _split_sz,
    _sz_words,
    _tile,
    _w_block,
    _x_block,
    _zero_code,
)


def _pair_asm(op: str, magic: str, one: str, scale: bool) -> str:
    """PTX for ``_deq_asm``: outputs $0-$15 (code j of the even word: $j, of the odd word: $j+8), inputs
    $16/$17 the even/odd words, $18/$19 -(MAGIC + z) for codes 0-3 / 4-7, $20/$21 the scales likewise."""
    lines = [".reg .b32 t<8>, u<8>, one;", f"mov.b32 one, {one};",
             "prmt.b32 u0, $16, $17, 0x5410;", "prmt.b32 u4, $16, $17, 0x7632;"]  # codes 0-3 | 4-7 of both
    lines += [f"shr.u32 u{h + i}, u{h}, {4 * i};" for h in (0, 4) for i in (1, 2, 3)]
    lines += [f"lop3.b32 t{i}, u{i}, 0x000F000F, {magic}, 0xEA;" for i in range(8)]
    lines += [f"fma.rn.{op} t{i}, t{i}, one, ${18 + i // 4};" for i in range(8)]
    if scale:
        lines += [f"mul.rn.bf16x2 t{i}, t{i}, ${20 + i // 4};" for i in range(8)]
    lines += [f"mov.b32 {{${i}, ${i + 8}}}, t{i};" for i in range(8)]
    return "{\n" + "\n".join(lines) + "\n}"


PAIR_ASM_BF16 = tl.constexpr(_pair_asm("bf16x2", "0x43004300", "0x3F803F80", False))
PAIR_ASM_BF16_SCALED = tl.constexpr(_pair_asm("bf16x2", "0x43004300", "0x3F803F80", True))
PAIR_ASM_F16 = tl.constexpr(_pair_asm("f16x2", "0x64006400", "0x3C003C00", False))


@triton.jit(do_not_specialize=["G", "KB", "SPLIT_K"])
def _wq_gemv_kernel(
    x_ptr, w_ptr, sz_ptr, y_ptr, ws_ptr, lock_ptr,
    N, K, G, KB, SPLIT_K, stride_wb, stride_wn, stride_ym,
    BITS: tl.constexpr, GS: tl.constexpr, PER_CHANNEL: tl.constexpr, DENORM: tl.constexpr,
    BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr, XPF: tl.constexpr, EVEN: tl.constexpr,
):
    """y[0, n] = sum_k x[0, k] * W[n, k]; one CTA = BLOCK_N channels x one K split.

    PREFETCH blocks ahead (1 or 2) of weights *and* scale/zero words are loaded while one block is
    dequantized (0 leaves the weights to num_stages). XPF loads the next block's activations with
    them: otherwise every iteration waits on an L2 round trip for x. EVEN (N % BLOCK_N == 0 and
    K % 128 == 0) drops the per-element masks; prefetches past the split then read a clamped, valid block.
    """
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
    if PREFETCH >= 1:
        w_n1 = _w_block(w_ptrs, b0, b1, KB, stride_wb, n_mask, offs_p, EVEN)
        q_n1, r_n1 = _sz_words(sz_ptr, b0, offs_n, n_mask, N, G, KB, GS, PER_CHANNEL, EVEN)
    if PREFETCH >= 2:
        w_n2 = _w_block(w_ptrs, b0 + 1, b1, KB, stride_wb, n_mask, offs_p, EVEN)
        q_n2, r_n2 = _sz_words(sz_ptr, b0 + 1, offs_n, n_mask, N, G, KB, GS, PER_CHANNEL, EVEN)
    if XPF:
        x0, x1, x2, x3, x4, x5, x6, x7 = _x_block(x_ptr, b0, offs_p, K, KB, b0 < b1, P, E, EVEN)
    acc = tl.zeros([BLOCK_N, P], dtype=tl.float32)
    for b in range(b0, b1):
        if XPF:
            c0, c1, c2, c3, c4, c5, c6, c7 = x0, x1, x2, x3, x4, x5, x6, x7
            x0, x1, x2, x3, x4, x5, x6, x7 = _x_block(x_ptr, b + 1, offs_p, K, KB, b + 1 < b1, P, E, EVEN)
        nxt = b + PREFETCH
        if PREFETCH == 0:
            w_lo = _w_block(w_ptrs, b, b1, KB, stride_wb, n_mask, offs_p, EVEN)
            q0, q1 = _sz_words(sz_ptr, b, offs_n, n_mask, N, G, KB, GS, PER_CHANNEL, EVEN)
        else:
            w_lo, q0, q1 = w_n1, q_n1, r_n1
            w_new = _w_block(w_ptrs, nxt, b1, KB, stride_wb, n_mask, offs_p, EVEN)
            q_new, r_new = _sz_words(sz_ptr, nxt, offs_n, n_mask, N, G, KB, GS, PER_CHANNEL, EVEN)
            if PREFETCH == 1:
                w_n1, q_n1, r_n1 = w_new, q_new, r_new
            else:
                w_n1, q_n1, r_n1 = w_n2, q_n2, r_n2
                w_n2, q_n2, r_n2 = w_new, q_new, r_new
        w_hi = w_lo >> (BITS + 8)
        part = tl.zeros([BLOCK_N, P], dtype=tl.float32)
        xs = tl.zeros([P], dtype=tl.float32)
        for j in tl.static_range(E):
            if j % J_PER_GROUP == 0:
                if PER_CHANNEL:
                    zb = tl.full([BLOCK_N, 1], 128, tl.int32)  # the storage bias; the scale comes after the loop
                else:
                    s, zb = _split_sz(_pick_word(j, E, q0, q1), sz_ptr, offs_n, n_mask, PER_CHANNEL)
            if XPF:
                xj = _pick(j, c0, c1, c2, c3, c4, c5, c6, c7).to(tl.float32)
            else:
                k = b * 128 + j * P + offs_p
                if EVEN:  # noqa: SIM108
                    xj = tl.load(x_ptr + k).to(tl.float32)
                else:
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
                    part -= (zb * 2.0**-53) * xs[None, :]
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


@triton.jit
def _deq_asm(w, zb, zb2, s, s2, DTYPE: tl.constexpr, SCALE: tl.constexpr):
    """DEQ 2 / 3 (int4, GPU only): all 8 codes of each word as exact ``q - z`` (DEQ 3: ``(q - z) * s``,
    bf16 only) in the activation dtype.

    Works on pairs of adjacent words (p, p+1): two PRMTs gather the low (codes 0-3) and the high halves
    (codes 4-7) of both words, then per code j one LOP3 puts code j of word p and of word p+1 into the
    mantissas of two packed 16-bit floats of value MAGIC + q (MAGIC = 128 in bf16, 1024 in fp16: one unit
    per mantissa step) and one packed FMA subtracts MAGIC + z. The packed pair is (k, k+1) of the
    ``k = 16 j + p`` order, the two elements one register of the wgmma A operand holds: no repacking (one
    word at a time paired codes j and j+4, and took 8 PRMTs per two words to regroup them). ~1.5
    instructions per weight, no conversion. Codes 0-3 take the zero ``zb``, codes 4-7 ``zb2`` (the second
    group of a 64-group block). SCALE adds one packed bf16 multiply by the group scale: one rounding of the
    exact ``(q - z) * s``, as DEQ 0's fp32 multiply and cast give.
    """
    if DTYPE == tl.bfloat16:  # noqa: SIM300 (DTYPE is the compile-time value)
        nz, nz2 = zb | 0xC300, zb2 | 0xC300  # -(128 + z) in bf16
        asm: tl.constexpr = PAIR_ASM_BF16_SCALED if SCALE else PAIR_ASM_BF16
    else:
        nz, nz2 = zb | 0xE400, zb2 | 0xE400  # -(1024 + z) in fp16
        asm: tl.constexpr = PAIR_ASM_F16
    BN: tl.constexpr = w.shape[0]
    HALF: tl.constexpr = w.shape[1] // 2
    we, wo = tl.split(tl.reshape(w, (BN, HALF, 2)))  # words p even, p + 1
    # per-channel [BN, 1] values, the same 16 bits in both halves
    nzz = tl.broadcast_to(nz | (nz << 16), we.shape)
    nzz2 = tl.broadcast_to(nz2 | (nz2 << 16), we.shape)
    if SCALE:  # the bf16 bits of the fp32 scales (built as word << 16, so exact)
        sb, sb2 = s.to(tl.int32, bitcast=True) & -65536, s2.to(tl.int32, bitcast=True) & -65536
        ss = tl.broadcast_to(sb | ((sb >> 16) & 0xFFFF), we.shape)
        ss2 = tl.broadcast_to(sb2 | ((sb2 >> 16) & 0xFFFF), we.shape)
    else:
        ss, ss2 = nzz, nzz2  # unused operands
    r = tl.inline_asm_elementwise(asm=asm, constraints="=h," * 16 + "r,r,r,r,r,r",
                                  args=[we, wo, nzz, nzz2, ss, ss2], dtype=(tl.int16,) * 16, is_pure=True, pack=1)
    return (_pair(r[0], r[8], DTYPE), _pair(r[1], r[9], DTYPE), _pair(r[2], r[10], DTYPE),
            _pair(r[3], r[11], DTYPE), _pair(r[4], r[12], DTYPE), _pair(r[5], r[13], DTYPE),
            _pair(r[6], r[14], DTYPE), _pair(r[7], r[15], DTYPE))


@triton.jit
def _pair(even, odd, DTYPE: tl.constexpr):
    """Interleave the [BN, P/2] codes of even and odd words back into one [BN, P] slice."""
    t = tl.join(even.to(DTYPE, bitcast=True), odd.to(DTYPE, bitcast=True))
    return tl.reshape(t, (t.shape[0], 2 * t.shape[1]))


@triton.jit
def _deq_q(w_lo, w_hi, zb, J: tl.constexpr, BITS: tl.constexpr, DTYPE: tl.constexpr, DENORM: tl.constexpr):
    """DEQ 1: ``(q - z) * 2^(POS-49)`` (denorm; ``* 2^POS`` magic), exact in bf16: the scale comes later."""
    c = _zero_code(zb, J, BITS, DENORM)
    code = _code(w_lo, w_hi, J, BITS, DENORM)
    if DENORM:  # noqa: SIM108
        w = code * LIFT - c * LIFT  # one FFMA
    else:
        w = code - c
    return w.to(DTYPE)


@triton.jit
def _x_unit(J: tl.constexpr, BITS: tl.constexpr, DENORM: tl.constexpr):
    """DEQ 1: the factor taking code J's ``_deq_q`` units back to ``q - z`` (moved onto x: exact, 2^n)."""
    if DENORM:  # noqa: SIM108
        f = 2.0**49 / _pos_scale(J, BITS)
    else:
        f = 1.0 / _pos_scale(J, BITS)
    return f


@triton.jit
def _deq_all(w_lo, w_hi, s, z, s2, z2, BITS: tl.constexpr, E: tl.constexpr, DTYPE: tl.constexpr,
             DENORM: tl.constexpr, DEQ: tl.constexpr):
    """The E code slices of a [BN, P] word tile (8 values; for E = 4 the last four repeat)."""
    if DEQ >= 2:
        d0, d1, d2, d3, d4, d5, d6, d7 = _deq_asm(w_lo, z, z2, s, s2, DTYPE, DEQ == 3)
    elif DEQ == 1:
        d0 = _deq_q(w_lo, w_hi, z, 0, BITS, DTYPE, DENORM)
        d1 = _deq_q(w_lo, w_hi, z, 1, BITS, DTYPE, DENORM)
        if E == 8:
            d2 = _deq_q(w_lo, w_hi, z, 2, BITS, DTYPE, DENORM)
            d3 = _deq_q(w_lo, w_hi, z, 3, BITS, DTYPE, DENORM)
            d4 = _deq_q(w_lo, w_hi, z2, 4, BITS, DTYPE, DENORM)
            d5 = _deq_q(w_lo, w_hi, z2, 5, BITS, DTYPE, DENORM)
            d6 = _deq_q(w_lo, w_hi, z2, 6, BITS, DTYPE, DENORM)
            d7 = _deq_q(w_lo, w_hi, z2, 7, BITS, DTYPE, DENORM)
        else:
            d2 = _deq_q(w_lo, w_hi, z2, 2, BITS, DTYPE, DENORM)
            d3 = _deq_q(w_lo, w_hi, z2, 3, BITS, DTYPE, DENORM)
            d4, d5, d6, d7 = d0, d1, d2, d3
    else:
        d0 = _deq(w_lo, w_hi, s, z, 0, BITS, E, DTYPE, DENORM)
        d1 = _deq(w_lo, w_hi, s, z, 1, BITS, E, DTYPE, DENORM)
        if E == 8:
            d2 = _deq(w_lo, w_hi, s, z, 2, BITS, E, DTYPE, DENORM)
            d3 = _deq(w_lo, w_hi, s, z, 3, BITS, E, DTYPE, DENORM)
            d4 = _deq(w_lo, w_hi, s2, z2, 4, BITS, E, DTYPE, DENORM)
            d5 = _deq(w_lo, w_hi, s2, z2, 5, BITS, E, DTYPE, DENORM)
            d6 = _deq(w_lo, w_hi, s2, z2, 6, BITS, E, DTYPE, DENORM)
            d7 = _deq(w_lo, w_hi, s2, z2, 7, BITS, E, DTYPE, DENORM)
        else:
            d2 = _deq(w_lo, w_hi, s2, z2, 2, BITS, E, DTYPE, DENORM)
            d3 = _deq(w_lo, w_hi, s2, z2, 3, BITS, E, DTYPE, DENORM)
            d4, d5, d6, d7 = d0, d1, d2, d3
    return d0, d1, d2, d3, d4, d5, d6, d7


@triton.jit
def _oriented(s, SWAP: tl.constexpr):
    """A [BN, 1] per-channel column as it broadcasts over the accumulator ([BN, BM] swapped, else [BM, BN])."""
    if SWAP:  # noqa: SIM108
        r = s
    else:
        r = tl.trans(s)
    return r


@triton.jit(do_not_specialize=["M", "G", "KB", "SPLIT_K"])
def _wq_gemm_kernel(
    x_ptr, w_ptr, sz_ptr, y_ptr, ws_ptr, lock_ptr,
    M, N, K, G, KB, SPLIT_K, stride_xm, stride_wb, stride_wn, stride_ym,
    BITS: tl.constexpr, GS: tl.constexpr, PER_CHANNEL: tl.constexpr, DENORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
    JOIN: tl.constexpr, SWAP: tl.constexpr, DOT_FP32: tl.constexpr, DEQ: tl.constexpr,
):
    """y = x @ dequant(W)^T on tensor cores; one CTA = [BLOCK_M, BLOCK_N] x one K split.

    DEQ 0 dequantizes to ``(q - z) * s`` per weight. DEQ 1 and 2 feed the MMA ``q - z`` only and apply
    the scale once per group to the dot's result (``sum_k x (q - z) s = s * sum_k x (q - z)``): one
    FMA per accumulator element per group instead of one multiply per weight, but the dot then needs a
    fresh accumulator. DEQ 3 (int4, bf16) is DEQ 0 done in packed bf16x2 PTX: for large M tiles.
    """
    E: tl.constexpr = 32 // BITS
    P: tl.constexpr = 128 // E
    J_PER_GROUP: tl.constexpr = E if (PER_CHANNEL or GS >= 128) else E * GS // 128
    # a joined tile spans both groups of a 64-group block: factored scales need per-slice dots there
    POST: tl.constexpr = DEQ == 1 or DEQ == 2  # the group scale multiplies the dot's result
    JOINED: tl.constexpr = JOIN and (not POST or J_PER_GROUP == E)
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    pid_m, pid_n, grid_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)

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
    # DEQ 1: x of code slice j carries the 2^n that _deq_q left on the weights
    jk = tl.arange(0, 128) // P
    pos = tl.where(BITS * jk + BITS <= 23, BITS * jk, BITS * jk - (BITS + 8))
    x_unit = ((127 + (49 if DENORM else 0) - pos) << 23).to(tl.float32, bitcast=True)
    # SWAP: accumulate y^T = W x^T so the dequantized tile is the MMA's A operand (registers on wgmma)
    if SWAP:  # noqa: SIM108
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # DEQ 1/2 apply the scale after the dot: the software pipeline only covers loads feeding the dot,
    # so that scale was a plain load waiting on DRAM in every iteration. It now comes a block ahead, in
    # registers; the zero (feeding the dot) still comes with the pipelined tile. int8: once, here.
    q_n, r_n = _sz_words(sz_ptr, b0, offs_n, n_mask, N, G, KB, GS, PER_CHANNEL, False)
    s_pc, z_pc = _split_sz(q_n, sz_ptr, offs_n, n_mask, PER_CHANNEL)
    for b in range(b0, b1):
        w_lo = tl.load(w_ptrs + b * stride_wb, mask=n_mask[:, None], other=0)
        w_hi = w_lo >> (BITS + 8)
        if PER_CHANNEL:
            s, z, s2, z2 = s_pc, z_pc, s_pc, z_pc
        else:
            q0, q1 = _sz_words(sz_ptr, b, offs_n, n_mask, N, G, KB, GS, PER_CHANNEL, False)
            s, z = _split_sz(q0, sz_ptr, offs_n, n_mask, PER_CHANNEL)
            s2, z2 = _split_sz(q1, sz_ptr, offs_n, n_mask, PER_CHANNEL)
            if POST:
                s, _ = _split_sz(q_n, sz_ptr, offs_n, n_mask, PER_CHANNEL)
                s2, _ = _split_sz(r_n, sz_ptr, offs_n, n_mask, PER_CHANNEL)
                q_n, r_n = _sz_words(sz_ptr, b + 1, offs_n, n_mask, N, G, KB, GS, PER_CHANNEL, False)
        d0, d1, d2, d3, d4, d5, d6, d7 = _deq_all(w_lo, w_hi, s, z, s2, z2, BITS, E, DTYPE, DENORM, DEQ)
        if JOINED:
            kk = b * 128 + tl.arange(0, 128)
            xt = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & (kk[None, :] < K), other=0.0)
            if DEQ == 1:
                xt = (xt.to(tl.float32) * x_unit[None, :]).to(DTYPE)
            if E == 8:
                # minor index (b2, b1, b0) of the joined dims equals j; then move j in front of p
                t = tl.join(tl.join(tl.join(d0, d4), tl.join(d2, d6)),
                            tl.join(tl.join(d1, d5), tl.join(d3, d7)))
                t = tl.permute(t, (0, 2, 3, 4, 1))
            else:
                t = tl.permute(tl.join(tl.join(d0, d2), tl.join(d1, d3)), (0, 2, 3, 1))
            wt = tl.reshape(t, (BLOCK_N, 128))
            if not POST or PER_CHANNEL:
                acc = _mma(xt, wt, acc, SWAP, DOT_FP32)
            else:
                acc += _mma(xt, wt, tl.zeros_like(acc), SWAP, DOT_FP32) * _oriented(s, SWAP)
        else:
            part = tl.zeros_like(acc)
            for j in tl.static_range(E):
                kk = b * 128 + j * P + offs_p
                xj = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & (kk[None, :] < K), other=0.0)
                if DEQ == 1:
                    xj = (xj.to(tl.float32) * _x_unit(j, BITS, DENORM)).to(DTYPE)
                wj = _pick(j, d0, d1, d2, d3, d4, d5, d6, d7)
                if not POST or PER_CHANNEL:
                    acc = _mma(xj, wj, acc, SWAP, DOT_FP32)
                else:
                    part = _mma(xj, wj, part, SWAP, DOT_FP32)
                    if j == J_PER_GROUP - 1:
                        acc += part * _oriented(s, SWAP)
                        part = tl.zeros_like(acc)
                    if J_PER_GROUP < E and j == E - 1:
                        acc += part * _oriented(s2, SWAP)
    if POST and PER_CHANNEL:
        acc = acc * _oriented(s_pc, SWAP)
    if SWAP:
        acc = tl.trans(acc)
    tile = pid_m * grid_n + pid_n
    _finish(acc, y_ptr, ws_ptr, lock_ptr, offs_m, offs_n, M, N, stride_ym, tile, pid_k, SPLIT_K)
