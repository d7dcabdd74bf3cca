"""Memory planner against a hand-computed H100 case, and its refusals."""

from __future__ import annotations

import pytest

from servesim.errors import ConfigError
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.memory import plan_memory
from servesim.hwmodels.models import MODELS
from servesim.hwmodels.placement import Placement

H100 = get_gpu("H100-SXM")


def test_llama_8b_on_h100_by_hand():
    plan = plan_memory(Placement(MODELS["Llama-3.1-8B"], H100))
    usable = 80 * 2**30 * 0.9  # 77,309,411,328
    weights = 2 * 8_030_261_248
    # 8192 tokens × (4 hidden-sized buffers + qkv 6144 + gate/up and act 3·14336) × 2 B, + 256 fp32 logit rows ×2
    act = 8192 * (4 * 4096 + 6144 + 3 * 14336) * 2 + 256 * 128256 * 4 * 2
    runtime = 2**30
    per_block = 131072 * 16
    blocks = int((usable - weights - act - runtime) // per_block)
    assert blocks == 28056
    assert (plan.usable_bytes, plan.weights_bytes, plan.activation_bytes) == pytest.approx(
        (usable, weights, act)
    )
    assert (plan.kv_bytes_per_token, plan.kv_bytes_per_block, plan.kv_blocks) == (131072, per_block, blocks)
    assert plan.kv_capacity_tokens == blocks * 16
    total = plan.weights_bytes + plan.activation_bytes + plan.runtime_bytes + plan.kv_cache_bytes
    assert total + plan.headroom_bytes == pytest.approx(plan.memory_bytes)


def test_weights_match_model_and_shard():
    m = MODELS["Llama-3.1-70B"]
    assert plan_memory(Placement(MODELS["Llama-3.1-8B"], H100)).weights_bytes == MODELS["Llama-3.1-8B"].weight_bytes(
        "bf16"
    )
    tp4 = plan_memory(Placement(m, H100, tp=4))
    assert tp4.weights_bytes == pytest.approx(m.weight_bytes("bf16") / 4, rel=1e-4)
    assert tp4.kv_bytes_per_token == 327680 // 4
    # tp=16 > 8 KV heads: each GPU keeps one replicated KV head
    assert plan_memory(Placement(m, get_gpu("H200"), tp=16)).kv_bytes_per_token == 2 * 80 * 1 * 128 * 2


def test_fp8_kv_doubles_capacity_and_quant_shrinks_weights():
    m = MODELS["Llama-3.1-8B"]
    bf, fp8 = plan_memory(Placement(m, H100)), plan_memory(Placement(m, H100, kv_dtype="fp8"))
    assert fp8.kv_blocks in (2 * bf.kv_blocks, 2 * bf.kv_blocks + 1)
    assert plan_memory(Placement(m, H100, weight_format="w4a16")).weights_bytes < 0.4 * bf.weights_bytes


def test_refusals_carry_numbers():
    with pytest.raises(
        ConfigError,
        match=r"Llama-3.1-70B in bf16 needs 141.1 GB of weights per GPU at tp=1; "
        r"H100-SXM has 77.3 GB usable at gpu_memory_utilization 0.90",
    ):
        plan_memory(Placement(MODELS["Llama-3.1-70B"], H100))
    with pytest.raises(ConfigError, match="leaves no room for the KV cache"):
        plan_memory(Placement(MODELS["Llama-3.1-8B"], get_gpu("L4")), gpu_memory_utilization=0.70)
    with pytest.raises(ConfigError, match="tp=5"):
        Placement(MODELS["Llama-3.1-8B"], H100, tp=5)
