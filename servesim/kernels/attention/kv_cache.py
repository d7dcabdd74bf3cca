"""Paged KV cache: the layout every attention kernel reads, and the kernel that writes new K/V into it.

Layout (the engine allocates it with :func:`allocate_kv_cache`):

* ``k_cache``, ``v_cache``: ``[num_blocks, block_size, num_kv_heads, head_dim]`` views. Block ``b`` holds
  the K (V) of ``block_size`` consecutive token positions of one sequence. The kernels only need
  ``head_dim`` to be contiguous (stride 1); every other stride is passed to the kernel, so the same code
  reads a *head-major* cache (storage ``[num_blocks, num_kv_heads, block_size, head_dim]``, exposed as the
  permuted view above), in which one head's block is one contiguous ``block_size * head_dim`` run.
* ``block_tables``: int32 ``[batch, max_blocks_per_seq]``; entry ``[s, i]`` is the cache block that holds
  positions ``i*block_size .. (i+1)*block_size - 1`` of sequence ``s``. Unused entries may hold anything
  (they are never read).
* ``slot_mapping``: int64 ``[num_tokens]``; token ``t`` goes to slot ``block * block_size + offset``.
  A negative slot means "skip this token" (padding), as in vLLM.
* fp8 caches: ``float8_e4m3fn`` storage with one float32 scale per KV head for K and one for V
  (``k_scale``/``v_scale``, shape ``[num_kv_heads]``); stored value = real value / scale.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

FP8_E4M3_MAX = 448.0


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, whose ``tl.dot`` multiplies bf16 bit patterns as integers (3.9)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def aligned(*strides: int) -> bool:
    """True when every element stride is a multiple of 16, so row starts keep 16-byte vector alignment."""
    return all(s % 16 == 0 for s in strides)


@triton.jit
def dot(a, b, acc, UPCAST: tl.constexpr):
    """``tl.dot(a, b, acc)``; with UPCAST the operands go through float32 (interpreter work-around only)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, k_scale_ptr, v_scale_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_cs, stride_ch,
    num_kv_heads, block_size,
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, FP8: tl.constexpr,
):
    # One program per token: all heads of its K and V row, one store each.
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t)
    if slot >= 0:
        blk = slot // block_size
        off = slot % block_size
        h = tl.arange(0, BLOCK_H)
        d = tl.arange(0, HEAD_DIM)
        mask = (h < num_kv_heads)[:, None]
        k = tl.load(k_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
        v = tl.load(v_ptr + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
        dst = blk * stride_cb + off * stride_cs + h[:, None] * stride_ch + d[None, :]
        if FP8:
            ks = tl.load(k_scale_ptr + h, mask=h < num_kv_heads, other=1.0)
            vs = tl.load(v_scale_ptr + h, mask=h < num_kv_heads, other=1.0)
            # IEEE division, like the torch reference, so the fp8 codes match bit for bit
            k = tl.clamp(tl.div_rn(k.to(tl.float32), ks[:, None]), -448.0, 448.0)
            v = tl.clamp(tl.div_rn(v.to(tl.float32), vs[:, None]), -448.0, 448.0)
        tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, int, int, int]:
    """Validate a K/V cache pair; return ``(num_blocks, block_size, num_kv_heads, head_dim)``."""
    if k_cache.dim() != 4:
        raise ValueError(
            f"k_cache must be [num_blocks, block_size, num_kv_heads, head_dim], got {tuple(k_cache.shape)}")
    if k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError(f"k_cache {tuple(k_cache.shape)}/{k_cache.stride()} and v_cache "
                         f"{tuple(v_cache.shape)}/{v_cache.stride()} differ in shape or strides")
    if k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache is {k_cache.dtype} but v_cache is {v_cache.dtype}")
    if k_cache.stride(3) != 1:
        raise ValueError(f"the cache's head_dim must be contiguous (stride 1), got {k_cache.stride(3)}")
    head_dim = k_cache.shape[3]
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two in [16, 256], got {head_dim}")
    return tuple(k_cache.shape)  # type: ignore[return-value]


def check_tables(block_tables: torch.Tensor, kv_lens: torch.Tensor, batch: int) -> None:
    """Validate the paged launch's block tables (int32 ``[batch, max_blocks]``) and key counts (int32 ``[batch]``)."""
    if block_tables.dim() != 2 or block_tables.shape[0] != batch or block_tables.dtype != torch.int32:
        raise ValueError(f"block_tables must be int32 [{batch}, max_blocks], got {block_tables.dtype} "
                         f"{tuple(block_tables.shape)}")
    if kv_lens.shape != (batch,) or kv_lens.dtype != torch.int32:
        raise ValueError(f"kv_lens must be int32 [{batch}], got {kv_lens.dtype} {tuple(kv_lens.shape)}")


def check_scales(k_cache: torch.Tensor, k_scale, v_scale) -> bool:
    """Return True for an fp8 cache (after checking its per-head scales), False for bf16/fp16."""
    if k_cache.dtype != torch.float8_e4m3fn:
        if k_scale is not None or v_scale is not None:
            raise ValueError(f"k_scale/v_scale only apply to a float8_e4m3fn cache, not {k_cache.dtype}")
        return False
    num_kv_heads = k_cache.shape[2]
    for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if s is None or s.shape != (num_kv_heads,) or s.dtype != torch.float32:
            got = None if s is None else (tuple(s.shape), s.dtype)
            raise ValueError(f"an fp8 cache needs {name} float32 [{num_kv_heads}] (per KV head), got {got}")
    return True


def allocate_kv_cache(
    num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
    dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cuda", head_major: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate (uninitialised) K and V caches as ``[num_blocks, block_size, num_kv_heads, head_dim]`` views.

    ``head_major=True`` stores each head's block contiguously (see the module docstring); the kernels
    accept either because they read strides.
    """
    def one() -> torch.Tensor:
        if head_major:
            return torch.empty(num_blocks, num_kv_heads, block_size, head_dim, dtype=dtype,
                               device=device).transpose(1, 2)
        return torch.empty(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, device=device)
    return one(), one()


def write_kv(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
) -> None:
    """Scatter ``key``/``value`` ``[num_tokens, num_kv_heads, head_dim]`` into the paged cache in place."""
    _, block_size, num_kv_heads, head_dim = check_cache(k_cache, v_cache)
    fp8 = check_scales(k_cache, k_scale, v_scale)
    want = (key.shape[0], num_kv_heads, head_dim)
    if key.shape != want or value.shape != want:
        raise ValueError(f"key/value must be [num_tokens, {num_kv_heads}, {head_dim}] to match the cache, "
                         f"got {tuple(key.shape)} and {tuple(value.shape)}")
    if key.stride(2) != 1 or value.stride(2) != 1:
        raise ValueError("key/value head_dim must be contiguous (stride 1)")
    if slot_mapping.shape != (key.shape[0],) or slot_mapping.dtype != torch.int64:
        raise ValueError(f"slot_mapping must be int64 [{key.shape[0]}], got {slot_mapping.dtype} "
                         f"{tuple(slot_mapping.shape)}")
    if key.shape[0] == 0:
        return
    dummy = slot_mapping  # unused pointer when not fp8
    _write_kv_kernel[(key.shape[0],)](
        key, value, k_cache, v_cache, slot_mapping,
        k_scale if fp8 else dummy, v_scale if fp8 else dummy,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_kv_heads, block_size,
        HEAD_DIM=head_dim, BLOCK_H=triton.next_power_of_2(num_kv_heads), FP8=fp8,
    )


def write_kv_ref(key, value, k_cache, v_cache, slot_mapping, k_scale=None, v_scale=None) -> None:
    """Torch reference of :func:`write_kv` (in place)."""
    block_size = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    blk, off = slots // block_size, slots % block_size
    k, v = key[keep].float(), value[keep].float()
    if k_cache.dtype == torch.float8_e4m3fn:
        k = (k / k_scale[None, :, None]).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
        v = (v / v_scale[None, :, None]).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    k_cache[blk, off] = k.to(k_cache.dtype)
    v_cache[blk, off] = v.to(v_cache.dtype)


def gather_kv_ref(k_cache, v_cache, block_table_row, kv_len: int, k_scale=None, v_scale=None):
    """One sequence's K and V as float32 ``[kv_len, num_kv_heads, head_dim]`` (dequantized if fp8)."""
    block_size = k_cache.shape[1]
    pos = torch.arange(kv_len, device=k_cache.device)
    blk = block_table_row.long()[pos // block_size]
    k, v = k_cache[blk, pos % block_size].float(), v_cache[blk, pos % block_size].float()
    if k_scale is not None:
        k, v = k * k_scale[None, :, None], v * v_scale[None, :, None]
    return k, v


def write_kv_bytes(num_tokens: int, num_kv_heads: int, head_dim: int, in_bytes: int = 2,
                   cache_bytes: int = 2) -> int:
    """Bytes moved by :func:`write_kv`: read K and V once, write them once (slot ids are negligible)."""
    return 2 * num_tokens * num_kv_heads * head_dim * (in_bytes + cache_bytes)
