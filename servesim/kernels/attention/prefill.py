"""Prefill attention, FlashAttention-2 style: causal, GQA, variable-length batch, paged or contiguous KV.

Queries are packed ``q [total_q, num_q_heads, head_dim]`` with ``cu_seqlens_q`` (int32 ``[batch+1]``).
Sequence ``s`` has ``kv_lens[s]`` keys in total, its new tokens included (they were written to the cache
first), so its queries sit at absolute positions ``kv_lens[s] - q_len .. kv_lens[s] - 1``: a prefill chunk
attends to the earlier chunks and to a cached prefix through the block table (layout: ``kv_cache.py``).
Query ``i`` sees key ``j`` iff ``j <= kv_lens[s] - q_len + i``.

One program computes ``BLOCK_M`` queries of one query head with an online softmax over ``BLOCK_N``-key
tiles, in two loops: tiles every row of the block may see whole (no mask), then the tiles on the
diagonal (masked). K/V rows past the end are clamped to the last key instead of masked, so every load is
unmasked and vectorised. Programs run heaviest query block first for a balanced causal tail.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .. import tuned
from ..tuned import ACTIVE as _ACTIVE
from .kv_cache import aligned, check_cache, check_scales, check_tables, dot, gather_kv_ref, interpreting

LOG2E = 1.4426950408889634

# Tile configs keyed on (head_dim, paged): the fastest of `bench/attention.py --tune` on an H100 SXM at S = 4k
# and 8k, ranked in-step (bench/results/attention-h100-*.md); the contiguous path loads K/V through TMA. These are
# the H100's; another GPU launches with the `prefill_attention` section of its configs file (`tables()`, tuned.py).
# head_dim 64 entries are untuned defaults. Paged num_stages: the page-id load is the pipeliner's first stage, so
# Triton buffers (num_stages + 1) // 2 K/V tiles (7 -> 4, 5 -> 3, 3 -> 2; read from the compiled shared memory).
PREFILL_CONFIGS = {
    (64, True): dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    (64, False): dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    (128, True): dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=5),
    (128, False): dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, TMA=True),
}
FALLBACK_CONFIG = dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3)


def _key(name: str) -> tuple[int, bool]:
    """``"128/paged"`` (JSON) -> ``(128, True)``."""
    d, path = name.split("/")
    if path not in ("paged", "contiguous"):
        raise ValueError(f"prefill config key {name!r}: expected <head_dim>/paged or <head_dim>/contiguous")
    return int(d), path == "paged"


def _build(found: dict | None) -> dict[tuple[int, bool], dict]:
    """The code's configs where the GPU has no section; else the section's entries over them."""
    if found is None:
        return PREFILL_CONFIGS
    return {**PREFILL_CONFIGS, **{_key(name): cfg for name, cfg in found.get("configs", {}).items()}}


def tables(device: str | None = None) -> dict[tuple[int, bool], dict]:
    """The prefill tile configs of ``device`` (a ``tuned.py`` key; default: this process's GPU), keyed like
    ``PREFILL_CONFIGS``."""
    return tuned.tables("prefill_attention", _build, device)


def section(configs: dict[tuple[int, bool], dict]) -> dict:
    """``configs`` as the ``prefill_attention`` section of a configs file."""
    return {"configs": {f"{d}/{'paged' if paged else 'contiguous'}": cfg for (d, paged), cfg in configs.items()}}


_PTX = tl.constexpr(not interpreting())  # inline PTX compiles for the GPU only


@triton.jit
def _page_offsets(pages, stride_kb):
    """``pages * stride_kb`` as int64: one ``mul.wide.s32`` per id. The plain int64 product compiles to a
    64-bit multiply-add (5 SASS instructions) because the stride's widening is hoisted out of the loop."""
    if _PTX:
        return tl.inline_asm_elementwise("mul.wide.s32 $0, $1, $2;", "=l,r,r", [pages, pages * 0 + stride_kb],
                                         dtype=tl.int64, is_pure=True, pack=1)
    else:
        return pages.to(tl.int64) * stride_kb


@triton.jit
def _kv_rows(bt_row_ptr, start, kv_start, kv_len, stride_kb, stride_ks, PAGED: tl.constexpr,
             BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, ALIGNED: tl.constexpr, CLAMP: tl.constexpr = True):
    """Element offsets of K/V rows ``start .. start + BLOCK_N - 1`` (clamped to the last key) of one sequence.

    ``start`` is a multiple of ``BLOCK_N``. Paged: the tile's ``cdiv(BLOCK_N, BLOCK_SIZE)`` page ids are one
    small vector load, broadcast to the rows, instead of one gathered id per row. Called in the loop next
    to the K/V loads, the id load becomes the pipeliner's first stage (an async copy a stage ahead of the
    K/V copies that use it); looking ids up a tile ahead by hand made it a synchronous load whose result
    the next copy's address waited on. The reshape hides the rows' alignment from the compiler, so the
    vector path needs ``ALIGNED`` (cache strides are multiples of 16 elements) to restate it; without it
    the K/V loads would not be vectorised or pipelined at all.

    ``CLAMP=False`` for tiles wholly below ``kv_len`` (prefill's unmasked loop): nothing to clamp, and with
    whole pages per tile a row's slot in its page no longer depends on ``start``, so its offset is computed
    once outside the loop and only the page ids' products remain per tile.
    """
    n = start + tl.arange(0, BLOCK_N)
    if CLAMP:
        n = tl.minimum(n, kv_len - 1)
    if PAGED:
        if ALIGNED and (BLOCK_SIZE & (BLOCK_SIZE - 1)) == 0:
            PER_PAGE: tl.constexpr = BLOCK_SIZE if BLOCK_SIZE < BLOCK_N else BLOCK_N
            NUM_PAGES: tl.constexpr = BLOCK_N // PER_PAGE
            idx = start // BLOCK_SIZE + tl.arange(0, NUM_PAGES)
            if CLAMP:
                idx = tl.minimum(idx, (kv_len - 1) // BLOCK_SIZE)
            pages = _page_offsets(tl.load(bt_row_ptr + idx), stride_kb)
            page = tl.reshape(tl.broadcast_to(pages[:, None], (NUM_PAGES, PER_PAGE)), (BLOCK_N,))
            # slot in page: unclamped whole pages need only the row (start is a multiple of BLOCK_SIZE); a bit
            # mask suffices since n >= 0 in any tile that runs (kv_len >= 1)
            slot = (tl.arange(0, BLOCK_N) if not CLAMP and BLOCK_SIZE <= BLOCK_N else n) & (BLOCK_SIZE - 1)
            return tl.multiple_of(page + slot * stride_ks, 16)
        else:  # odd page sizes or strides: one id per row
            return tl.load(bt_row_ptr + n // BLOCK_SIZE).to(tl.int64) * stride_kb + (n % BLOCK_SIZE) * stride_ks
    else:
        return (kv_start + n).to(tl.int64) * stride_ks


@triton.jit
def _prefill_tiles(acc, l_i, m_i, q, k_base, v_base, bt_row_ptr, kv_start, kv_len, lo, hi,
                   offs_m_pos, qk_scale, stride_kb, stride_ks, tma_col,
                   MASK: tl.constexpr, PAGED: tl.constexpr, TMA: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, ALIGNED: tl.constexpr, UPCAST: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        rows = _kv_rows(bt_row_ptr, start, kv_start, kv_len, stride_kb, stride_ks, PAGED, BLOCK_SIZE, BLOCK_N,
                        ALIGNED, MASK)
        if TMA:  # k_base/v_base are [total_k, num_kv_heads * head_dim] descriptors; rows past the end are
            # the next sequence's (or zeros) and the mask hides them
            k = k_base.load([kv_start + start, tma_col])
        else:
            k = tl.load(k_base + rows[:, None] + offs_d[None, :]).to(q.dtype)
        qk = dot(q, tl.trans(k), tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), UPCAST)
        if MASK:
            qk = qk * qk_scale + tl.where(offs_n[None, :] <= offs_m_pos[:, None], 0.0, -1.0e6)
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_ij[:, None]
        else:
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_ij[:, None]
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if TMA:
            v = v_base.load([kv_start + start, tma_col])
        else:
            v = tl.load(v_base + rows[:, None] + offs_d[None, :]).to(q.dtype)
        acc = dot(p.to(q.dtype), v, acc, UPCAST)
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["stride_bt"])  # the block-table width varies by step: one compile serves all
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, cu_q_ptr, kv_ptr, bt_ptr, k_scale_ptr, v_scale_ptr,
    sm_scale,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_bt,
    num_q_heads, group,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    PAGED: tl.constexpr, FP8: tl.constexpr, TMA: tl.constexpr, ALIGNED: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = pid_bh // num_q_heads
    h = pid_bh % num_q_heads
    kvh = h // group
    m0 = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M  # heaviest block first
    q_start = tl.load(cu_q_ptr + b)
    q_len = tl.load(cu_q_ptr + b + 1) - q_start
    if m0 >= q_len:
        return
    if PAGED:  # kv_ptr: per-sequence lengths
        kv_start = 0
        kv_len = tl.load(kv_ptr + b)
    else:  # kv_ptr: cumulative offsets of contiguous K/V
        kv_start = tl.load(kv_ptr + b)
        kv_len = tl.load(kv_ptr + b + 1) - kv_start
    ctx = kv_len - q_len

    qk_scale = sm_scale * 1.4426950408889634
    if FP8:
        qk_scale = qk_scale * tl.load(k_scale_ptr + kvh)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = q_ptr + (q_start + offs_m).to(tl.int64)[:, None] * stride_qt + h * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < q_len, other=0.0)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if TMA:
        k_base = k_ptr
        v_base = v_ptr
    else:
        k_base = k_ptr + kvh * stride_kh
        v_base = v_ptr + kvh * stride_kh
    bt_row = bt_ptr + b.to(tl.int64) * stride_bt
    # Keys below `full` are visible to every row of the block; the rest up to `hi` need the causal mask.
    full = (ctx + m0 + 1) // BLOCK_N * BLOCK_N
    hi = tl.minimum(kv_len, ctx + m0 + BLOCK_M)
    acc, l_i, m_i = _prefill_tiles(acc, l_i, m_i, q, k_base, v_base, bt_row, kv_start, kv_len, 0, full,
                                   ctx + offs_m, qk_scale, stride_kb, stride_ks, kvh * HEAD_DIM,
                                   False, PAGED, TMA, BLOCK_SIZE, HEAD_DIM, BLOCK_N, ALIGNED, UPCAST)
    acc, l_i, m_i = _prefill_tiles(acc, l_i, m_i, q, k_base, v_base, bt_row, kv_start, kv_len, full, hi,
                                   ctx + offs_m, qk_scale, stride_kb, stride_ks, kvh * HEAD_DIM,
                                   True, PAGED, TMA, BLOCK_SIZE, HEAD_DIM, BLOCK_N, ALIGNED, UPCAST)
    out = acc / l_i[:, None]
    if FP8:
        out = out * tl.load(v_scale_ptr + kvh)
    o_ptrs = o_ptr + (q_start + offs_m).to(tl.int64)[:, None] * stride_ot + h * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < q_len)


def _check_q(q: torch.Tensor, cu_seqlens_q: torch.Tensor, num_kv_heads: int, head_dim: int) -> int:
    if q.dim() != 3 or q.shape[2] != head_dim or q.stride(2) != 1:
        raise ValueError(f"q must be [total_q, num_q_heads, {head_dim}] with a contiguous last dim, "
                         f"got shape {tuple(q.shape)} strides {q.stride()}")
    if q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"q must be bfloat16 or float16, got {q.dtype}")
    if q.shape[1] % num_kv_heads:
        raise ValueError(f"num_q_heads {q.shape[1]} is not a multiple of num_kv_heads {num_kv_heads}")
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.dtype != torch.int32 or cu_seqlens_q.numel() < 2:
        raise ValueError(f"cu_seqlens_q must be int32 [batch+1], got {cu_seqlens_q.dtype} "
                         f"{tuple(cu_seqlens_q.shape)}")
    return cu_seqlens_q.numel() - 1


def _kv_strides(k, paged: bool, tma: bool) -> tuple[int, int, int]:
    """(block, slot/token, head) element strides of the K/V source."""
    if tma:
        return 0, 0, 0
    return (k.stride(0), k.stride(1), k.stride(2)) if paged else (0, k.stride(0), k.stride(1))


def _launch(q, k, v, kv_arg, block_tables, cu_seqlens_q, max_q_len, sm_scale, k_scale, v_scale,
            out, config, paged, block_size, num_kv_heads, head_dim):
    batch = _check_q(q, cu_seqlens_q, num_kv_heads, head_dim)
    fp8 = check_scales(k, k_scale, v_scale)
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(2) != 1:
        raise ValueError(f"out must match q {tuple(q.shape)} {q.dtype}, got {tuple(out.shape)} {out.dtype}")
    if max_q_len is None:
        max_q_len = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max().item())
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    cfg = dict(config or (_ACTIVE.get("prefill_attention") or tables()).get((head_dim, paged), FALLBACK_CONFIG))
    num_q_heads = q.shape[1]
    if q.shape[0] == 0 or max_q_len == 0:
        return out
    grid = (batch * num_q_heads, triton.cdiv(max_q_len, cfg["BLOCK_M"]))
    bt = block_tables if paged else cu_seqlens_q  # unused pointer on the contiguous path
    tma = bool(cfg.pop("TMA", False))
    if tma:  # bulk tensor copies of [BLOCK_N, head_dim] tiles out of K/V seen as [total_k, heads * head_dim]
        if paged or not (k.is_contiguous() and v.is_contiguous()):
            raise ValueError("the TMA config needs contiguous k and v (prefill_attention_contiguous)")
        box = [cfg["BLOCK_N"], head_dim]
        k = TensorDescriptor.from_tensor(k.view(k.shape[0], -1), box)
        v = TensorDescriptor.from_tensor(v.view(v.shape[0], -1), box)
    strides = _kv_strides(k, paged, tma)
    _prefill_kernel[grid](
        q, k, v, out, cu_seqlens_q, kv_arg, bt,
        k_scale if fp8 else q, v_scale if fp8 else q,
        sm_scale, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        *strides,
        block_tables.stride(0) if paged else 0,
        num_q_heads, num_q_heads // num_kv_heads,
        HEAD_DIM=head_dim, BLOCK_SIZE=block_size, PAGED=paged, FP8=fp8, TMA=tma, ALIGNED=aligned(*strides[:2]),
        UPCAST=interpreting(), **cfg,
    )
    return out


def prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor, max_q_len: int | None = None,
    sm_scale: float | None = None, k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None, config: dict | None = None,
) -> torch.Tensor:
    """Causal attention of packed queries over the paged cache; returns ``[total_q, num_q_heads, head_dim]``.

    ``kv_lens`` (int32 ``[batch]``) counts each sequence's keys including its new tokens, which must already
    be in the cache. Pass ``max_q_len`` to avoid a device sync. ``config`` overrides the tile config.
    """
    _, block_size, num_kv_heads, head_dim = check_cache(k_cache, v_cache)
    batch = cu_seqlens_q.numel() - 1
    check_tables(block_tables, kv_lens, batch)
    return _launch(q, k_cache, v_cache, kv_lens, block_tables, cu_seqlens_q, max_q_len, sm_scale,
                   k_scale, v_scale, out, config, True, block_size, num_kv_heads, head_dim)


def prefill_attention_contiguous(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor, max_q_len: int | None = None, sm_scale: float | None = None,
    out: torch.Tensor | None = None, config: dict | None = None,
) -> torch.Tensor:
    """:func:`prefill_attention` over packed contiguous ``k``/``v`` ``[total_k, num_kv_heads, head_dim]``.

    The fast path for a prompt with no cached prefix (its K/V are the projection outputs).
    """
    if k.dim() != 3 or k.shape != v.shape or k.stride() != v.stride() or k.stride(2) != 1:
        raise ValueError(f"k and v must be equal [total_k, num_kv_heads, head_dim] with contiguous head_dim, "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    if cu_seqlens_k.shape != cu_seqlens_q.shape or cu_seqlens_k.dtype != torch.int32:
        raise ValueError(f"cu_seqlens_k must be int32 {tuple(cu_seqlens_q.shape)}, got {cu_seqlens_k.dtype} "
                         f"{tuple(cu_seqlens_k.shape)}")
    return _launch(q, k, v, cu_seqlens_k, None, cu_seqlens_q, max_q_len, sm_scale, None, None, out,
                   config, False, 16, k.shape[1], k.shape[2])


def causal_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """float32 attention of ``q [Lq, Hq, D]`` over ``k, v [Lk, Hkv, D]``; query ``i`` sees keys <= Lk-Lq+i."""
    q, k, v = q.float(), k.float(), v.float()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * sm_scale
    lq, lk = q.shape[0], k.shape[0]
    rows, cols = torch.arange(lq, device=q.device), torch.arange(lk, device=q.device)
    visible = cols[None, :] <= (lk - lq + rows)[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v)


def prefill_attention_ref(q, k_cache, v_cache, block_tables, cu_seqlens_q, kv_lens, sm_scale=None,
                          k_scale=None, v_scale=None) -> torch.Tensor:
    """float32 torch reference of :func:`prefill_attention`."""
    sm_scale = sm_scale or 1.0 / math.sqrt(q.shape[2])
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    cu = cu_seqlens_q.tolist()
    for s, kv_len in enumerate(kv_lens.tolist()):
        k, v = gather_kv_ref(k_cache, v_cache, block_tables[s], kv_len, k_scale, v_scale)
        out[cu[s]:cu[s + 1]] = causal_attention_ref(q[cu[s]:cu[s + 1]], k, v, sm_scale)
    return out


def prefill_attention_contiguous_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, sm_scale=None) -> torch.Tensor:
    """float32 torch reference of :func:`prefill_attention_contiguous`."""
    sm_scale = sm_scale or 1.0 / math.sqrt(q.shape[2])
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for s in range(len(cq) - 1):
        out[cq[s]:cq[s + 1]] = causal_attention_ref(q[cq[s]:cq[s + 1]], k[ck[s]:ck[s + 1]],
                                                    v[ck[s]:ck[s + 1]], sm_scale)
    return out


def prefill_flops(q_lens, kv_lens, num_heads: int, head_dim: int, causal: bool = True) -> int:
    """Matrix FLOPs (QK^T and PV, 2 each per multiply-add) of prefill attention, counting visible keys only.

    Query ``i`` of a sequence with ``q_len`` new tokens and ``kv_len`` keys sees ``kv_len - q_len + i + 1``
    keys when causal, all ``kv_len`` otherwise.
    """
    visible = 0
    for q_len, kv_len in zip(q_lens, kv_lens, strict=False):
        q_len, kv_len = int(q_len), int(kv_len)
        visible += q_len * (kv_len - q_len) + q_len * (q_len + 1) // 2 if causal else q_len * kv_len
    return 4 * visible * num_heads * head_dim


def prefill_bytes(q_lens, kv_lens, num_q_heads: int, num_kv_heads: int, head_dim: int,
                  dtype_bytes: int = 2, kv_dtype_bytes: int = 2) -> int:
    """Fewest bytes prefill attention moves: Q read and O written once, each sequence's K and V read once."""
    q_tokens, kv_tokens = sum(int(x) for x in q_lens), sum(int(x) for x in kv_lens)
    q_o = 2 * q_tokens * num_q_heads * head_dim * dtype_bytes
    return q_o + 2 * kv_tokens * num_kv_heads * head_dim * kv_dtype_bytes
