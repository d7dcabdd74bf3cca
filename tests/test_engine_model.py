"""The engine's decoder against HuggingFace transformers with identical weights (float32 on the CPU), and its
Triton path against its torch-reference path (interpreter, float16), over packed mixed iterations."""

from __future__ import annotations

import json

import pytest
import torch

from servesim.engine.config import EngineModelConfig
from servesim.engine.kernels import BACKENDS
from servesim.engine.model import LlamaModel
from servesim.engine.weights import build_weights, hf_names, random_state_dict
from servesim.errors import ConfigError, InputError
from tests.engine_helpers import Seq, cache_for, hf_model, schedule_three_steps, tiny_config, write_config

pytest.importorskip("transformers")
@pytest.mark.parametrize("arch,theta", [("LlamaForCausalLM", 1e4), ("Qwen2ForCausalLM", 1e4),
                                        ("MistralForCausalLM", 1e4), ("LlamaForCausalLM", 5e5)])
def test_logits_match_transformers_float32(arch, theta):
    torch.manual_seed(0)
    mc = tiny_config(arch, rope_theta=theta)
    sd = random_state_dict(mc, seed=1, dtype=torch.float32)
    hf = hf_model(mc, sd)
    model = LlamaModel(mc, build_weights(mc, dict(sd), "bf16"), BACKENDS["torch"], 512)
    a = Seq(torch.randint(0, mc.vocab_size, (21,)), [3, 7])
    b = Seq(torch.randint(0, mc.vocab_size, (19,)), [5, 1])
    got = schedule_three_steps(model, cache_for(mc), a, b)
    with torch.no_grad():
        ref = {"a": hf(a.ids[None]).logits[0], "b": hf(b.ids[None]).logits[0]}
    for (name, p), logits in got.items():
        r = ref[name][p]
        assert (logits - r).abs().max() / r.abs().max() < 1e-5, (name, p)


def test_triton_path_matches_reference_path():
    """The Triton kernels under the interpreter (float16) give the torch-reference logits."""
    torch.manual_seed(0)
    mc = tiny_config()
    sd = random_state_dict(mc, seed=2, dtype=torch.float16)
    ref_model = LlamaModel(mc, build_weights(mc, {k: v.float() for k, v in sd.items()}, "bf16"), BACKENDS["torch"], 512)
    tri_model = LlamaModel(mc, build_weights(mc, dict(sd), "bf16"), BACKENDS["triton"], 512)
    a = Seq(torch.randint(0, mc.vocab_size, (21,)), [3, 7])
    b = Seq(torch.randint(0, mc.vocab_size, (19,)), [5, 1])
    ref = schedule_three_steps(ref_model, cache_for(mc), a, b)
    got = schedule_three_steps(tri_model, cache_for(mc, dtype=torch.float16), a, b)
    for key, logits in got.items():
        r = ref[key]
        assert torch.isfinite(logits).all()
        assert (logits.float() - r).norm() / r.norm() < 2e-2, key


@pytest.mark.parametrize("fmt,tol", [("w8a16", 0.05), ("w4a16", 0.35)])
def test_quantized_formats_stay_close_to_bf16(fmt, tol):
    mc = tiny_config(hidden_size=128, intermediate_size=256, head_dim=32)
    sd = random_state_dict(mc, seed=3, dtype=torch.float32)
    base = LlamaModel(mc, build_weights(mc, dict(sd), "bf16"), BACKENDS["torch"], 512)
    quant = LlamaModel(mc, build_weights(mc, dict(sd), fmt), BACKENDS["torch"], 512)
    a = Seq(torch.randint(0, mc.vocab_size, (21,)), [3, 7])
    b = Seq(torch.randint(0, mc.vocab_size, (19,)), [5, 1])
    x, y = schedule_three_steps(base, cache_for(mc), a, b), schedule_three_steps(quant, cache_for(mc), a, b)
    for key in x:
        err = ((x[key] - y[key]).norm() / x[key].norm()).item()
        assert 0 < err < tol, (key, err)


def test_config_from_catalog_and_hf(tmp_path):
    mc = EngineModelConfig.resolve("Llama-3.1-8B")
    assert (mc.hidden_size, mc.num_kv_heads, mc.rope_scaling["rope_type"]) == (4096, 8, "llama3")
    assert EngineModelConfig.resolve("Qwen2.5-7B").architecture == "Qwen2ForCausalLM"
    with pytest.raises(ConfigError, match="mixture-of-experts"):
        EngineModelConfig.resolve("Mixtral-8x7B")
    tiny = tiny_config("Qwen2ForCausalLM")
    back = EngineModelConfig.from_hf(write_config(tiny, tmp_path / "m"))
    assert (back.qkv_bias, back.rms_norm_eps, back.num_layers) == (True, 1e-6, 2)
    llama = tiny_config(rope_theta=5e5)
    v5 = {k: v for k, v in llama.hf_config_dict().items() if k not in ("rope_theta", "rope_scaling")}
    (tmp_path / "v5").mkdir()
    (tmp_path / "v5" / "config.json").write_text(json.dumps(v5))  # transformers 5 layout: rope_parameters only
    back = EngineModelConfig.from_hf(tmp_path / "v5")
    assert (back.rope_theta, back.rope_scaling["rope_type"]) == (5e5, "llama3")
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**tiny.hf_config_dict(), "architectures": ["GPTNeoXForCausalLM"]}))
    with pytest.raises(InputError, match="not one the engine runs"):
        EngineModelConfig.from_hf(bad)


def test_random_weights_are_seeded_and_shaped():
    mc = tiny_config()
    a, b = random_state_dict(mc, seed=5), random_state_dict(mc, seed=5)
    assert set(a) == set(hf_names(mc)) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(tuple(a[k].shape) == s for k, s in hf_names(mc).items())
