"""Inputs of every linear layer on calibration tokens, for AWQ's activation-aware scale search."""

from __future__ import annotations

import torch

from servesim.engine.config import EngineModelConfig
from servesim.engine.kernels import BACKENDS
from servesim.engine.model import AttentionMeta, KVCache, LlamaModel
from servesim.engine.weights import build_weights

MAX_ROWS = 512  # activation rows kept per linear layer (AWQ needs per-channel magnitudes, not every token)


class _Recorder:
    def __init__(self, inner, store: list) -> None:
        self.inner, self.store = inner, store

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.store.append(x[:MAX_ROWS].detach().float().cpu())
        return self.inner(x)


def linear_inputs(mc: EngineModelConfig, sd: dict, cfg, dev, tokens: torch.Tensor | None = None):
    """``calib(layer, name)`` for :func:`build_weights`: the unquantized model's inputs to linear ``name``
    (qkv, o, gate_up, down) of each layer on ``tokens`` (default: 512 random tokens)."""
    n = MAX_ROWS if tokens is None else tokens.numel()
    ids = torch.randint(0, mc.vocab_size, (n,), generator=torch.Generator().manual_seed(cfg.seed)).to(dev) \
        if tokens is None else tokens.to(dev)
    weights = build_weights(mc, dict(sd), "bf16")
    stores: dict[tuple[int, str], list] = {}
    for li, layer in enumerate(weights.layers):
        for name in ("qkv", "o", "gate_up", "down"):
            store = stores.setdefault((li, name), [])
            setattr(layer, name, _Recorder(getattr(layer, name), store))
    model = LlamaModel(mc, weights, BACKENDS["triton" if dev.type == "cuda" else "torch"], max_positions=n)
    bs = cfg.block_size
    blocks = -(-n // bs)
    dtype = weights.embed.dtype
    shape = (blocks, bs, mc.num_kv_heads, mc.head_dim)
    cache = KVCache([torch.zeros(shape, dtype=dtype, device=dev) for _ in range(mc.num_layers)],
                    [torch.zeros(shape, dtype=dtype, device=dev) for _ in range(mc.num_layers)])
    meta = AttentionMeta(num_prefill_tokens=n, prefill_cu_seqlens=torch.tensor([0, n], dtype=torch.int32, device=dev),
                         prefill_kv_lens=torch.tensor([n], dtype=torch.int32, device=dev),
                         prefill_block_tables=torch.arange(blocks, dtype=torch.int32, device=dev)[None, :],
                         prefill_max_q_len=n)
    with torch.no_grad():
        model.forward(ids, torch.arange(n, dtype=torch.int32, device=dev), torch.arange(n, device=dev), meta, cache,
                      torch.tensor([n - 1], device=dev))
    del model, weights, cache
    return lambda li, name: torch.cat(stores[(li, name)]).to(dev)
