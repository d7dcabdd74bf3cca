"""The paged, varlen Gluon prefill (``servesim.kernels.attention.gluon_paged_prefill``, issue 17).

On the CPU: the float32 reference against SDPA on ragged batches with context (pages shuffled, NaN in every slot
past ``kv_len``, garbage in unused block-table entries), the 2-D cache view the TMA copies address, the config
and input checks, and a compile for sm_90 in a child process (``TRITON_INTERPRET=0``; the interpreter cannot run
Gluon). On an sm_90 GPU (marker ``gpu``): the kernel against the reference on the same kind of batches, output
poisoned with NaN first.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton.experimental.gluon")

from servesim.kernels.attention import gluon_paged_prefill as gpp  # noqa: E402
from servesim.kernels.attention.kv_cache import interpreting  # noqa: E402
from servesim.kernels.attention.prefill import prefill_attention_ref  # noqa: E402

GARBAGE_PAGE = 2**30  # unused block-table entries: a page id far past the cache


def batch(q_lens, ctxs, hq=8, hkv=2, d=64, block_size=16, head_major=False, device="cpu", dtype=torch.float32,
          seed=0):
    """A ragged batch: packed ``q``, each sequence's contiguous ``k, v`` (context then chunk), and the same K/V
    in a paged cache with shuffled pages, NaN in every slot no sequence owns."""
    gen = torch.Generator(device=device).manual_seed(seed)
    kv_lens = [q + c for q, c in zip(q_lens, ctxs, strict=True)]
    q = torch.randn(sum(q_lens), hq, d, generator=gen, device=device).to(dtype)
    ks = [torch.randn(n, hkv, d, generator=gen, device=device).to(dtype) for n in kv_lens]
    vs = [torch.randn(n, hkv, d, generator=gen, device=device).to(dtype) for n in kv_lens]
    pages = [-(-n // block_size) for n in kv_lens]
    total = sum(pages) + 3  # three pages nobody owns
    shape = (total, hkv, block_size, d) if head_major else (total, block_size, hkv, d)
    caches = [torch.full(shape, float("nan"), device=device, dtype=dtype) for _ in range(2)]
    if head_major:
        caches = [c.transpose(1, 2) for c in caches]
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).to(device)
    tables = torch.full((len(q_lens), max(pages) + 2), GARBAGE_PAGE, dtype=torch.int32, device=device)
    first = 0
    for s, n in enumerate(kv_lens):
        ids = perm[first:first + pages[s]]
        tables[s, :pages[s]] = ids.int()
        pos = torch.arange(n, device=device)
        for cache, x in zip(caches, (ks[s], vs[s]), strict=True):
            cache[ids[pos // block_size], pos % block_size] = x
        first += pages[s]
    cu = torch.tensor([0, *itertools.accumulate(q_lens)], dtype=torch.int32, device=device)
    lens = torch.tensor(kv_lens, dtype=torch.int32, device=device)
    return q, ks, vs, (*caches, tables, cu, lens)


RAGGED = ([1, 37, 64, 130, 17], [0, 50, 3, 200, 0])


def sdpa_with_context(q, k, v):
    """Per-sequence SDPA with the bottom-right causal mask (query i sees keys <= kv_len - q_len + i)."""
    group = q.shape[1] // k.shape[1]
    lq, lk = q.shape[0], k.shape[0]
    mask = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.repeat_interleave(group, 1).transpose(0, 1),
        v.repeat_interleave(group, 1).transpose(0, 1), attn_mask=mask)
    return out.transpose(0, 1)


@pytest.mark.parametrize("block_size, head_major", [(16, False), (16, True), (8, False), (128, False)])
def test_reference_is_sdpa_with_context_on_ragged_batches(block_size, head_major):
    q, ks, vs, paged = batch(*RAGGED, block_size=block_size, head_major=head_major)
    ref = gpp.gluon_paged_prefill_ref(q, *paged)
    assert not ref.isnan().any()  # NaN slots and garbage page ids are never read
    torch.testing.assert_close(ref, prefill_attention_ref(q, *paged), atol=0, rtol=0)
    cu = paged[3].tolist()
    for s, (k, v) in enumerate(zip(ks, vs, strict=True)):
        torch.testing.assert_close(ref[cu[s]:cu[s + 1]], sdpa_with_context(q[cu[s]:cu[s + 1]], k, v),
                                   atol=1e-5, rtol=1e-5)
    # closed forms: a one-token prompt sees its own key only; a chunk's last query sees every key, unmasked
    torch.testing.assert_close(ref[0], vs[0][0].repeat_interleave(4, 0))
    last = cu[2] - 1
    k, v = ks[1].repeat_interleave(4, 1), vs[1].repeat_interleave(4, 1)
    scores = torch.einsum("hd,khd->hk", q[last], k) / 8.0
    torch.testing.assert_close(ref[last], torch.einsum("hk,khd->hd", scores.softmax(-1), v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_major", [False, True])
def test_cache_rows_address_every_page_slot_and_head(head_major):
    *_, (k_cache, _, _, _, _) = batch([5], [40], hkv=3, block_size=16, head_major=head_major)
    view, per_block, per_head, cols = gpp.cache_rows(k_cache)
    assert view.data_ptr() == k_cache.data_ptr()
    d = k_cache.shape[3]
    for page, slot, head in [(0, 0, 0), (1, 5, 2), (3, 15, 1), (k_cache.shape[0] - 1, 9, 2)]:
        row = page * per_block + head * per_head + slot
        torch.testing.assert_close(view[row, head * cols:head * cols + d], k_cache[page, slot, head],
                                   equal_nan=True)


def test_cache_rows_refuses_a_sparse_cache():
    cache = torch.zeros(4, 16, 4, 64)[:, :, :2]
    with pytest.raises(ValueError, match="dense"):
        gpp.cache_rows(cache)


@pytest.mark.parametrize("cfg, block_size, match", [
    (dict(BLOCK_M=64, num_warps=8), 16, "16 rows per warp"),
    (dict(num_warps=2), 16, "warpgroups"),
    (dict(BLOCK_N=48), 16, "BLOCK_N"),
    (dict(STAGES=0), 16, "STAGES"),
    (dict(BLOCK_N=256, STAGES=4), 16, "shared memory"),
    (dict(kv_heads_per_pass=-1), 16, "kv_heads_per_pass"),
    (dict(kv_heads_per_pass=True), 16, "kv_heads_per_pass"),
    (dict(q_in_registers=1), 16, "q_in_registers"),
    (dict(variant="ws"), 16, "unknown config keys"),
    ({}, 4, "block_size 4"),
    ({}, 24, "block_size 24"),
])
def test_bad_configs_are_refused(cfg, block_size, match):
    with pytest.raises(ValueError, match=match):
        gpp.check_config({**gpp.DEFAULT_CONFIG, **cfg}, 128, block_size)


def test_default_config_is_round_two_best_and_fits_two_per_sm():
    best = dict(BLOCK_M=64, BLOCK_N=64, STAGES=2, num_warps=4, kv_heads_per_pass=1, q_in_registers=True, maxnreg=240)
    assert best == gpp.DEFAULT_CONFIG
    assert gpp.smem_bytes(gpp.DEFAULT_CONFIG) == 2 * (64 * 128 + 4 * 64 * 128) + 8 * 5 <= 113 * 1024


def _bf16(q, paged):
    k_cache, v_cache, *rest = paged
    return q.bfloat16(), (k_cache.bfloat16(), v_cache.bfloat16(), *rest)


@pytest.mark.parametrize("bad, match", [
    (lambda q, p: (q, (p[0].to(torch.float8_e4m3fn), p[1].to(torch.float8_e4m3fn), *p[2:])), "fp8 KV"),
    (lambda q, p: (q.half(), p), "bfloat16"),
    (lambda q, p: (q.transpose(0, 1).contiguous().transpose(0, 1), p), "heads packed"),
    (lambda q, p: (q[:, :7], p), "multiple of num_kv_heads"),
    (lambda q, p: (q[..., :32].contiguous(), (p[0][..., :32].contiguous(), p[1][..., :32].contiguous(), *p[2:])),
     "head_dim 32"),
    (lambda q, p: (q, (*p[:2], p[2].long(), *p[3:])), "block_tables"),
    (lambda q, p: (q, (*p[:4], p[4][:-1])), "kv_lens"),
    (lambda q, p: (q, (*p[:3], p[3].long(), p[4])), "cu_seqlens_q"),
])
def test_bad_inputs_are_refused_before_launch(bad, match):
    q, _, _, paged = batch(*RAGGED)
    q, paged = bad(*_bf16(q, paged))
    with pytest.raises(ValueError, match=match):
        gpp.gluon_paged_prefill_attention(q, *paged, max_q_len=130)


def test_scales_and_bad_tile_order_are_refused():
    q, _, _, paged = batch(*RAGGED)
    q, paged = _bf16(q, paged)
    one = torch.ones(2)
    with pytest.raises(ValueError, match="without scales"):
        gpp.gluon_paged_prefill_attention(q, *paged, max_q_len=130, k_scale=one, v_scale=one)
    with pytest.raises(ValueError, match="does not divide num_kv_heads 2"):
        gpp.gluon_paged_prefill_attention(q, *paged, max_q_len=130, config=dict(kv_heads_per_pass=3))


def test_empty_batch_returns_without_launch():
    q, _, _, paged = batch([0, 0], [5, 0])
    q, paged = _bf16(q, paged)
    assert gpp.gluon_paged_prefill_attention(q, *paged, max_q_len=0).shape == (0, 8, 64)


COMPILE = """
import json
from servesim.kernels.attention import gluon_paged_prefill as gpp
out = []
for cfg, head_dim, block_size in json.loads({jobs!r}):
    kernel = gpp.compile_sm90(cfg, head_dim, block_size)
    ptx = kernel.asm["ptx"]
    out.append(dict(shared=kernel.metadata.shared, tma=ptx.count("cp.async.bulk.tensor.2d.shared"),
                    wgmma=ptx.count("wgmma.mma_async"), wait1="wgmma.wait_group.sync.aligned 1" in ptx,
                    **gpp.ptxas_usage(kernel)))
print(json.dumps(out))
"""

DEFAULT = gpp.DEFAULT_CONFIG
COMPILED = [  # (config, head_dim, block_size)
    (DEFAULT, 128, 16),                                                   # the engine's shape
    (DEFAULT, 64, 16),
    (DEFAULT, 128, 128),                                                  # a tile inside one page
    ({**DEFAULT, "STAGES": 3, "kv_heads_per_pass": 0}, 128, 32),
    ({**DEFAULT, "q_in_registers": False, "maxnreg": None}, 128, 16),
    (dict(BLOCK_M=128, BLOCK_N=64, STAGES=2, num_warps=8, kv_heads_per_pass=1, q_in_registers=False,
          maxnreg=168), 128, 16),
]


@pytest.fixture(scope="module")
def compiled():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-c", COMPILE.format(jobs=json.dumps(COMPILED))], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_compiles_for_sm90_without_spills(compiled):
    for got, (cfg, head_dim, _) in zip(compiled, COMPILED, strict=True):
        assert got["spill_stores"] == got["spill_loads"] == 0, (cfg, got)
        assert 0 < got["registers"] <= (cfg.get("maxnreg") or 255), (cfg, got)
        assert gpp.smem_bytes(cfg, head_dim) <= got["shared"] <= gpp.smem_bytes(cfg, head_dim) + 256
        assert got["wait1"]  # PV(j-1) stays in flight under the softmax of tile j


def test_one_tma_copy_per_page(compiled):
    # Q once; K and V: STAGES tiles up front, K's tile STAGES after tile 0, then K and V in the loop body
    for got, (cfg, _, block_size) in zip(compiled, COMPILED, strict=True):
        copies = cfg["BLOCK_N"] // min(block_size, cfg["BLOCK_N"])
        assert got["tma"] == 1 + copies * (2 * cfg["STAGES"] + 3), (cfg, block_size, got)


def test_default_holds_two_programs_per_sm(compiled):
    assert compiled[0]["shared"] <= 113 * 1024 and compiled[0]["registers"] * 128 * 2 <= 65536


needs_sm90 = pytest.mark.skipif(not torch.cuda.is_available() or interpreting()
                                or torch.cuda.get_device_capability()[0] != 9, reason="needs an sm_90 GPU")

GPU_CONFIGS = {
    "default": DEFAULT,
    "s3-allheads": {**DEFAULT, "STAGES": 3, "kv_heads_per_pass": 0},
    "qsmem": {**DEFAULT, "q_in_registers": False, "maxnreg": None},
    "128x64-w8": COMPILED[-1][0],
}
GPU_BATCHES = {
    "ragged": ([1, 37, 64, 200, 1000, 129], [0, 0, 100, 1000, 17, 2048]),
    "single4k": ([4096], [0]),
    "chunk-after-4k": ([2048], [4096]),
}


def _check(q, paged, cfg, **kwargs):
    out = torch.full_like(q, float("nan"))
    gpp.gluon_paged_prefill_attention(q, *paged, config=cfg, out=out, **kwargs)
    ref = gpp.gluon_paged_prefill_ref(q, *paged)
    assert not out.isnan().any()
    err = (out.float() - ref).abs()
    assert err.max().item() < 2e-2, err.max().item()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("shape", GPU_BATCHES)
@pytest.mark.parametrize("cfg", GPU_CONFIGS)
def test_matches_reference_gpu(cfg, shape):
    q, _, _, paged = batch(*GPU_BATCHES[shape], hq=32, hkv=8, d=128, device="cuda", dtype=torch.bfloat16)
    _check(q, paged, GPU_CONFIGS[cfg])


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("hq, hkv, d, block_size, head_major", [
    (32, 8, 128, 16, True), (32, 8, 128, 32, False), (32, 8, 128, 128, False), (8, 8, 64, 16, False),
    (28, 4, 128, 8, False),
])
def test_layouts_and_page_sizes_gpu(hq, hkv, d, block_size, head_major):
    q, _, _, paged = batch(*GPU_BATCHES["ragged"], hq=hq, hkv=hkv, d=d, block_size=block_size,
                           head_major=head_major, device="cuda", dtype=torch.bfloat16)
    _check(q, paged, DEFAULT, max_q_len=1000)


@pytest.mark.gpu
@needs_sm90
def test_q_as_a_slice_of_fused_qkv_gpu():
    q, _, _, paged = batch(*GPU_BATCHES["ragged"], hq=32, hkv=8, d=128, device="cuda", dtype=torch.bfloat16)
    qkv = torch.randn(q.shape[0], 48, 128, device="cuda", dtype=torch.bfloat16)
    qkv[:, :32] = q
    _check(qkv[:, :32], paged, DEFAULT)
