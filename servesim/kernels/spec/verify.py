"""Fused speculative-decoding verification (rejection sampling) in Triton; reference in ``ref.py``.

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

Sampling is two-level (``ref.py`` has the exact recipe and the NumPy code that reproduces it): the
vocabulary is cut into fixed spans of ``SPAN`` tokens; a span is drawn in proportion to its summed weight
(``2^y`` for the bonus token, ``max(0, p - q)`` for the recovered one, ``y = logits * log2(e) / T``), then a
token within it in proportion to its weight: exactly the target distribution, and the pass over the
vocabulary only sums weights per span (no random number per token). Both draws are Gumbel-max races in
log2 units, ``argmax(log2 w - log2 E2)``, ``E2 = E / ln 2``, ``E ~ Exp(1)``, over the spans of the row and
then the ``SPAN`` tokens of the winner, once per sequence. Randomness is counter-based, so it does not
depend on the launch shape: acceptance uniforms are Philox4x32-10 (``tl.randint4x``) draws keyed by the
sequence's seed; the race noise is a cheap counter-based 32-bit hash of (position keys from Philox, token or
span index), turned into ``E2`` by a series near 0, so small ``E`` keep their relative precision and rare
tokens their probability. The reference draws the same numbers and repeats the arithmetic, so kernel and
reference agree token for token (up to float rounding ties, about 1e-6 per decision).

Two launches (their sampling pieces are in ``sampling.py``), no [T, V] float32 tensor: (1) one pass over
every row, split along V into chunks: running max and sum of exp (draft rows), ``log2`` of the summed ``2^y``
of each span (bonus rows), max/argmax (greedy); (2) grid (chunk, sequence): the acceptance tests; a sequence
that accepted everything has its bonus token drawn by chunk 0 (span race, then the race within that span);
a rejected one sums ``max(0, p - q)`` per span over one chunk of its rejected row (read again, with its q
row) and the last chunk to arrive draws the recovered token the same way and emits (greedy: one tiny program
per sequence instead).
Span weights cost 4 bytes per span (1.6% of a bf16 row, written once, read once). The rejected row is read
twice because its residual needs the row's normaliser, known only after the whole row is read; reading q for
every draft row in pass (1) instead would cost 4k bytes per vocabulary entry against the 2 of the re-read.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .. import tuned
from ..counters import SplitCounters, counters_for, sm_count
from ..tuned import ACTIVE as _ACTIVE
from . import ref as spec_ref
from .ref import accept_uniforms, exponentials, noise_bits, philox4x32, verify_bytes, verify_ref
from .sampling import (  # noqa: F401  (Triton resolves these as globals)
    _BIG,
    _SPAN,
    _argmax,
    _keep,
    _log2,
    _p_race,
    _residual,
    _row_keys,
    _span_race,
    _token_race,
)

__all__ = ["verify", "verify_ref", "verify_bytes", "philox4x32", "accept_uniforms", "exponentials", "noise_bits"]

@triton.jit
def _load(base, start, hi, offs, other, MASK: tl.constexpr):
    """One block of a row as float32 (MASK: the tail, offsets past hi read `other`)."""
    if MASK:
        return tl.load(base + start + offs, mask=start + offs < hi, other=other).to(tl.float32)
    else:
        return tl.load(base + start + offs).to(tl.float32)


@triton.jit
def _stats_block(y, start, scale, m, s, am, GREEDY: tl.constexpr):
    """Draft rows: per-lane running max and sum of 2^(y - max); greedy: max and its lowest index."""
    y = y * scale
    if GREEDY:
        m, am = _keep(y, start, m, am)
    else:
        # m starts at -3e38, so a -inf (masked) logit gets weight exp2(-inf) = 0 and never a NaN; one exp2
        # per element serves both cases (new max: rescale; else: add)
        e = tl.exp2(-tl.abs(y - m))
        s = tl.where(y > m, s * e + 1.0, s + e)
        m = tl.maximum(m, y)
    return m, s, am


@triton.jit
def _span_store(w, start, sbase, n_span, BLOCK: tl.constexpr, MASK: tl.constexpr):
    """Store one block's span weights w [BLOCK // SPAN, 1] (MASK: spans past the vocabulary are dropped)."""
    g = start // _SPAN + tl.arange(0, BLOCK // _SPAN)[:, None]
    if MASK:
        tl.store(sbase + g, w, mask=g < n_span)
    else:
        tl.store(sbase + g, w)


@triton.jit
def _bonus_block(y, start, scale, sbase, n_span, BLOCK: tl.constexpr, MASK: tl.constexpr, FAST: tl.constexpr):
    """Bonus row, one block [BLOCK // SPAN, SPAN]: log2 of the summed 2^y of each span, as max + log2(sum 2^(y -
    max)) with max >= -3e38 (an all -inf span: weight 0, log -inf)."""
    m = tl.maximum(tl.max(y, 1, keep_dims=True) * scale, -3.0e38)  # scale > 0: max(y) * scale = max(y * scale)
    _span_store(m + _log2(tl.sum(tl.exp2(y * scale - m), 1, keep_dims=True), FAST), start, sbase, n_span, BLOCK,
                MASK)


@triton.jit
def _row_pass_kernel(logit_ptr, stride_l, cu_ptr, stat_a_ptr, stat_b_ptr, span_ptr, V, chunk, n_split, n_span,
                     scale, GREEDY: tl.constexpr, BLOCK: tl.constexpr, FAST: tl.constexpr):
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
        if (j < k) | GREEDY:
            lane = tl.arange(0, BLOCK)
            out = row.to(tl.int64) * n_split + sp
            # lanes keep running values and reduce once after the loop (no block-wide reduction per block)
            m = tl.full([BLOCK], float("-inf") if GREEDY else -3.0e38, tl.float32)
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
                mx = tl.max(m, 0)
                tl.store(stat_a_ptr + out, mx)
                tl.store(stat_b_ptr + out, tl.min(tl.where((m == mx) & (m > float("-inf")), am + lane, _BIG), 0))
            else:
                mx = tl.max(m, 0)
                tl.store(stat_a_ptr + out, mx)
                tl.store(stat_b_ptr + out, tl.sum(s * tl.exp2(m - mx), 0))
        else:
            # bonus row: span weights only (one warp-level reduction per span, no random numbers)
            offs = tl.arange(0, BLOCK // _SPAN)[:, None] * _SPAN + tl.arange(0, _SPAN)[None, :]
            sbase = span_ptr + i.to(tl.int64) * n_span
            if lo < full:
                y = _load(base, lo, hi, offs, float("-inf"), False)
                for start in range(lo, full - BLOCK, BLOCK):
                    y_next = _load(base, start + BLOCK, hi, offs, float("-inf"), False)
                    _bonus_block(y, start, scale, sbase, n_span, BLOCK, False, FAST)
                    y = y_next
                _bonus_block(y, full - BLOCK, scale, sbase, n_span, BLOCK, False, FAST)
            if full < hi:
                y = _load(base, full, hi, offs, float("-inf"), True)
                _bonus_block(y, full, scale, sbase, n_span, BLOCK, True, FAST)


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
def _residual_block(y, q, start, scale, m, inv_s, sbase, n_span, BLOCK: tl.constexpr, MASK: tl.constexpr):
    """Rejected row, one block [BLOCK // SPAN, SPAN] of logits y and draft probabilities q: span sums of
    max(0, p - q)."""
    _span_store(tl.sum(_residual(y, q, scale, m, inv_s), 1, keep_dims=True), start, sbase, n_span, BLOCK, MASK)


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
                     span_ptr, lock_ptr, acc_ptr, out_ptr, width, V, chunk, n_split1, n_split2, n_span, scale,
                     KP: tl.constexpr, KP1: tl.constexpr, SP1: tl.constexpr, NSP: tl.constexpr,
                     BLOCK: tl.constexpr, FAST: tl.constexpr):
    """Grid (split, sequence): accepted count; if all accepted, split 0 draws the bonus token from the row
    pass's span weights; else each split sums max(0, p - q) per span over one chunk of the first rejected row,
    and the last split to arrive (a per-sequence counter, reset by it) draws the recovered token and emits."""
    sp = tl.program_id(0)
    i = tl.program_id(1)
    row0 = tl.load(cu_ptr + i)
    k = tl.load(cu_ptr + i + 1) - row0 - 1
    seed = tl.load(seed_ptr + i)
    j, m, inv_s = _accept(logit_ptr, stride_l, q_ptr, stride_q, tok_ptr, stat_a_ptr, stat_b_ptr, i, row0, k,
                          seed, n_split1, scale, KP, SP1)
    base = logit_ptr + (row0 + j).to(tl.int64) * stride_l
    qbase = q_ptr + (row0 - i + j).to(tl.int64) * stride_q
    sbase = span_ptr + i.to(tl.int64) * n_span
    if j == k:
        if sp == 0:  # the bonus span weights come from the row pass, complete before this launch
            k1, k2, k3, k4 = _row_keys(seed, j)
            g, _ = _span_race(sbase, n_span, k3, k4, True, NSP, FAST)
            t_bonus = _token_race(base, qbase, g, V, m, inv_s, scale, k1, k2, False, FAST)
            _emit(tok_ptr, acc_ptr, out_ptr, i, row0, j, t_bonus, width, KP1)
    else:
        lo = sp * chunk
        hi = tl.minimum(lo + chunk, V)
        full = lo + (hi - lo) // BLOCK * BLOCK
        offs = tl.arange(0, BLOCK // _SPAN)[:, None] * _SPAN + tl.arange(0, _SPAN)[None, :]
        if lo < full:
            y = _load(base, lo, hi, offs, 0.0, False)
            q = _load(qbase, lo, hi, offs, 0.0, False)
            for start in range(lo, full - BLOCK, BLOCK):
                y_next = _load(base, start + BLOCK, hi, offs, 0.0, False)
                q_next = _load(qbase, start + BLOCK, hi, offs, 0.0, False)
                _residual_block(y, q, start, scale, m, inv_s, sbase, n_span, BLOCK, False)
                y = y_next
                q = q_next
            _residual_block(y, q, full - BLOCK, scale, m, inv_s, sbase, n_span, BLOCK, False)
        if full < hi:
            y = _load(base, full, hi, offs, float("-inf"), True)
            q = _load(qbase, full, hi, offs, 0.0, True)
            _residual_block(y, q, full, scale, m, inv_s, sbase, n_span, BLOCK, True)
        tl.debug_barrier()  # every thread's span sums are written before the release below
        if tl.atomic_add(lock_ptr + i, 1, sem="acq_rel", scope="gpu") == n_split2 - 1:
            k1, k2, k3, k4 = _row_keys(seed, j)
            g, r_max = _span_race(sbase, n_span, k3, k4, False, NSP, FAST)
            if r_max > 0.0:
                t_res = _token_race(base, qbase, g, V, m, inv_s, scale, k1, k2, True, FAST)
            else:
                t_res = _p_race(base, V, m, inv_s, scale, k1, k2, FAST)
            _emit(tok_ptr, acc_ptr, out_ptr, i, row0, j, t_res, width, KP1)
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


def _split(vocab: int, rows: int, target: int, block: int, forced: int | None,
           max_chunk: int) -> tuple[int, int]:
    """(number of chunks, chunk length): at least `target` programs over `rows` rows and chunks of at most
    `max_chunk` tokens (many short programs: a small last wave), in whole blocks, no empty chunk."""
    n = forced or min(max(triton.cdiv(target, max(rows, 1)), triton.cdiv(vocab, max_chunk)),
                      triton.cdiv(vocab, block))
    chunk = triton.cdiv(triton.cdiv(vocab, n), block) * block
    return triton.cdiv(vocab, chunk), chunk

# Launch parameters: the fastest of bench/spec_verify.py's tuning phase on an H100 SXM (bench/results/
# spec_verify-h100-*.md). These are the H100's; another GPU launches with the `spec_verify` section of its
# servesim/kernels/configs/<key>.json where it has one (`launch_tables()`, tuned.py).
LAUNCH = dict(block=1024, num_warps=4, programs_per_sm=8, max_chunk=8192)


def _build(found: dict | None) -> dict:
    return LAUNCH if found is None else {**LAUNCH, **found.get("launch", {})}


def launch_tables(device: str | None = None) -> dict:
    """The launch parameters of ``device`` (a ``tuned.py`` key; default: this process's GPU), keyed like ``LAUNCH``."""
    return tuned.tables("spec_verify", _build, device)


def launch_section(launch: dict) -> dict:
    """``launch`` as the ``spec_verify`` section of a configs file."""
    return {"launch": {k: launch[k] for k in LAUNCH}}


def verify(target_logits: torch.Tensor, cu_rows: torch.Tensor, draft_tokens: torch.Tensor,
           draft_probs: torch.Tensor | None, seeds: torch.Tensor, temperature: float, k_max: int | None = None,
           *, block: int | None = None, num_warps: int | None = None, programs_per_sm: int | None = None,
           max_chunk: int | None = None, splits: tuple[int, int] | None = None, counters: SplitCounters | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify drafts against target logits (module docstring); returns (accepted [B], emitted [B, K+1]).

    Pass ``k_max`` (= max k_i) to avoid a device sync (needed under CUDA-graph capture). ``block``,
    ``num_warps``, ``programs_per_sm``, ``max_chunk`` and ``splits`` (forced chunk counts of the row pass
    and the residual pass) only change speed, never results (``block`` is raised to at least ``SPAN``); those
    not given come from the GPU's launch parameters (:func:`launch_tables`; the H100's: ``LAUNCH``). ``counters`` (the
    caller's :class:`~servesim.kernels.counters.SplitCounters`) saves zeroing fresh merge counters.
    """
    launch = _ACTIVE.get("spec_verify") or launch_tables()
    block = launch["block"] if block is None else block
    num_warps = launch["num_warps"] if num_warps is None else num_warps
    programs_per_sm = launch["programs_per_sm"] if programs_per_sm is None else programs_per_sm
    max_chunk = launch["max_chunk"] if max_chunk is None else max_chunk
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
    block = max(spec_ref.SPAN, min(block, triton.next_power_of_2(vocab)))  # whole spans per block
    target = programs_per_sm * sm_count(dev)
    s1, chunk1 = _split(vocab, n_seq * (k_max + 1), target, block, splits and splits[0], max_chunk)
    s2, chunk2 = _split(vocab, n_seq, target, block, splits and splits[1], max_chunk)
    # one scratch allocation: row stats [T, s1] x2; span weights [B, n_span] (the bonus row's, from the row
    # pass, or the rejected row's residual sums: a sequence needs only one of them)
    n_stat, n_span = n_rows * s1, triton.cdiv(vocab, spec_ref.SPAN)
    ws = torch.empty(2 * n_stat + n_seq * n_span, dtype=torch.float32, device=dev)
    stat_a, stat_b, spans = torch.split(ws, [n_stat, n_stat, n_seq * n_span])
    stat_b = stat_b.view(torch.int32) if greedy else stat_b
    scale = spec_ref.scale_log2(temperature)
    fast = dev.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1"
    kp, kp1 = triton.next_power_of_2(max(k_max, 1)), triton.next_power_of_2(k_max + 1)
    sp1 = triton.next_power_of_2(s1)
    _row_pass_kernel[(s1, k_max + 1, n_seq)](
        logits, logits.stride(0), cu_rows, stat_a, stat_b, spans, vocab, chunk1, s1, n_span, scale,
        GREEDY=greedy, BLOCK=block, FAST=fast, num_warps=num_warps)
    if greedy:
        _greedy_finalize_kernel[(n_seq,)](draft_tokens, cu_rows, stat_a, stat_b, accepted, emitted, k_max + 1, s1,
                                          KP1=kp1, SP1=sp1, num_warps=1)
    else:
        _residual_kernel[(s2, n_seq)](
            logits, logits.stride(0), q, q.stride(0), draft_tokens, cu_rows, seeds, stat_a, stat_b, spans,
            counters_for(counters, dev, n_seq), accepted, emitted, k_max + 1, vocab, chunk2, s1, s2, n_span, scale,
            KP=kp, KP1=kp1, SP1=sp1, NSP=triton.next_power_of_2(n_span), BLOCK=block, FAST=fast,
            num_warps=num_warps)
    return accepted, emitted
