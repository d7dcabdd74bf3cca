"""A tiny Llama-family model for the engine's CPU tests, and its HuggingFace twin."""

from __future__ import annotations

import json

import torch

from servesim.engine.config import EngineModelConfig
from servesim.engine.model import AttentionMeta, KVCache

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def tiny_config(arch: str = "LlamaForCausalLM", **over) -> EngineModelConfig:
    values = dict(name="tiny", architecture=arch, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=16, intermediate_size=128, vocab_size=97, max_position_embeddings=512,
                  qkv_bias=arch == "Qwen2ForCausalLM", rms_norm_eps=1e-6, rope_theta=10000.0,
                  rope_scaling=dict(LLAMA3_ROPE) if arch == "LlamaForCausalLM" else None)
    return EngineModelConfig(**{**values, **over})


def hf_model(mc: EngineModelConfig, state_dict: dict, dtype=torch.float32, device="cpu"):
    transformers = __import__("transformers")
    cfg = {k: v for k, v in mc.hf_config_dict().items() if k != "architectures"}
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg), dtype=dtype)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def write_config(mc: EngineModelConfig, path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(mc.hf_config_dict()))
    return str(path / "config.json")


BS = 16


class Seq:
    """One sequence's tokens and its blocks in a shared cache."""

    def __init__(self, ids: torch.Tensor, blocks: list[int]) -> None:
        self.ids, self.blocks = ids, blocks

    def slots(self, s: int, e: int) -> torch.Tensor:
        p = torch.arange(s, e, device=self.ids.device)
        return torch.tensor(self.blocks, device=self.ids.device)[p // BS] * BS + p % BS

    def table(self, width: int) -> list[int]:
        return self.blocks + [0] * (width - len(self.blocks))


def run_step(model, cache, prefill, decode):
    """prefill: [(seq, start, end)]; decode: [(seq, pos)]. Returns logits of the sampled rows, in order."""
    dev = cache.k[0].device
    ids, pos, slots, sample, cu, kvl = [], [], [], [], [0], []
    for s, a, b in prefill:
        ids.append(s.ids[a:b])
        pos.append(torch.arange(a, b, device=dev))
        slots.append(s.slots(a, b))
        cu.append(cu[-1] + b - a)
        kvl.append(b)
        sample.append(cu[-1] - 1)
    n_pre = cu[-1]
    for i, (s, p) in enumerate(decode):
        ids.append(s.ids[p:p + 1])
        pos.append(torch.tensor([p], device=dev))
        slots.append(s.slots(p, p + 1))
        sample.append(n_pre + i)
    width = 8
    meta = AttentionMeta(num_prefill_tokens=n_pre)
    if prefill:
        meta.prefill_cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=dev)
        meta.prefill_kv_lens = torch.tensor(kvl, dtype=torch.int32, device=dev)
        meta.prefill_block_tables = torch.tensor([s.table(width) for s, *_ in prefill], dtype=torch.int32, device=dev)
        meta.prefill_max_q_len = max(b - a for _, a, b in prefill)
    if decode:
        meta.decode_kv_lens = torch.tensor([p + 1 for _, p in decode], dtype=torch.int32, device=dev)
        meta.decode_block_tables = torch.tensor([s.table(width) for s, _ in decode], dtype=torch.int32, device=dev)
        meta.decode_max_kv_len = max(p + 1 for _, p in decode)
    return model.forward(torch.cat(ids), torch.cat(pos).to(torch.int32), torch.cat(slots), meta, cache,
                         torch.tensor(sample, device=dev))


def cache_for(mc, blocks=12, dtype=torch.float32, device="cpu"):
    shape = (blocks, BS, mc.num_kv_heads, mc.head_dim)
    return KVCache([torch.zeros(shape, dtype=dtype, device=device) for _ in range(mc.num_layers)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(mc.num_layers)])


def schedule_three_steps(model, cache, a: Seq, b: Seq):
    """Chunked prefill of a, prefill of b, then mixed chunk + decode, then two decodes: (seq, pos) -> logits."""
    out = {}
    rows = run_step(model, cache, [(a, 0, 12), (b, 0, 17)], [])
    out[("a", 11)], out[("b", 16)] = rows[0], rows[1]
    rows = run_step(model, cache, [(a, 12, 20)], [(b, 17)])
    out[("a", 19)], out[("b", 17)] = rows[0], rows[1]
    rows = run_step(model, cache, [], [(a, 20), (b, 18)])
    out[("a", 20)], out[("b", 18)] = rows[0], rows[1]
    return out
