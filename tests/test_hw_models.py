"""Model catalog: published parameter counts, KV bytes, weight formats, and the HF config.json loader."""

from __future__ import annotations

import json

import pytest

from servesim.errors import ConfigError, InputError
from servesim.hwmodels.models import MODELS, get_model, get_weight_format

# Parameter counts as published on the model cards (billions, rounded as published).
PUBLISHED_B = {
    "Llama-3.1-8B": 8.03,
    "Llama-3.1-70B": 70.6,
    "Llama-3.2-1B": 1.24,
    "Llama-3.2-3B": 3.21,
    "Mistral-7B-v0.3": 7.25,
    "Qwen2.5-7B": 7.62,
    "Qwen2.5-14B": 14.8,
    "Qwen2.5-32B": 32.8,
    "Qwen2.5-72B": 72.7,
    "Mixtral-8x7B": 46.7,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_B))
def test_param_count_matches_published(name):
    assert MODELS[name].param_count / 1e9 == pytest.approx(PUBLISHED_B[name], abs=0.051)


def test_llama_8b_exact_param_count():
    # embed + head 2·128256·4096, 32 layers of (qkv 4096·6144 + o 4096² + mlp 3·4096·14336 + 2 norms), final norm
    per_layer = 4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096
    assert MODELS["Llama-3.1-8B"].param_count == 2 * 128256 * 4096 + 32 * per_layer + 4096 == 8_030_261_248


def test_kv_bytes_per_token():
    m = MODELS["Llama-3.1-8B"]
    assert m.kv_bytes_per_token("bf16") == 131072 == 128 * 1024  # 2 (K,V) · 32 layers · 8 heads · 128 · 2 B
    assert m.kv_bytes_per_token("fp8") == m.kv_bytes_per_token("int8") == 65536
    assert MODELS["Qwen2.5-7B"].kv_bytes_per_token() == 2 * 28 * 4 * 128 * 2


def test_weight_bytes_per_format():
    m = MODELS["Llama-3.1-8B"]
    assert m.weight_bytes("bf16") == 2 * m.param_count
    linear = 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336)
    other = m.param_count - linear  # embeddings, head, norms stay bf16
    assert m.weight_bytes("fp8") == pytest.approx(linear * 1 + 2 * other, rel=1e-3)
    # int4 with group-128 fp16 scales and int4 zeros: 0.5 + 2.5/128 bytes per weight
    assert m.weight_bytes("w4a16") == pytest.approx(linear * (0.5 + 2.5 / 128) + 2 * other, rel=1e-6)
    assert get_weight_format("W4A16").matrix_bytes(256, 10) == 256 * 10 * 0.5 + 10 * 2 * 2.5
    with pytest.raises(ConfigError, match="w4a16"):
        m.weight_bytes("int3")


def test_get_model_names():
    assert get_model("llama-3.1-8b") is MODELS["Llama-3.1-8B"]
    assert get_model("meta-llama/Llama-3.1-8B-Instruct") is MODELS["Llama-3.1-8B"]
    assert get_model("mistral-7b") is MODELS["Mistral-7B-v0.3"]
    with pytest.raises(ConfigError, match="Llama-3.1-70B"):
        get_model("gpt-5")


LLAMA_CFG = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "max_position_embeddings": 131072,
}


def _write(tmp_path, cfg, name="m"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_loader_reproduces_preset(tmp_path):
    spec = get_model(str(_write(tmp_path, LLAMA_CFG, "llama8b")))
    assert spec.name == "llama8b" and spec.head_dim == 128 and spec.dtype == "bf16"
    assert spec.param_count == MODELS["Llama-3.1-8B"].param_count


def test_loader_text_config_nesting_and_head_dim(tmp_path):
    inner = {**LLAMA_CFG, "head_dim": 256, "num_attention_heads": 16, "tie_word_embeddings": True}
    del inner["torch_dtype"]
    spec = get_model(
        str(
            _write(tmp_path, {"model_type": "wrapper", "text_config": inner, "dtype": "float16"})
            / "config.json"
        )
    )
    assert spec.head_dim == 256 and spec.q_size == 4096 and spec.num_heads == 16
    assert spec.tied_embeddings and spec.dtype == "fp16"
    assert spec.kv_bytes_per_token() == 2 * 32 * 8 * 256 * 2


def test_loader_moe_keys(tmp_path):
    mixtral = {**LLAMA_CFG, "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2}
    assert get_model(str(_write(tmp_path, mixtral, "a"))).param_count == MODELS["Mixtral-8x7B"].param_count
    qwen_moe = {
        **LLAMA_CFG,
        "model_type": "qwen2_moe",
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "moe_intermediate_size": 1408,
    }
    spec = get_model(str(_write(tmp_path, qwen_moe, "b")))
    assert (spec.num_experts, spec.experts_per_token, spec.expert_intermediate_size) == (60, 4, 1408)
    assert spec.qkv_bias  # qwen2 family


def test_loader_errors_name_file_and_key(tmp_path):
    bad = dict(LLAMA_CFG)
    del bad["vocab_size"]
    d = _write(tmp_path, bad, "nov")
    with pytest.raises(InputError, match=r"nov/config.json, field 'vocab_size': missing"):
        get_model(str(d))
    d = _write(tmp_path, {**LLAMA_CFG, "num_key_value_heads": 7}, "kv")
    with pytest.raises(InputError, match="num_key_value_heads"):
        get_model(str(d))
    d = _write(tmp_path, {**LLAMA_CFG, "torch_dtype": "int4"}, "dt")
    with pytest.raises(InputError, match="torch_dtype"):
        get_model(str(d))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        get_model(str(tmp_path / "broken.json"))


def test_every_preset_names_its_source():
    for m in MODELS.values():
        assert m.source.startswith("https://huggingface.co/") and m.source.endswith("config.json")


BERT_CFG = {  # bert-base-uncased's config.json, as published
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 30522, "max_position_embeddings": 512,
}
T5_CFG = {  # t5-small's config.json, as published (no `architectures` ending in ForCausalLM either way)
    "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True,
    "d_model": 512, "num_layers": 6, "num_heads": 8, "d_ff": 2048, "vocab_size": 32128,
}


@pytest.mark.parametrize(
    ("cfg", "needle", "key"),
    [
        (BERT_CFG, "BertForMaskedLM is not a decoder-only causal LM", "architectures"),
        ({**BERT_CFG, "architectures": None}, "model_type 'bert' is an encoder", "model_type"),
        (T5_CFG, "T5ForConditionalGeneration is an encoder-decoder model", "is_encoder_decoder"),
    ],
)
def test_non_decoder_configs_are_refused_naming_the_architecture(tmp_path, capsys, cfg, needle, key):
    d = _write(tmp_path, cfg, "enc")
    with pytest.raises(InputError) as err:
        get_model(str(d))
    assert needle in str(err.value) and err.value.field == key and str(d / "config.json") in str(err.value)
    from servesim.cli.main import main

    with pytest.raises(SystemExit) as exc:  # and from the command line: one line, exit 2, nothing simulated
        main(["simulate", "--model", str(d), "--num-requests", "5"])
    err_text = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err_text and len(err_text.splitlines()) == 1
