"""Causal prefill attention written in Gluon for Hopper (sm_90): an experiment of issue 17, not on the engine's path.

Plain Triton's prefill kernels (``prefill.py``) stop at 0.74-0.77x cuDNN on an H200 and ``tl.range(warp_specialize=
True)`` does not work on sm_90 in Triton 3.6. Gluon (``triton.experimental.gluon``) writes the pipeline by hand:

* K/V tiles stream through TMA into a ``STAGES``-deep shared-memory ring, one mbarrier per slot and operand;
* QK^T and PV are ``wgmma`` (``warpgroup_mma``), Q and K/V from shared memory, P from registers;
* FA3-style overlap inside the consumer: QK^T of tile j and PV of tile j-1 are in flight together, and the
  softmax of tile j runs while PV(j-1) finishes (wgmma groups retire in issue order, so waiting for one
  outstanding group leaves exactly PV(j-1) running).

Two variants share that consumer loop (``VARIANTS``):

``pipelined``: one partition; the consumer itself issues the TMA load of the tile ``STAGES`` ahead into a slot as
    soon as the wgmma that read it has retired.
``ws``: ``gl.warp_specialize``: a 1-warp producer partition issues every TMA load (Q, then K/V tiles) and waits on
    per-slot "empty" barriers that the consumer (the default partition, 1 or 2 warpgroups) arrives on.

Shapes: one sequence (batch 1), contiguous ``q [S, Hq, D]``, ``k, v [S, Hkv, D]`` (GQA: query head h reads KV head
``h // (Hq / Hkv)``), bf16, head_dim 64 or 128. Each program computes ``BLOCK_M`` queries of one query head; rows
past ``S`` load as zeros (TMA padding) and their stores are clipped by the TMA unit, so a ragged ``S`` needs no
masks besides the causal one, applied only on tiles that cross the diagonal (``split_diag``: in a loop of their
own, so full tiles carry no mask code). Programs run heaviest query block first, the query heads of
``kv_heads_per_pass`` KV heads side by side (round 2: fewer KV heads at a time keep their K/V in L2);
``q_in_registers`` feeds QK^T's wgmma Q from registers. Tested against :func:`gluon_prefill_ref`
(``tests/test_kernels_gluon_attention.py``, marker gpu); benchmark: ``bench/gluon_attention.py``.

This module imports Gluon at import time; ``servesim.kernels`` does not import it.
"""

from __future__ import annotations

import math

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .prefill import causal_attention_ref

LOG2E = 1.4426950408889634
SMEM_LIMIT_BYTES = 232448  # opt-in shared memory per block on sm_90 (227 KiB)
DEFAULT_CONFIG = dict(variant="ws", BLOCK_M=128, BLOCK_N=128, STAGES=2, num_warps=8, maxnreg=168)

# TMA copies are spelled async_copy_global_to_shared / async_copy_shared_to_global in Triton 3.6 (the GPU's) and
# async_load / async_store in newer Triton, which removed the old names; likewise gl.thread_barrier / gl.barrier
# (3.9 compiles this file too).
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
_cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
MASK_NONE, MASK_ALL, MASK_CHECK = gl.constexpr(0), gl.constexpr(1), gl.constexpr(2)  # _softmax_tile's MASK


# --- device code -----------------------------------------------------------------------------------------------

@gluon.jit
def _load_tile(desc, smem, bars, j, col, n_tiles, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """TMA copy of K or V tile ``j`` (rows ``j * BLOCK_N ..``) into ring slot ``j % STAGES``; no-op past the end."""
    slot = j % STAGES
    pred = j < n_tiles
    bar = bars.index(slot)
    mbarrier.expect(bar, desc.block_type.nbytes, pred=pred)
    _tma_load(desc, [j * BLOCK_N, col], bar, smem.index(slot), pred=pred)


@gluon.jit
def _release(desc, smem, ready, empty, j, col, n_tiles, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
             NUM_WARPS: gl.constexpr, SPECIALIZED: gl.constexpr):
    """The wgmma that read tile ``j``'s slot has retired: hand the slot back.

    Warp-specialised: arrive on its "empty" barrier (the producer refills it). Single partition: refill it with
    tile ``j + STAGES`` here. With two warpgroups, each waited only for its own wgmma, and the arrive or copy is
    issued by one thread, so both warpgroups meet at a barrier first."""
    if NUM_WARPS > 4:
        _cta_barrier()
    if SPECIALIZED:
        mbarrier.arrive(empty.index(j % STAGES), count=1)
    else:
        _load_tile(desc, smem, ready, j + STAGES, col, n_tiles, BLOCK_N, STAGES)


@gluon.jit
def _softmax_tile(qk, m_i, l_i, j, j_full, offs_m, offs_n, qk_scale, BLOCK_N: gl.constexpr, MASK: gl.constexpr,
                  p_layout: gl.constexpr, o_rows: gl.constexpr):
    """Online-softmax step over scores ``qk`` of tile ``j``: P (bf16, as wgmma's register A operand), the new row
    max and sum, and the factor ``alpha`` that rescales the accumulator (in the accumulator's row layout).

    ``MASK``: ``MASK_CHECK`` masks if the tile crosses the diagonal (``j >= j_full``, a branch per tile),
    ``MASK_ALL`` always, ``MASK_NONE`` never (the caller knows which tiles cross)."""
    if MASK == MASK_CHECK:
        if j >= j_full:  # tile crosses the diagonal: key n is visible to query m iff n <= m
            qk = gl.where((j * BLOCK_N + offs_n)[None, :] <= offs_m[:, None], qk, float("-inf"))
    elif MASK == MASK_ALL:
        qk = gl.where((j * BLOCK_N + offs_n)[None, :] <= offs_m[:, None], qk, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(qk, 1) * qk_scale)
    p = gl.exp2(qk * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, 1)
    p = gl.convert_layout(p.to(gl.bfloat16), p_layout)
    return p, m_new, l_i, gl.convert_layout(alpha, o_rows)


@gluon.jit
def _step(q_op, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, k_desc, v_desc, j, p, m_i, l_i, acc, zero,
          kv_col, n_tiles, j_full, offs_m, offs_n, qk_scale, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
          NUM_WARPS: gl.constexpr, SPECIALIZED: gl.constexpr, MASK: gl.constexpr, p_layout: gl.constexpr,
          o_rows: gl.constexpr):
    """Tile ``j`` of the consumer loop: issue QK^T(j) and PV(j-1) (P of tile j-1 is ``p``; Q, ``q_op``, is in
    shared memory or registers), softmax of tile j while PV(j-1) runs, rescale the accumulator. Returns P of tile
    j, the row max and sum, the accumulator."""
    slot = j % STAGES
    prev = (j - 1) % STAGES
    mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
    qk = warpgroup_mma(q_op, k_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
    acc = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
    qk = warpgroup_mma_wait(1, deps=(qk, ))  # QK^T(j) done; PV(j-1) may still run
    _release(k_desc, k_smem, k_ready, k_empty, j, kv_col, n_tiles, BLOCK_N, STAGES, NUM_WARPS, SPECIALIZED)
    p_next, m_i, l_i, alpha = _softmax_tile(qk, m_i, l_i, j, j_full, offs_m, offs_n, qk_scale, BLOCK_N, MASK,
                                            p_layout, o_rows)
    acc, p = warpgroup_mma_wait(0, deps=(acc, p))
    _release(v_desc, v_smem, v_ready, v_empty, j - 1, kv_col, n_tiles, BLOCK_N, STAGES, NUM_WARPS, SPECIALIZED)
    return p_next, m_i, l_i, acc * alpha[:, None]


@gluon.jit
def _attend(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty, k_desc, v_desc, o_desc,
            m0, q_col, kv_col, n_tiles, j_full, qk_scale,
            BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
            NUM_WARPS: gl.constexpr, SPECIALIZED: gl.constexpr, SPLIT_DIAG: gl.constexpr, Q_REGS: gl.constexpr):
    """The consumer: QK^T, softmax and PV over ``n_tiles`` K/V tiles, then O through shared memory and TMA."""
    # wgmma accumulators: NUM_WARPS / 4 warpgroups stacked along M, 16-row instructions as wide as the tile
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)

    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    offs_m = m0 + gl.arange(0, BLOCK_M, layout=s_rows)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, s_rows)
    l_i = gl.zeros([BLOCK_M], gl.float32, s_rows)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

    # tile 0: key 0 is visible to every row, so the row max is finite from here on
    mbarrier.wait(q_bar, 0)
    # Q_REGS: QK^T's A operand from registers, so its wgmma reads only K from shared memory (half the bytes)
    if Q_REGS:  # noqa: SIM108 - a constexpr branch of the JIT, kept a statement
        q_op = q_smem.load(gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2))
    else:
        q_op = q_smem
    mbarrier.wait(k_ready.index(0), 0)
    qk = warpgroup_mma(q_op, k_smem.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
    qk = warpgroup_mma_wait(0, deps=(qk, ))
    _release(k_desc, k_smem, k_ready, k_empty, 0, kv_col, n_tiles, BLOCK_N, STAGES, NUM_WARPS, SPECIALIZED)
    p, m_i, l_i, alpha = _softmax_tile(qk, m_i, l_i, 0, j_full, offs_m, offs_n, qk_scale, BLOCK_N, MASK_CHECK,
                                       p_layout, o_rows)
    if SPLIT_DIAG:  # full tiles without any mask code, then the tiles that cross the diagonal, always masked
        for j in range(1, j_full):
            p, m_i, l_i, acc = _step(q_op, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, k_desc, v_desc,
                                     j, p, m_i, l_i, acc, zero, kv_col, n_tiles, j_full, offs_m, offs_n, qk_scale,
                                     BLOCK_N, STAGES, NUM_WARPS, SPECIALIZED, MASK_NONE, p_layout, o_rows)
        for j in range(gl.maximum(j_full, 1), n_tiles):
            p, m_i, l_i, acc = _step(q_op, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, k_desc, v_desc,
                                     j, p, m_i, l_i, acc, zero, kv_col, n_tiles, j_full, offs_m, offs_n, qk_scale,
                                     BLOCK_N, STAGES, NUM_WARPS, SPECIALIZED, MASK_ALL, p_layout, o_rows)
    else:
        for j in range(1, n_tiles):
            p, m_i, l_i, acc = _step(q_op, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, k_desc, v_desc,
                                     j, p, m_i, l_i, acc, zero, kv_col, n_tiles, j_full, offs_m, offs_n, qk_scale,
                                     BLOCK_N, STAGES, NUM_WARPS, SPECIALIZED, MASK_CHECK, p_layout, o_rows)
    last = (n_tiles - 1) % STAGES
    mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
    acc = warpgroup_mma(p, v_smem.index(last), acc, is_async=True)
    acc, p = warpgroup_mma_wait(0, deps=(acc, p))

    out = acc / gl.convert_layout(l_i, o_rows)[:, None]
    q_smem.store(out.to(o_desc.dtype))  # Q is no longer read: its buffer stages O for the TMA store
    fence_async_shared()
    _tma_store(o_desc, [m0, q_col], q_smem)
    tma.store_wait(0)


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty,
              m0, q_col, kv_col, n_tiles, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """Warp-specialised loader (1 warp): Q once, then K and V of every tile as their slots empty."""
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    _tma_load(q_desc, [m0, q_col], q_bar, q_smem)
    for j in range(n_tiles):
        slot = j % STAGES
        phase = (j // STAGES) & 1
        # a fresh mbarrier counts as having completed the phase before 0, so the first pass does not block
        mbarrier.wait(k_empty.index(slot), phase ^ 1)
        _load_tile(k_desc, k_smem, k_ready, j, kv_col, n_tiles, BLOCK_N, STAGES)
        mbarrier.wait(v_empty.index(slot), phase ^ 1)
        _load_tile(v_desc, v_smem, v_ready, j, kv_col, n_tiles, BLOCK_N, STAGES)


@gluon.jit
def _consumer(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty, k_desc, v_desc, o_desc,
              m0, q_col, kv_col, n_tiles, j_full, qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, NUM_WARPS: gl.constexpr, SPLIT_DIAG: gl.constexpr,
              Q_REGS: gl.constexpr):
    _attend(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty, k_desc, v_desc, o_desc,
            m0, q_col, kv_col, n_tiles, j_full, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, NUM_WARPS, True,
            SPLIT_DIAG, Q_REGS)


@gluon.jit
def _bars(n: gl.constexpr):
    bars = gl.allocate_shared_memory(gl.int64, [n, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(n):
        mbarrier.init(bars.index(i), count=1)
    return bars


@gluon.jit
def _prefill_fwd(q_desc, k_desc, v_desc, o_desc, qk_scale, seq_len, group, kv_per_pass,
                 BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
                 SPECIALIZED: gl.constexpr, SPLIT_DIAG: gl.constexpr, Q_REGS: gl.constexpr,
                 LOADER_REGS: gl.constexpr, num_warps: gl.constexpr):
    # Tile order (programs start roughly in id order): KV heads in passes of kv_per_pass; inside a pass query
    # blocks heaviest first, and every query head of the pass at one block side by side, so programs that run
    # together read the K/V of few heads (L2) and the longest blocks start first (no long tail).
    heads = kv_per_pass * group
    per_pass = heads * gl.cdiv(seq_len, BLOCK_M)
    r = gl.program_id(0) % per_pass
    h = gl.program_id(0) // per_pass * heads + r % heads
    m0 = (gl.cdiv(seq_len, BLOCK_M) - 1 - r // heads) * BLOCK_M
    q_col = h * HEAD_DIM
    kv_col = (h // group) * HEAD_DIM
    n_tiles = gl.cdiv(gl.minimum(m0 + BLOCK_M, seq_len), BLOCK_N)
    j_full = (m0 + 1) // BLOCK_N  # tiles below this one are visible to every row of the block

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = _bars(1).index(0)
    k_ready = _bars(STAGES)
    v_ready = _bars(STAGES)
    k_empty = _bars(STAGES) if SPECIALIZED else k_ready
    v_empty = _bars(STAGES) if SPECIALIZED else v_ready
    fence_async_shared()  # the initialised barriers are visible to the TMA unit before its first copy
    if SPECIALIZED:
        gl.warp_specialize([
            (_consumer, (q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty, k_desc, v_desc,
                         o_desc, m0, q_col, kv_col, n_tiles, j_full, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES,
                         num_warps, SPLIT_DIAG, Q_REGS)),
            (_producer, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty,
                         v_empty, m0, q_col, kv_col, n_tiles, BLOCK_N, STAGES)),
        ], [1], [LOADER_REGS])
    else:
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        _tma_load(q_desc, [m0, q_col], q_bar, q_smem)
        for i in gl.static_range(STAGES):
            _load_tile(k_desc, k_smem, k_ready, i, kv_col, n_tiles, BLOCK_N, STAGES)
            _load_tile(v_desc, v_smem, v_ready, i, kv_col, n_tiles, BLOCK_N, STAGES)
        _attend(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty, k_desc, v_desc, o_desc,
                m0, q_col, kv_col, n_tiles, j_full, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, num_warps, False,
                SPLIT_DIAG, Q_REGS)


# --- host side -------------------------------------------------------------------------------------------------

VARIANTS = {"pipelined": False, "ws": True}  # name -> SPECIALIZED


def smem_bytes(cfg: dict, head_dim: int = 128) -> int:
    """Shared memory of a config: the Q/O tile and the K and V rings (bf16), plus the 8-byte mbarriers (Q, and
    ready, and with warp specialisation empty, per slot and operand); the compiler's figure adds alignment."""
    tiles = cfg["BLOCK_M"] * head_dim + 2 * cfg["STAGES"] * cfg["BLOCK_N"] * head_dim
    return 2 * tiles + 8 * (1 + (4 if VARIANTS.get(cfg["variant"]) else 2) * cfg["STAGES"])


def check_config(cfg: dict, head_dim: int = 128) -> None:
    """Raise ValueError for a config the kernel cannot run: wgmma needs BLOCK_M >= 16 rows per warp (warpgroups
    stack along M), tiles must divide into TMA boxes, the rings must fit in shared memory."""
    if cfg["variant"] not in VARIANTS:
        raise ValueError(f"variant {cfg['variant']!r}: expected one of {sorted(VARIANTS)}")
    if cfg["num_warps"] not in (4, 8):
        raise ValueError(f"num_warps {cfg['num_warps']}: the consumer is 1 or 2 warpgroups (4 or 8)")
    if cfg["BLOCK_M"] < 16 * cfg["num_warps"] or cfg["BLOCK_M"] % 64:
        raise ValueError(f"BLOCK_M {cfg['BLOCK_M']} needs a multiple of 64 with 16 rows per warp "
                         f"({cfg['num_warps']} warps)")
    if cfg["BLOCK_N"] not in (32, 64, 128, 256) or not 1 <= cfg["STAGES"] <= 8:
        raise ValueError(f"BLOCK_N {cfg['BLOCK_N']} / STAGES {cfg['STAGES']}: expected 32-256 and 1-8")
    kv = cfg.get("kv_heads_per_pass", 0)
    if not isinstance(kv, int) or isinstance(kv, bool) or kv < 0:
        raise ValueError(f"kv_heads_per_pass {kv!r}: expected an int >= 0 (0: all KV heads in one pass)")
    for key in ("split_diag", "q_in_registers"):
        if not isinstance(cfg.get(key, False), bool):
            raise ValueError(f"{key} {cfg[key]!r}: expected a bool")
    if smem_bytes(cfg, head_dim) > SMEM_LIMIT_BYTES:
        raise ValueError(f"config {cfg} needs {smem_bytes(cfg, head_dim)} B of shared memory "
                         f"(limit {SMEM_LIMIT_BYTES})")


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"expected q [S, Hq, D] and k, v [S, Hkv, D], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.shape[2] not in (64, 128):
        raise ValueError(f"head_dim {q.shape[2]}: expected 64 or 128")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"num_q_heads {q.shape[1]} is not a multiple of num_kv_heads {k.shape[1]}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dtype != torch.bfloat16 or not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous bfloat16, got {x.dtype} strides {x.stride()}")


def _constexprs(cfg: dict, head_dim: int) -> dict:
    return dict(BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], HEAD_DIM=head_dim, STAGES=cfg["STAGES"],
                SPECIALIZED=VARIANTS[cfg["variant"]], SPLIT_DIAG=cfg.get("split_diag", False),
                Q_REGS=cfg.get("q_in_registers", False), LOADER_REGS=cfg.get("LOADER_REGS", 24))


def gluon_prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None,
                            config: dict | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of one sequence: ``q [S, Hq, D]`` over ``k, v [S, Hkv, D]``, query i sees keys <= i.

    ``config``: ``variant`` (``VARIANTS``), ``BLOCK_M``, ``BLOCK_N``, ``STAGES``, ``num_warps`` (consumer warps: 4 or
    8), optional ``maxnreg`` and ``LOADER_REGS`` (registers of the producer warp, ``ws`` only; default 24),
    ``kv_heads_per_pass`` (tile order: KV heads whose query blocks are scheduled together; 0, the default, is
    all of them; must divide the KV heads) and ``split_diag`` (loop over full tiles without mask code, then over
    the diagonal ones; default False: one loop that tests every tile) and ``q_in_registers`` (QK^T reads Q from
    registers, loaded once, instead of shared memory: 32 more registers per thread at BLOCK_M 64, head_dim 128);
    missing keys come from ``DEFAULT_CONFIG``.
    """
    _check_inputs(q, k, v)
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    seq, hq, d = q.shape
    check_config(cfg, d)
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError(f"out must be contiguous {tuple(q.shape)} {q.dtype}, got {tuple(out.shape)} {out.dtype}")
    if seq == 0:
        return out
    hkv = k.shape[1]
    kv_per_pass = cfg.get("kv_heads_per_pass") or hkv
    if hkv % kv_per_pass:
        raise ValueError(f"kv_heads_per_pass {kv_per_pass} does not divide num_kv_heads {hkv}")
    sm_scale = 1.0 / math.sqrt(d) if sm_scale is None else sm_scale
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    q_layout = gl.NVMMASharedLayout.get_default_for([bm, d], gl.bfloat16)
    kv_layout = gl.NVMMASharedLayout.get_default_for([bn, d], gl.bfloat16)
    q_desc = TensorDescriptor.from_tensor(q.view(seq, hq * d), [bm, d], q_layout)
    o_desc = TensorDescriptor.from_tensor(out.view(seq, hq * d), [bm, d], q_layout)
    k_desc = TensorDescriptor.from_tensor(k.view(seq, -1), [bn, d], kv_layout)
    v_desc = TensorDescriptor.from_tensor(v.view(seq, -1), [bn, d], kv_layout)
    launch = dict(num_warps=cfg["num_warps"])
    if cfg.get("maxnreg"):
        launch["maxnreg"] = cfg["maxnreg"]
    _prefill_fwd[(hq * triton.cdiv(seq, bm), )](
        q_desc, k_desc, v_desc, o_desc, sm_scale * LOG2E, seq, hq // hkv, kv_per_pass, **_constexprs(cfg, d), **launch)
    return out


def compile_sm90(config: dict | None = None, head_dim: int = 128):
    """Compile the kernel of ``config`` for sm_90 without a GPU or a launch (``triton.compile``; ptxas ships with
    Triton): a check that Gluon code builds on a CPU machine. Returns the ``CompiledKernel`` (``asm["ptx"]``,
    ``asm["cubin"]``, ``metadata.shared``). The sequence length is specialised as a multiple of 16."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    cfg = {**DEFAULT_CONFIG, **(config or {})}
    check_config(cfg, head_dim)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]

    def desc(rows: int) -> str:  # the JIT's spelling of a Gluon TensorDescriptor argument
        layout = gl.NVMMASharedLayout.get_default_for([rows, head_dim], gl.bfloat16)
        return f"tensordesc<bf16[{rows},{head_dim}],{layout!r}>"

    constexprs = dict(**_constexprs(cfg, head_dim), num_warps=cfg["num_warps"])
    signature = {"q_desc": desc(bm), "k_desc": desc(bn), "v_desc": desc(bn), "o_desc": desc(bm), "qk_scale": "fp32",
                 "seq_len": "i32", "group": "i32", "kv_per_pass": "i32", **{name: "constexpr" for name in constexprs}}
    options = dict(num_warps=cfg["num_warps"], **({"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}))
    source = GluonASTSource(_prefill_fwd, signature, constexprs, attrs={(5, ): [["tt.divisibility", 16]]})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def ptxas_usage(kernel) -> dict:
    """Registers per thread and spill bytes of a compiled kernel (``compile_sm90``): its PTX through Triton's own
    ptxas for sm_90a with ``-v`` (Triton keeps only the cubin). Keys ``registers``, ``spill_stores``,
    ``spill_loads`` (bytes)."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/k.ptx"
        with open(src, "w") as f:
            f.write(kernel.asm["ptx"])
        proc = subprocess.run([get_ptxas(90).path, "--gpu-name", "sm_90a", "-v", src, "-o", f"{tmp}/k.cubin"],
                              capture_output=True, text=True, check=True)
    info = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", info)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    if not regs or not spills:
        raise RuntimeError(f"ptxas -v printed no register / spill line:\n{info[-2000:]}")
    return {"registers": int(regs[1]), "spill_stores": int(spills[1]), "spill_loads": int(spills[2])}


def gluon_prefill_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None):
    """float32 torch reference of :func:`gluon_prefill_attention` (explicit masked softmax)."""
    return causal_attention_ref(q, k, v, 1.0 / math.sqrt(q.shape[2]) if sm_scale is None else sm_scale)


def causal_flops(seq_len: int, num_heads: int, head_dim: int) -> float:
    """The benchmarks' causal FLOP count, 4 * S^2 / 2 * head_dim * heads (QK^T and PV over half the scores)."""
    return 4 * seq_len * seq_len / 2 * head_dim * num_heads
