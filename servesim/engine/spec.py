"""Speculative decoding in the engine: a draft model proposes ``k`` tokens per decoding sequence, the target
verifies the ``1 + k`` in one forward pass, and the step emits the accepted prefix plus one token of the target's.

The draft keeps its own paged KV cache on the same block ids as the target's (the scheduler gives every
sequence room for ``1 + k`` new tokens per step, which both models use), so its block tables and slots are the
target's. Per decoding sequence the draft holds KV for the positions below ``drafted[r]``; a step first brings
it up to the last emitted token (one token, or two after a step that accepted every draft: the last draft was
never fed to the draft model), then proposes ``k`` tokens greedily. Prefill chunks run through the draft too.
Here the passes run eagerly; a pure-decode step runs them and the verification as one CUDA graph instead
(``spec_graph.py``), with the same bookkeeping (``behind``, ``proposed``, ``accept``).

Acceptance:

* ``greedy`` (temperature 0): a draft token is accepted while it equals the target's argmax at its position,
  and the target's token at the first mismatch (or after the last draft) is emitted too: exactly the tokens
  plain greedy decoding would emit.
* ``controlled``: the number of tokens emitted is drawn from the simulator's acceptance model (i.i.d. with a set
  alpha, or per request Beta) while the real draft passes and the real verification run, so the step costs what
  speculation costs at that acceptance on any model shape (random weights accept nothing); labelled in every
  output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from servesim.engine.model import AttentionMeta, KVCache, LlamaModel
from servesim.sim.request import Batch, Request

MODES = ("greedy", "controlled")


@dataclass
class SpecDecoder:
    draft: LlamaModel
    cache: KVCache
    k: int
    mode: str = "greedy"
    acceptance: object | None = None  # the simulator's acceptance model, for the controlled mode
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    drafted: dict[int, int] = field(default_factory=dict)  # request id -> positions the draft holds KV for
    alphas: dict[int, float] = field(default_factory=dict)  # per-request acceptance draws (controlled, Beta)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"spec mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "controlled" and self.acceptance is None:
            raise ValueError("the controlled mode needs an acceptance model")

    def release(self, r: Request) -> None:
        self.drafted.pop(r.request_id, None)
        self.alphas.pop(r.request_id, None)

    # -- the draft's passes ---------------------------------------------------------------------------------
    def prefill(self, ids, pos, slots, meta: AttentionMeta, n_pre: int) -> None:
        """The draft over this step's prefill chunks (its KV for the prompts)."""
        if not n_pre:
            return
        dmeta = AttentionMeta(num_prefill_tokens=n_pre, prefill_cu_seqlens=meta.prefill_cu_seqlens,
                              prefill_kv_lens=meta.prefill_kv_lens, prefill_block_tables=meta.prefill_block_tables,
                              prefill_max_q_len=meta.prefill_max_q_len, decode_counters=meta.decode_counters)
        last = meta.prefill_cu_seqlens[1:].long() - 1
        self.draft.forward(ids[:n_pre], pos[:n_pre], slots[:n_pre], dmeta, self.cache, last)

    def propose(self, runner, batch: Batch, prefill_requests: list[Request]) -> dict[int, list[int]]:
        """``k`` greedy draft tokens for every decoding request of ``batch``."""
        dev, bs, q = runner.device, runner.block_size, batch.decode_query
        for r in prefill_requests:  # their draft KV now covers what the chunk computed
            ch_end = next(ch.context_before + ch.tokens for ch in batch.prefill if ch.request is r)
            self.drafted[r.request_id] = ch_end
        reqs = list(batch.decode)
        if not reqs:
            return {}
        ctx = np.asarray(batch.decode_ctx[: len(reqs)], np.int64)
        p0 = ctx - q  # position of each sequence's last emitted token
        table = torch.from_numpy(runner._table(reqs, len(reqs))).to(dev)
        # pass 0: catch up to the last emitted token (one or two tokens each), through the varlen prefill path
        ids, pos, slots, cu, kvl = [], [], [], [0], []
        for r, p in zip(reqs, p0.tolist(), strict=True):
            start = min(self.drafted.get(r.request_id, p), p)
            toks = runner.tokens[r.request_id]
            ids += toks[start: p + 1]
            pos += range(start, p + 1)
            slots += [r.block_ids[x // bs] * bs + x % bs for x in range(start, p + 1)]
            cu.append(cu[-1] + p + 1 - start)
            kvl.append(p + 1)
        meta = AttentionMeta(num_prefill_tokens=cu[-1], decode_counters=runner._counters,
                             prefill_cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=dev),
                             prefill_kv_lens=torch.tensor(kvl, dtype=torch.int32, device=dev),
                             prefill_block_tables=table, prefill_max_q_len=max(b - a for a, b in zip(cu, cu[1:])))
        t = lambda x, dt: torch.tensor(x, dtype=dt, device=dev)  # noqa: E731
        last = t(cu[1:], torch.int64) - 1
        logits = self.draft.forward(t(ids, torch.int64), t(pos, torch.int32), t(slots, torch.int64), meta, self.cache,
                                    last)
        drafts = [torch.argmax(logits, dim=-1)]
        # passes 1 .. k-1: one token each, through the decode path
        for j in range(1, self.k):
            pj = p0 + j
            slot = np.array([r.block_ids[x // bs] * bs + x % bs for r, x in zip(reqs, pj.tolist(), strict=True)])
            dmeta = AttentionMeta(num_prefill_tokens=0, decode_counters=runner._counters,
                                  decode_kv_lens=t((pj + 1).tolist(), torch.int32), decode_block_tables=table,
                                  decode_max_kv_len=int(pj.max()) + 1)
            logits = self.draft.forward(drafts[-1], t(pj.tolist(), torch.int32), t(slot.tolist(), torch.int64), dmeta,
                                        self.cache, torch.arange(len(reqs), device=dev))
            drafts.append(torch.argmax(logits, dim=-1))
        proposed = torch.stack(drafts, dim=1).tolist()
        out = {}
        for r, p, d in zip(reqs, p0.tolist(), proposed, strict=True):
            out[r.request_id] = d
            self.drafted[r.request_id] = p + self.k  # positions p .. p+k-1 now hold draft KV
        return out

    def behind(self, reqs: list[Request], p0: np.ndarray) -> np.ndarray:
        """Tokens the draft must take in to hold KV up to each sequence's last emitted token (at ``p0``): 1, or 2
        after a step that accepted every draft."""
        return np.array([p + 1 - min(self.drafted.get(r.request_id, p), p) for r, p in
                         zip(reqs, np.asarray(p0).tolist(), strict=True)], np.int64)

    def proposed(self, reqs: list[Request], p0: np.ndarray) -> None:
        """Record that the draft proposed ``k`` tokens after each ``p0`` (a fixed-shape step did, on the device)."""
        for r, p in zip(reqs, np.asarray(p0).tolist(), strict=True):
            self.drafted[r.request_id] = p + self.k  # positions p .. p+k-1 now hold draft KV

    # -- acceptance -------------------------------------------------------------------------------------------
    def accept(self, reqs: list[Request], drafts: dict[int, list[int]], target_tokens: list[int]) -> list[list[int]]:
        """Tokens each decoding request emits, from the target's greedy tokens at its ``1 + k`` positions."""
        k1 = self.k + 1
        counts = self._controlled(reqs) if self.mode == "controlled" else None
        out = []
        for i, r in enumerate(reqs):
            d, g = drafts[r.request_id], target_tokens[i * k1:(i + 1) * k1]
            if counts is None:
                a = 0
                while a < self.k and d[a] == g[a]:
                    a += 1
                e = a + 1
            else:
                e = int(counts[i])
            out.append(d[: e - 1] + [g[e - 1]])
            # the draft's KV is valid up to the last accepted position (stale beyond: rewritten next step)
            p = self.drafted[r.request_id] - self.k
            self.drafted[r.request_id] = p + min(e, self.k)
        return out

    def _controlled(self, reqs: list[Request]) -> np.ndarray:
        model = self.acceptance
        if hasattr(model, "draw_alpha"):
            alphas = np.array([self.alphas.setdefault(r.request_id, model.draw_alpha(self.rng)) for r in reqs])
            return model.sample_for(self.rng, alphas)
        return model.sample(self.rng, len(reqs))
