"""The Gluon prefill attention experiment (``servesim.kernels.attention.gluon_prefill``, issue 17).

On the CPU: the float32 reference against SDPA's math, the config and input checks, and a compile of both
variants for sm_90 (Triton compiles Gluon without a GPU; the interpreter cannot run it, so the compile runs in a
child process with ``TRITON_INTERPRET=0``). On an sm_90 GPU (marker ``gpu``): every variant against the reference
at S = 128, 1000 (ragged against every tile) and 4096, output poisoned with NaN first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton.experimental.gluon")

from servesim.kernels.attention import gluon_prefill as gp  # noqa: E402
from servesim.kernels.attention.kv_cache import interpreting  # noqa: E402

HQ, HKV, D = 32, 8, 128
GPU_CONFIGS = [  # both variants, one and two consumer warpgroups, both tile widths
    dict(variant="ws", BLOCK_M=128, BLOCK_N=128, STAGES=2, num_warps=8, maxnreg=168),
    dict(variant="ws", BLOCK_M=64, BLOCK_N=64, STAGES=4, num_warps=4),
    dict(variant="pipelined", BLOCK_M=128, BLOCK_N=64, STAGES=3, num_warps=8),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=128, STAGES=2, num_warps=4),
    # round 2: tile order by KV head, diagonal loop split off, BLOCK_N 32 (two diagonal tiles per block)
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4, kv_heads_per_pass=1),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=32, STAGES=3, num_warps=4, kv_heads_per_pass=2, split_diag=True),
    dict(variant="ws", BLOCK_M=64, BLOCK_N=64, STAGES=2, num_warps=4, kv_heads_per_pass=1, split_diag=True),
]


def _inputs(s: int, hq: int = HQ, hkv: int = HKV, d: int = D, device: str = "cpu", dtype=torch.bfloat16):
    gen = torch.Generator(device=device).manual_seed(s)
    return [torch.randn(s, h, d, generator=gen, device=device, dtype=dtype) for h in (hq, hkv, hkv)]


@pytest.mark.parametrize("s, hq, hkv", [(1, 4, 4), (37, 4, 2), (130, 8, 2)])
def test_reference_is_causal_gqa_sdpa(s, hq, hkv):
    q, k, v = _inputs(s, hq, hkv, 64, dtype=torch.float32)
    group = hq // hkv
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.repeat_interleave(group, 1).transpose(0, 1), v.repeat_interleave(group, 1).transpose(0, 1),
        is_causal=True).transpose(0, 1)
    torch.testing.assert_close(gp.gluon_prefill_ref(q, k, v), sdpa, atol=1e-5, rtol=1e-5)
    # row 0 sees key 0 only
    torch.testing.assert_close(gp.gluon_prefill_ref(q, k, v)[0], v[0].repeat_interleave(group, 0))


def test_flops_formula():
    assert gp.causal_flops(4096, 32, 128) == 4 * 4096 * 4096 / 2 * 128 * 32


@pytest.mark.parametrize("cfg, match", [
    (dict(variant="tma"), "variant"),
    (dict(BLOCK_M=64, num_warps=8), "16 rows per warp"),
    (dict(num_warps=12), "warpgroups"),
    (dict(BLOCK_N=48), "BLOCK_N"),
    (dict(BLOCK_M=128, BLOCK_N=128, STAGES=4), "shared memory"),
    (dict(kv_heads_per_pass=-1), "kv_heads_per_pass"),
    (dict(kv_heads_per_pass="2"), "kv_heads_per_pass"),
    (dict(kv_heads_per_pass=True), "kv_heads_per_pass"),
    (dict(split_diag=1), "split_diag"),
])
def test_bad_configs_are_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        gp.check_config({**gp.DEFAULT_CONFIG, **cfg})


def test_smem_estimate_and_largest_config_fits():
    cfg = dict(variant="ws", BLOCK_M=128, BLOCK_N=128, STAGES=3, num_warps=8)
    assert gp.smem_bytes(cfg) == 2 * (128 * 128 + 6 * 128 * 128) + 8 * 13
    assert gp.smem_bytes({**cfg, "variant": "pipelined"}) == gp.smem_bytes(cfg) - 8 * 6
    gp.check_config(cfg)  # 224 KiB of tiles: fits the 227 KiB opt-in limit


@pytest.mark.parametrize("bad, match", [
    (lambda q, k, v: (q.float(), k, v), "bfloat16"),
    (lambda q, k, v: (q.transpose(1, 2), k, v), "expected q"),
    (lambda q, k, v: (q[:, :, :96].contiguous(), k[:, :, :96].contiguous(), v[:, :, :96].contiguous()), "head_dim"),
    (lambda q, k, v: (q[:, :30].contiguous(), k, v), "multiple"),
    (lambda q, k, v: (q, k.transpose(0, 1).contiguous().transpose(0, 1), v), "contiguous"),
])
def test_bad_inputs_are_refused_before_launch(bad, match):
    q, k, v = bad(*_inputs(16))
    with pytest.raises(ValueError, match=match):
        gp.gluon_prefill_attention(q, k, v)


def test_tile_order_must_divide_the_kv_heads():
    with pytest.raises(ValueError, match="does not divide num_kv_heads 8"):
        gp.gluon_prefill_attention(*_inputs(16), config=dict(kv_heads_per_pass=3))


COMPILE = """
import json
from servesim.kernels.attention import gluon_prefill as gp
out = []
for cfg in json.loads({cfgs!r}):
    kernel = gp.compile_sm90(cfg)
    ptx = kernel.asm["ptx"]
    out.append(dict(shared=kernel.metadata.shared, setmaxnreg="setmaxnreg" in ptx, wgmma=ptx.count("wgmma.mma_async"),
                    wait1="wgmma.wait_group.sync.aligned 1" in ptx, cubin=len(kernel.asm["cubin"]),
                    **gp.ptxas_usage(kernel)))
print(json.dumps(out))
"""


ROUND1_BEST = dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4)
COMPILED = [ROUND1_BEST, gp.DEFAULT_CONFIG,
            {**ROUND1_BEST, "kv_heads_per_pass": 1, "split_diag": True},
            dict(variant="ws", BLOCK_M=64, BLOCK_N=32, STAGES=3, num_warps=4, kv_heads_per_pass=2, split_diag=True)]


@pytest.fixture(scope="module")
def compiled():
    """COMPILED built for sm_90 in a child process (the interpreter cannot compile Gluon)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-c", COMPILE.format(cfgs=json.dumps(COMPILED))], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_both_variants_compile_for_sm90_without_a_gpu(compiled):
    for got, cfg in zip(compiled, COMPILED):
        assert got["cubin"] > 0 and got["wgmma"] > 0
        assert got["wait1"]  # PV(j-1) stays in flight while the softmax of tile j runs
        assert gp.smem_bytes(cfg) <= got["shared"] <= min(gp.smem_bytes(cfg) + 256, gp.SMEM_LIMIT_BYTES)
        assert got["spill_stores"] == got["spill_loads"] == 0 and 0 < got["registers"] <= 168
    pipelined, ws, _, ws_split = compiled
    assert ws["setmaxnreg"] and ws_split["setmaxnreg"] and not pipelined["setmaxnreg"]  # producer / consumer


def test_split_diagonal_compiles_a_second_loop(compiled):
    # full tiles and diagonal tiles each get their own copy of the loop body (its QK^T and PV wgmma)
    plain, split = compiled[0], compiled[2]
    assert split["wgmma"] > plain["wgmma"]


needs_sm90 = pytest.mark.skipif(not torch.cuda.is_available() or interpreting()
                                or torch.cuda.get_device_capability()[0] != 9, reason="needs an sm_90 GPU")


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("s", [128, 1000, 4096])
@pytest.mark.parametrize("cfg", GPU_CONFIGS, ids="{variant}-{BLOCK_M}x{BLOCK_N}-s{STAGES}-w{num_warps}".format_map)
def test_gluon_prefill_matches_reference_gpu(s, cfg):
    q, k, v = _inputs(s, device="cuda")
    out = torch.full_like(q, float("nan"))
    gp.gluon_prefill_attention(q, k, v, config=cfg, out=out)
    ref = gp.gluon_prefill_ref(q, k, v)
    assert not out.isnan().any()
    err = (out.float() - ref).abs()
    assert err.max().item() < 2e-2, err.max().item()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
