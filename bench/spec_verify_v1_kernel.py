"""Frozen copy of the first-pass kernel and launcher (commit c132288: Philox per token, three launches).

The same-run baseline of bench/spec_verify.py; not used by the library. Its docstrings describe that version.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

LOG2E = 1.4426950408889634
_BIG = tl.constexpr(2**31 - 1)


@triton.jit
def _noise(seed, j, start, R: tl.constexpr, LOG: tl.constexpr, FAST: tl.constexpr):
    """Exp(1) noise E (log2 E if LOG) of position j for tokens start .. start + 4R - 1, as an [R, 4] tile.

    One Philox call per row of 4 tokens. E = -ln(1 - w), w = (bits + 0.5) / 2**32, by a series below
    w = 1/32 so that small E keep their relative precision. FAST: the GPU's lg2.approx (error ~1e-7)."""
    r = tl.arange(0, R)
    c = tl.arange(0, 4)[None, :]
    offs = ((j + 1).to(tl.int64) << 32) + (start // 4 + r).to(tl.int64)
    b0, b1, b2, b3 = tl.randint4x(seed, offs)
    bits = tl.where(c == 0, b0[:, None], tl.where(c == 1, b1[:, None], tl.where(c == 2, b2[:, None], b3[:, None])))
    w = bits.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
    poly = w * (1.0 + w * (0.5 + w * (0.3333333333333333 + w * (0.25 + w * 0.2))))
    if FAST:
        e = tl.where(w < 0.03125, poly, -libdevice.fast_log2f(1.0 - w) * 0.6931471805599453)
        if LOG:
            e = libdevice.fast_log2f(e)
    else:
        e = tl.where(w < 0.03125, poly, -tl.log2(1.0 - w) * 0.6931471805599453)
        if LOG:
            e = tl.log2(e)
    return e


@triton.jit
def _keep(key, v, best, best_idx):
    """Per-lane running winner: a lane sees increasing tokens, so strict > keeps the lowest on ties."""
    upd = key > best
    return tl.where(upd, key, best), tl.where(upd, v, best_idx)


@triton.jit
def _winner(best, best_idx):
    """Reduce per-lane winners of an [R, 4] tile: max key, lowest token among equal keys."""
    kb = tl.max(tl.max(best, 1), 0)
    return kb, tl.min(tl.min(tl.where(best == kb, best_idx, _BIG), 1), 0)


@triton.jit
def _row_pass_kernel(logit_ptr, stride_l, cu_ptr, seed_ptr, stat_a_ptr, stat_b_ptr, bkey_ptr, bidx_ptr,
                     V, chunk, n_split, scale, GREEDY: tl.constexpr, BLOCK: tl.constexpr, FAST: tl.constexpr):
    """Grid (split, position, sequence): one chunk of one target row, read once."""
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
        out = row.to(tl.int64) * n_split + sp
        if (j < k) | GREEDY:
            # draft rows: max and sum of 2^(y - max); greedy: max and its lowest index. Lanes keep running
            # values and reduce once after the loop (no block-wide reduction per iteration).
            m = tl.full([BLOCK], float("-inf"), tl.float32)
            s = tl.zeros([BLOCK], tl.float32)
            am = tl.full([BLOCK], _BIG, tl.int32)
            for start in range(lo, hi, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                y = tl.load(base + offs, mask=offs < hi, other=float("-inf")).to(tl.float32) * scale
                if GREEDY:
                    m, am = _keep(y, offs, m, am)
                else:
                    # -inf (masked) logits become -3e38: weight exp2(-3e38 - max) = 0 after the reduction,
                    # and one exp2 per element serves both cases (new max: rescale; else: add)
                    y = tl.maximum(y, -3.0e38)
                    e = tl.exp2(-tl.abs(y - m))
                    s = tl.where(y > m, s * e + 1.0, s + e)
                    m = tl.maximum(m, y)
            mx = tl.max(m, 0)
            tl.store(stat_a_ptr + out, mx)
            if GREEDY:
                tl.store(stat_b_ptr + out, tl.min(tl.where(m == mx, am, _BIG), 0))
            else:
                tl.store(stat_b_ptr + out, tl.sum(s * tl.exp2(m - mx), 0))
        else:
            # bonus row: Gumbel-max partial winner, needs no normaliser
            seed = tl.load(seed_ptr + i)
            R: tl.constexpr = BLOCK // 4
            v0 = tl.arange(0, R)[:, None] * 4 + tl.arange(0, 4)[None, :]
            best = tl.full([R, 4], float("-inf"), tl.float32)
            best_idx = tl.full([R, 4], _BIG, tl.int32)
            for start in range(lo, hi, BLOCK):
                v = start + v0
                y = tl.load(base + v, mask=v < hi, other=float("-inf")).to(tl.float32) * scale
                key = y - _noise(seed, j, start, R, True, FAST)
                best, best_idx = _keep(tl.where(v < hi, key, float("-inf")), v, best, best_idx)
            kb, ib = _winner(best, best_idx)
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
def _residual_kernel(logit_ptr, stride_l, q_ptr, stride_q, tok_ptr, cu_ptr, seed_ptr, stat_a_ptr, stat_b_ptr,
                     rkey_ptr, ridx_ptr, pkey_ptr, pidx_ptr, acc_ptr, V, chunk, n_split1, n_split2, scale,
                     KP: tl.constexpr, SP1: tl.constexpr, BLOCK: tl.constexpr, FAST: tl.constexpr):
    """Grid (split, sequence): accepted count, then the residual max(0, p - q) race over one chunk of the
    first rejected row (rejected sequences only)."""
    sp = tl.program_id(0)
    i = tl.program_id(1)
    row0 = tl.load(cu_ptr + i)
    k = tl.load(cu_ptr + i + 1) - row0 - 1
    seed = tl.load(seed_ptr + i)
    j, m, inv_s = _accept(logit_ptr, stride_l, q_ptr, stride_q, tok_ptr, stat_a_ptr, stat_b_ptr, i, row0, k,
                          seed, n_split1, scale, KP, SP1)
    if sp == 0:
        tl.store(acc_ptr + i, j)
    if j < k:
        base = logit_ptr + (row0 + j).to(tl.int64) * stride_l
        qbase = q_ptr + (row0 - i + j).to(tl.int64) * stride_q
        lo = sp * chunk
        hi = tl.minimum(lo + chunk, V)
        R: tl.constexpr = BLOCK // 4
        v0 = tl.arange(0, R)[:, None] * 4 + tl.arange(0, 4)[None, :]
        best_r = tl.full([R, 4], -1.0, tl.float32)
        best_p = tl.full([R, 4], -1.0, tl.float32)
        idx_r = tl.full([R, 4], _BIG, tl.int32)
        idx_p = tl.full([R, 4], _BIG, tl.int32)
        for start in range(lo, hi, BLOCK):
            v = start + v0
            mask = v < hi
            y = tl.load(base + v, mask=mask, other=float("-inf")).to(tl.float32) * scale
            p = tl.exp2(y - m) * inv_s
            q = tl.load(qbase + v, mask=mask, other=0.0).to(tl.float32)
            inv_e = 1.0 / _noise(seed, j, start, R, False, FAST)
            best_r, idx_r = _keep(tl.where(mask, tl.maximum(p - q, 0.0) * inv_e, -1.0), v, best_r, idx_r)
            best_p, idx_p = _keep(tl.where(mask, p * inv_e, -1.0), v, best_p, idx_p)
        best_r, idx_r = _winner(best_r, idx_r)
        best_p, idx_p = _winner(best_p, idx_p)
        out = i.to(tl.int64) * n_split2 + sp
        tl.store(rkey_ptr + out, best_r)
        tl.store(ridx_ptr + out, idx_r)
        tl.store(pkey_ptr + out, best_p)
        tl.store(pidx_ptr + out, idx_p)


@triton.jit
def _pick(key_ptr, idx_ptr, base, n, ok, SP: tl.constexpr):
    """Winner of n partial (key, token) pairs (if ok): max key, lowest token on ties; and that max key."""
    ss = tl.arange(0, SP)
    n = tl.where(ok, n, 0)
    key = tl.load(key_ptr + base + ss, mask=ss < n, other=float("-inf"))
    idx = tl.load(idx_ptr + base + ss, mask=ss < n, other=_BIG)
    kmax = tl.max(key, 0)
    return tl.min(tl.where(key == kmax, idx, _BIG), 0), kmax


@triton.jit
def _finalize_kernel(tok_ptr, cu_ptr, stat_a_ptr, stat_b_ptr, bkey_ptr, bidx_ptr, rkey_ptr, ridx_ptr, pkey_ptr,
                     pidx_ptr, acc_ptr, out_ptr, width, n_split1, n_split2, GREEDY: tl.constexpr,
                     KP1: tl.constexpr, SP1: tl.constexpr, SP2: tl.constexpr):
    """Grid (sequence,): combine partials, decide, write accepted count and emitted tokens."""
    i = tl.program_id(0)
    row0 = tl.load(cu_ptr + i)
    k = tl.load(cu_ptr + i + 1) - row0 - 1
    tt = tl.arange(0, KP1)
    if GREEDY:
        ss = tl.arange(0, SP1)
        sidx = (row0 + tt).to(tl.int64)[:, None] * n_split1 + ss[None, :]
        smask = (tt <= k)[:, None] & (ss < n_split1)[None, :]
        mp = tl.load(stat_a_ptr + sidx, mask=smask, other=float("-inf"))
        ip = tl.load(stat_b_ptr + sidx, mask=smask, other=_BIG)
        am = tl.min(tl.where(mp == tl.max(mp, 1)[:, None], ip, _BIG), 1)
        x = tl.load(tok_ptr + row0 - i + tt, mask=tt < k, other=-1)
        n_acc = tl.min(tl.where((tt < k) & (x != am), tt, k), 0)
        token = tl.sum(tl.where(tt == n_acc, am, 0), 0)
        tl.store(acc_ptr + i, n_acc)
    else:
        n_acc = tl.load(acc_ptr + i)  # written by the residual pass
        t_bonus, _ = _pick(bkey_ptr, bidx_ptr, i.to(tl.int64) * n_split1, n_split1, n_acc == k, SP1)
        t_res, r_max = _pick(rkey_ptr, ridx_ptr, i.to(tl.int64) * n_split2, n_split2, n_acc < k, SP2)
        t_p, _ = _pick(pkey_ptr, pidx_ptr, i.to(tl.int64) * n_split2, n_split2, n_acc < k, SP2)
        token = tl.where(n_acc == k, t_bonus, tl.where(r_max > 0.0, t_res, t_p))
    x = tl.load(tok_ptr + row0 - i + tt, mask=tt < n_acc, other=0)
    val = tl.where(tt < n_acc, x, tl.where(tt == n_acc, token, -1))
    tl.store(out_ptr + i.to(tl.int64) * width + tt, val.to(tl.int32), mask=tt < width)


@functools.cache
def _n_sm(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter: a few programs, enough to exercise the split-combine path
    return torch.cuda.get_device_properties(device).multi_processor_count


def _scale(temperature: float) -> float:
    """log2(e) / T rounded once to float32: the reference multiplies by the very same number."""
    return 1.0 if temperature == 0 else float(np.float32(LOG2E / temperature))


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
    and the residual pass) only change speed, never results; the defaults won the tuning table of
    bench/results/spec_verify-h100-2026-11-27.md (H100 SXM, Triton 3.6).
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
    scale = _scale(temperature)
    fast = dev.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1"
    kp, kp1 = triton.next_power_of_2(max(k_max, 1)), triton.next_power_of_2(k_max + 1)
    sp1, sp2 = triton.next_power_of_2(s1), triton.next_power_of_2(s2)
    _row_pass_kernel[(s1, k_max + 1, n_seq)](
        logits, logits.stride(0), cu_rows, seeds, stat_a, stat_b, bkey, bidx, vocab, chunk1, s1, scale,
        GREEDY=greedy, BLOCK=block, FAST=fast, num_warps=num_warps)
    if not greedy:
        _residual_kernel[(s2, n_seq)](
            logits, logits.stride(0), q, q.stride(0), draft_tokens, cu_rows, seeds, stat_a, stat_b,
            rkey, ridx, pkey, pidx, accepted, vocab, chunk2, s1, s2, scale, KP=kp, SP1=sp1, BLOCK=block,
            FAST=fast, num_warps=num_warps)
    _finalize_kernel[(n_seq,)](
        draft_tokens, cu_rows, stat_a, stat_b, bkey, bidx, rkey, ridx, pkey, pidx, accepted, emitted, k_max + 1,
        s1, s2, GREEDY=greedy, KP1=kp1, SP1=sp1, SP2=sp2, num_warps=1)
    return accepted, emitted
