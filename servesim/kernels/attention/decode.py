"""Decode attention over the paged cache (flash-decoding): GQA heads packed, split-KV, log-sum-exp merge.

``q`` is ``[batch, num_q_heads, head_dim]`` (one token per sequence) or ``[batch, n, num_q_heads,
head_dim]`` for ``n = 1 + k`` tokens of speculative verification; ``kv_lens`` (int32 ``[batch]``) counts
keys including the ``n`` new ones, already in the cache (so ``kv_lens >= n``), and token ``t`` sees keys
``<= kv_len - n + t``.

One program handles (sequence, KV head, split): the ``n * group`` query rows that share the KV head are
packed into the M dimension of one ``tl.dot`` (padded to 16), so each K/V tile is read from memory once.
When ``batch * num_kv_heads`` cannot fill the GPU, the longest context (``max_kv_len``) is cut into
``num_splits`` ranges of equal length (a multiple of ``BLOCK_N``; shorter sequences leave their later splits
empty), so a program knows its key range before it reads ``kv_lens``: its first page ids are requested
together with the length, and its first tiles' K/V rows are prefetched into L2 as soon as the ids arrive
(``PREFETCH``), one page-id round trip ahead of the pipelined loop's own copies. With ``split_per_seq`` each
sequence's own length is cut into ``num_splits`` ranges instead (the range waits for ``kv_lens``): a CUDA graph
captured for a context bucket passes the bucket as ``max_kv_len``, and cutting the bucket would leave a sequence
of just over half of it in one split, doubling the step's critical path at mid batch sizes. Each split writes its
normalised partial output and log-sum-exp, then bumps a per-(sequence, KV head) counter; the split that
arrives last merges all of them in split order (deterministic) and resets the counter, so
decode is one launch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .. import tuned
from ..counters import SplitCounters, counters_for, sm_count
from ..tuned import ACTIVE as _ACTIVE
from .kv_cache import aligned, check_cache, check_scales, check_tables, dot, gather_kv_ref, interpreting
from .prefill import _kv_rows, causal_attention_ref

# Tile config keyed on head_dim: the fastest of `bench/attention.py --tune` on an H100 SXM, ranked in-step
# (bench/results/attention-h100-*.md lists every candidate). These are the H100's tables; another GPU launches with
# the `decode_attention` section of its servesim/kernels/configs/<key>.json where it has one (`tables()`, tuned.py).
# Several configs come within a few percent: decode is bandwidth-bound, so the tile matters less than keeping
# enough copies in flight. num_stages >= 3 makes the page-id load an async copy a stage ahead of the K/V copies
# (with 2 it is a synchronous load in the loop); Triton then buffers (num_stages - 1) // 2 K/V tiles. head_dim 64
# is an untuned default.
DECODE_CONFIGS = {
    64: dict(BLOCK_N=64, num_warps=4, num_stages=5),
    128: dict(BLOCK_N=64, num_warps=4, num_stages=5, PREFETCH=1),
}
FALLBACK_CONFIG = dict(BLOCK_N=32, num_warps=4, num_stages=3)
# Split heuristic: at most SPLIT_WAVES programs per SM (a further wave adds merge work and no bandwidth), never
# fewer than MIN_SPLIT_KEYS keys per split (a shorter split spends more on its prologue and on the merge than
# it saves). Both are the best of the tuning sweep's grid on the H100 (bench/results/attention-h100-*.md).
SPLIT = dict(SPLIT_WAVES=2, MIN_SPLIT_KEYS=256)
# A second tile config per head_dim for wide grids: it launches when the grid holds at least its "MIN_WAVES"
# programs per SM. Deep pipelines (num_stages 5) keep one program's copies in flight, which a small grid needs;
# they also limit the programs an SM holds, which costs a wide grid its tail wave. On the H200 the shallow
# config wins from 512 programs (3.9 per SM) up and loses at 256 (bench/results/attention-h200-*.md). The
# H100's sweep had no such split: its tables have none.
WIDE_CONFIGS: dict[int, dict] = {}
MAX_SPLITS = 128
# Tiles of each split whose K/V rows are prefetched into L2 as soon as the page ids arrive (a config may set
# "PREFETCH"); 0 turns the prefetch off. One tile hides the page-id round trip; deeper prefetch competes for L2
# with the other programs' tiles on large batches.
PREFETCH_TILES = 1


@triton.jit
def _merge_splits(o_ptr, part_ptr, lse_ptr, b, kvh, num_splits, num_q_heads, stride_ob, stride_ot, stride_oh,
                  NUM_Q: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr,
                  CHUNK: tl.constexpr):
    """Weighted sum of one (sequence, KV head)'s normalised partials by exp2(lse - max), splits in order.

    Runs in the last program of the group to finish; ``.cg`` loads read L2, where the other SMs' partials
    are (L1 is not coherent across SMs)."""
    rows = tl.arange(0, ROWS)
    t = rows // GROUP
    hq = kvh * GROUP + rows % GROUP
    row_ok = t < NUM_Q
    offs_s = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, HEAD_DIM)
    lse_row = ((b * NUM_Q + t) * num_q_heads + hq).to(tl.int64) * num_splits  # [ROWS]; partials are
    m = tl.zeros([ROWS], dtype=tl.float32) - float("inf")  # [batch, n, heads, splits(, D)] contiguous
    acc = tl.zeros([ROWS, HEAD_DIM], dtype=tl.float32)
    den = tl.zeros([ROWS], dtype=tl.float32)
    for c in range(0, num_splits, CHUNK):  # one pass, rescaled as the running max grows
        ok = row_ok[:, None] & (c + offs_s < num_splits)[None, :]
        lse = tl.load(lse_ptr + lse_row[:, None] + c + offs_s[None, :], mask=ok, other=float("-inf"),
                      cache_modifier=".cg")
        part = tl.load(part_ptr + (lse_row[:, None, None] + c + offs_s[None, :, None]) * HEAD_DIM
                       + offs_d[None, None, :], mask=ok[:, :, None], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, tl.max(lse, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m - m_safe)
        w = tl.math.exp2(lse - m_safe[:, None])  # [ROWS, CHUNK]
        acc = acc * alpha[:, None] + tl.sum(part * w[:, :, None], 1)
        den = den * alpha + tl.sum(w, 1)
        m = m_new
    out = acc / tl.where(den > 0, den, 1.0)[:, None]
    o_off = b.to(tl.int64) * stride_ob + t[:, None] * stride_ot + hq[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _prefetch_rows(k_base, v_base, pages, lo, hi, stride_kb, stride_ks, HEAD_DIM: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr, ROWS: tl.constexpr):
    """Ask L2 for this split's first ``ROWS`` K and V rows (rows ``>= hi`` excluded), every 128-byte line of
    each; ``pages`` holds the ``ROWS // BLOCK_SIZE`` page ids from ``lo``.

    A hint only (``prefetch.global.L2``, a per-thread address, so no waterfall loop as the uniform-address
    bulk prefetch needs): the loop's own copies of these rows then join DRAM reads already in flight
    instead of starting them after the in-loop page-id lookup."""
    NUM_PAGES: tl.constexpr = ROWS // BLOCK_SIZE
    LINE: tl.constexpr = 1024 // k_base.dtype.element_ty.primitive_bitwidth  # elements per 128-byte line
    LINES: tl.constexpr = HEAD_DIM // LINE if HEAD_DIM > LINE else 1
    r = tl.arange(0, ROWS)
    page = tl.reshape(tl.broadcast_to(pages.to(tl.int64)[:, None] * stride_kb, (NUM_PAGES, BLOCK_SIZE)), (ROWS,))
    off = (page + (r % BLOCK_SIZE) * stride_ks)[:, None, None] + tl.arange(0, LINES)[None, None, :] * LINE
    kv = tl.arange(0, 2)[None, :, None]
    ptrs = tl.where(kv == 0, k_base + off, v_base + off)  # [ROWS, K/V, LINES]
    ok = ((lo + r < hi)[:, None, None] & (kv < 2)).to(tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.b32 $0, 0; }",
        "=r,l,r", [ptrs, ok], dtype=tl.int32, is_pure=False, pack=1)


# num_splits, split_len and the block-table width (stride_bt) only feed arithmetic: one compile serves every
# split count and table width (eager steps cut tables to their longest context: a width of 1, a multiple of 16
# or neither would otherwise each compile mid-run)
@triton.jit(do_not_specialize=["num_splits", "split_len", "max_blocks", "stride_bt"])
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, part_ptr, lse_ptr, lock_ptr, kv_len_ptr, bt_ptr, k_scale_ptr, v_scale_ptr,
    qk_scale, num_splits, split_len, max_blocks,
    stride_qb, stride_qt, stride_qh,
    stride_ob, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_bt,
    NUM_Q: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, FP8: tl.constexpr, SPLIT: tl.constexpr,
    MERGE_ROWS: tl.constexpr, MERGE_CHUNK: tl.constexpr, ALIGNED: tl.constexpr, UPCAST: tl.constexpr,
    PREFETCH: tl.constexpr, SEQ_SPLIT: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    s = tl.program_id(2)
    # The split's key range comes from the launch (split_len: keys per split for the longest context), so
    # the page ids of its first tiles are requested together with kv_len instead of one round trip later;
    # SEQ_SPLIT trades that round trip for ranges cut from the sequence's own length.
    kv_len = tl.load(kv_len_ptr + b)
    if SEQ_SPLIT:  # this sequence's keys in num_splits ranges of whole tiles
        split_len = tl.cdiv(tl.cdiv(kv_len, num_splits), BLOCK_N) * BLOCK_N
    lo = s * split_len
    bt_row = bt_ptr + b.to(tl.int64) * stride_bt
    k_base = k_ptr + kvh * stride_kh
    v_base = v_ptr + kvh * stride_kh
    if PREFETCH > 0:
        pidx = lo // BLOCK_SIZE + tl.arange(0, PREFETCH * BLOCK_N // BLOCK_SIZE)
        first_pages = tl.load(bt_row + pidx, mask=pidx < max_blocks, other=0)
    # the last split also takes any keys past num_splits * split_len (a max_kv_len below a real length)
    hi = tl.where(s == num_splits - 1, kv_len, tl.minimum(lo + split_len, kv_len))

    rows = tl.arange(0, BLOCK_M)
    t = rows // GROUP  # query token of the row
    hq = kvh * GROUP + rows % GROUP  # query head of the row
    row_ok = t < NUM_Q
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + t[:, None] * stride_qt + hq[:, None] * stride_qh
                + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    last = kv_len - NUM_Q + t  # last key each row may see
    if PREFETCH > 0:  # after the q load, which needs nothing loaded
        _prefetch_rows(k_base, v_base, first_pages, lo, hi, stride_kb, stride_ks, HEAD_DIM, BLOCK_SIZE,
                       PREFETCH * BLOCK_N)
    if FP8:
        qk_scale = qk_scale * tl.load(k_scale_ptr + kvh)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_rows = _kv_rows(bt_row, start, 0, kv_len, stride_kb, stride_ks, True, BLOCK_SIZE, BLOCK_N, ALIGNED)
        k = tl.load(k_base + kv_rows[:, None] + offs_d[None, :]).to(q.dtype)
        v = tl.load(v_base + kv_rows[:, None] + offs_d[None, :]).to(q.dtype)
        qk = dot(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), UPCAST) * qk_scale
        qk = tl.where(offs_n[None, :] <= last[:, None], qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_ij == float("-inf"), 0.0, m_ij)  # a row may see nothing in this split
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = dot(p.to(q.dtype), v, acc * alpha[:, None], UPCAST)
        m_i = m_ij

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if FP8:
        out = out * tl.load(v_scale_ptr + kvh)
    if SPLIT:
        # partial (float32) and lse (log2 domain) go to [batch, NUM_Q, num_q_heads, num_splits(, D)]
        num_q_heads = tl.num_programs(1) * GROUP
        part_row = ((b * NUM_Q + t) * num_q_heads + hq).to(tl.int64) * num_splits + s
        lse = tl.where(l_i > 0, m_i + tl.math.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + part_row, lse, mask=row_ok)
        tl.store(part_ptr + part_row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=row_ok[:, None])
        tl.debug_barrier()  # every thread's partial is written before the release below
        lock = lock_ptr + b * tl.num_programs(1) + kvh
        if tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu") == num_splits - 1:
            _merge_splits(o_ptr, part_ptr, lse_ptr, b, kvh, num_splits, num_q_heads, stride_ob, stride_ot,
                          stride_oh, NUM_Q, GROUP, HEAD_DIM, MERGE_ROWS, MERGE_CHUNK)
            tl.atomic_xchg(lock, 0)  # ready for the next launch
    else:
        o_off = b.to(tl.int64) * stride_ob + t[:, None] * stride_ot + hq[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])


class DecodeTables(NamedTuple):
    """One GPU's decode launch tables: tile config per head_dim, the split heuristic's parameters and the
    wide-grid configs (per head_dim, with the programs per SM from which they launch)."""

    configs: dict[int, dict]
    split: dict[str, float]
    wide: dict[int, dict] = WIDE_CONFIGS


def _build(found: dict | None) -> DecodeTables:
    """The code's tables where the GPU has no section; else the section's entries over them."""
    if found is None:
        return DecodeTables(DECODE_CONFIGS, SPLIT, WIDE_CONFIGS)
    configs = {**DECODE_CONFIGS, **{int(d): cfg for d, cfg in found.get("configs", {}).items()}}
    wide = {**WIDE_CONFIGS, **{int(d): cfg for d, cfg in found.get("wide", {}).items()}}
    return DecodeTables(configs, {**SPLIT, **found.get("split", {})}, wide)


def tables(device: str | None = None) -> DecodeTables:
    """The decode launch tables of ``device`` (a ``tuned.py`` key; default: this process's GPU)."""
    return tuned.tables("decode_attention", _build, device)


def section(t: DecodeTables) -> dict:
    """``t`` as the ``decode_attention`` section of a configs file."""
    return {"configs": {str(d): cfg for d, cfg in t.configs.items()}, "split": dict(t.split),
            "wide": {str(d): cfg for d, cfg in t.wide.items()}}


def launch_config(head_dim: int, programs: int, num_sms: int, t: DecodeTables | None = None) -> dict:
    """The tile config a grid of ``programs`` launches with: the head_dim's wide-grid config from its
    ``MIN_WAVES`` programs per SM, else its config (a copy, without ``MIN_WAVES``)."""
    t = t or _active()
    wide = t.wide.get(head_dim)
    if wide is not None and programs >= wide["MIN_WAVES"] * num_sms:
        return {k: v for k, v in wide.items() if k != "MIN_WAVES"}
    return dict(t.configs.get(head_dim, FALLBACK_CONFIG))


def _active() -> DecodeTables:
    return _ACTIVE.get("decode_attention") or tables()


def choose_num_splits(batch: int, num_kv_heads: int, max_kv_len: int, num_sms: int, device: str | None = None) -> int:
    """Splits per (sequence, KV head): <= SPLIT_WAVES programs per SM, each split >= MIN_SPLIT_KEYS keys (the
    parameters of ``device``'s tables; default: this process's GPU)."""
    split = (tables(device) if device else _active()).split
    programs = batch * num_kv_heads
    want = int(split["SPLIT_WAVES"] * num_sms) // programs
    return max(1, min(want, max_kv_len // int(split["MIN_SPLIT_KEYS"]), MAX_SPLITS))


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    kv_lens: torch.Tensor, max_kv_len: int | None = None, sm_scale: float | None = None,
    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
    num_splits: int | None = None, out: torch.Tensor | None = None,
    workspace: tuple[torch.Tensor, ...] | None = None, config: dict | None = None,
    counters: SplitCounters | None = None, split_per_seq: bool = False,
) -> torch.Tensor:
    """Attention of 1 (or 1+k) new tokens per sequence over the paged cache; returns a tensor like ``q``.

    ``num_splits`` defaults to :func:`choose_num_splits` for the device's SM count (pass ``max_kv_len`` to
    avoid a device sync and keep the launch capturable in a CUDA graph). ``out`` (contiguous, shaped like
    ``q``) and ``workspace`` (float32 partial outputs ``[batch, n, num_q_heads, num_splits, head_dim]`` and
    log-sum-exps ``[batch, n, num_q_heads, num_splits]``) may be preallocated; ``counters`` (the caller's
    :class:`~servesim.kernels.counters.SplitCounters`) saves the zeroing of fresh split counters.
    ``split_per_seq`` cuts each sequence's own keys into the splits rather than ``max_kv_len`` (for a graph
    whose ``max_kv_len`` is a bucket's upper bound).
    """
    _, block_size, num_kv_heads, head_dim = check_cache(k_cache, v_cache)
    fp8 = check_scales(k_cache, k_scale, v_scale)
    q4 = q.unsqueeze(1) if q.dim() == 3 else q
    if q4.dim() != 4 or q4.shape[3] != head_dim or q4.stride(3) != 1:
        raise ValueError(f"q must be [batch, num_q_heads, {head_dim}] or [batch, n, num_q_heads, {head_dim}] "
                         f"with a contiguous last dim, got {tuple(q.shape)}")
    batch, num_q, num_q_heads, _ = q4.shape
    if q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"q must be bfloat16 or float16, got {q.dtype}")
    if num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads {num_q_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    check_tables(block_tables, kv_lens, batch)
    group = num_q_heads // num_kv_heads
    if max_kv_len is None:
        max_kv_len = int(kv_lens.max().item()) if batch else 0
    sms = sm_count(q.device)
    if num_splits is None:
        num_splits = choose_num_splits(batch, num_kv_heads, max_kv_len, sms)
    cfg = dict(config) if config else launch_config(head_dim, batch * num_kv_heads * num_splits, sms)
    prefetch = cfg.pop("PREFETCH", PREFETCH_TILES)
    aligned_kv = aligned(k_cache.stride(0), k_cache.stride(1))
    if interpreting() or not aligned_kv or block_size & (block_size - 1) or cfg["BLOCK_N"] % block_size:
        prefetch = 0  # inline PTX (no interpreter), page-id vectors need whole power-of-two pages per tile
    # keys per split, a multiple of BLOCK_N, from the longest context: known before the kernel reads kv_lens
    split_len = max(1, triton.cdiv(triton.cdiv(max_kv_len, num_splits), cfg["BLOCK_N"])) * cfg["BLOCK_N"]
    if out is None:
        out = torch.empty(q4.shape, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError(f"out must be contiguous {tuple(q.shape)} {q.dtype}, "
                         f"got {tuple(out.shape)} {out.dtype}")
    out = out.view(q4.shape)
    if batch == 0:
        return out.view(q.shape)
    split = num_splits > 1
    if split:
        want = (batch, num_q, num_q_heads, num_splits, head_dim)
        if workspace is None:
            workspace = (torch.empty(want, dtype=torch.float32, device=q.device),
                         torch.empty(want[:-1], dtype=torch.float32, device=q.device))
        o_buf, lse = workspace[:2]
        if (o_buf.shape != want or lse.shape != want[:-1]
                or not (o_buf.is_contiguous() and lse.is_contiguous())
                or o_buf.dtype != torch.float32 or lse.dtype != torch.float32):
            raise ValueError(f"workspace must be contiguous float32 {want} and {want[:-1]}, "
                             f"got {tuple(o_buf.shape)} and {tuple(lse.shape)}")
        locks = counters_for(counters, q.device, batch * num_kv_heads)
    else:
        o_buf, lse, locks = out, out, out  # unused
    _decode_kernel[(batch, num_kv_heads, num_splits)](
        q4, k_cache, v_cache, out, o_buf, lse, locks, kv_lens, block_tables,
        k_scale if fp8 else q, v_scale if fp8 else q,
        (sm_scale or 1.0 / math.sqrt(head_dim)) * 1.4426950408889634, num_splits, split_len, block_tables.shape[1],
        q4.stride(0), q4.stride(1), q4.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        NUM_Q=num_q, GROUP=group, HEAD_DIM=head_dim, BLOCK_M=max(16, triton.next_power_of_2(num_q * group)),
        BLOCK_SIZE=block_size, FP8=fp8, SPLIT=split, MERGE_ROWS=triton.next_power_of_2(num_q * group),
        MERGE_CHUNK=max(1, min(triton.next_power_of_2(num_splits), 128 // triton.next_power_of_2(num_q * group))),
        ALIGNED=aligned_kv, UPCAST=interpreting(), PREFETCH=prefetch, SEQ_SPLIT=split_per_seq and split, **cfg,
    )
    return out.view(q.shape)


def decode_attention_ref(q, k_cache, v_cache, block_tables, kv_lens, sm_scale=None, k_scale=None,
                         v_scale=None) -> torch.Tensor:
    """float32 torch reference of :func:`decode_attention`."""
    sm_scale = sm_scale or 1.0 / math.sqrt(q.shape[-1])
    q4 = q.unsqueeze(1) if q.dim() == 3 else q
    out = torch.empty(q4.shape, dtype=torch.float32, device=q.device)
    for s, kv_len in enumerate(kv_lens.tolist()):
        k, v = gather_kv_ref(k_cache, v_cache, block_tables[s], kv_len, k_scale, v_scale)
        out[s] = causal_attention_ref(q4[s], k, v, sm_scale)
    return out.view(q.shape)


def decode_flops(kv_lens, num_q_heads: int, head_dim: int, num_q_tokens: int = 1) -> int:
    """Matrix FLOPs of decode attention: token ``t`` of ``n`` sees ``kv_len - n + t + 1`` keys."""
    n = num_q_tokens
    visible = sum(n * int(kv) - n * (n - 1) // 2 for kv in kv_lens)
    return 4 * visible * num_q_heads * head_dim


def decode_bytes(kv_lens, num_kv_heads: int, head_dim: int, kv_dtype_bytes: int = 2, num_q_heads: int = 0,
                 num_q_tokens: int = 1, dtype_bytes: int = 2) -> int:
    """Fewest bytes decode attention moves: K and V of every context read once (+ Q read and O written
    when ``num_q_heads`` is given; the benchmark's bandwidth counts K+V only)."""
    kv_lens = [int(x) for x in kv_lens]
    kv = 2 * sum(kv_lens) * num_kv_heads * head_dim * kv_dtype_bytes
    return kv + 2 * len(kv_lens) * num_q_tokens * num_q_heads * head_dim * dtype_bytes
