"""The engine's decoder against HuggingFace transformers with identical weights (float32 on the CPU), and its
Triton path against its torch-reference path (interpreter, float16), over packed mixed iterations."""

from __future__ import annotations

import json

import pytest
import torch

from servesim.engine.config import EngineModelConfig
from servesim.engine.kernels import BACKENDS
from servesim.engine.model import AttentionMeta, KVCache, LlamaModel
from servesim.engine.weights import build_weights, hf_names, random_state_dict
from servesim.errors import ConfigError, InputError
from tests.engine_helpers import hf_model, tiny_config, write_config

pytest.importorskip("transformers")
BS = 16


class Seq:
    """One sequence's tokens and its blocks in a shared cache."""

    def __init__(self, ids: torch.Tensor, blocks: list[int]) -> None:
        self.ids, self.blocks = ids, blocks

    def slots(self, s: int, e: int) -> torch.Tensor:
        p = torch.arange(s, e)
        return torch.tensor(self.blocks)[p // BS] * BS + p % BS

    def table(self, width: int) -> list[int]:
        return self.blocks + [0] * (width - len(self.blocks))


def run_step(model, cache, prefill, decode, dtype=None):
    """prefill: [(seq, start, end)]; decode: [(seq, pos)]. Returns logits of the sampled rows, in order."""
    ids, pos, slots, sample, cu, kvl = [], [], [], [], [0], []
    for s, a, b in prefill:
        ids.append(s.ids[a:b])
        pos.append(torch.arange(a, b))
        slots.append(s.slots(a, b))
        cu.append(cu[-1] + b - a)
        kvl.append(b)
        sample.append(cu[-1] - 1)
    n_pre = cu[-1]
    for i, (s, p) in enumerate(decode):
        ids.append(s.ids[p:p + 1])
        pos.append(torch.tensor([p]))
        slots.append(s.slots(p, p + 1))
        sample.append(n_pre + i)
    width = 8
    meta = AttentionMeta(num_prefill_tokens=n_pre)
    if prefill:
        meta.prefill_cu_seqlens = torch.tensor(cu, dtype=torch.int32)
        meta.prefill_kv_lens = torch.tensor(kvl, dtype=torch.int32)
        meta.prefill_block_tables = torch.tensor([s.table(width) for s, *_ in prefill], dtype=torch.int32)
        meta.prefill_max_q_len = max(b - a for _, a, b in prefill)
    if decode:
        meta.decode_kv_lens = torch.tensor([p + 1 for _, p in decode], dtype=torch.int32)
        meta.decode_block_tables = torch.tensor([s.table(width) for s, _ in decode], dtype=torch.int32)
        meta.decode_max_kv_len = max(p + 1 for _, p in decode)
    return model.forward(torch.cat(ids), torch.cat(pos).to(torch.int32), torch.cat(slots), meta, cache,
                         torch.tensor(sample))


def cache_for(mc, blocks=12, dtype=torch.float32):
    shape = (blocks, BS, mc.num_kv_heads, mc.head_dim)
    return KVCache([torch.zeros(shape, dtype=dtype) for _ in range(mc.num_layers)],
                   [torch.zeros(shape, dtype=dtype) for _ in range(mc.num_layers)])


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


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"])
def test_logits_match_transformers_float32(arch):
    torch.manual_seed(0)
    mc = tiny_config(arch)
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
