"""Roofline cost model: hot path equals the breakdown, decode runs equal repeated steps, closed forms.

The closed forms read the shipped prior's parameters (catalog/prior.yaml) rather than pinning seconds: the prior
is refitted by bench/fit_prior.py, and these tests hold the cost model to its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servesim.errors import ConfigError
from servesim.hwmodels.cost import CostModel
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import MODELS
from servesim.hwmodels.ops import BatchShape, decode_shape, prefill_shape
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.prior import prior_for, soft

H100 = get_gpu("H100-SXM")
CONFIGS = [
    ("Llama-3.1-8B", "H100-SXM", 1, 1, "bf16", "bf16"),
    ("Llama-3.1-70B", "H100-SXM", 4, 1, "fp8", "fp8"),
    ("Mixtral-8x7B", "A100-80GB-SXM", 2, 1, "w4a16", "bf16"),
    ("Qwen2.5-7B", "L4", 1, 2, "w8a16", "int8"),
    ("Llama-3.1-70B", "H100-PCIe", 16, 3, "bf16", "bf16"),
    ("Llama-3.1-8B", "A40", 2, 1, "bf16", "bf16"),
    ("Llama-3.1-8B", "H200", 2, 1, "w4a16,attn=bf16,first:2=bf16,last:2=w8a8", "fp8"),  # mixed precision
    ("DeepSeek-V2-Lite", "H100-SXM", 1, 1, "w8a8,first:3=bf16", "bf16"),  # MLA + MoE, two kv_up shares
    ("Qwen2.5-7B", "A100-80GB-SXM", 2, 1, "w8a8", "int8"),
]
MODES = ("custom", "nccl")


def _random_shape(rng: np.random.Generator) -> BatchShape:
    n_pre, n_dec = int(rng.integers(0, 4)), int(rng.integers(0, 64))
    chunks, ctx = rng.integers(1, 2048, n_pre), rng.integers(0, 4096, n_pre)
    dctx, k = rng.integers(1, 8192, n_dec), int(rng.integers(0, 4))
    return BatchShape(
        prefill_seqs=n_pre,
        prefill_tokens=int(chunks.sum()),
        prefill_attn_pairs=float((chunks * ctx + chunks * (chunks + 1) / 2).sum()),
        prefill_ctx_tokens=int((chunks + ctx).sum()),
        decode_seqs=n_dec,
        decode_query_tokens=n_dec * (1 + k),
        decode_ctx_tokens=int(dctx.sum()),
        sampled_tokens=int(rng.integers(0, n_pre + 1)) + n_dec * (1 + k),
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_hot_path_equals_breakdown(cfg, mode):
    model, gpu, tp, pp, wf, kv = cfg
    cm = CostModel(Placement(MODELS[model], get_gpu(gpu), tp, pp, wf, kv), allreduce=mode)
    rng = np.random.default_rng(7)
    for _ in range(300):
        shape = _random_shape(rng)
        assert cm.step_time_s(shape) == pytest.approx(cm.step_time(shape).total_s, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_decode_run_equals_repeated_steps(cfg, mode):
    model, gpu, tp, pp, wf, kv = cfg
    cm = CostModel(Placement(MODELS[model], get_gpu(gpu), tp, pp, wf, kv), allreduce=mode)
    for batch, ctx, spec in ((1, 10, 0), (37, 3000, 0), (8, 500, 3), (256, 100, 0)):
        shape = decode_shape(batch, ctx, spec)
        run = cm.decode_run_s(shape, 500)
        steps = []
        for i in range(500):
            s = BatchShape(
                decode_seqs=batch,
                decode_query_tokens=shape.decode_query_tokens,
                decode_ctx_tokens=shape.decode_ctx_tokens + i * batch,
                sampled_tokens=shape.sampled_tokens,
            )
            steps.append(cm.step_time_s(s))
        np.testing.assert_array_equal(run, steps)  # bit for bit: the simulator fast-forwards on it
        assert np.all(np.diff(run) >= 0)  # longer contexts never decode faster


def _gemm_s(prior, flops, nbytes, shape, gpu=H100):
    """One GEMM launch of ``shape`` (M, N) from the prior's closed form: floor + soft(compute · wave^β, memory),
    wave = the least, over the candidate tiles, of the work of whole waves of that tile over the work asked, times
    (the largest tile's area / its area)^γ."""
    k = prior.kernel("gemm")
    rows, cols = shape
    biggest = max(tm * tn for tm, tn in k.tiles)
    wave = min(math.ceil(math.ceil(rows / tm) * math.ceil(cols / tn) / gpu.sm_count) * gpu.sm_count * tm * tn
               / (rows * cols) * (biggest / (tm * tn)) ** k.tile_penalty for tm, tn in k.tiles) ** k.wave_exponent
    a, m = flops / (gpu.peak_flops_per_s("bf16") * k.eff_compute), nbytes / (gpu.hbm_bytes_per_s * k.eff_memory)
    return k.floor_s + soft(a * wave, m, k.sharpness), a, m


def test_decode_batch1_is_weight_bandwidth_bound():
    m = MODELS["Llama-3.1-8B"]
    cm = CostModel(Placement(m, H100), overhead_s=0.0)
    k = cm.prior.kernel("gemm")
    st = cm.step_time(decode_shape(1, 1))
    # every GEMM streams its weights: (non-embedding weights) / (HBM · memory efficiency), plus one floor per launch
    layer_weights = 32 * 2 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336)
    gemm_s = sum(st.op_s[k] for k in ("qkv", "o", "gate_up", "down"))
    # (within 2%: the compute term's share, at one token counted in whole 128-row tiles by the wave term)
    assert gemm_s == pytest.approx(layer_weights / (3.35e12 * k.eff_memory) + 4 * 32 * k.floor_s, rel=2e-2)
    assert all(st.bound[k] == "memory" for k in ("qkv", "o", "gate_up", "down", "lm_head"))
    assert st.bound["attn_decode"] == "floor"  # one key of context: the kernel's fixed cost is all there is


def test_long_prefill_is_compute_bound():
    cm = CostModel(Placement(MODELS["Llama-3.1-8B"], H100))
    st = cm.step_time(prefill_shape(8192))
    assert st.bound["gate_up"] == "compute" and st.bound["attn_prefill"] == "compute"
    flops, nbytes = 2 * 8192 * 4096 * 28672, 4096 * 28672 * 2 + 8192 * (4096 + 28672) * 2
    t, a, _ = _gemm_s(cm.prior, flops, nbytes, (8192, 28672))
    assert st.op_s["gate_up"] == pytest.approx(32 * t)
    assert 32 * a < st.op_s["gate_up"] < 1.15 * 32 * a  # the memory term adds a little, smoothly
    assert st.total_s == pytest.approx(st.overhead_s + sum(st.op_s.values()))


def test_small_shards_pay_the_floor():
    """Per-kernel floors: at one token a TP8 shard is much slower than its bytes say (the issue's 0.56-0.69 ratio
    of the bytes-only roofline), and the floor is the reported bound of a small enough kernel."""
    m = MODELS["Llama-3.1-8B"]
    one, eight = (CostModel(Placement(m, H100, tp=tp), overhead_s=0.0).step_time(decode_shape(1, 16))
                  for tp in (1, 8))
    k = prior_for(H100).kernel("gemm")
    bytes_only = one.op_s["o"] / 8 - 32 * k.floor_s / 8
    assert eight.op_s["o"] > 1.8 * bytes_only  # 4096x512 weights: 1.3 µs of bytes, ~5 µs of floor
    assert eight.op_s["o"] == pytest.approx(32 * _gemm_s(cm_prior := prior_for(H100), 2 * 512 * 4096,
                                                         512 * 4096 * 2 + (512 + 4096) * 2, (1, 4096))[0])
    assert cm_prior.family == "hopper"


def test_quantized_gemms_use_their_own_kernel_prior():
    """W4A16/W8A16 GEMMs are priced with the dequantizing kernels' prior (floors, efficiencies), not bf16's."""
    m = MODELS["Llama-3.1-8B"]
    prior = prior_for(H100)
    for fmt, nbytes in (("w4a16", 4096 * 4096 / 2 + 4096 * 32 * 2.5), ("w8a16", 4096 * 4096 + 4096 * 2)):
        st = CostModel(Placement(m, H100, weight_format=fmt), overhead_s=0.0).step_time(decode_shape(1, 16))
        k = prior.kernel(f"gemm_{fmt}")
        a = 2 * 4096 * 4096 / (H100.peak_flops_per_s("bf16") * k.eff_compute)
        mem = (nbytes + (4096 + 4096) * 2) / (H100.hbm_bytes_per_s * k.eff_memory)
        assert st.op_s["o"] == pytest.approx(32 * (k.floor_s + soft(a, mem, k.sharpness)), rel=1e-9)
    assert prior.kernel("gemm_w4a16") != prior.kernel("gemm")


def test_tp_adds_allreduce_and_shrinks_weights():
    m = MODELS["Llama-3.1-70B"]
    tp4 = CostModel(Placement(m, H100, tp=4)).step_time(decode_shape(1, 1000))
    tp8 = CostModel(Placement(m, H100, tp=8)).step_time(decode_shape(1, 1000))
    k = prior_for(H100).kernel("gemm")
    # weights halve; the compute term's small share does not quite (the wave term: half the column tiles)
    assert tp8.op_s["gate_up"] - 80 * k.floor_s == pytest.approx((tp4.op_s["gate_up"] - 80 * k.floor_s) / 2, rel=5e-3)
    # 160 all-reduces of 8192 bf16 values, each GPU moving 2·(3/4) of it: latency dominates
    prior, call_bytes, link = prior_for(H100), 2 * 0.75 * 8192 * 2, 450e9
    custom, nccl = (prior.allreduce[mode].latency_s + call_bytes / (link * prior.allreduce[mode].eff) for mode in MODES)
    assert tp4.op_s["allreduce"] == pytest.approx(160 * min(custom, nccl))
    eager = CostModel(Placement(m, H100, tp=4), allreduce="nccl").step_time(decode_shape(1, 1000))
    assert eager.op_s["allreduce"] == pytest.approx(160 * nccl)
    assert eager.op_s["allreduce"] > 3 * tp4.op_s["allreduce"]  # eager NCCL: 25-50 µs per call, custom ~5 µs
    # large messages (a 4k-token prefill: 48 MiB per call) take NCCL's line in both modes
    big = [CostModel(Placement(m, H100, tp=4), allreduce=mode).step_time(prefill_shape(4096)).op_s["allreduce"]
           for mode in MODES]
    assert big[0] == pytest.approx(big[1])


def test_pipeline_stage_and_transfer():
    m = MODELS["Llama-3.1-8B"]
    shape = decode_shape(8, 1000)
    one, two = CostModel(Placement(m, H100)).step_time(shape), CostModel(Placement(m, H100, pp=2)).step_time(shape)
    assert two.op_s["qkv"] == pytest.approx(one.op_s["qkv"] / 2)
    assert two.op_s["lm_head"] == one.op_s["lm_head"]  # the last stage holds the head
    cm = CostModel(Placement(m, H100, pp=2))
    p2p = cm.prior.p2p
    assert cm.pp_transfer_s(1000) == pytest.approx(1000 * 4096 * 2 / (450e9 * p2p.eff) + p2p.latency_s)


def test_empty_step_and_errors():
    cm = CostModel(Placement(MODELS["Llama-3.1-8B"], H100))
    assert cm.step_time_s(BatchShape()) == 0.0 == cm.step_time(BatchShape()).total_s
    assert cm.profile_id == "roofline"
    with pytest.raises(ConfigError, match="tp=3"):
        Placement(MODELS["Llama-3.1-8B"], H100, tp=3)
    with pytest.raises(ConfigError, match="pp=40"):
        Placement(MODELS["Llama-3.1-8B"], H100, pp=40)
    with pytest.raises(ValueError, match="pure-decode"):
        cm.decode_run_s(prefill_shape(10), 3)
    with pytest.raises(ConfigError, match="all-reduce mode"):
        CostModel(Placement(MODELS["Llama-3.1-8B"], H100), allreduce="gloo")
