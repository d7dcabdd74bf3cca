"""Piecewise CUDA graphs of steps with a prefill chunk: everything but attention captured per padded token count.

A step of ``n`` tokens (prefill chunks and decodes) is padded to a bucket ``T >= n``; the padding rows have token
0, position 0 and slot -1 (``write_kv`` skips negative slots), and are neither sampled nor attended: attention
runs eagerly between the pieces over the real rows only (``q[:n]``), with the step's own metadata. Per bucket,
``L + 1`` graphs over static buffers shared by every bucket (``[:T]`` of the largest):

* piece 0: embedding, layer 0's input norm, QKV, rotary, KV write;
* piece i (1 .. L-1): layer i-1's O projection, add-norm and MLP, then layer i's add-norm, QKV, rotary, KV write;
* piece L: the last layer's O projection and MLP, the final norm and the LM head of ``S`` sample rows (the real
  ones, then row 0 again), ``S = min(T, max_seqs)``: every row a step samples is a sequence's.

The buckets are ``servesim.hwmodels.buckets`` (torch-free), the rule the calibrated cost model prices such steps by.
Off by default (``EngineConfig.piecewise_graphs``, the scenario's ``piecewise_graphs``); TP > 1 and speculative
steps stay eager. Without CUDA the same pieces run uncaptured (the CPU tests compare them with the eager forward).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from servesim.engine.model import AttentionMeta, KVCache, LlamaModel
from servesim.hwmodels.buckets import PieceBuckets, doubling, piece_buckets

__all__ = ["PiecewiseGraphs", "doubling", "piece_buckets"]  # the bucket rule lives in hwmodels/buckets.py


class PiecewiseGraphs:
    """The static buffers and, on a GPU, the captured pieces of every bucket."""

    def __init__(self, model: LlamaModel, cache: KVCache, max_tokens: int, max_seqs: int) -> None:
        self.model, self.cache = model, cache
        self.rule = PieceBuckets(max_tokens, max_seqs)  # shared with the cost model
        self.buckets, self.max_seqs = self.rule.buckets, max_seqs
        cfg, dev, rows = model.cfg, model.w.embed.device, self.buckets[-1]
        self.cuda = dev.type == "cuda"
        act = dict(dtype=model.dtype, device=dev)
        self.ids = torch.zeros(rows, dtype=torch.int64, device=dev)
        self.pos = torch.zeros(rows, dtype=torch.int32, device=dev)
        self.slots = torch.full((rows,), -1, dtype=torch.int64, device=dev)
        self.sample = torch.zeros(self.sample_rows(rows), dtype=torch.int64, device=dev)
        self.residual = torch.zeros(rows, cfg.hidden_size, **act)
        self.h = torch.zeros(rows, cfg.hidden_size, **act)
        self.q = torch.zeros(rows, cfg.num_heads, cfg.head_dim, **act)
        self.o = torch.zeros(rows, cfg.num_heads, cfg.head_dim, **act)
        self.logits = torch.zeros(self.sample_rows(rows), cfg.vocab_size, **act)
        self.graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}

    def sample_rows(self, t: int) -> int:
        return self.rule.sample_rows(t)

    def bucket(self, n: int) -> int | None:
        """The bucket of a step of ``n`` tokens, or None (past the largest: eager)."""
        return self.rule.bucket(n)

    def load(self, ids: np.ndarray, pos: np.ndarray, slots: np.ndarray, sample: np.ndarray, t: int) -> None:
        """The step's inputs into the static buffers, padded to bucket ``t``."""
        pad, s = t - len(ids), self.sample_rows(t)
        for buf, a, fill in ((self.ids, ids, 0), (self.pos, pos, 0), (self.slots, slots, -1)):
            buf[:t].copy_(torch.from_numpy(np.pad(a, (0, pad), constant_values=fill)), non_blocking=True)
        self.sample[:s].copy_(torch.from_numpy(np.pad(sample, (0, s - len(sample)))), non_blocking=True)

    def pieces(self, t: int) -> list[Callable[[], None]]:
        """The ``L + 1`` pieces of bucket ``t``, each a closure over the static buffers."""
        m, c = self.model, self.cache
        ids, pos, slots, res, h = self.ids[:t], self.pos[:t], self.slots[:t], self.residual[:t], self.h[:t]
        q, o, num_layers = self.q[:t], self.o[:t], len(m.w.layers)

        def first() -> None:
            torch.index_select(m.w.embed, 0, ids, out=res)
            q.copy_(m.pre_attention(0, res, res, h, pos, slots, c))

        def middle(i: int) -> Callable[[], None]:
            def piece() -> None:
                x = m.post_attention(i - 1, o, res, h)
                q.copy_(m.pre_attention(i, x, res, h, pos, slots, c))
            return piece

        def last() -> None:
            s = self.sample_rows(t)
            x = m.post_attention(num_layers - 1, o, res, h)
            self.logits[:s].copy_(m.head(x, res, self.sample[:s]))

        return [first, *(middle(i) for i in range(1, num_layers)), last]

    def run(self, t: int, n: int, n_sample: int, meta: AttentionMeta) -> torch.Tensor:
        """One padded step: each piece (replayed, or run uncaptured without CUDA) and the real rows' attention
        between them; the logits of the ``n_sample`` sampled rows (a view of the static buffer)."""
        steps = [g.replay for g in self.graphs[t]] if t in self.graphs else self.pieces(t)
        c, m = self.cache, self.model
        steps[0]()
        for i in range(len(m.w.layers)):
            m._attention(self.q[:n], c.k[i], c.v[i], meta, c.scales, out=self.o[:n])
            steps[i + 1]()
        return self.logits[:n_sample]

    def capture(self, t: int, pool) -> object:
        """Capture bucket ``t``'s pieces into ``pool`` (shared with the decode graphs); the pool."""
        pieces = self.pieces(t)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for p in pieces:  # warm-up: compiles kernels and allocates outside the graphs
                p()
        torch.cuda.current_stream().wait_stream(side)
        graphs = []
        for p in pieces:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                p()
            pool = g.pool()
            graphs.append(g)
        self.graphs[t] = graphs
        return pool
