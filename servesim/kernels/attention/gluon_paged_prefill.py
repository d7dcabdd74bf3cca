"""Paged, varlen causal prefill attention in Gluon for Hopper (sm_90): issue 17's winning schedule behind the engine's
prefill signature. An experiment, not on the engine's path yet (no GPU has run it when this was written).

Same call and semantics as :func:`servesim.kernels.attention.prefill.prefill_attention`: packed queries ``q
[total_q, Hq, D]`` of several sequences (``cu_seqlens_q``), K/V in the paged cache ``[blocks, block_size, Hkv, D]``
through ``block_tables``; sequence ``s`` has ``kv_lens[s]`` keys, its queries the last ``q_len`` of them (context
before the chunk), query ``i`` sees keys ``<= kv_len - q_len + i``. bf16 only, head_dim 64 or 128, GQA; an fp8
cache is refused (wgmma takes fp8 only with both operands fp8: K/V would need a dequantising pass per tile).

The schedule is ``gluon_prefill.py``'s round-2 best, "pipelined 64x64 s2 w4 kv1 qreg r240": one warpgroup per
program, QK^T(j) and PV(j-1) in flight together, the softmax of tile j under PV(j-1), Q in registers, query blocks
of one KV head's query heads side by side, heaviest first. What paging changes:

* A K or V tile of ``BLOCK_N`` keys spans ``BLOCK_N / block_size`` pages (4 at 64 keys, 16-token pages). It is that
  many TMA copies of ``block_size`` rows, each from its page's rows in a 2-D view of the cache, into row slices of
  the ring slot; the slot's one mbarrier expects the whole tile's bytes. Page ids are read from the block table
  (scalar loads, clamped to the sequence's last page) when the tile's copies are issued, ``STAGES`` tiles ahead.
* Keys past ``kv_len`` in the last page are whatever the cache holds (NaN included): K's are masked by the causal
  mask (no query sees them), V's would turn ``0 * NaN`` into NaN, so a program whose last tile reaches past
  ``kv_len`` zeroes those V rows in shared memory before the last PV.
* Q tiles are TMA loads of ``BLOCK_M`` rows from the packed ``q``: rows past the sequence belong to the next one
  (never stored). O goes out through shared memory as masked, 16-byte stores: a TMA store would overwrite the next
  sequence's rows.
* Grid: one program per (query head, sequence, query block); inside a pass over ``kv_heads_per_pass`` KV heads,
  the i-th heaviest block of every sequence runs before the (i+1)-th of any, all query heads of the pass side by
  side; programs past a sequence's blocks exit at once.

Tested against :func:`gluon_paged_prefill_ref` (``tests/test_kernels_gluon_paged_prefill.py``); compiled for sm_90
without a GPU by :func:`compile_sm90`; benchmark ``bench/gluon_paged_prefill.py``. ``servesim.kernels`` does not
import this module (it imports Gluon).
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
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .gluon_prefill import (
    LOG2E,
    MASK_CHECK,
    SMEM_LIMIT_BYTES,
    _bars,
    _cta_barrier,
    _softmax_tile,
    _tma_load,
    ptxas_usage,  # noqa: F401 - re-exported for the benchmark's --compile-only
)
from .kv_cache import check_cache, check_tables
from .prefill import _check_q, prefill_attention_ref

DEFAULT_CONFIG = dict(BLOCK_M=64, BLOCK_N=64, STAGES=2, num_warps=4, kv_heads_per_pass=1, q_in_registers=True,
                      maxnreg=240)


# --- device code -----------------------------------------------------------------------------------------------

@gluon.jit
def _load_tile(desc, smem, bars, bt_row, j, last_page, rows_per_block, row_h, col, n_tiles,
               BLOCK_N: gl.constexpr, STAGES: gl.constexpr, PAGE: gl.constexpr, ROWS: gl.constexpr,
               NUM_WARPS: gl.constexpr):
    """K or V tile ``j`` (keys ``j * BLOCK_N ..``) into ring slot ``j % STAGES``: one TMA copy of ``ROWS`` rows per
    page (``ROWS = min(PAGE, BLOCK_N)``), all on the slot's mbarrier; no-op past ``n_tiles``. Page ids past the
    sequence's last page are clamped to it (the block table may hold anything there)."""
    slot = j % STAGES
    pred = j < n_tiles
    bar = bars.index(slot)
    dst = smem.index(slot)
    # the tile's page ids as one vector load first, held whole by every thread: the copies that follow are each
    # fenced by a CTA barrier (Triton's, for the shared mbarrier), so one id load per copy would wait in turn
    COPIES: gl.constexpr = BLOCK_N // ROWS
    ids_layout: gl.constexpr = gl.BlockedLayout([COPIES], [32], [NUM_WARPS], [0])
    offs = gl.arange(0, COPIES, layout=ids_layout)
    pos = j * BLOCK_N + offs * ROWS
    rows = gl.load(bt_row + gl.minimum(pos // PAGE, last_page)) * rows_per_block + row_h + pos % PAGE
    mbarrier.expect(bar, COPIES * desc.block_type.nbytes, pred=pred)
    for p in gl.static_range(COPIES):
        row = gl.sum(gl.where(offs == p, rows, 0), axis=0)  # element p, inside the thread
        _tma_load(desc, [row, col], bar, dst.slice(p * ROWS, ROWS), pred=pred)


@gluon.jit
def _zero_rows_from(buf, valid, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr, layout: gl.constexpr):
    """Rows ``valid ..`` of the shared-memory tile ``buf`` set to zero, visible to the next wgmma."""
    x = buf.load(layout)
    rows = gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
    x = gl.where(rows[:, None] < valid, x, gl.zeros_like(x))
    buf.store(x)
    fence_async_shared()
    _cta_barrier()


@gluon.jit
def _step(q_op, k_smem, v_smem, k_ready, v_ready, k_desc, v_desc, bt_row, j, p, m_i, l_i, acc, zero,
          last_page, rows_per_block, row_h, col, n_tiles, j_full, offs_m, offs_n, qk_scale,
          BLOCK_N: gl.constexpr, STAGES: gl.constexpr, PAGE: gl.constexpr, ROWS: gl.constexpr,
          NUM_WARPS: gl.constexpr, p_layout: gl.constexpr, o_rows: gl.constexpr):
    """Tile ``j``: QK^T(j) and PV(j-1) issued together, K's slot refilled with tile ``j + STAGES`` once QK^T(j)
    retires, the softmax of tile j under PV(j-1), then V's slot refilled with tile ``j - 1 + STAGES``."""
    slot = j % STAGES
    prev = (j - 1) % STAGES
    mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
    qk = warpgroup_mma(q_op, k_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)
    mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
    acc = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
    qk = warpgroup_mma_wait(1, deps=(qk, ))
    if NUM_WARPS > 4:  # each warpgroup waited for its own wgmma only
        _cta_barrier()
    _load_tile(k_desc, k_smem, k_ready, bt_row, j + STAGES, last_page, rows_per_block, row_h, col, n_tiles,
               BLOCK_N, STAGES, PAGE, ROWS, NUM_WARPS)
    p_next, m_i, l_i, alpha = _softmax_tile(qk, m_i, l_i, j, j_full, offs_m, offs_n, qk_scale, BLOCK_N, MASK_CHECK,
                                            p_layout, o_rows)
    acc, p = warpgroup_mma_wait(0, deps=(acc, p))
    if NUM_WARPS > 4:
        _cta_barrier()
    _load_tile(v_desc, v_smem, v_ready, bt_row, j - 1 + STAGES, last_page, rows_per_block, row_h, col, n_tiles,
               BLOCK_N, STAGES, PAGE, ROWS, NUM_WARPS)
    return p_next, m_i, l_i, acc * alpha[:, None]


@gluon.jit(do_not_specialize=["stride_bt", "batch", "q_blocks"])  # vary per step: one compile serves all
def _paged_prefill_fwd(q_desc, k_desc, v_desc, o_ptr, cu_q_ptr, kv_lens_ptr, bt_ptr, qk_scale,
                       stride_ot, stride_oh, stride_bt, batch, q_blocks, group, kv_per_pass,
                       rows_per_block, rows_per_head, cols_per_head,
                       BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
                       PAGE: gl.constexpr, Q_REGS: gl.constexpr, num_warps: gl.constexpr):
    ROWS: gl.constexpr = PAGE if PAGE < BLOCK_N else BLOCK_N
    # program -> (query head h, sequence b, its i-th heaviest query block); see the module docstring
    heads = kv_per_pass * group
    per_pass = heads * batch * q_blocks
    r = gl.program_id(0) % per_pass
    h = gl.program_id(0) // per_pass * heads + r % heads
    b = r // heads % batch
    i = r // heads // batch
    q_start = gl.load(cu_q_ptr + b)
    q_len = gl.load(cu_q_ptr + b + 1) - q_start
    if i >= gl.cdiv(q_len, BLOCK_M):
        return
    kv_len = gl.load(kv_lens_ptr + b)
    ctx = kv_len - q_len
    m0 = (gl.cdiv(q_len, BLOCK_M) - 1 - i) * BLOCK_M
    kvh = h // group
    row_h = kvh * rows_per_head
    col = kvh * cols_per_head
    last_page = (kv_len - 1) // PAGE
    n_tiles = gl.cdiv(gl.minimum(ctx + m0 + BLOCK_M, kv_len), BLOCK_N)
    j_full = (ctx + m0 + 1) // BLOCK_N  # tiles below this one are visible to every row of the block
    bt_row = bt_ptr + b.to(gl.int64) * stride_bt

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = _bars(1).index(0)
    k_ready = _bars(STAGES)
    v_ready = _bars(STAGES)
    fence_async_shared()
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    _tma_load(q_desc, [q_start + m0, h * HEAD_DIM], q_bar, q_smem)
    for t in gl.static_range(STAGES):
        _load_tile(k_desc, k_smem, k_ready, bt_row, t, last_page, rows_per_block, row_h, col, n_tiles,
                   BLOCK_N, STAGES, PAGE, ROWS, num_warps)
        _load_tile(v_desc, v_smem, v_ready, bt_row, t, last_page, rows_per_block, row_h, col, n_tiles,
                   BLOCK_N, STAGES, PAGE, ROWS, num_warps)

    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    # 16-byte rows of 8 bf16 per thread: the V fix-up and the output stores
    io_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (HEAD_DIM // 8), HEAD_DIM // 8], [num_warps, 1], [1, 0])

    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    offs_m = ctx + m0 + gl.arange(0, BLOCK_M, layout=s_rows)  # absolute key position of each query row
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, s_rows)
    l_i = gl.zeros([BLOCK_M], gl.float32, s_rows)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

    mbarrier.wait(q_bar, 0)
    if Q_REGS:  # noqa: SIM108 - a constexpr branch of the JIT, kept a statement
        q_op = q_smem.load(gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2))
    else:
        q_op = q_smem
    # tile 0: key 0 is visible to every row, so the row max is finite from here on
    mbarrier.wait(k_ready.index(0), 0)
    qk = warpgroup_mma(q_op, k_smem.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
    qk = warpgroup_mma_wait(0, deps=(qk, ))
    if num_warps > 4:
        _cta_barrier()
    _load_tile(k_desc, k_smem, k_ready, bt_row, STAGES, last_page, rows_per_block, row_h, col, n_tiles,
               BLOCK_N, STAGES, PAGE, ROWS, num_warps)
    p, m_i, l_i, alpha = _softmax_tile(qk, m_i, l_i, 0, j_full, offs_m, offs_n, qk_scale, BLOCK_N, MASK_CHECK,
                                       p_layout, o_rows)
    for j in range(1, n_tiles):
        p, m_i, l_i, acc = _step(q_op, k_smem, v_smem, k_ready, v_ready, k_desc, v_desc, bt_row, j, p, m_i, l_i,
                                 acc, zero, last_page, rows_per_block, row_h, col, n_tiles, j_full, offs_m, offs_n,
                                 qk_scale, BLOCK_N, STAGES, PAGE, ROWS, num_warps, p_layout, o_rows)
    last = (n_tiles - 1) % STAGES
    mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
    if n_tiles * BLOCK_N > kv_len:  # the last tile reaches past the keys: its V rows there may be NaN
        _zero_rows_from(v_smem.index(last), kv_len - (n_tiles - 1) * BLOCK_N, BLOCK_N, HEAD_DIM, io_layout)
    acc = warpgroup_mma(p, v_smem.index(last), acc, is_async=True)
    acc, p = warpgroup_mma_wait(0, deps=(acc, p))

    out = acc / gl.convert_layout(l_i, o_rows)[:, None]
    q_smem.store(out.to(gl.bfloat16))  # Q is no longer read: its buffer turns O into 16-byte row stores
    _cta_barrier()
    o = q_smem.load(io_layout)
    rows = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, io_layout))
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, io_layout))
    ptrs = o_ptr + (q_start + rows).to(gl.int64)[:, None] * stride_ot + h * stride_oh + cols[None, :]
    gl.store(ptrs, o, mask=rows[:, None] < q_len)


# --- host side -------------------------------------------------------------------------------------------------

def smem_bytes(cfg: dict, head_dim: int = 128) -> int:
    """Shared memory of a config: the Q/O tile, the K and V rings (bf16) and the 8-byte mbarriers."""
    return 2 * (cfg["BLOCK_M"] * head_dim + 2 * cfg["STAGES"] * cfg["BLOCK_N"] * head_dim) + 8 * (1 + 2 * cfg["STAGES"])


def check_config(cfg: dict, head_dim: int = 128, block_size: int = 16) -> None:
    """Raise ValueError for a config the kernel cannot run with ``block_size``-token pages."""
    if cfg["num_warps"] not in (4, 8):
        raise ValueError(f"num_warps {cfg['num_warps']}: the kernel is 1 or 2 warpgroups (4 or 8)")
    if cfg["BLOCK_M"] < 16 * cfg["num_warps"] or cfg["BLOCK_M"] % 64:
        raise ValueError(f"BLOCK_M {cfg['BLOCK_M']} needs a multiple of 64 with 16 rows per warp "
                         f"({cfg['num_warps']} warps)")
    if cfg["BLOCK_N"] not in (32, 64, 128, 256) or not 1 <= cfg["STAGES"] <= 8:
        raise ValueError(f"BLOCK_N {cfg['BLOCK_N']} / STAGES {cfg['STAGES']}: expected 32-256 and 1-8")
    if block_size < 8 or block_size & (block_size - 1):
        # a page's rows land at a row slice of the swizzled ring slot: whole 8-row swizzle atoms only
        raise ValueError(f"block_size {block_size}: expected a power of two >= 8")
    kv = cfg.get("kv_heads_per_pass", 0)
    if not isinstance(kv, int) or isinstance(kv, bool) or kv < 0:
        raise ValueError(f"kv_heads_per_pass {kv!r}: expected an int >= 0 (0: all KV heads in one pass)")
    if not isinstance(cfg.get("q_in_registers", False), bool):
        raise ValueError(f"q_in_registers {cfg['q_in_registers']!r}: expected a bool")
    unknown = set(cfg) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}: expected {sorted(DEFAULT_CONFIG)}")
    if smem_bytes(cfg, head_dim) > SMEM_LIMIT_BYTES:
        raise ValueError(f"config {cfg} needs {smem_bytes(cfg, head_dim)} B of shared memory "
                         f"(limit {SMEM_LIMIT_BYTES})")


def cache_rows(k_cache: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """The cache as a 2-D ``[rows, row_elems]`` view for TMA and where (page, head) starts in it: ``(view,
    rows_per_block, rows_per_head, cols_per_head)``; slot ``t`` of page ``p``, head ``h`` is row ``p *
    rows_per_block + h * rows_per_head + t``, column ``h * cols_per_head``. Takes the token-major layout (rows of
    ``Hkv * D``) and the head-major one (rows of ``D``) as ``allocate_kv_cache`` makes them."""
    nb, bs, hkv, d = k_cache.shape
    if k_cache.is_contiguous():
        return k_cache.view(nb * bs, hkv * d), bs, 0, d
    if k_cache.transpose(1, 2).is_contiguous():
        return k_cache.transpose(1, 2).reshape(nb * hkv * bs, d), hkv * bs, bs, 0
    raise ValueError(f"the cache must be dense, token-major or head-major (allocate_kv_cache), got strides "
                     f"{k_cache.stride()}")


def _check_inputs(q, k_cache, v_cache, block_tables, cu_seqlens_q, kv_lens, k_scale, v_scale):
    _, block_size, hkv, d = check_cache(k_cache, v_cache)
    if k_cache.dtype != torch.bfloat16 or k_scale is not None or v_scale is not None:
        raise ValueError(f"the Gluon paged kernel takes a bfloat16 cache without scales, got {k_cache.dtype} "
                         "(fp8 KV: use prefill.py's prefill_attention)")
    if d not in (64, 128):
        raise ValueError(f"head_dim {d}: expected 64 or 128")
    batch = _check_q(q, cu_seqlens_q, hkv, d)
    if q.dtype != torch.bfloat16:
        raise ValueError(f"q must be bfloat16, got {q.dtype}")
    if q.stride(1) != d or q.stride(0) % 8:  # rows of a 2-D TMA view: heads packed, 16-byte row pitch
        raise ValueError(f"q must have its heads packed (strides (8k, {d}, 1)), got strides {q.stride()}")
    check_tables(block_tables, kv_lens, batch)
    return batch, block_size, hkv, d


def _constexprs(cfg: dict, head_dim: int, block_size: int) -> dict:
    return dict(BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], HEAD_DIM=head_dim, STAGES=cfg["STAGES"],
                PAGE=block_size, Q_REGS=cfg.get("q_in_registers", False))


def _layouts(cfg: dict, head_dim: int, block_size: int):
    """Shared layouts of the Q/O tile and of a K/V ring slot; a page's TMA box uses the slot's layout (the same
    128-byte swizzle for any row count >= 8), so its copy lands in a row slice of the slot."""
    q_layout = gl.NVMMASharedLayout.get_default_for([cfg["BLOCK_M"], head_dim], gl.bfloat16)
    kv_layout = gl.NVMMASharedLayout.get_default_for([cfg["BLOCK_N"], head_dim], gl.bfloat16)
    return q_layout, kv_layout, min(block_size, cfg["BLOCK_N"])


def gluon_paged_prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor, max_q_len: int | None = None,
    sm_scale: float | None = None, k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None, config: dict | None = None,
) -> torch.Tensor:
    """:func:`prefill_attention`'s call in Gluon: causal attention of packed queries over the paged cache, each
    sequence's queries the last ``q_len`` of its ``kv_lens`` keys; returns ``[total_q, num_q_heads, head_dim]``.

    bf16 only (an fp8 cache or scales raise ValueError). ``config``: ``BLOCK_M``, ``BLOCK_N``, ``STAGES``,
    ``num_warps``, ``kv_heads_per_pass`` (0: all), ``q_in_registers``, ``maxnreg``; missing keys come from
    ``DEFAULT_CONFIG``. Pass ``max_q_len`` to avoid a device sync.
    """
    batch, block_size, hkv, d = _check_inputs(q, k_cache, v_cache, block_tables, cu_seqlens_q, kv_lens, k_scale,
                                              v_scale)
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    check_config(cfg, d, block_size)
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(2) != 1:
        raise ValueError(f"out must match q {tuple(q.shape)} {q.dtype}, got {tuple(out.shape)} {out.dtype}")
    if max_q_len is None:
        max_q_len = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max().item())
    if q.shape[0] == 0 or max_q_len == 0:
        return out
    hq = q.shape[1]
    kv_per_pass = cfg["kv_heads_per_pass"] or hkv
    if hkv % kv_per_pass:
        raise ValueError(f"kv_heads_per_pass {kv_per_pass} does not divide num_kv_heads {hkv}")
    sm_scale = 1.0 / math.sqrt(d) if sm_scale is None else sm_scale
    q_layout, kv_layout, rows = _layouts(cfg, d, block_size)
    q_desc = TensorDescriptor(q, [q.shape[0], hq * d], [q.stride(0), 1], [cfg["BLOCK_M"], d], q_layout)
    k_rows, rows_per_block, rows_per_head, cols_per_head = cache_rows(k_cache)
    k_desc = TensorDescriptor.from_tensor(k_rows, [rows, d], kv_layout)
    v_desc = TensorDescriptor.from_tensor(cache_rows(v_cache)[0], [rows, d], kv_layout)
    q_blocks = triton.cdiv(max_q_len, cfg["BLOCK_M"])
    launch = dict(num_warps=cfg["num_warps"], **({"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}))
    _paged_prefill_fwd[(hq * batch * q_blocks, )](
        q_desc, k_desc, v_desc, out, cu_seqlens_q, kv_lens, block_tables, sm_scale * LOG2E,
        out.stride(0), out.stride(1), block_tables.stride(0), batch, q_blocks, hq // hkv, kv_per_pass,
        rows_per_block, rows_per_head, cols_per_head, **_constexprs(cfg, d, block_size), **launch)
    return out


ARGS = ["q_desc", "k_desc", "v_desc", "o_ptr", "cu_q_ptr", "kv_lens_ptr", "bt_ptr", "qk_scale", "stride_ot",
        "stride_oh", "stride_bt", "batch", "q_blocks", "group", "kv_per_pass", "rows_per_block", "rows_per_head",
        "cols_per_head"]


def compile_sm90(config: dict | None = None, head_dim: int = 128, block_size: int = 16):
    """Compile the kernel of ``config`` for sm_90 without a GPU (``triton.compile``), specialised as a launch on
    the engine's shapes would be: 16-byte aligned pointers, output strides multiples of 16, one head-major-free
    token-major cache. Returns the ``CompiledKernel``."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    cfg = {**DEFAULT_CONFIG, **(config or {})}
    check_config(cfg, head_dim, block_size)
    q_layout, kv_layout, rows = _layouts(cfg, head_dim, block_size)
    types = {"q_desc": f"tensordesc<bf16[{cfg['BLOCK_M']},{head_dim}],{q_layout!r}>",
             "k_desc": f"tensordesc<bf16[{rows},{head_dim}],{kv_layout!r}>",
             "v_desc": f"tensordesc<bf16[{rows},{head_dim}],{kv_layout!r}>",
             "o_ptr": "*bf16", "cu_q_ptr": "*i32", "kv_lens_ptr": "*i32", "bt_ptr": "*i32", "qk_scale": "fp32"}
    constexprs = dict(**_constexprs(cfg, head_dim, block_size), num_warps=cfg["num_warps"])
    signature = {a: types.get(a, "i32") for a in ARGS} | {n: "constexpr" for n in constexprs}
    aligned = ["o_ptr", "cu_q_ptr", "kv_lens_ptr", "bt_ptr", "stride_ot", "stride_oh", "rows_per_block"]
    attrs = {(ARGS.index(a), ): [["tt.divisibility", 16]] for a in aligned}
    options = dict(num_warps=cfg["num_warps"], **({"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}))
    source = GluonASTSource(_paged_prefill_fwd, signature, constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def gluon_paged_prefill_ref(q, k_cache, v_cache, block_tables, cu_seqlens_q, kv_lens, sm_scale=None):
    """float32 torch reference of :func:`gluon_paged_prefill_attention`: the gathered pages of each sequence,
    explicit masked softmax (``prefill.py``'s reference)."""
    return prefill_attention_ref(q, k_cache, v_cache, block_tables, cu_seqlens_q, kv_lens, sm_scale)
