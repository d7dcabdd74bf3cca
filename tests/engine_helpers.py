"""A tiny Llama-family model for the engine's CPU tests, and its HuggingFace twin."""

from __future__ import annotations

import json

import torch

from servesim.engine.config import EngineModelConfig

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def tiny_config(arch: str = "LlamaForCausalLM", **over) -> EngineModelConfig:
    values = dict(name="tiny", architecture=arch, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=16, intermediate_size=128, vocab_size=97, max_position_embeddings=512,
                  qkv_bias=arch == "Qwen2ForCausalLM", rms_norm_eps=1e-6, rope_theta=10000.0,
                  rope_scaling=LLAMA3_ROPE if arch == "LlamaForCausalLM" else None)
    return EngineModelConfig(**{**values, **over})


def hf_model(mc: EngineModelConfig, state_dict: dict):
    transformers = __import__("transformers")
    cfg = {k: v for k, v in mc.hf_config_dict().items() if k != "architectures"}
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg),
                                                          dtype=torch.float32)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def write_config(mc: EngineModelConfig, path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(mc.hf_config_dict()))
    return str(path / "config.json")
