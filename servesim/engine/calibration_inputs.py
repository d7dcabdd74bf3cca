"""Inputs of every linear layer on calibration tokens, for AWQ's activation-aware scale search and GPTQ's Hessians.

Every layer's inputs come from the unquantized model (not from the layers before it already quantized, as GPTQ's
reference implementation takes them): one forward pass per calibration sequence.
"""

from __future__ import annotations

import torch

from servesim.engine.config import EngineModelConfig
from servesim.engine.kernels import BACKENDS
from servesim.engine.model import AttentionMeta, KVCache, LlamaModel
from servesim.engine.weights import build_weights

MAX_ROWS = 512  # activation rows kept per linear layer by default (AWQ needs per-channel magnitudes)


class _Recorder:
    def __init__(self, inner, store: list, max_rows: int) -> None:
        self.inner, self.store, self.left = inner, store, max_rows

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.left > 0:
            self.store.append(x[:self.left].detach().float().cpu())
            self.left -= self.store[-1].shape[0]
        return self.inner(x)


def linear_inputs(mc: EngineModelConfig, sd: dict, cfg, dev, tokens: torch.Tensor | None = None,
                  max_rows: int = MAX_ROWS):
    """``calib(layer, name)`` for :func:`build_weights`: the unquantized model's inputs to linear ``name``
    (qkv, o, gate_up, down) of each layer on ``tokens`` (one sequence ``[T]``, or sequences ``[B, T]`` each run
    as its own prompt; default: 512 random tokens), at most ``max_rows`` rows per linear."""
    if tokens is None:
        tokens = torch.randint(0, mc.vocab_size, (MAX_ROWS,), generator=torch.Generator().manual_seed(cfg.seed))
    seqs = tokens.reshape(-1, tokens.shape[-1]).to(dev)
    weights = build_weights(mc, dict(sd), "bf16")
    stores: dict[tuple[int, str], list] = {}
    for li, layer in enumerate(weights.layers):
        for name in ("qkv", "o", "gate_up", "down"):
            store = stores.setdefault((li, name), [])
            setattr(layer, name, _Recorder(getattr(layer, name), store, max_rows))
    n = seqs.shape[1]
    model = LlamaModel(mc, weights, BACKENDS["triton" if dev.type == "cuda" else "torch"], max_positions=n)
    with torch.no_grad():
        for ids in seqs:
            prefill_logits(model, ids, cfg.block_size, torch.tensor([n - 1], device=dev))
    del model, weights
    return lambda li, name: torch.cat(stores[(li, name)]).to(dev)


def prefill_logits(model: LlamaModel, ids: torch.Tensor, block_size: int, sample_idx: torch.Tensor) -> torch.Tensor:
    """Logits of rows ``sample_idx`` of one prompt ``ids [T]`` run as a single prefill over a fresh cache."""
    mc, dev, n = model.cfg, ids.device, ids.numel()
    blocks = -(-n // block_size)
    dtype = model.w.embed.dtype
    shape = (blocks, block_size, mc.num_kv_heads, mc.head_dim)
    cache = KVCache([torch.zeros(shape, dtype=dtype, device=dev) for _ in range(mc.num_layers)],
                    [torch.zeros(shape, dtype=dtype, device=dev) for _ in range(mc.num_layers)])
    meta = AttentionMeta(num_prefill_tokens=n, prefill_cu_seqlens=torch.tensor([0, n], dtype=torch.int32, device=dev),
                         prefill_kv_lens=torch.tensor([n], dtype=torch.int32, device=dev),
                         prefill_block_tables=torch.arange(blocks, dtype=torch.int32, device=dev)[None, :],
                         prefill_max_q_len=n)
    return model.forward(ids, torch.arange(n, dtype=torch.int32, device=dev), torch.arange(n, device=dev), meta,
                         cache, sample_idx)
