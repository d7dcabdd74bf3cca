"""Invariants of the serving core, checked after every ``schedule()`` and at the end of a run.

``Invariants.check`` is the ``check`` callback of ``tests.serving_driver.drive``; ``finish`` runs the
end-of-run checks. A shadow model counts emitted tokens from the batches alone (prefill chunks that
reach the end of the known sequence emit one token; a decode emits its accepted tokens, capped at the
output length), so token conservation is checked against the scheduler's own counters.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np

from servesim.sim.policies import policy_key
from servesim.sim.request import Batch, Request, State
from servesim.sim.scheduler import Scheduler, SchedulerConfig


class RecordingAccept:
    """Wraps the drafts-acceptance generator of ``drive`` and remembers its last draw.

    ``drive`` emits ``1 + draw`` tokens per decoding request: the verified token plus accepted drafts.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.last: np.ndarray | None = None

    def integers(self, low, high, size):
        self.last = self.rng.integers(low, high, size=size)
        return self.last


class Invariants:
    """Per-step and end-of-run checks for one ``drive`` run."""

    def __init__(self, config: SchedulerConfig, accept: RecordingAccept | None = None) -> None:
        self.c = config
        self.accept = accept
        self.q = 1 + config.spec_k
        key = policy_key(config.policy, config.aging)
        # The key a waiting request had when it was queued (num_computed is 0 for every waiting request;
        # prefix-cache hits raise it at admission, which would change SRPT's key).
        self.key = lambda r: (key(dataclasses.replace(r, num_computed=0, block_ids=[])), r.arrival_s, r.request_id)
        self.gen: Counter[int] = Counter()  # shadow count of emitted tokens per request id
        self.emitted = 0
        self.preempted = 0
        self.steps = 0
        self.pending: Batch | None = None
        self.prev: Batch | None = None

    # -- every step --------------------------------------------------------------------------
    def check(self, sched: Scheduler, batch: Batch, waiting_before: list[Request]) -> None:
        self._account_decodes(self.pending)
        self.pending = batch
        self.steps += 1
        self.preempted += len(batch.preempted)
        running = sched.running()  # syncs slot progress into the requests
        c, kv = self.c, sched.kv
        assert len(running) <= c.max_num_seqs and batch.size <= c.max_num_seqs
        members = [ch.request for ch in batch.prefill] + list(batch.decode)
        assert len({id(r) for r in members}) == len(members), "a request twice in one batch"
        assert all(r.state == State.RUNNING for r in members)
        if c.batching != "static" or batch.prefill:
            assert batch.num_tokens <= c.max_num_batched_tokens, (batch.num_tokens, c.max_num_batched_tokens)
        if c.batching not in ("chunked", "inflight"):
            assert not (batch.prefill and batch.decode), "continuous/static never mix prefill and decode"
        if c.batching != "chunked":
            assert all(ch.completes for ch in batch.prefill), "a prompt split without chunked prefill"
        if c.reserves:
            assert not batch.preempted, f"{c.admission} admission preempted a request"
            assert sched.reserved_blocks == sum(sched.reservation(r) for r in running), "reservations drifted"
            assert kv.num_used <= sched.reserved_blocks <= kv.num_blocks, "blocks held beyond the reservations"
        if c.admission == "slots":
            assert all(r.prompt_tokens + r.output_tokens <= c.max_model_len for r in running), "over a slot"
        if c.batching == "static" and batch.prefill and self.prev is not None:
            prev = [ch.request for ch in self.prev.prefill] + list(self.prev.decode)
            assert all(r.state == State.FINISHED for r in prev), "static admitted while a batch was running"
        self.prev = batch
        self._check_chunks(batch, kv)
        self._account_prefills(batch)
        self._check_decodes(batch, kv)
        self._check_blocks(sched)
        self._check_order(sched, batch, waiting_before)

    def _check_chunks(self, batch: Batch, kv) -> None:
        for ch in batch.prefill:
            r = ch.request
            assert ch.tokens >= 1 and ch.context_before == r.num_computed
            assert ch.context_before + ch.tokens <= r.prompt_tokens + self.gen[r.request_id], "chunk past the end"
            assert len(r.block_ids) >= kv.blocks_for(ch.context_before + ch.tokens), "chunk without KV room"

    def _check_decodes(self, batch: Batch, kv) -> None:
        assert len(batch.decode_ctx) == len(batch.decode) and batch.decode_query == self.q
        for r, ctx in zip(batch.decode, batch.decode_ctx.tolist()):
            g = self.gen[r.request_id]
            assert 1 <= g < r.output_tokens, "decoding a request that has not started or is done"
            assert ctx == r.prompt_tokens + g - 1 + self.q, "decode context length"
            assert len(r.block_ids) >= kv.blocks_for(ctx), "decode without KV room"

    def _check_blocks(self, sched: Scheduler) -> None:
        """Block tables, reference counts and the free pool agree; nothing exceeds capacity."""
        kv = sched.kv
        assert 0 <= kv.num_used <= kv.num_blocks
        refs = Counter(b for r in sched.running() for b in r.block_ids)
        for r in [e[3] for e in sched.waiting] + sched.swapped:
            assert not r.block_ids, "a waiting or swapped request holds GPU blocks"
        free, evictable = set(kv._free), set(kv._evictable)
        assert len(free) == len(kv._free) and not free & evictable
        assert not free & set(refs) and not evictable & set(refs), "a block is both held and free"
        if kv.prefix_caching:
            assert all(kv._ref[b] == n for b, n in refs.items()), "reference counts disagree with block tables"
        else:  # nothing is shared (and the manager skips reference counting)
            assert all(n == 1 for n in refs.values()), "a block in two block tables without prefix caching"
        assert len(refs) + len(free) + len(evictable) == kv.num_blocks, "blocks lost or invented"
        swapped = sum(r.swapped_blocks for r in sched.swapped)
        assert kv.swap_free >= 0 and swapped == kv.swap_capacity - kv.swap_free

    def _check_order(self, sched: Scheduler, batch: Batch, waiting_before: list[Request]) -> None:
        """Admissions come from the head of the policy-ordered queue (head-of-line blocking)."""
        before = {r.request_id for r in waiting_before}
        admitted = [ch.request for ch in batch.prefill if ch.request.request_id in before]
        still = [e[3] for e in sched.waiting]
        if admitted and still:
            assert max(map(self.key, admitted)) < min(map(self.key, still)), "admission skipped the queue order"
        if admitted and self.c.batching != "static":
            assert not sched.swapped, "a new request was admitted while swapped ones wait"

    def _account_prefills(self, batch: Batch) -> None:
        """A chunk that reaches the end of the known sequence emits one token (checked before the step)."""
        for ch in batch.prefill:
            r = ch.request
            completes = ch.context_before + ch.tokens == r.prompt_tokens + self.gen[r.request_id]
            assert ch.completes == completes
            self.gen[r.request_id] += completes
            self.emitted += completes

    def _account_decodes(self, batch: Batch | None) -> None:
        """A decode emits its accepted tokens, capped at the output length (known after the step)."""
        if batch is not None and batch.decode:
            acc = [1] * len(batch.decode) if self.accept is None else (1 + self.accept.last).tolist()
            assert len(acc) == len(batch.decode)
            for r, a in zip(batch.decode, acc):
                n = min(a, r.output_tokens - self.gen[r.request_id])
                self.gen[r.request_id] += n
                self.emitted += n

    # -- end of run --------------------------------------------------------------------------
    def finish(self, sched: Scheduler, requests: list[Request], swap_blocks: int) -> None:
        self._account_decodes(self.pending)
        self.pending = None
        kv = sched.kv
        assert not sched.has_work
        assert kv.num_free == kv.num_blocks, "KV blocks leaked"
        assert kv.swap_free == swap_blocks, "swap space leaked"
        assert sched.reserved_blocks == 0, "reservations leaked"
        assert sorted(r.request_id for r in sched.finished) == sorted(r.request_id for r in requests)
        assert sum(r.generated for r in requests) == self.emitted, "token counts not conserved"
        assert sum(r.num_preemptions for r in requests) == sched.num_preemptions == self.preempted
        for r in requests:
            if r.state == State.REJECTED:
                assert r.rejected_reason and r.generated == 0 and math.isnan(r.first_scheduled_s)
                if self.c.admission == "slots" and r.prompt_tokens + r.output_tokens > self.c.max_model_len:
                    assert "context of a slot" in r.rejected_reason, r.rejected_reason
                continue
            assert r.state == State.FINISHED and not r.rejected_reason
            assert r.generated == r.output_tokens == self.gen[r.request_id]
            assert r.arrival_s <= r.first_scheduled_s <= r.first_token_s <= r.finish_s
            assert r.first_token_s - r.arrival_s <= r.finish_s - r.arrival_s  # TTFT <= E2E
            assert r.last_token_s == r.finish_s and not r.block_ids and r.swapped_blocks == 0
            if self.c.record_token_times:
                t = r.token_times_s
                assert len(t) == r.generated and t[0] == r.first_token_s and t[-1] == r.finish_s
                assert all(a <= b for a, b in zip(t, t[1:]))
