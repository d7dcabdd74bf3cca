"""Fused speculative-decoding verification (rejection sampling) in Triton; reference in ``spec_ref.py``.

Inputs (B sequences; sequence ``i`` drafted ``k_i >= 0`` tokens, ``K = max k_i``):

* ``target_logits`` ``[T, V]`` bf16/fp16/fp32, ``T = sum(k_i + 1)``: sequence ``i`` owns rows
  ``cu_rows[i] .. cu_rows[i+1] - 1`` (its ``k_i`` draft positions, then the bonus position).
* ``cu_rows`` int32 ``[B+1]``; the drafts of sequence ``i`` start at ``cu_rows[i] - i``.
* ``draft_tokens`` int32/int64 ``[sum k_i]``; ``draft_probs`` ``[sum k_i, V]`` (any float dtype): the
  *full* draft distributions q, which the lossless residual ``max(0, p - q)`` needs. Unused when greedy.
* ``seeds`` int64 ``[B]``; ``temperature``: one float, 0 selects the greedy rule.

Rule (Leviathan et al. 2023): with ``p_j = softmax(logits_j / T)``, accept ``x_j`` while
``u_j * q_j(x_j) < p_j(x_j)`` (probability ``min(1, p/q)``); at the first rejection emit a sample of
``normalize(max(0, p_j - q_j))`` (of ``p_j`` if that residual is all zero, which only rounding allows);
if all ``k_i`` are accepted emit a sample of ``p_{k_i}`` (the bonus token). Greedy: accept while
``x_j == argmax_j`` (ties: lowest id), then emit that argmax. Outputs ``accepted`` int32 ``[B]`` and
``emitted`` int32 ``[B, K+1]``: ``accepted`` drafts, one recovered/bonus token, then -1.

Randomness is counter-based, so it does not depend on the launch shape (``spec_ref.py`` has the exact
recipe and the NumPy code that reproduces it). Acceptance uniforms are Philox4x32-10 (``tl.randint4x``)
draws keyed by the sequence's seed. The per-token noise, one draw per vocabulary entry, is a cheap
counter-based 32-bit hash of (position keys from Philox, token), turned into ``E2 = E / ln 2`` with
``E ~ Exp(1)`` (a series near 0, so small ``E`` keep their relative precision and rare tokens their
probability). Sampling is an exponential race: the bonus token is ``argmax(y - log2 E2)`` with
``y = logits * log2(e) / T`` (Gumbel-max), the recovered one ``argmax(max(0, p - q) / E2)``, which needs no
normalisation. The reference draws the same numbers and repeats the arithmetic, so kernel and reference
agree token for token (up to float rounding ties, about 1e-7 per decision).

Two launches, no [T, V] float32 tensor: (1) one pass over every row, split along V into chunks:
running max and sum of exp (draft rows), Gumbel-max partial winners (bonus rows), max/argmax (greedy);
(2) grid (chunk, sequence): the acceptance tests; a sequence that accepted everything has its bonus winner
emitted by chunk 0; a rejected one races the residual over one chunk of its rejected row (read again, with
its q row) and the last chunk to arrive combines the winners and emits (greedy: one tiny program per
sequence instead).
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from servesim.kernels import spec_ref
from servesim.kernels.attention_decode import split_counters  # shared zero counters, reset by their last user
from servesim.kernels.spec_ref import accept_uniforms, exponentials, noise_bits, philox4x32, verify_bytes, verify_ref

__all__ = ["verify", "verify_ref", "verify_bytes", "philox4x32", "accept_uniforms", "exponentials", "noise_bits"]

_BIG = tl.constexpr(2**31 - 1)
_ONE_HI = tl.constexpr(1 << 32)  # Philox counter (c0, c1) = (offset low, offset high word)
_G, _M1, _M2 = tl.constexpr(spec_ref.HASH_G), tl.constexpr(spec_ref.HASH_M1), tl.constexpr(spec_ref.HASH_M2)
_C1, _C2, _C3, _C4, _C5 = (tl.constexpr(c) for c in spec_ref.SERIES)


@triton.jit
def _row_keys(seed, j):
    """Hash keys (k1, k2) of position j: lanes 0 and 1 of Philox counter (j, 1) under the seed (scalars)."""
    offs = (tl.arange(0, 1) + j).to(tl.int64) + _ONE_HI
    k1, k2, _, _ = tl.randint4x(seed, offs)
    return tl.max(k1, 0), tl.max(k2, 0)


@triton.jit
def _mix(x, k2):
    """32-bit counter-based hash (spec_ref.mix32): two multiplies, key k2 injected mid-way; a bijection of x."""
    x ^= x >> 16
    x *= _M1
    x ^= (x >> 15) ^ k2
    x *= _M2
    return x ^ (x >> 15)


@triton.jit
def _noise(x, k2, LOG: tl.constexpr, FAST: tl.constexpr):
    """E2 = E / ln 2, E ~ Exp(1) (log2 E2 if LOG), of Weyl counters x (uint32) under key k2.

    h = _mix(x, k2), w = (h + 0.5) / 2**32, E2 = -log2(1 - w), by a series below w = 1/32 so
    that small E keep their relative precision. FAST: the GPU's lg2.approx (error ~1e-7)."""
    w = _mix(x, k2).to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
    poly = w * (_C1 + w * (_C2 + w * (_C3 + w * (_C4 + w * _C5))))
    if FAST:
        e = tl.where(w < 0.03125, poly, -libdevice.fast_log2f(1.0 - w))
        if LOG:
            e = libdevice.fast_log2f(e)
    else:
        e = tl.where(w < 0.03125, poly, -tl.log2(1.0 - w))
        if LOG:
            e = tl.log2(e)
    return e


@triton.jit
def _keep(key, start, best, best_start):
    """Per-lane running winner, as (key, block start): a lane sees increasing tokens, so strict > keeps the
    lowest on ties; the token is best_start + lane, recovered once at the end."""
    upd = key > best
    return tl.where(upd, key, best), tl.where(upd, start, best_start)


@triton.jit
def _winner(best, best_start, lane):
    """Reduce per-lane winners: max key, lowest token among equal keys (BIG if no lane has a finite key)."""
    kb = tl.max(best, 0)
    idx = tl.where((best == kb) & (best > float("-inf")), best_start + lane, _BIG)
    return kb, tl.min(idx, 0)


@triton.jit
def _load(base, start, hi, lane, other, MASK: tl.constexpr):
    """One block of a row as float32 (MASK: the tail, lanes past hi read `other`)."""
    if MASK:
        return tl.load(base + start + lane, mask=start + lane < hi, other=other).to(tl.float32)
    else:
        return tl.load(base + start + lane).to(tl.float32)


@triton.jit
def _stats_block(y, start, scale, m, s, am, GREEDY: tl.constexpr):
    """Draft rows: per-lane running max and sum of 2^(y - max); greedy: max and its lowest index."""
    y = y * scale
    if GREEDY:
        m, am = _keep(y, start, m, am)
    else:
        # -inf (masked) logits become -3e38: weight exp2(-3e38 - max) = 0 after the reduction, and one
        # exp2 per element serves both cases (new max: rescale; else: add)
        y = tl.maximum(y, -3.0e38)
        e = tl.exp2(-tl.abs(y - m))
        s = tl.where(y > m, s * e + 1.0, s + e)
        m = tl.maximum(m, y)
    return m, s, am


@triton.jit
def _bonus_block(y, start, weyl, k1, k2, scale, best, best_start, FAST: tl.constexpr):
    """Bonus row: Gumbel-max keys y - log2 E2 of one block, folded into the per-lane winners."""
    key = y * scale - _noise(k1 + tl.cast(start, tl.uint32) * _G + weyl, k2, True, FAST)
    return _keep(key, start, best, best_start)


@triton.jit
def _row_pass_kernel(logit_ptr, stride_l, cu_ptr, seed_ptr, stat_a_ptr, stat_b_ptr, bkey_ptr, bidx_ptr,
                     V, chunk, n_split, scale, GREEDY: tl.constexpr, BLOCK: tl.constexpr, FAST: tl.constexpr):
    """Grid (split, position, sequence): one chunk of one target row, read once (full blocks unmasked)."""
    sp = tl.program_id(0)
    j = tl.program_id(1)
    i = tl.program_id(2)
    row0 = tl.load(cu_ptr + i)
    k = tl.load(cu_ptr + i + 1) - row0 - 1
    if j <= k:
        row = row0 + j
        base = logit_ptr + row.to(tl.int64) * stride_l
        lo = sp * chunk
        hi = tl.minimum(lo + chunk, V)
        full = lo + (hi - lo) // BLOCK * BLOCK
        lane = tl.arange(0, BLOCK)
        out = row.to(tl.int64) * n_split + sp
        if (j < k) | GREEDY:
            # lanes keep running values and reduce once after the loop (no block-wide reduction per block)
            m = tl.full([BLOCK], float("-inf"), tl.float32)
            s = tl.zeros([BLOCK], tl.float32)
            am = tl.zeros([BLOCK], tl.int32)
            # full blocks unmasked, the next block's load issued before this block's math (latency hiding)
            if lo < full:
                y = _load(base, lo, hi, lane, float("-inf"), False)
                for start in range(lo, full - BLOCK, BLOCK):
                    y_next = _load(base, start + BLOCK, hi, lane, float("-inf"), False)
                    m, s, am = _stats_block(y, start, scale, m, s, am, GREEDY)
                    y = y_next
                m, s, am = _stats_block(y, full - BLOCK, scale, m, s, am, GREEDY)
            if full < hi:
                y = _load(base, full, hi, lane, float("-inf"), True)
                m, s, am = _stats_block(y, full, scale, m, s, am, GREEDY)
            if GREEDY:
                mx, amx = _winner(m, am, lane)
                tl.store(stat_a_ptr + out, mx)
                tl.store(stat_b_ptr + out, amx)
            else:
                mx = tl.max(m, 0)
                tl.store(stat_a_ptr + out, mx)
                tl.store(stat_b_ptr + out, tl.sum(s * tl.exp2(m - mx), 0))
        else:
            # bonus row: Gumbel-max partial winner, needs no normaliser
            k1, k2 = _row_keys(tl.load(seed_ptr + i), j)
            weyl = lane.to(tl.uint32) * _G
            best = tl.full([BLOCK], float("-inf"), tl.float32)
            best_start = tl.zeros([BLOCK], tl.int32)
            if lo < full:
                y = _load(base, lo, hi, lane, float("-inf"), False)
                for start in range(lo, full - BLOCK, BLOCK):
                    y_next = _load(base, start + BLOCK, hi, lane, float("-inf"), False)
                    best, best_start = _bonus_block(y, start, weyl, k1, k2, scale, best, best_start, FAST)
                    y = y_next
                best, best_start = _bonus_block(y, full - BLOCK, weyl, k1, k2, scale, best, best_start, FAST)
            if full < hi:
                y = _load(base, full, hi, lane, float("-inf"), True)
                best, best_start = _bonus_block(y, full, weyl, k1, k2, scale, best, best_start, FAST)
            kb, ib = _winner(best, best_start, lane)
            tl.store(bkey_ptr + i.to(tl.int64) * n_split + sp, kb)
            tl.store(bidx_ptr + i.to(tl.int64) * n_split + sp, ib)


@triton.jit
def _accept(logit_ptr, stride_l, q_ptr, stride_q, tok_ptr, stat_a_ptr, stat_b_ptr, i, row0, k, seed,
            n_split, scale, KP: tl.constexpr, SP: tl.constexpr):
    """Accepted count of sequence i, with the max and 1/sum of the first rejected row."""
    jj = tl.arange(0, KP)
    valid = jj < k
    ss = tl.arange(0, SP)
    rows = (row0 + jj).to(tl.int64)
    sidx = rows[:, None] * n_split + ss[None, :]
    smask = valid[:, None] & (ss < n_split)[None, :]
    mp = tl.load(stat_a_ptr + sidx, mask=smask, other=float("-inf"))
    sp = tl.load(stat_b_ptr + sidx, mask=smask, other=0.0)
    m = tl.max(mp, 1)
    m = tl.where(m == float("-inf"), 0.0, m)
    inv_s = 1.0 / tl.where(valid, tl.sum(sp * tl.exp2(mp - m[:, None]), 1), 1.0)
    d = (row0 - i + jj).to(tl.int64)
    x = tl.load(tok_ptr + d, mask=valid, other=0).to(tl.int64)
    lx = tl.load(logit_ptr + rows * stride_l + x, mask=valid, other=0.0).to(tl.float32) * scale
    px = tl.exp2(lx - m) * inv_s
    qx = tl.load(q_ptr + d * stride_q + x, mask=valid, other=1.0).to(tl.float32)
    b0, _, _, _ = tl.randint4x(seed, jj.to(tl.int64))
    u = (b0 >> 8).to(tl.float32) * 5.9604644775390625e-08
    rej = valid & ~(u * qx < px)
    n_acc = tl.min(tl.where(rej, jj, k), 0)
    hit = jj == n_acc
    return n_acc, tl.sum(tl.where(hit, m, 0.0), 0), tl.sum(tl.where(hit, inv_s, 0.0), 0)


@triton.jit
def _residual_block(y, q, start, ok, weyl, k1, k2, m, inv_s, scale, best_r, start_r, best_p, start_p,
                    MASK: tl.constexpr, FAST: tl.constexpr):
    """Residual row: exponential-race keys max(0, p - q) / E2 and (fallback) p / E2 of one block."""
    p = tl.exp2(y * scale - m) * inv_s
    inv_e = 1.0 / _noise(k1 + tl.cast(start, tl.uint32) * _G + weyl, k2, False, FAST)
    key_r = tl.maximum(p - q, 0.0) * inv_e
    key_p = p * inv_e
    if MASK:  # a key of 0 is a candidate (all-zero residual), so masked lanes need a key below it
        key_r = tl.where(ok, key_r, -1.0)
        key_p = tl.where(ok, key_p, -1.0)
    best_r, start_r = _keep(key_r, start, best_r, start_r)
    best_p, start_p = _keep(key_p, start, best_p, start_p)
    return best_r, start_r, best_p, start_p


@triton.jit
def _pick(key_ptr, idx_ptr, base, n, SP: tl.constexpr):
    """Winner of n partial (key, token) pairs: max key, lowest token on ties; and that max key. ``.cg``: the
    partials of other programs are read from L2 (L1 is not coherent across SMs)."""
    ss = tl.arange(0, SP)
    key = tl.load(key_ptr + base + ss, mask=ss < n, other=float("-inf"), cache_modifier=".cg")
    idx = tl.load(idx_ptr + base + ss, mask=ss < n, other=_BIG, cache_modifier=".cg")
    kmax = tl.max(key, 0)
    return tl.min(tl.where(key == kmax, idx, _BIG), 0), kmax


@triton.jit
def _emit(tok_ptr, acc_ptr, out_ptr, i, row0, n_acc, token, width, KP1: tl.constexpr):
    """Write sequence i's accepted count and emitted row: accepted drafts, the token, then -1."""
    tt = tl.arange(0, KP1)
    x = tl.load(tok_ptr + row0 - i + tt, mask=tt < n_acc, other=0)
    val = tl.where(tt < n_acc, x, tl.where(tt == n_acc, token, -1))
    tl.store(out_ptr + i.to(tl.int64) * width + tt, val.to(tl.int32), mask=tt < width)
    tl.store(acc_ptr + i, n_acc)


@triton.jit
def _residual_kernel(logit_ptr, stride_l, q_ptr, stride_q, tok_ptr, cu_ptr, seed_ptr, stat_a_ptr, stat_b_ptr,
                     bkey_ptr, bidx_ptr, rkey_ptr, ridx_ptr, pkey_ptr, pidx_ptr, lock_ptr, acc_ptr, out_ptr,
                     width, V, chunk, n_split1, n_split2, scale, KP: tl.constexpr, KP1: tl.constexpr,
                     SP1: tl.constexpr, SP2: tl.constexpr, BLOCK: tl.constexpr, FAST: tl.constexpr):
    """Grid (split, sequence): accepted count; if all accepted, split 0 emits the bonus winner; else the
    residual max(0, p - q) race over one chunk of the first rejected row, and the last split to arrive (a
    per-sequence counter, reset by it) combines the chunk winners and emits."""
    sp = tl.program_id(0)
    i = tl.program_id(1)
    row0 = tl.load(cu_ptr + i)
    k = tl.load(cu_ptr + i + 1) - row0 - 1
    seed = tl.load(seed_ptr + i)
    j, m, inv_s = _accept(logit_ptr, stride_l, q_ptr, stride_q, tok_ptr, stat_a_ptr, stat_b_ptr, i, row0, k,
                          seed, n_split1, scale, KP, SP1)
    if j == k:
        if sp == 0:  # the bonus partials come from the row pass, complete before this launch
            t_bonus, _ = _pick(bkey_ptr, bidx_ptr, i.to(tl.int64) * n_split1, n_split1, SP1)
            _emit(tok_ptr, acc_ptr, out_ptr, i, row0, j, t_bonus, width, KP1)
    else:
        base = logit_ptr + (row0 + j).to(tl.int64) * stride_l
        qbase = q_ptr + (row0 - i + j).to(tl.int64) * stride_q
        lo = sp * chunk
        hi = tl.minimum(lo + chunk, V)
        full = lo + (hi - lo) // BLOCK * BLOCK
        lane = tl.arange(0, BLOCK)
        k1, k2 = _row_keys(seed, j)
        weyl = lane.to(tl.uint32) * _G
        best_r = tl.full([BLOCK], -1.0, tl.float32)
        best_p = tl.full([BLOCK], -1.0, tl.float32)
        start_r = tl.zeros([BLOCK], tl.int32)
        start_p = tl.zeros([BLOCK], tl.int32)
        if lo < full:
            y = _load(base, lo, hi, lane, 0.0, False)
            q = _load(qbase, lo, hi, lane, 0.0, False)
            for start in range(lo, full - BLOCK, BLOCK):
                y_next = _load(base, start + BLOCK, hi, lane, 0.0, False)
                q_next = _load(qbase, start + BLOCK, hi, lane, 0.0, False)
                best_r, start_r, best_p, start_p = _residual_block(
                    y, q, start, True, weyl, k1, k2, m, inv_s, scale, best_r, start_r, best_p, start_p, False, FAST)
                y = y_next
                q = q_next
            best_r, start_r, best_p, start_p = _residual_block(
                y, q, full - BLOCK, True, weyl, k1, k2, m, inv_s, scale, best_r, start_r, best_p, start_p, False,
                FAST)
        if full < hi:
            y = _load(base, full, hi, lane, float("-inf"), True)
            q = _load(qbase, full, hi, lane, 0.0, True)
            best_r, start_r, best_p, start_p = _residual_block(
                y, q, full, full + lane < hi, weyl, k1, k2, m, inv_s, scale, best_r, start_r, best_p, start_p, True,
                FAST)
        best_r, idx_r = _winner(best_r, start_r, lane)
        best_p, idx_p = _winner(best_p, start_p, lane)
        out = i.to(tl.int64) * n_split2 + sp
        tl.store(rkey_ptr + out, best_r)
        tl.store(ridx_ptr + out, idx_r)
        tl.store(pkey_ptr + out, best_p)
        tl.store(pidx_ptr + out, idx_p)
        tl.debug_barrier()  # every thread's partial is written before the release below
        if tl.atomic_add(lock_ptr + i, 1, sem="acq_rel", scope="gpu") == n_split2 - 1:
            t_res, r_max = _pick(rkey_ptr, ridx_ptr, i.to(tl.int64) * n_split2, n_split2, SP2)
            t_p, _ = _pick(pkey_ptr, pidx_ptr, i.to(tl.int64) * n_split2, n_split2, SP2)
            _emit(tok_ptr, acc_ptr, out_ptr, i, row0, j, tl.where(r_max > 0.0, t_res, t_p), width, KP1)
            tl.atomic_xchg(lock_ptr + i, 0)  # ready for the next launch


@triton.jit
def _greedy_finalize_kernel(tok_ptr, cu_ptr, stat_a_ptr, stat_b_ptr, acc_ptr, out_ptr, width, n_split1,
                            KP1: tl.constexpr, SP1: tl.constexpr):
    """Greedy, grid (sequence,): combine the row argmax partials, accept while draft == argmax, emit."""
    i = tl.program_id(0)
    row0 = tl.load(cu_ptr + i)
    k = tl.load(cu_ptr + i + 1) - row0 - 1
    tt = tl.arange(0, KP1)
    ss = tl.arange(0, SP1)
    sidx = (row0 + tt).to(tl.int64)[:, None] * n_split1 + ss[None, :]
    smask = (tt <= k)[:, None] & (ss < n_split1)[None, :]
    mp = tl.load(stat_a_ptr + sidx, mask=smask, other=float("-inf"))
    ip = tl.load(stat_b_ptr + sidx, mask=smask, other=_BIG)
    am = tl.min(tl.where(mp == tl.max(mp, 1)[:, None], ip, _BIG), 1)
    x = tl.load(tok_ptr + row0 - i + tt, mask=tt < k, other=-1)
    n_acc = tl.min(tl.where((tt < k) & (x != am), tt, k), 0)
    _emit(tok_ptr, acc_ptr, out_ptr, i, row0, n_acc, tl.sum(tl.where(tt == n_acc, am, 0), 0), width, KP1)


@functools.cache
def _n_sm(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter: a few programs, enough to exercise the split-combine path
    return torch.cuda.get_device_properties(device).multi_processor_count


def _split(vocab: int, rows: int, target: int, block: int, forced: int | None,
           max_chunk: int) -> tuple[int, int]:
    """(number of chunks, chunk length): at least `target` programs over `rows` rows and chunks of at most
    `max_chunk` tokens (many short programs: a small last wave), in whole blocks, no empty chunk."""
    n = forced or min(max(triton.cdiv(target, max(rows, 1)), triton.cdiv(vocab, max_chunk)),
                      triton.cdiv(vocab, block))
    chunk = triton.cdiv(triton.cdiv(vocab, n), block) * block
    return triton.cdiv(vocab, chunk), chunk


def verify(target_logits: torch.Tensor, cu_rows: torch.Tensor, draft_tokens: torch.Tensor,
           draft_probs: torch.Tensor | None, seeds: torch.Tensor, temperature: float, k_max: int | None = None,
           *, block: int = 1024, num_warps: int = 4, programs_per_sm: int = 8, max_chunk: int = 8192,
           splits: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify drafts against target logits (module docstring); returns (accepted [B], emitted [B, K+1]).

    Pass ``k_max`` (= max k_i) to avoid a device sync (needed under CUDA-graph capture). ``block``,
    ``num_warps``, ``programs_per_sm``, ``max_chunk`` and ``splits`` (forced chunk counts of the row pass
    and the residual pass) only change speed, never results; the defaults won (max_chunk: tied with 16384)
    the tuning table of bench/results/spec_verify-h100-2026-11-27.md (H100 SXM, Triton 3.6).
    """
    if target_logits.dim() != 2 or cu_rows.dim() != 1 or cu_rows.numel() < 1:
        raise ValueError("target_logits must be [T, V] and cu_rows [B+1]")
    if cu_rows.dtype != torch.int32 or seeds.dtype != torch.int64:
        raise ValueError("cu_rows must be int32 and seeds int64")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    n_rows, vocab = target_logits.shape
    n_seq = cu_rows.numel() - 1
    greedy = temperature == 0
    if seeds.shape != (n_seq,) or draft_tokens.shape != (n_rows - n_seq,):
        raise ValueError(f"seeds must be [{n_seq}] and draft_tokens [{n_rows - n_seq}]")
    if not greedy and (draft_probs is None or draft_probs.shape != (n_rows - n_seq, vocab)):
        raise ValueError(f"draft_probs must be [{n_rows - n_seq}, {vocab}]")
    if k_max is None:
        k_max = int((cu_rows[1:] - cu_rows[:-1]).max()) - 1 if n_seq else 0
    dev = target_logits.device
    accepted = torch.empty(n_seq, dtype=torch.int32, device=dev)
    emitted = torch.empty((n_seq, k_max + 1), dtype=torch.int32, device=dev)
    if n_seq == 0:
        return accepted, emitted
    logits = target_logits if target_logits.stride(1) == 1 else target_logits.contiguous()
    q = logits if greedy else (draft_probs if draft_probs.stride(1) == 1 else draft_probs.contiguous())
    block = max(16, min(block, triton.next_power_of_2(vocab)))
    target = programs_per_sm * _n_sm(dev)
    s1, chunk1 = _split(vocab, n_seq * (k_max + 1), target, block, splits and splits[0], max_chunk)
    s2, chunk2 = _split(vocab, n_seq, target, block, splits and splits[1], max_chunk)
    # one scratch allocation: row stats [T, s1] x2, bonus partials [B, s1] x2, residual partials [B, s2] x4
    n_stat, n_bonus, n_res = n_rows * s1, n_seq * s1, n_seq * s2
    ws = torch.empty(2 * n_stat + 2 * n_bonus + 4 * n_res, dtype=torch.float32, device=dev)
    parts = torch.split(ws, [n_stat, n_stat, n_bonus, n_bonus, n_res, n_res, n_res, n_res])
    stat_a, bkey, rkey, pkey = parts[0], parts[2], parts[4], parts[6]
    stat_b = parts[1].view(torch.int32) if greedy else parts[1]
    bidx, ridx, pidx = parts[3].view(torch.int32), parts[5].view(torch.int32), parts[7].view(torch.int32)
    scale = spec_ref.scale_log2(temperature)
    fast = dev.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1"
    kp, kp1 = triton.next_power_of_2(max(k_max, 1)), triton.next_power_of_2(k_max + 1)
    sp1, sp2 = triton.next_power_of_2(s1), triton.next_power_of_2(s2)
    _row_pass_kernel[(s1, k_max + 1, n_seq)](
        logits, logits.stride(0), cu_rows, seeds, stat_a, stat_b, bkey, bidx, vocab, chunk1, s1, scale,
        GREEDY=greedy, BLOCK=block, FAST=fast, num_warps=num_warps)
    if greedy:
        _greedy_finalize_kernel[(n_seq,)](draft_tokens, cu_rows, stat_a, stat_b, accepted, emitted, k_max + 1, s1,
                                          KP1=kp1, SP1=sp1, num_warps=1)
    else:
        _residual_kernel[(s2, n_seq)](
            logits, logits.stride(0), q, q.stride(0), draft_tokens, cu_rows, seeds, stat_a, stat_b, bkey, bidx,
            rkey, ridx, pkey, pidx, split_counters(dev, n_seq), accepted, emitted, k_max + 1, vocab, chunk2, s1, s2,
            scale, KP=kp, KP1=kp1, SP1=sp1, SP2=sp2, BLOCK=block, FAST=fast, num_warps=num_warps)
    return accepted, emitted
