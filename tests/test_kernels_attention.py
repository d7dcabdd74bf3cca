"""Paged attention kernels vs their float32 torch references.

CPU cases run the Triton interpreter at tiny shapes (ragged lengths, lengths crossing block boundaries,
chunked prefill with context, GQA 1/4/8, head_dim 64/128, block size 16/32, bf16/fp16). GPU cases
(marker ``gpu``) use realistic shapes. Every output is poisoned with NaN before the kernel runs.
"""

from __future__ import annotations

import pytest
import torch

from servesim.kernels.attention import (
    DECODE_CONFIGS,
    allocate_kv_cache,
    choose_num_splits,
    decode_attention,
    decode_attention_ref,
    decode_bytes,
    decode_flops,
    prefill_attention,
    prefill_attention_contiguous,
    prefill_attention_contiguous_ref,
    prefill_attention_ref,
    prefill_bytes,
    prefill_flops,
    write_kv,
    write_kv_ref,
)
from servesim.kernels.attention.kv_cache import interpreting
from servesim.kernels.counters import SplitCounters, sm_count

SMALL = dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)  # many tiles at tiny lengths
SMALL_DECODE = dict(BLOCK_N=16, num_warps=4, num_stages=1)
FP8 = torch.float8_e4m3fn


def device() -> str:
    return "cpu" if interpreting() else "cuda"


def check_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """All elements written (finite) and within dtype bounds of the float32 reference."""
    out = out.float()
    assert torch.isfinite(out).all(), "unwritten (NaN-poisoned) or non-finite output elements"
    rel = ((out - ref).norm() / ref.norm()).item()
    worst = (out - ref).abs().max().item()
    rel_max, abs_max = {torch.bfloat16: (1e-2, 4e-2), torch.float16: (2e-3, 8e-3)}[dtype]
    assert rel < rel_max and worst < abs_max, f"rel {rel:.2e} max abs {worst:.2e}"


def paged_setup(gen, kv_lens, num_kv_heads, head_dim, block_size, dtype, head_major=False, spare=3):
    """A cache filled with random K/V, scattered into a shuffled set of blocks; returns cache and tables."""
    dev = device()
    blocks = [-(-n // block_size) for n in kv_lens]
    num_blocks = sum(blocks) + spare
    cache_dtype = torch.bfloat16 if dtype == FP8 else dtype
    k_cache, v_cache = allocate_kv_cache(num_blocks, block_size, num_kv_heads, head_dim, cache_dtype, dev,
                                         head_major)
    k_cache.copy_(torch.randn(k_cache.shape, generator=gen).to(cache_dtype))
    v_cache.copy_(torch.randn(v_cache.shape, generator=gen).to(cache_dtype))
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.full((len(kv_lens), max(blocks) + 1), 10**6, dtype=torch.int32)  # unused entries: junk
    for s, nb in enumerate(blocks):
        tables[s, :nb] = torch.tensor([perm.pop() for _ in range(nb)], dtype=torch.int32)
    scales = None
    if dtype == FP8:  # quantize with torch; the kernels only read it
        k_scale = torch.rand(num_kv_heads, generator=gen).add(2).div(100).to(dev)  # |x|/scale stays < 448
        v_scale = torch.rand(num_kv_heads, generator=gen).add(2).div(100).to(dev)
        k8, v8 = allocate_kv_cache(num_blocks, block_size, num_kv_heads, head_dim, FP8, dev, head_major)
        k8.copy_((k_cache.float() / k_scale[None, None, :, None]).to(FP8))
        v8.copy_((v_cache.float() / v_scale[None, None, :, None]).to(FP8))
        k_cache, v_cache, scales = k8, v8, (k_scale, v_scale)
    return k_cache, v_cache, tables.to(dev), scales


def int32(xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.int32, device=device())


def cumsum0(xs) -> torch.Tensor:
    return int32([0] + torch.tensor(xs).cumsum(0).tolist())


def run_prefill(q_lens, ctx_lens, num_kv_heads, group, head_dim, block_size, dtype, config,
                head_major=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kv_lens = [q + c for q, c in zip(q_lens, ctx_lens, strict=True)]
    k_cache, v_cache, tables, scales = paged_setup(gen, kv_lens, num_kv_heads, head_dim, block_size, dtype,
                                                   head_major)
    q_dtype = torch.bfloat16 if dtype == FP8 else dtype
    q = torch.randn(sum(q_lens), num_kv_heads * group, head_dim, generator=gen).to(q_dtype).to(device())
    cu, kv = cumsum0(q_lens), int32(kv_lens)
    ks, vs = scales or (None, None)
    out = torch.full_like(q, float("nan"))
    prefill_attention(q, k_cache, v_cache, tables, cu, kv, max(q_lens), k_scale=ks, v_scale=vs, out=out,
                      config=config)
    ref = prefill_attention_ref(q, k_cache, v_cache, tables, cu, kv, k_scale=ks, v_scale=vs)
    check_close(out, ref, q_dtype)


def run_decode(kv_lens, num_q, num_kv_heads, group, head_dim, block_size, dtype, num_splits, config,
               head_major=False, seed=0, max_kv_len=None, split_per_seq=False):
    gen = torch.Generator().manual_seed(seed)
    kv_lens = [max(n, num_q) for n in kv_lens]  # the n new tokens are in the cache already
    k_cache, v_cache, tables, scales = paged_setup(gen, kv_lens, num_kv_heads, head_dim, block_size, dtype,
                                                   head_major)
    q_dtype = torch.bfloat16 if dtype == FP8 else dtype
    shape = (len(kv_lens), num_kv_heads * group, head_dim)
    if num_q > 1:
        shape = (len(kv_lens), num_q, num_kv_heads * group, head_dim)
    q = torch.randn(shape, generator=gen).to(q_dtype).to(device())
    kv = int32(kv_lens)
    ks, vs = scales or (None, None)
    max_kv_len = max_kv_len or max(kv_lens)
    splits = num_splits or choose_num_splits(len(kv_lens), num_kv_heads, max_kv_len, sm_count(q.device))
    nan = float("nan")
    out = torch.full_like(q, nan)
    ws_shape = (len(kv_lens), num_q, num_kv_heads * group, splits, head_dim)
    workspace = (torch.full(ws_shape, nan, device=q.device), torch.full(ws_shape[:-1], nan, device=q.device))
    decode_attention(q, k_cache, v_cache, tables, kv, max_kv_len, k_scale=ks, v_scale=vs, num_splits=splits,
                     out=out, workspace=workspace if splits > 1 else None, config=config, split_per_seq=split_per_seq)
    check_close(out, decode_attention_ref(q, k_cache, v_cache, tables, kv, k_scale=ks, v_scale=vs), q_dtype)


cpu = pytest.mark.skipif(not interpreting(), reason="interpreter cases (TRITON_INTERPRET=1)")
gpu = pytest.mark.gpu


# --- CPU, interpreter -------------------------------------------------------------------------------------

@cpu
@pytest.mark.parametrize("q_lens, ctx_lens, kv_heads, group, head_dim, block_size, dtype, config", [
    ([5, 17, 33], [0, 20, 7], 2, 1, 64, 16, torch.bfloat16, None),  # default tiles, one of them partial
    ([1, 16, 31], [15, 0, 33], 2, 4, 64, 16, torch.float16, SMALL),  # many tiles: diagonal + off-diagonal
    ([9, 40], [23, 0], 1, 8, 128, 32, torch.bfloat16, SMALL),
    ([24, 3], [0, 45], 2, 4, 128, 32, torch.float16, SMALL),
])
def test_prefill_paged_interpreter(q_lens, ctx_lens, kv_heads, group, head_dim, block_size, dtype, config):
    run_prefill(q_lens, ctx_lens, kv_heads, group, head_dim, block_size, dtype, config)


@cpu
def test_prefill_head_major_cache_and_fp8_interpreter():
    run_prefill([7, 19], [18, 0], 2, 4, 64, 16, torch.bfloat16, SMALL, head_major=True)
    run_prefill([7, 19], [18, 0], 2, 4, 64, 16, FP8, SMALL, seed=1)


@cpu
@pytest.mark.parametrize("block_size, config", [(24, SMALL), (16, dict(SMALL, BLOCK_N=32))])
def test_prefill_and_decode_odd_pages_and_unaligned_strides_interpreter(block_size, config):
    """Page size 24 takes the per-row page-id path; a cache whose rows are padded to 72 elements (strides not
    multiples of 16) takes the page-id vector path without the alignment hint."""
    gen = torch.Generator().manual_seed(13)
    q_lens, kv_lens = [9, 30], [50, 30]
    k_cache, v_cache, tables, _ = paged_setup(gen, kv_lens, 1, 64, block_size, torch.bfloat16)
    if block_size == 16:  # same values, rows 72 elements apart
        pad = [torch.zeros(*k_cache.shape[:3], 72, dtype=torch.bfloat16) for _ in range(2)]
        pad[0][..., :64], pad[1][..., :64] = k_cache, v_cache
        k_cache, v_cache = pad[0][..., :64], pad[1][..., :64]
        assert k_cache.stride(1) % 16
    q = torch.randn(sum(q_lens), 4, 64, generator=gen).to(torch.bfloat16)
    cu, kv = cumsum0(q_lens), int32(kv_lens)
    out = torch.full_like(q, float("nan"))
    prefill_attention(q, k_cache, v_cache, tables, cu, kv, max(q_lens), out=out, config=config)
    check_close(out, prefill_attention_ref(q, k_cache, v_cache, tables, cu, kv), torch.bfloat16)
    qd = torch.randn(2, 4, 64, generator=gen).to(torch.bfloat16)
    out = torch.full_like(qd, float("nan"))
    decode_attention(qd, k_cache, v_cache, tables, kv, max(kv_lens), num_splits=2, out=out,
                     config=dict(SMALL_DECODE, BLOCK_N=config["BLOCK_N"]))
    check_close(out, decode_attention_ref(qd, k_cache, v_cache, tables, kv), torch.bfloat16)


@cpu
@pytest.mark.parametrize("dtype, group, head_dim, config", [
    (torch.bfloat16, 4, 64, SMALL), (torch.float16, 1, 128, None), (torch.float16, 4, 64, {**SMALL, "TMA": True})])
def test_prefill_contiguous_interpreter(dtype, group, head_dim, config):
    gen = torch.Generator().manual_seed(3)
    q_lens, kv_lens = [13, 1, 35], [13, 30, 40]  # prompts, and chunks with context before them
    q = torch.randn(sum(q_lens), 2 * group, head_dim, generator=gen).to(dtype)
    k = torch.randn(sum(kv_lens), 2, head_dim, generator=gen).to(dtype)
    v = torch.randn(sum(kv_lens), 2, head_dim, generator=gen).to(dtype)
    cu_q, cu_k = cumsum0(q_lens), cumsum0(kv_lens)
    out = torch.full_like(q, float("nan"))
    prefill_attention_contiguous(q, k, v, cu_q, cu_k, out=out, config=config)
    check_close(out, prefill_attention_contiguous_ref(q, k, v, cu_q, cu_k), dtype)


@cpu
@pytest.mark.parametrize("kv_lens, num_q, kv_heads, group, head_dim, block_size, dtype, splits", [
    ([1, 16, 17, 50], 1, 2, 4, 64, 16, torch.bfloat16, 1),
    ([1, 16, 17, 50], 1, 2, 4, 64, 16, torch.bfloat16, 3),  # split 1+ of short sequences is empty
    ([33, 64, 5], 4, 1, 8, 128, 32, torch.float16, 2),  # speculative: 4 tokens, causal among them
    ([40, 7], 3, 2, 1, 64, 32, torch.float16, None),
    ([70, 31], 1, 1, 4, 128, 16, FP8, 2),
])
def test_decode_interpreter(kv_lens, num_q, kv_heads, group, head_dim, block_size, dtype, splits):
    run_decode(kv_lens, num_q, kv_heads, group, head_dim, block_size, dtype, splits, SMALL_DECODE)


@cpu
@pytest.mark.parametrize("kv_lens, num_q, group, splits", [
    ([300, 40, 1], 1, 4, 20),  # merge walks 2 chunks of 16 splits; most splits of short sequences empty
    ([130, 9], 4, 4, 7),  # 16 merge rows (4 tokens x GQA 4): chunks of 4 splits
])
def test_decode_fused_merge_is_deterministic_and_resets_counters_interpreter(kv_lens, num_q, group, splits):
    gen = torch.Generator().manual_seed(9)
    k_cache, v_cache, tables, _ = paged_setup(gen, kv_lens, 2, 64, 16, torch.bfloat16)
    shape = (len(kv_lens), num_q, 2 * group, 64) if num_q > 1 else (len(kv_lens), 2 * group, 64)
    q = torch.randn(shape, generator=gen).to(torch.bfloat16)
    kv = int32(kv_lens)
    counters = SplitCounters("cpu")  # the caller's state, reused by both launches
    outs = []
    for _ in range(2):  # the second launch finds the counters reset by the first
        out = torch.full_like(q, float("nan"))
        ws = (len(kv_lens), num_q, 2 * group, splits, 64)
        workspace = (torch.full(ws, float("nan")), torch.full(ws[:-1], float("nan")))
        decode_attention(q, k_cache, v_cache, tables, kv, max(kv_lens), num_splits=splits, out=out,
                         workspace=workspace, config=SMALL_DECODE, counters=counters)
        taken = counters.take(2 * len(kv_lens))
        assert torch.equal(taken, torch.zeros_like(taken))
        outs.append(out)
    check_close(outs[0], decode_attention_ref(q, k_cache, v_cache, tables, kv), torch.bfloat16)
    assert torch.equal(outs[0], outs[1])


@cpu
@pytest.mark.parametrize("max_kv_len, splits", [(None, 4), (4000, 4), (20, 4), (None, 1)])
def test_decode_split_range_from_max_kv_len_interpreter(max_kv_len, splits):
    """Splits cut the longest context (max_kv_len: passed, or measured), not each sequence's own: sequences
    of 1 and 3 keys next to 70 leave most of their splits empty; an upper bound far above every length (as
    a captured graph passes) puts all keys in split 0; a max_kv_len below a real length (20 < 70) still
    covers every key, the last split taking the rest."""
    run_decode([70, 1, 3, 33], 1, 2, 4, 64, 16, torch.bfloat16, splits, SMALL_DECODE, max_kv_len=max_kv_len)
    run_decode([70, 1, 3, 33], 3, 1, 4, 64, 16, torch.float16, splits, SMALL_DECODE, max_kv_len=max_kv_len)


@cpu
@pytest.mark.parametrize("max_kv_len, splits", [(None, 4), (4000, 4), (20, 3), (512, 2), (None, 1)])
def test_decode_split_per_sequence_interpreter(max_kv_len, splits):
    """split_per_seq cuts each sequence's own keys (a graph passes its bucket as max_kv_len): lengths of 1, 3,
    33 and 70 keys over splits of whole tiles, some splits empty, with the bound loose, tight or too small."""
    run_decode([70, 1, 3, 33], 1, 2, 4, 64, 16, torch.bfloat16, splits, SMALL_DECODE, max_kv_len=max_kv_len,
               split_per_seq=True)
    run_decode([70, 1, 3, 33], 3, 1, 4, 64, 16, torch.float16, splits, SMALL_DECODE, max_kv_len=max_kv_len,
               split_per_seq=True)
    run_decode([130, 7], 1, 2, 2, 64, 16, FP8, splits, SMALL_DECODE, max_kv_len=max_kv_len, split_per_seq=True)


@cpu
def test_decode_default_config_and_head_major_interpreter():
    run_decode([90, 3], 1, 2, 4, 64, 16, torch.bfloat16, 2, None, head_major=True)


@cpu
@pytest.mark.parametrize("block_size, head_major", [(16, False), (32, True)])
def test_write_kv_interpreter(block_size, head_major):
    gen = torch.Generator().manual_seed(5)
    num_tokens, heads, dim = 40, 3, 64  # 3 heads: the kernel pads heads to a power of two
    k_cache, v_cache = allocate_kv_cache(6, block_size, heads, dim, torch.bfloat16, "cpu", head_major)
    k_cache.fill_(float("nan"))
    v_cache.fill_(float("nan"))
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    slots = torch.randperm(6 * block_size, generator=gen)[:num_tokens]
    slots[::7] = -1  # padding tokens are skipped
    key = torch.randn(num_tokens, heads, dim, generator=gen).to(torch.bfloat16)
    value = torch.randn(num_tokens, heads, dim, generator=gen).to(torch.bfloat16)
    write_kv(key, value, k_cache, v_cache, slots)
    write_kv_ref(key, value, ref_k, ref_v, slots)
    for got, ref in ((k_cache, ref_k), (v_cache, ref_v)):
        assert torch.equal(got.isnan(), ref.isnan())  # exactly the mapped slots were written
        assert torch.equal(got.nan_to_num(), ref.nan_to_num())


@cpu
def test_launchers_name_the_problem():
    k_cache, v_cache = allocate_kv_cache(4, 16, 2, 64, torch.bfloat16, "cpu")
    tables, kv = torch.zeros(1, 4, dtype=torch.int32), torch.tensor([10], dtype=torch.int32)
    q = torch.randn(10, 6, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        prefill_attention(q[:, :3], k_cache, v_cache, tables, torch.tensor([0, 10], dtype=torch.int32), kv)
    with pytest.raises(ValueError, match="kv_lens must be int32"):
        decode_attention(q[:1, :4], k_cache, v_cache, tables, kv.long())
    with pytest.raises(ValueError, match="k_scale"):
        decode_attention(q[:1, :4], k_cache.to(FP8), v_cache.to(FP8), tables, kv)
    with pytest.raises(ValueError, match="slot_mapping must be int64"):
        write_kv(q[:, :2], q[:, :2], k_cache, v_cache, torch.zeros(10, dtype=torch.int32))


# --- helpers: closed forms and invariants ---------------------------------------------------------------

def test_flops_and_bytes_closed_forms():
    s, h, d = 4096, 32, 128
    assert prefill_flops([s], [s], h, d) == 4 * h * d * s * (s + 1) // 2
    assert prefill_flops([s], [s], h, d, causal=False) == 4 * h * d * s * s
    # a chunk of 100 after 900 cached tokens does the rows 900..999 of the full causal square
    assert prefill_flops([100], [1000], h, d) == prefill_flops([1000], [1000], h, d) - prefill_flops(
        [900], [900], h, d)
    assert decode_flops([1000, 17], h, d) == prefill_flops([1, 1], [1000, 17], h, d)
    assert decode_flops([1000], h, d, num_q_tokens=5) == prefill_flops([5], [1000], h, d)
    assert decode_bytes([1000, 24], 8, 128) == 2 * 1024 * 8 * 128 * 2
    assert decode_bytes([10], 8, 128, kv_dtype_bytes=1, num_q_heads=32) == 2 * 10 * 8 * 128 + 2 * 32 * 128 * 2
    assert prefill_bytes([10], [30], 32, 8, 128) == 2 * 10 * 32 * 128 * 2 + 2 * 30 * 8 * 128 * 2


@pytest.mark.parametrize("batch, ctx", [(1, 100), (1, 8192), (1, 32768), (4, 16384), (64, 1024), (512, 4096)])
def test_split_count_fills_the_gpu_without_tiny_splits(batch, ctx):
    splits = choose_num_splits(batch, 8, ctx, num_sms=132)
    assert splits >= 1
    assert splits == 1 or ctx // splits >= 256  # each split keeps enough keys to be worth a program
    if ctx >= 256 * 64:  # long enough to split freely: at least a wave of programs
        assert batch * 8 * splits >= 132


# --- GPU, realistic shapes --------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or interpreting(), reason="needs a CUDA GPU")


@gpu
@needs_cuda
@pytest.mark.parametrize("kv_heads, group, head_dim, block_size, dtype", [
    (8, 4, 128, 16, torch.bfloat16), (4, 8, 128, 32, torch.float16), (8, 1, 64, 16, torch.bfloat16),
    (2, 4, 64, 16, torch.float16), (8, 4, 128, 16, FP8)])
def test_prefill_paged_gpu(kv_heads, group, head_dim, block_size, dtype):
    run_prefill([1000, 2048, 77, 1], [0, 512, 3001, 4000], kv_heads, group, head_dim, block_size, dtype, None)


@gpu
@needs_cuda
def test_prefill_contiguous_and_head_major_gpu():
    gen = torch.Generator().manual_seed(7)
    q_lens = [3000, 1024, 5]
    q = torch.randn(sum(q_lens), 32, 128, generator=gen).to(torch.bfloat16).cuda()
    k = torch.randn(sum(q_lens), 8, 128, generator=gen).to(torch.bfloat16).cuda()
    v = torch.randn(sum(q_lens), 8, 128, generator=gen).to(torch.bfloat16).cuda()
    cu = cumsum0(q_lens)
    for config in (None, dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, TMA=True)):
        out = torch.full_like(q, float("nan"))
        prefill_attention_contiguous(q, k, v, cu, cu, out=out, config=config)
        check_close(out, prefill_attention_contiguous_ref(q, k, v, cu, cu), torch.bfloat16)
    run_prefill([700, 33], [100, 2000], 8, 4, 128, 16, torch.bfloat16, None, head_major=True)


@gpu
@needs_cuda
@pytest.mark.parametrize("kv_lens, num_q, group, head_dim, block_size, dtype, splits", [
    ([9000, 1, 4097, 300, 16, 17, 2048], 1, 4, 128, 16, torch.bfloat16, None),
    ([9000, 1, 4097, 300, 16, 17, 2048], 4, 4, 128, 16, torch.bfloat16, None),
    ([20000], 1, 8, 128, 32, torch.float16, None),
    ([5000] * 40, 1, 1, 64, 16, torch.bfloat16, 1),
    ([5000, 123], 2, 4, 64, 16, torch.float16, 7),
    ([9000, 1, 4097, 300], 1, 4, 128, 16, FP8, None),
])
def test_decode_gpu(kv_lens, num_q, group, head_dim, block_size, dtype, splits):
    run_decode(kv_lens, num_q, 8, group, head_dim, block_size, dtype, splits, None)
    run_decode(kv_lens[:2], num_q, 8, group, head_dim, block_size, dtype, splits, None, head_major=True)


@gpu
@needs_cuda
@pytest.mark.parametrize("prefetch", [0, 1, 4])
@pytest.mark.parametrize("max_kv_len", [None, 16384, 100])
def test_decode_prefetch_and_max_kv_len_gpu(prefetch, max_kv_len):
    """The L2 prefetch of each split's first tiles (rows past kv_len, and past the split, are skipped) with
    ragged lengths down to 1 key, under a tight, a loose (graph-style upper bound) and a too-small max_kv_len."""
    config = dict(DECODE_CONFIGS[128], PREFETCH=prefetch)
    for dtype in (torch.bfloat16, FP8):
        run_decode([9000, 1, 3, 300, 4097], 1, 8, 4, 128, 16, dtype, None, config, max_kv_len=max_kv_len)
    run_decode([5000, 17], 4, 8, 4, 128, 32, torch.bfloat16, 7, config, max_kv_len=max_kv_len, head_major=True)
    run_decode([9000, 1, 3, 300, 4097], 1, 8, 4, 128, 16, torch.bfloat16, 2, config, max_kv_len=max_kv_len,
               split_per_seq=True)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, FP8])
def test_write_kv_gpu(dtype):
    gen = torch.Generator().manual_seed(11)
    k_cache, v_cache = allocate_kv_cache(64, 16, 8, 128, dtype, "cuda")
    k_cache.view(torch.uint8).fill_(0x7F)  # poison bytes: unwritten slots must keep them
    v_cache.view(torch.uint8).fill_(0x7F)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    slots = torch.randperm(64 * 16, generator=gen)[:777].cuda()
    slots[::5] = -1
    key = torch.randn(777, 8, 128, generator=gen).to(torch.bfloat16).cuda()
    value = torch.randn(777, 8, 128, generator=gen).to(torch.bfloat16).cuda()
    scales = ()
    if dtype == FP8:
        scales = (torch.full((8,), 0.01, device="cuda"), torch.full((8,), 0.02, device="cuda"))
    write_kv(key, value, k_cache, v_cache, slots, *scales)
    write_kv_ref(key, value, ref_k, ref_v, slots, *scales)
    assert torch.equal(k_cache.view(torch.uint8), ref_k.view(torch.uint8))
    assert torch.equal(v_cache.view(torch.uint8), ref_v.view(torch.uint8))
