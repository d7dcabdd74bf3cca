"""Operator FLOPs and bytes against hand-computed values (Llama-3.1-8B, Mixtral-8x7B)."""

from __future__ import annotations

import pytest

from servesim.hwmodels.models import MODELS
from servesim.hwmodels.ops import (
    BatchShape,
    decode_shape,
    expected_touched_experts,
    prefill_shape,
    step_flops_bytes,
)

LLAMA, MIXTRAL = MODELS["Llama-3.1-8B"], MODELS["Mixtral-8x7B"]


def test_llama_decode_batch1():
    ops = step_flops_bytes(decode_shape(1, 2048), LLAMA)
    L = 32
    # QKV: 1 token × 4096 → 6144 (32 q heads + 2·8 kv heads, ×128); weights bf16 + activations in and out
    assert ops["qkv"] == (L * 2 * 4096 * 6144, L * (4096 * 6144 * 2 + (4096 + 6144) * 2))
    # decode attention: 2048 keys × 32 heads × 128 × 4 FLOPs; reads K and V of 2048 tokens (8 heads × 128 × 2 B)
    assert ops["attn_decode"][0] == L * 4 * 4096 * 2048
    assert ops["attn_decode"][1] == L * (2048 * 2 * 1024 * 2 + 2 * 4096 * 2 + 2 * 1024 * 2)
    assert ops["gate_up"] == (L * 2 * 4096 * 28672, L * (4096 * 28672 * 2 + (4096 + 28672) * 2))
    assert ops["down"][0] == L * 2 * 14336 * 4096
    # LM head on one row: 128256 × 4096 bf16 weights
    assert ops["lm_head"] == (2 * 4096 * 128256, 4096 * 128256 * 2 + (4096 + 128256) * 2)
    assert ops["attn_prefill"] == (0, 0) and ops["spec_verify"] == (0, 0) and "allreduce" not in ops
    # Sum of linear-layer FLOPs = 2 × (non-embedding params + LM head) per token
    gemm = sum(ops[k][0] for k in ("qkv", "o", "gate_up", "down", "lm_head"))
    assert gemm == 2 * (LLAMA.param_count - 128256 * 4096 - 2 * 32 * 4096 - 4096)


def test_llama_prefill_tp2_fp8():
    ops = step_flops_bytes(
        prefill_shape(1000, ctx_before=500), LLAMA, tp=2, weight_format="fp8", kv_dtype="fp8"
    )
    pairs = 1000 * 500 + 1000 * 1001 / 2
    assert ops["attn_prefill"][0] == 32 * 4 * (4096 // 2) * pairs
    # Q read + O written (bf16), K/V of 1000 new tokens written and of 1500 read (4 kv heads/GPU, fp8)
    assert ops["attn_prefill"][1] == 32 * (1000 * (2 * 2048 * 2 + 2 * 512) + 1500 * 2 * 512)
    # fp8 QKV shard 4096 × 3072: 1 B per weight + fp32 per-channel scale; inputs fp8 (quantized per token), out bf16
    assert ops["qkv"][1] == 32 * (4096 * 3072 + 3072 * 4 + 1000 * (4096 * 1 + 3072 * 2))
    # the per-token quantization of the QKV input: read 4096 bf16, write 4096 fp8 + an fp32 scale, per token
    assert ops["act_quant_qkv"] == (0, 32 * 1000 * (4096 * 3 + 4))
    # two ring all-reduces per layer of 1000 × 4096 bf16: each GPU moves 2·(tp−1)/tp of it
    assert ops["allreduce"] == (0, 32 * 2 * 2 * (1 / 2) * 1000 * 4096 * 2)
    assert ops["lm_head"][0] == 2 * 4096 * 64128  # one sampled row, half the vocabulary


def test_touched_experts():
    assert expected_touched_experts(1, 8, 2) == pytest.approx(2)
    assert expected_touched_experts(2, 8, 2) == pytest.approx(8 * (1 - 0.75**2))  # 3.5
    assert expected_touched_experts(1000, 8, 2) == pytest.approx(8)
    assert expected_touched_experts(0, 8, 2) == 0


def test_mixtral_decode_reads_touched_experts_only():
    expert_up = 4096 * 28672 * 2  # one expert's gate+up in bf16
    one = step_flops_bytes(decode_shape(1, 100), MIXTRAL)
    assert one["gate_up"][0] == 32 * 2 * 4096 * 28672 * 2  # two experts per token
    assert one["gate_up"][1] == pytest.approx(32 * (2 * expert_up + (4096 + 28672) * 2 * 2))
    two = step_flops_bytes(decode_shape(2, 100), MIXTRAL)
    assert two["gate_up"][1] == pytest.approx(32 * (3.5 * expert_up + 2 * (4096 + 28672) * 2 * 2))
    many = step_flops_bytes(decode_shape(256, 100), MIXTRAL)
    assert many["down"][1] == pytest.approx(
        32 * (8 * 14336 * 4096 * 2 + 256 * (14336 + 4096) * 2 * 2), rel=1e-9
    )
    assert many["router"][0] == 32 * 2 * 256 * 4096 * 8


def test_speculative_rows():
    ops = step_flops_bytes(decode_shape(4, 1000, spec_k=3), LLAMA)
    # 4 seqs × 3 draft rows; each reads target and draft probability rows (fp32 over the vocabulary)
    assert ops["spec_verify"] == (12 * 4 * 128256, 12 * 2 * 128256 * 4)
    assert ops["sampling"][0] == 16 * 5 * 128256
    assert ops["attn_decode"][0] == 32 * 4 * 4096 * (4 * 1000) * 4  # 4 query tokens per sequence


def test_prefill_pairs_closed_form():
    s = prefill_shape(4, ctx_before=2)
    assert s.prefill_attn_pairs == (2 + 1) + (2 + 2) + (2 + 3) + (2 + 4)
    assert s.prefill_ctx_tokens == 6 and s.sampled_tokens == 1
    assert step_flops_bytes(BatchShape(), LLAMA)["qkv"] == (0, 0)  # nothing runs, no weights read
