"""A Llama-family decoder over a paged KV cache: one forward pass computes every token of an iteration.

An iteration's tokens are packed: the prefill chunks first (each a run of consecutive positions of one
sequence), then the decoding sequences (``num_q`` tokens each: 1, or 1 + k under speculative verification).
Per layer::

    h = rms_norm(x + residual)                # fused add-norm; the sum becomes the residual
    q, k, v = split(h @ Wqkv (+ bias))        # one GEMM for the three projections
    rotary(q, k, positions)                   # in place
    write_kv(k, v -> cache[slot_mapping])     # new tokens enter the cache before attention reads it
    o = prefill_attention(q[:Tp]) ++ decode_attention(q[Tp:])
    h = rms_norm(o @ Wo + residual)
    x = silu_mul(h @ Wgate_up) @ Wdown

Only the rows that are sampled (the last token of a prefill chunk that completes its prompt, every decode
token) go through the final norm and the LM head. Linear layers are bf16 ``F.linear`` (cuBLAS), the project's
W8A16/W4A16 ``QuantLinear`` or ``W8A8Linear``, or ``Fp8Linear`` (``torch._scaled_mm``); on the CPU their references
(:class:`Linear` over the dequantized weight, :class:`ActQuantLinear` where the input is quantized too). The
elementwise and attention kernels come from a :class:`Backend`.

Under tensor parallelism (``comm``, one process per rank) the config is the rank's (:meth:`EngineModelConfig.
per_rank`: its heads and MLP share), the QKV and gate/up GEMMs are column-parallel and O and down row-parallel,
so ``o @ Wo`` and ``x @ Wdown`` are partial sums: each is all-reduced before the add-norm that follows. The KV
cache holds the rank's KV heads. The LM head is vocabulary-parallel; its logits are all-gathered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from servesim.engine.config import EngineModelConfig
from servesim.engine.kernels import Backend
from servesim.kernels import elementwise as ew
from servesim.kernels.counters import SplitCounters


class Linear:
    """``y = x @ W^T (+ b)`` in the activation dtype through torch (cuBLAS on a GPU)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight, self.bias = weight, bias
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def weight_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size() + (0 if self.bias is None else 2 * self.bias.numel())


class ActQuantLinear(Linear):
    """The CPU reference of a linear that quantizes its input on every call (W8A8, FP8): ``act`` maps x to the
    values the low-precision GEMM sees (quantized per token and back), then ``F.linear`` by the dequantized weight."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, act: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(weight, bias)
        self.act = act

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act(x).to(x.dtype), self.weight, self.bias)


@dataclass
class Layer:
    input_norm: torch.Tensor
    qkv: object  # Linear, ActQuantLinear, QuantLinear, W8A8Linear or Fp8Linear
    o: object
    post_norm: torch.Tensor
    gate_up: object
    down: object


@dataclass
class Weights:
    embed: torch.Tensor  # [V, H]
    layers: list[Layer]
    norm: torch.Tensor
    lm_head: Linear  # kept in the activation dtype in every weight format

    def nbytes(self) -> int:
        """Bytes of every weight tensor (tied embeddings counted once)."""
        seen, total = set(), 0
        tensors = [self.embed, self.norm, self.lm_head.weight]
        for layer in self.layers:
            tensors += [layer.input_norm, layer.post_norm]
            for lin in (layer.qkv, layer.o, layer.gate_up, layer.down):
                tensors += [t for t in vars(lin).values() if isinstance(t, torch.Tensor)]
                if isinstance(lin, torch.nn.Module):
                    tensors += list(lin.buffers())
        for t in tensors:
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total


@dataclass
class AttentionMeta:
    """Where each packed token's attention reads: prefill chunks (varlen) then decoding sequences."""

    num_prefill_tokens: int
    # prefill: int32 cu_seqlens_q [P+1], kv_lens [P], block_tables [P, max_blocks]; host-known max chunk length
    prefill_cu_seqlens: torch.Tensor | None = None
    prefill_kv_lens: torch.Tensor | None = None
    prefill_block_tables: torch.Tensor | None = None
    prefill_max_q_len: int = 0
    # decode: int32 kv_lens [D] (new tokens included), block_tables [D, max_blocks]; tokens per sequence
    decode_kv_lens: torch.Tensor | None = None
    decode_block_tables: torch.Tensor | None = None
    decode_num_q: int = 1
    decode_max_kv_len: int = 0
    decode_num_splits: int | None = None
    decode_split_per_seq: bool = False  # splits cut each sequence's length (graphs: max_kv_len is a bucket)
    decode_counters: SplitCounters | None = None  # the runner's split-merge counters (else zeroed per launch)

    @property
    def num_decode_seqs(self) -> int:
        return 0 if self.decode_kv_lens is None else self.decode_kv_lens.shape[0]


@dataclass
class KVCache:
    """Per-layer paged K/V caches (layout: ``servesim.kernels.attention.kv_cache``) and fp8 scales."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None
    scales: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.k_scale is not None:
            self.scales = {"k_scale": self.k_scale, "v_scale": self.v_scale}

    @property
    def num_blocks(self) -> int:
        return self.k[0].shape[0]

    @property
    def block_size(self) -> int:
        return self.k[0].shape[1]


class LlamaModel:
    """The decoder; ``forward`` is a pure function of its tensors, so it can be captured in a CUDA graph."""

    def __init__(self, cfg: EngineModelConfig, weights: Weights, backend: Backend, max_positions: int,
                 comm=None) -> None:
        self.cfg, self.w, self.backend, self.comm = cfg, weights, backend, comm
        dev = weights.embed.device
        self.cos, self.sin = ew.rope_tables(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling, dev)
        self.dtype = weights.embed.dtype

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
                meta: AttentionMeta, cache: KVCache, sample_idx: torch.Tensor) -> torch.Tensor:
        """Logits ``[len(sample_idx), vocab]`` (activation dtype) of the sampled rows of this iteration."""
        x = F.embedding(input_ids, self.w.embed)
        residual, h = x, torch.empty_like(x)  # the embedding output; later layers add into it in place
        q = self.pre_attention(0, x, residual, h, positions, slot_mapping, cache)
        for i in range(len(self.w.layers)):
            o = self._attention(q, cache.k[i], cache.v[i], meta, cache.scales)
            x = self.post_attention(i, o, residual, h)
            if i + 1 < len(self.w.layers):
                q = self.pre_attention(i + 1, x, residual, h, positions, slot_mapping, cache)
        return self.head(x, residual, sample_idx)

    # The parts of ``forward`` between attentions (``engine/piecewise.py`` captures each as a CUDA graph).
    def pre_attention(self, i: int, x, residual, h, positions, slot_mapping, cache: KVCache) -> torch.Tensor:
        """Layer ``i``'s input norm (adding ``x`` into ``residual`` past layer 0), QKV, rotary and KV write; q."""
        cfg, be, layer = self.cfg, self.backend, self.w.layers[i]
        t = x.shape[0]
        be.rms_norm(x, layer.input_norm, cfg.rms_norm_eps, residual=residual if i else None, out=h)
        qkv = layer.qkv(h)
        q = qkv[:, : cfg.q_size].view(t, cfg.num_heads, cfg.head_dim)
        k = qkv[:, cfg.q_size: cfg.q_size + cfg.kv_size].view(t, cfg.num_kv_heads, cfg.head_dim)
        v = qkv[:, cfg.q_size + cfg.kv_size:].view(t, cfg.num_kv_heads, cfg.head_dim)
        be.rotary(q, k, positions, self.cos, self.sin)
        be.write_kv(k, v, cache.k[i], cache.v[i], slot_mapping, **cache.scales)
        return q

    def post_attention(self, i: int, o: torch.Tensor, residual, h) -> torch.Tensor:
        """Layer ``i``'s O projection, post-attention add-norm and MLP; the layer's output (before its residual)."""
        cfg, be, layer = self.cfg, self.backend, self.w.layers[i]
        x = layer.o(o.reshape(o.shape[0], cfg.q_size))
        if self.comm is not None:
            self.comm.all_reduce(x)
        be.rms_norm(x, layer.post_norm, cfg.rms_norm_eps, residual=residual, out=h)
        x = layer.down(be.silu_mul(layer.gate_up(h)))
        if self.comm is not None:
            self.comm.all_reduce(x)
        return x

    def head(self, x: torch.Tensor, residual: torch.Tensor, sample_idx: torch.Tensor) -> torch.Tensor:
        """The final add-norm and the LM head of the sampled rows."""
        xs, rs = x.index_select(0, sample_idx), residual.index_select(0, sample_idx)
        hs = self.backend.rms_norm(xs, self.w.norm, self.cfg.rms_norm_eps, residual=rs)
        logits = self.w.lm_head(hs)
        if self.comm is not None:  # vocabulary-parallel: every rank's rows, then the padding off
            logits = self.comm.all_gather_cols(logits)[:, : self.cfg.vocab_size]
        return logits

    def _attention(self, q, k_cache, v_cache, meta: AttentionMeta, scales: dict, out=None) -> torch.Tensor:
        be, tp = self.backend, meta.num_prefill_tokens
        o = torch.empty_like(q) if out is None else out
        if tp:
            be.prefill_attention(q[:tp], k_cache, v_cache, meta.prefill_block_tables, meta.prefill_cu_seqlens,
                                 meta.prefill_kv_lens, max_q_len=meta.prefill_max_q_len, out=o[:tp], **scales)
        nd = meta.num_decode_seqs
        if nd:
            n = meta.decode_num_q
            qd = q[tp:].view(nd, n, q.shape[1], q.shape[2]) if n > 1 else q[tp:]
            od = o[tp:].view(qd.shape)
            be.decode_attention(qd, k_cache, v_cache, meta.decode_block_tables, meta.decode_kv_lens,
                                max_kv_len=meta.decode_max_kv_len, out=od, num_splits=meta.decode_num_splits,
                                counters=meta.decode_counters, split_per_seq=meta.decode_split_per_seq, **scales)
        return o
