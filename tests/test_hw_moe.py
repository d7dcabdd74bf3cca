"""Mixture-of-experts and MLA shapes: FLOPs and bytes against hand counts, routing skew, expert parallelism,
memory for every expert, config.json keys, and the parallelism checks."""

from __future__ import annotations

import json

import pytest

from servesim.errors import ConfigError
from servesim.hwmodels.cost import CostModel
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.memory import plan_memory, stage_weight_bytes
from servesim.hwmodels.models import MODELS, ModelSpec, get_model
from servesim.hwmodels.moe import expert_load, routing_probabilities
from servesim.hwmodels.ops import decode_shape, prefill_shape, step_flops_bytes
from servesim.hwmodels.placement import Placement

H100 = get_gpu("H100-SXM")
# One MoE layer small enough to count by hand: hidden 64, 4 experts of width 32, vocabulary 100.
TINY = dict(name="tiny", hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=4, head_dim=16,
            intermediate_size=32, vocab_size=100, num_experts=4)


def _tiny(top_k: int, **kw) -> ModelSpec:
    return ModelSpec(**{**TINY, "experts_per_token": top_k, **kw})


@pytest.mark.parametrize("top_k", [1, 2])
def test_expert_gemms_equal_a_hand_count_uniform(top_k):
    m, n = _tiny(top_k), 3  # three decode tokens
    ops = step_flops_bytes(decode_shape(n, 10), m)
    touched = 4 * (1 - (1 - top_k / 4) ** n)  # experts some token reaches: 1.5625 at k=1, 3.5 at k=2
    gate_up_w, down_w = 64 * 64 * 2, 32 * 64 * 2  # one expert's gate+up (64 -> 2·32) and down, bf16
    assert ops["gate_up"][0] == n * top_k * 2 * 64 * 64
    assert ops["gate_up"][1] == pytest.approx(touched * gate_up_w + n * top_k * (64 + 64) * 2, rel=1e-12)
    assert ops["down"][0] == n * top_k * 2 * 32 * 64
    assert ops["down"][1] == pytest.approx(touched * down_w + n * top_k * (32 + 64) * 2, rel=1e-12)
    # the router: every token against every expert, bf16 weights
    assert ops["router"] == (n * 2 * 64 * 4, 64 * 4 * 2 + n * (64 + 4) * 2)


def test_skewed_routing_hand_count():
    # skew 1, four experts: popularity 1 : 1/2 : 1/3 : 1/4, normalised by 25/12; top-2 doubles it.
    assert routing_probabilities(4, 1, 1.0) == pytest.approx([12 / 25, 6 / 25, 4 / 25, 3 / 25])
    pi = [24 / 25, 12 / 25, 8 / 25, 6 / 25]
    assert routing_probabilities(4, 2, 1.0) == pytest.approx(pi)
    # skew 3, top-2: the first expert would take 1.70 of every token; capped at 1, the rest spread 8:1:(8/27):...
    w = [1 / 8, 1 / 27, 1 / 64]
    assert routing_probabilities(4, 2, 3.0) == pytest.approx([1.0] + [x / sum(w) for x in w])
    m, n = _tiny(2), 5
    ops = step_flops_bytes(decode_shape(n, 10), m, expert_skew=1.0)
    touched = sum(1 - (1 - p) ** n for p in pi)  # fewer distinct experts than uniform routing's 3.84
    assert touched < 4 * (1 - 0.5**n)
    assert ops["gate_up"][0] == n * 2 * 2 * 64 * 64  # FLOPs do not depend on where tokens go
    assert ops["gate_up"][1] == pytest.approx(touched * 64 * 64 * 2 + n * 2 * 128 * 2, rel=1e-12)
    # Expert parallelism over two GPUs: experts 0 and 2 on the busiest one, which gets (24+8)/50 of the work.
    ep = step_flops_bytes(decode_shape(n, 10), m, tp=2, ep=2, expert_skew=1.0)
    share = (pi[0] + pi[2]) / 2
    assert expert_load(m, 2, 1.0).share == pytest.approx(share)
    assert ep["gate_up"][0] == pytest.approx(n * 2 * share * 2 * 64 * 64)  # whole experts, 64 % of the copies
    busiest = (1 - (1 - pi[0]) ** n) + (1 - (1 - pi[2]) ** n)
    assert ep["gate_up"][1] == pytest.approx(busiest * 64 * 64 * 2 + n * 2 * share * 128 * 2, rel=1e-12)
    # dispatch + combine of the copies that GPU receives, 1/2 of them from the other GPU
    assert ep["all_to_all"] == (0, pytest.approx(n * 2 * 2 * share * 0.5 * 64 * 2))
    assert ep["allreduce"][1] == pytest.approx(n * 1 * 2 * 0.5 * 64 * 2)  # one all-reduce's worth, not two


def test_uniform_ep_balances_the_work_of_tp():
    m = MODELS["Qwen3-30B-A3B"]
    for shape in (decode_shape(16, 1000), prefill_shape(2000)):
        tp = step_flops_bytes(shape, m, tp=4)
        ep = step_flops_bytes(shape, m, tp=4, ep=4)
        assert ep["gate_up"][0] == pytest.approx(tp["gate_up"][0], rel=1e-12)  # same FLOPs per GPU
        assert "all_to_all" in ep and "all_to_all" not in tp
    # each GPU holds the same expert bytes: 1/4 of the experts whole, or every expert in quarters
    assert stage_weight_bytes(m, tp=4, ep=4) == pytest.approx(stage_weight_bytes(m, tp=4), rel=1e-12)


def test_memory_holds_every_expert():
    m = MODELS["Mixtral-8x7B"]
    plan = plan_memory(Placement(m, get_gpu("H200"), tp=2))
    assert plan.weights_bytes == pytest.approx(m.weight_bytes() / 2, rel=0.01)  # all 8 experts, not the top 2
    with pytest.raises(ConfigError, match="needs 93.4 GB"):
        plan_memory(Placement(m, H100))


def test_shared_experts_and_dense_layers_count_active_parameters():
    # FLOPs per decoded token = 2 x the parameters it touches: attention, the shared and top-6 routed experts
    # and the router in 26 MoE layers, the dense MLP of the first layer, the LM head.
    m = MODELS["DeepSeek-V2-Lite"]
    assert (m.moe_layers, m.num_dense_layers, m.shared_expert_intermediate_size) == (26, 1, 2816)
    ops = step_flops_bytes(decode_shape(1, 100), m)
    active = sum(
        k * n * (m.experts_per_token * m.moe_layers if name in ("gate_up", "down") else c)
        for name, (k, n, c) in m.linear_matrices().items()
    ) + m.vocab_size * m.hidden_size
    gemm = sum(f for name, (f, _) in ops.items() if name not in ("attn_decode", "attn_prefill", "sampling"))
    assert gemm == pytest.approx(2 * active, rel=1e-12)
    assert active / 1e9 == pytest.approx(2.4, abs=0.1)  # "2.4B activated parameters" (model card)
    assert ops["dense_gate_up"][0] == pytest.approx(2 * 2048 * 2 * 10944)  # one of 27 layers
    assert ops["shared_down"][0] == pytest.approx(26 * 2 * 2816 * 2048)


def test_mla_caches_the_latent():
    m = MODELS["DeepSeek-V2-Lite"]
    assert m.kv_bytes_per_token("bf16") == 27 * (512 + 64) * 2  # not 2·16 heads·192: the compressed latent
    tp1 = plan_memory(Placement(m, H100)).kv_bytes_per_token
    assert plan_memory(Placement(m, H100, tp=2)).kv_bytes_per_token == tp1  # every GPU holds all of it
    ops = step_flops_bytes(decode_shape(1, 1000), m)
    assert ops["attn_decode"][0] == 27 * 1000 * 2 * 16 * (576 + 512)  # absorbed: scores over 576, output 512
    assert ops["attn_decode"][1] == pytest.approx(27 * (1000 * 576 * 2 + 16 * 1088 * 2 + 576 * 2))
    pre = step_flops_bytes(prefill_shape(100), m)
    assert pre["kv_up"][0] == 27 * 100 * 2 * 512 * 16 * (128 + 128)  # the latent decompressed per context token
    assert pre["attn_prefill"][0] == 27 * (100 * 101 / 2) * 2 * 16 * (192 + 128)


@pytest.mark.parametrize(("name", "tp", "ep", "skew"), [
    ("Qwen3-30B-A3B", 4, 4, 0.0), ("Qwen3-30B-A3B", 2, 1, 1.2), ("DeepSeek-V2-Lite", 2, 2, 0.8),
    ("DeepSeek-V2-Lite", 1, 1, 0.0), ("Mixtral-8x7B", 8, 4, 0.5),
])
def test_cost_hot_path_and_runs_for_moe(name, tp, ep, skew):
    cm = CostModel(Placement(MODELS[name], H100, tp, ep=ep, expert_skew=skew))
    for shape in (decode_shape(3, 700), decode_shape(64, 2000), prefill_shape(1500, 300)):
        assert cm.step_time_s(shape) == pytest.approx(cm.step_time(shape).total_s, rel=1e-12)
    shape = decode_shape(24, 900)
    run = cm.decode_run_s(shape, 50)
    steps = [cm.step_time_s(decode_shape(24, 900 + i)) for i in range(50)]
    assert list(run) == steps  # bit for bit


def test_skew_reads_fewer_experts_but_loads_one_gpu_more():
    m = MODELS["Qwen3-30B-A3B"]

    def gate_up(shape, **kw):
        st = CostModel(Placement(m, H100, 4, **kw)).step_time(shape)
        return st.op_s["gate_up"], st.bound["gate_up"]

    prefill, decode = prefill_shape(16384), decode_shape(8, 1000)
    # compute-bound prefill: the GPU holding the most popular expert does more than a quarter of the work
    share = expert_load(m, 4, 1.0).share
    assert 0.30 < share < 0.31  # experts dealt round-robin by popularity: 23% above a quarter at skew 1
    (skewed, bound), (flat, _) = gate_up(prefill, ep=4, expert_skew=1.0), gate_up(prefill, ep=4)
    assert bound == "compute" and skewed == pytest.approx(share / 0.25 * flat, rel=0.05)  # the FLOPs' ratio
    assert gate_up(prefill, expert_skew=1.0)[0] == pytest.approx(gate_up(prefill)[0])  # no EP: split evenly
    # weight-bound decode: skewed tokens reach fewer distinct experts, so fewer weights are read
    assert gate_up(decode, expert_skew=1.0)[0] < 0.8 * gate_up(decode)[0]


def test_parallelism_checks_name_the_field():
    with pytest.raises(ConfigError, match="ep=3 must divide tp=4"):
        Placement(MODELS["Qwen3-30B-A3B"], H100, tp=4, ep=3)
    with pytest.raises(ConfigError, match="ep=16 does not divide the 8 experts"):
        Placement(MODELS["Mixtral-8x7B"], H100, tp=16, ep=16)
    with pytest.raises(ConfigError, match="no experts"):
        Placement(MODELS["Llama-3.1-8B"], H100, tp=2, ep=2)
    odd = _tiny(2, num_heads=8, num_kv_heads=8, head_dim=8, intermediate_size=30)
    with pytest.raises(ConfigError, match="tp=8/ep=2 does not divide the expert size 30"):
        Placement(odd, H100, tp=8, ep=2)  # each expert split 4 ways
    Placement(odd, H100, tp=8, ep=4)  # ... or 2 ways
    with pytest.raises(ConfigError, match="expert_skew"):
        Placement(MODELS["Qwen3-30B-A3B"], H100, expert_skew=-1)
    Placement(MODELS["DeepSeek-V2-Lite"], H100, tp=16)  # MLA: no KV-head constraint


def _write(tmp_path, cfg, name):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def test_config_json_keys_match_presets(tmp_path):
    deepseek = {
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 2048,
        "intermediate_size": 10944, "kv_lora_rank": 512, "max_position_embeddings": 163840,
        "moe_intermediate_size": 1408, "moe_layer_freq": 1, "first_k_dense_replace": 1, "n_routed_experts": 64,
        "n_shared_experts": 2, "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27,
        "num_key_value_heads": 16, "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "v_head_dim": 128, "vocab_size": 102400, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }
    qwen3 = {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
        "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
        "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
        "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": 151936,
        "max_position_embeddings": 40960, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }
    for cfg, preset in ((deepseek, "DeepSeek-V2-Lite"), (qwen3, "Qwen3-30B-A3B")):
        spec = get_model(_write(tmp_path, cfg, preset))
        want = MODELS[preset]
        for f in ModelSpec.__dataclass_fields__:
            if f not in ("name", "source"):
                assert getattr(spec, f) == getattr(want, f), f
    # Qwen-MoE sparse step 2 and an MLP-only layer: layers 1, 3 are MoE, layer 3 is listed dense -> 3 dense
    spec = get_model(_write(tmp_path, {**qwen3, "num_hidden_layers": 4, "decoder_sparse_step": 2,
                                       "mlp_only_layers": [3], "shared_expert_intermediate_size": 512}, "q"))
    assert (spec.num_dense_layers, spec.moe_layers, spec.shared_expert_intermediate_size) == (3, 1, 512)
