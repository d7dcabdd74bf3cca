"""Iteration-level scheduler: which requests run each step, and how many tokens each.

The same object drives the simulator and the engine (DESIGN.md, "The seam")::

    sched.add(request, now)
    batch = sched.schedule(now)
    ...                                   # run the step: cost model or GPU
    sched.complete(batch, now, accepted)

Batching modes (``BATCHING``):

* ``static``: a batch is admitted only when nothing runs and runs until every member finishes.
* ``continuous``: vLLM v0: when waiting requests can be admitted, a prefill-only step runs their
  whole prompts; otherwise every running request decodes. Prefill and decode never mix.
* ``chunked``: Sarathi-Serve / vLLM v1: every running decode first, then prefill chunks (running
  partial prefills, then new admissions) up to ``max_num_batched_tokens``.
* ``inflight``: TensorRT-LLM's in-flight batching without chunked context: every running decode, then
  whole prompts that fit the rest of ``max_num_batched_tokens``. Prefill and decode mix; prompts never split.

Admission (``ADMISSION``): ``max_utilization`` takes KV blocks as a sequence grows and preempts when they
run out; ``guaranteed_no_evict`` and ``slots`` reserve a request's blocks for its whole life at admission
(its prompt and every output token; a slot of ``max_model_len`` tokens), so the pool can never run dry and
nothing is preempted. ``reserved_blocks`` is the sum of the reservations of the running requests.

Decoding requests live in numpy slot arrays so a decode step costs a handful of vector
operations however many requests run; their ``Request`` fields are written back when they leave
the slots (finish, preemption) or on ``sync()``.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable

import numpy as np

from servesim.hwmodels.ops import BatchShape
from servesim.sim.decode_slots import DecodeSlots
from servesim.sim.kv import KVBlockManager
from servesim.sim.policies import policy_key
from servesim.sim.request import Batch, PrefillChunk, Request, State
from servesim.sim.scheduler_config import ADMISSION, PREEMPTION, SchedulerConfig

__all__ = ["ADMISSION", "BATCHING", "PREEMPTION", "Scheduler", "SchedulerConfig"]

_NO_CONTEXTS = np.zeros(0, np.int64)
_add = np.add.reduce  # a 1-D array's sum without ndarray.sum's Python wrapper (the hot path's block counts)

class Scheduler:
    """Waiting queue + running set + KV blocks of one replica."""

    def __init__(self, config: SchedulerConfig, kv: KVBlockManager, rng: np.random.Generator | None = None):
        assert config.batching in BATCHING, config.batching  # Scenario validates it against BATCHING
        self.config = config
        self.kv = kv
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._key: Callable[[Request], float] = policy_key(config.policy, config.aging)
        self._q = 1 + config.spec_k  # query tokens per decode step
        self.waiting: list[tuple[float, float, int, Request]] = []  # heap by policy key
        self.swapped: list[Request] = []
        self.prefilling: list[Request] = []  # running, prompt (or recompute) not finished
        self.slots = DecodeSlots(config.max_num_seqs, kv.block_size)  # decoding requests
        self._fresh: list[Request] = []  # joined the slots since the last decode step
        self._last_decode_end_s = 0.0
        self._now = 0.0
        self._chunks: list[PrefillChunk] = []  # this step's prefill chunks, while scheduling
        self.finished: list[Request] = []  # finished or rejected; the caller drains it
        # Weighted inter-token-latency sample: each decode step's gap, once per request that
        # produced tokens in two consecutive decode steps; first decode steps come one by one.
        self.itl_s = array("d")
        self.itl_weights = array("q")
        self.num_preemptions = 0
        self.reserved_blocks = 0  # Σ reservation() of the running requests (reserving admissions)
        self._run_need: tuple[int, np.ndarray] = (0, np.zeros(0, np.int64))  # identical_steps' blocks for its run
        # Batch.decode_ctx, each decode's context: the engine's attention needs it, a simulator (which prices
        # the shape's sums) may turn it off, and its batches then carry an empty array
        self.decode_contexts = True

    # -- queries ----------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.slots) + len(self.prefilling)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self.swapped)

    @property
    def has_work(self) -> bool:
        return bool(self.slots or self.prefilling or self.waiting or self.swapped)

    def running(self) -> list[Request]:
        self.sync()
        return self.prefilling + self.slots.reqs

    def sync(self) -> None:
        """Write slot-array progress back into the decoding ``Request`` objects."""
        self.slots.sync()

    # -- admission --------------------------------------------------------------------------
    def add(self, req: Request, now: float) -> None:
        """Queue a new request, or reject it at once when it can never run here.

        A request that arrives holding KV blocks of this pool was prefilled elsewhere (P/D disaggregation:
        its prompt's KV was transferred in, its first token emitted): it joins the decoding requests at
        once, or, when ``max_num_seqs`` already run, waits with its blocks and resumes with a one-token step.
        """
        reason = self._reject_reason(req)
        if reason:
            self.kv.free(req)
            req.state, req.rejected_reason, req.finish_s = State.REJECTED, reason, now
            self.finished.append(req)
            return
        if self.config.policy == "sjf-predicted":
            req.predicted_output_tokens = self.config.predictor.predict(req.output_tokens, self.rng)
        if req.block_ids and req.generated and self.num_running < self.config.max_num_seqs:
            req.state = State.RUNNING
            self._join_decode(req)
            return
        self._enqueue(req)

    def _reject_reason(self, req: Request) -> str:
        c = self.config
        total = req.prompt_tokens + req.output_tokens
        if total > c.max_model_len:
            if c.admission == "slots":
                return f"prompt+output {total:,} tokens exceed the {c.max_model_len:,}-token context of a slot"
            return f"prompt+output {total:,} tokens > max_model_len {c.max_model_len:,}"
        if c.reserves:
            need, usable = self.reservation(req), self.kv.num_blocks
            if need > usable:
                return f"reserves {need:,} KV blocks at admission; the replica has {usable:,}"
            return ""
        need = self.kv.blocks_for(total - 1 + c.spec_k)
        usable = self.kv.num_blocks - self.kv.watermark_blocks
        if need > usable:
            return f"needs {need:,} KV blocks; the replica has {usable:,} (after the admission watermark)"
        return ""

    def reservation(self, req: Request) -> int:
        """KV blocks a reserving admission sets aside for ``req`` until it finishes: enough for its longest
        step (prompt + outputs − 1 + spec_k tokens), or a whole slot; 0 under ``max_utilization``."""
        c = self.config
        if c.admission == "guaranteed_no_evict":
            return self.kv.blocks_for(req.prompt_tokens + req.output_tokens - 1 + c.spec_k)
        if c.admission == "slots":
            return self.kv.blocks_for(c.max_model_len + c.spec_k)
        return 0

    def _enqueue(self, req: Request) -> None:
        req.state = State.WAITING
        heapq.heappush(self.waiting, (self._key(req), req.arrival_s, req.request_id, req))

    # -- scheduling -------------------------------------------------------------------------
    def schedule(self, now: float) -> Batch:
        """Form the next iteration's batch (possibly empty), as the batching mode says."""
        self._now = now
        self._chunks = []
        return BATCHING[self.config.batching](self, self._chunks, [])

    def _form_chunked(self, prefill: list[PrefillChunk], preempted: list[Request], chunked: bool = True) -> Batch:
        """Every running decode, then chunks of running prefills, then new admissions, within the budget
        (``chunked=False``: in-flight batching, whole prompts only)."""
        # Swapped requests come back first when nothing runs; otherwise only after the running
        # requests got their blocks without preemption (no swap thrash, as vLLM v0), and then
        # they join from the next step on.
        swap_in = self._swap_in() if not (self.slots or self.prefilling) else 0
        decode = self._grow_decodes(preempted)
        budget = self.config.max_num_batched_tokens - len(self.slots) * self._q
        budget = self._continue_prefills(prefill, budget, preempted)
        n_decode = len(self.slots) if decode else 0
        if not preempted:
            swap_in += self._swap_in()
        if not self.swapped:
            self._admit(prefill, budget, chunked=chunked)
        return self._make_batch(prefill, n_decode, preempted, swap_in)

    def _form_inflight(self, prefill: list[PrefillChunk], preempted: list[Request]) -> Batch:
        """Every running decode, then whole prompts of new admissions within the rest of the budget (a request
        is admitted only with all of its prompt, so no prefill runs across steps)."""
        return self._form_chunked(prefill, preempted, chunked=False)

    def _form_continuous(self, prefill: list[PrefillChunk], preempted: list[Request]) -> Batch:
        """Whole-prompt prefills when any can be admitted (swapped ones first), else every decode."""
        swap_in = self._swap_in()
        if not self.swapped:
            self._admit(prefill, self.config.max_num_batched_tokens, chunked=False)
        decode = not prefill and self._grow_decodes(preempted)
        return self._make_batch(prefill, len(self.slots) if decode else 0, preempted, swap_in)

    def _form_static(self, prefill: list[PrefillChunk], preempted: list[Request]) -> Batch:
        """A new batch (swapped-out members first) only once nothing runs; then decode it to the end."""
        swap_in = 0
        if not self.slots and not self.prefilling:
            swap_in = self._swap_in()
            if not self.swapped:
                self._admit(prefill, self.config.max_num_batched_tokens, chunked=False)
        decode = not prefill and self._grow_decodes(preempted)
        return self._make_batch(prefill, len(self.slots) if decode else 0, preempted, swap_in)

    def _make_batch(self, prefill: list[PrefillChunk], n: int, preempted: list[Request], swap_in: int) -> Batch:
        """The batch of this step: ``prefill`` chunks and the first ``n`` decoding slots."""
        q, slots = self._q, self.slots
        ctx = slots.contexts(n, q) if self.decode_contexts else _NO_CONTEXTS
        p_tok = p_pairs = p_ctx = completes = 0
        for ch in prefill:
            t, b = ch.tokens, ch.context_before
            p_tok += t
            p_pairs += t * b + t * (t + 1) // 2
            p_ctx += b + t
            completes += ch.completes
        shape = BatchShape(
            prefill_seqs=len(prefill),
            prefill_tokens=p_tok,
            prefill_attn_pairs=p_pairs,
            prefill_ctx_tokens=p_ctx,
            decode_seqs=n,
            decode_query_tokens=n * q,
            decode_ctx_tokens=slots.context_sum(n, q),
            decode_ctx_max=slots.context_max(n, q) if n else 0,
            sampled_tokens=completes + n * q,
        )
        swap_out = sum(r.swapped_blocks for r in preempted if r.state == State.SWAPPED) if preempted else 0
        return Batch(prefill, self.slots.reqs[:n], ctx, q, shape, 1, swap_in, swap_out, preempted)

    def _grow_decodes(self, preempted: list[Request]) -> bool:
        """Give every decoding request blocks for this step's tokens, preempting if they run out."""
        slots, q = self.slots, self._q
        while slots:
            n = len(slots)
            if q <= slots.block_size:  # at most one block each: only the slots at a block boundary
                idx = slots.short(n, q)
                total = len(idx)
                if total <= self.kv.num_free:
                    if total:
                        self.kv.grow_many([slots.reqs[i] for i in idx.tolist()], [1] * total, total)
                        slots.grant(idx)
                    return True
            else:
                need = slots.block_need(n, q)
                total = int(need.sum())
                if total <= self.kv.num_free:
                    if total:
                        self._give_blocks(need, total)
                    return True
            self._preempt(self._victim(), preempted)
        return False

    def _give_blocks(self, need: np.ndarray, total: int) -> None:
        """Append ``need[i]`` blocks to decoding slot ``i`` (``total`` = their sum, known to fit)."""
        idx = need.nonzero()[0]
        reqs, blocks = self.slots.reqs, need[idx]
        self.kv.grow_many([reqs[i] for i in idx.tolist()], blocks.tolist(), total)
        self.slots.grant(idx, blocks)

    def _continue_prefills(self, prefill: list[PrefillChunk], budget: int, preempted: list[Request]) -> int:
        """Next chunks of running partial prefills, in admission order, within the budget.

        When the pool cannot hold a chunk, the policy's last-ranked running request is preempted
        (possibly the chunk's own request), so partial prefills can never deadlock the pool.
        """
        for r in list(self.prefilling):
            if budget <= 0:
                break
            if r not in self.prefilling:  # preempted for an earlier chunk
                continue
            chunk = min(r.remaining_prefill, budget)
            need = self.kv.blocks_for(r.num_computed + chunk) - len(r.block_ids)
            while need > self.kv.num_free and r in self.prefilling:
                self._preempt(self._victim(), preempted)
            if r not in self.prefilling:
                continue
            self.kv.grow(r, need)
            prefill.append(PrefillChunk(r, chunk, r.num_computed))
            budget -= chunk
        return budget

    def _swap_in(self) -> int:
        """Bring swapped requests back (before any new admission), in policy order."""
        if not self.swapped:
            return 0
        moved = 0
        self.swapped.sort(key=lambda r: (self._key(r), r.arrival_s, r.request_id))
        while self.swapped and self.num_running < self.config.max_num_seqs:
            r = self.swapped[0]
            n = r.swapped_blocks
            if not self.kv.swap_in(r):
                break
            self.swapped.pop(0)
            moved += n
            r.state = State.RUNNING
            if r.remaining_prefill == 1 and r.generated > 0:
                self._join_decode(r)
            else:
                self.prefilling.append(r)
        return moved

    def _admit(self, prefill: list[PrefillChunk], budget: int, *, chunked: bool) -> None:
        """Admit waiting requests in policy order; stop at the first that does not fit."""
        c = self.config
        while self.waiting and budget > 0 and self.num_running < c.max_num_seqs:
            r = self.waiting[0][3]
            hits = self.kv.cached_prefix_blocks(r) if not r.block_ids else []
            start = max(r.num_computed, len(hits) * self.kv.block_size)
            remaining = r.known_tokens - start
            chunk = min(remaining, budget) if chunked else remaining
            if chunk > budget:
                break
            blocks, hits = self.kv.admission_blocks(r, start + chunk)
            if c.reserves:  # the whole life's blocks must fit beside the running requests' reservations
                res = self.reservation(r)
                if self.reserved_blocks + res > self.kv.num_blocks or not self.kv.can_allocate(blocks):
                    break
                self.reserved_blocks += res
            elif not self.kv.can_allocate(blocks, watermark=True):
                break
            heapq.heappop(self.waiting)
            self.kv.allocate(r, start + chunk, hits)
            r.state = State.RUNNING
            if r.first_scheduled_s != r.first_scheduled_s:  # NaN: first admission
                r.first_scheduled_s = self._now
            self.prefilling.append(r)
            prefill.append(PrefillChunk(r, chunk, r.num_computed))
            budget -= chunk

    # -- preemption -------------------------------------------------------------------------
    def _victim(self) -> Request:
        """The running request the policy ranks last (ties: the latest arrival)."""
        self.sync()
        return max(self.prefilling + self.slots.reqs, key=lambda r: (self._key(r), r.arrival_s, r.request_id))

    def _preempt(self, r: Request, preempted: list[Request]) -> None:
        if r in self.prefilling:
            self.prefilling.remove(r)
            self._chunks[:] = [ch for ch in self._chunks if ch.request is not r]
        else:
            self._leave_slots(r)
        r.num_preemptions += 1
        self.num_preemptions += 1
        preempted.append(r)
        if self.config.preemption == "swap" and self.kv.swap_out(r):
            r.state = State.SWAPPED
            self.swapped.append(r)
            return
        self.kv.free(r)
        r.num_computed = 0
        self._enqueue(r)

    # -- slots ------------------------------------------------------------------------------
    def _join_decode(self, r: Request) -> None:
        self.slots.join(r)
        self._fresh.append(r)

    def _leave_slots(self, r: Request) -> None:
        if r in self._fresh:
            self._fresh.remove(r)
        else:  # it decoded in the last decode step
            r.last_token_s = self._last_decode_end_s
        self.slots.leave(r)

    # -- completion -------------------------------------------------------------------------
    def complete(
        self,
        batch: Batch,
        now: float,
        accepted: np.ndarray | None = None,
        step_ends_s: np.ndarray | None = None,
    ) -> None:
        """Advance every request of ``batch``, which ended at ``now``.

        ``accepted``: tokens emitted per decoding request (1 + accepted drafts) under speculative
        decoding. ``step_ends_s``: end time of each step when ``batch.steps`` > 1.
        """
        if batch.decode:
            self._complete_decodes(batch, now, accepted, step_ends_s)
        for ch in batch.prefill:
            r = ch.request
            r.num_computed += ch.tokens
            self.kv.commit(r)
            if not ch.completes:
                continue
            self.prefilling.remove(r)
            r.generated += 1
            self._token(r, now)
            if r.first_token_s != r.first_token_s:
                r.first_token_s = now
            elif r.last_token_s == r.last_token_s:  # resumed after preemption: one long gap
                self.itl_s.append(now - r.last_token_s)
                self.itl_weights.append(1)
            r.last_token_s = now
            if r.generated >= r.output_tokens:
                self._finish(r, now)
            else:
                self._join_decode(r)

    def _complete_decodes(self, batch: Batch, now: float, accepted, step_ends_s) -> None:
        n, steps = len(batch.decode), batch.steps
        ends = step_ends_s if steps > 1 else (now,)
        # Requests whose previous token came from a prefill (or before a swap): their own gap.
        # Those swapped in after this batch formed sit beyond slot n and wait for the next step.
        fresh = [r for r in self._fresh if self.slots.index(r) < n]
        for r in fresh:
            self.itl_s.append(ends[0] - r.last_token_s)
            self.itl_weights.append(1)
        old = n - len(fresh)
        prev = self._last_decode_end_s
        if steps > 1:  # one gap per step: steps 2.. are every request's; step 1 is the old ones' only
            if old:
                self.itl_s.append(ends[0] - prev)
            self.itl_s.frombytes((ends[1:] - ends[:-1]).tobytes())
            if old:
                self.itl_weights.append(old)
            self.itl_weights.extend(array("q", (n,)) * (steps - 1))
            prev = float(ends[-1])
        else:
            if old:
                self.itl_s.append(now - prev)
                self.itl_weights.append(old)
            prev = now
        if fresh:
            self._fresh = [r for r in self._fresh if r not in fresh]
        self._last_decode_end_s = prev
        before = self.slots.gen[:n].copy() if self.config.record_token_times else None
        done = self.slots.advance(n, steps if accepted is None else accepted, clip=accepted is not None)
        if before is not None:
            for r, emitted in zip(batch.decode, (self.slots.gen[:n] - before).tolist()):
                r.token_times_s.extend(ends if accepted is None else [now] * emitted)
        for i in done.tolist():
            r = self.slots.reqs[i]
            self._leave_slots(r)
            r.last_token_s = now
            self._finish(r, now)

    def _token(self, r: Request, now: float) -> None:
        if self.config.record_token_times:
            if r.token_times_s is None:
                r.token_times_s = []
            r.token_times_s.append(now)

    def _finish(self, r: Request, now: float) -> None:
        r.state, r.finish_s = State.FINISHED, now
        if self.config.reserves:
            self.reserved_blocks -= self.reservation(r)
        self.kv.free(r)
        self.kv.forget(r)
        self.finished.append(r)

    # -- fast-forward -----------------------------------------------------------------------
    def identical_steps(self, batch: Batch) -> int:
        """How many identical pure-decode steps ``batch`` could run before anything changes.

        Counts the steps up to and including the first finish for which the KV pool has room,
        so that running them at once is exactly what stepping one by one would do. 1 when the
        batch is not pure decode, when speculation makes steps random, or when requests wait to
        be swapped in.
        """
        n = len(batch.decode)
        if (not n or batch.prefill or self.prefilling or self.swapped or self._q != 1 or batch.preempted
                or batch.swap_in_blocks):
            return 1
        m_max = self.slots.steps_to_first_finish(n)
        if m_max <= 1:
            return 1
        free = self.kv.num_free

        def fits(m: int) -> bool:  # blocks for steps 2..m beyond what step 1 already holds
            return int(self.slots.block_need(n, m).sum()) <= free

        need = self.slots.block_need(n, m_max)
        if int(_add(need)) <= free:  # the common case: the pool has room for the whole run
            self._run_need = (m_max, need)  # extend's, if the run is not cut short
            return m_max
        self._run_need = (0, need)
        lo, hi = 1, m_max - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    def extend(self, batch: Batch, steps: int) -> None:
        """Turn a one-step pure-decode ``batch`` into ``steps`` identical steps (KV included); ``identical_steps``
        asked of this batch just before."""
        if steps <= 1:
            return
        m, need = self._run_need
        if m != steps:
            need = self.slots.block_need(len(batch.decode), steps)
        total = int(_add(need))
        if total:
            self._give_blocks(need, total)
        batch.steps = steps


    def chunk_steps(self, batch: Batch) -> int:
        """How many steps like ``batch`` could run before anything changes, when it is every decode and one
        chunk of the first partial prefill that takes the whole token budget and does not finish its prompt
        (chunked batching): each next step is then the same decodes one token on and the next chunk of the same
        size, and nothing else can join (no budget is left to admit). Counts the steps up to and including
        the first decode's finish and the last chunk that still leaves tokens to prefill, for which the KV pool
        has room (decode blocks and the chunks' blocks), so that running them at once is exactly what stepping
        one by one does. 1 when the batch is of any other kind."""
        if (len(batch.prefill) != 1 or self.config.batching != "chunked" or self._q != 1 or self.swapped
                or batch.preempted or batch.swap_in_blocks or batch.swap_out_blocks):
            return 1
        ch = batch.prefill[0]
        r, c, n = ch.request, ch.tokens, len(batch.decode)
        if (n != len(self.slots) or self.prefilling[0] is not r or ch.completes
                or c != self.config.max_num_batched_tokens - n):
            return 1
        m_max = (r.known_tokens - ch.context_before - 1) // c  # chunks of c that leave tokens to prefill
        if n:
            m_max = min(m_max, self.slots.steps_to_first_finish(n))
        if m_max <= 1:
            return 1
        free, kv, held = self.kv.num_free, self.kv, len(r.block_ids)

        def fits(m: int) -> bool:  # blocks for steps 2..m beyond what step 1 already holds
            need = kv.blocks_for(ch.context_before + c * m) - held
            return need + (int(self.slots.block_need(n, m).sum()) if n else 0) <= free

        if fits(m_max):
            return m_max
        lo, hi = 1, m_max - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    @staticmethod
    def chunk_shape(batch: Batch, i: int) -> BatchShape:
        """The shape of step ``i`` (0: ``batch`` itself) of a run that ``chunk_steps`` allows: decode contexts
        ``i`` tokens longer, the chunk ``i`` chunks further into its prompt (as ``_make_batch`` would form it)."""
        s, ch = batch.shape, batch.prefill[0]
        t, b, n = ch.tokens, ch.context_before + ch.tokens * i, s.decode_seqs
        return BatchShape(
            prefill_seqs=1, prefill_tokens=t, prefill_attn_pairs=t * b + t * (t + 1) // 2, prefill_ctx_tokens=b + t,
            decode_seqs=n, decode_query_tokens=n, decode_ctx_tokens=s.decode_ctx_tokens + n * i,
            decode_ctx_max=s.decode_ctx_max + i if n else 0, sampled_tokens=n,
        )

    def extend_chunks(self, batch: Batch, steps: int) -> list[int]:
        """Turn ``batch`` into ``steps`` steps of the run ``chunk_steps`` allowed (asked just before): the decodes'
        blocks for every step, the prompt's for every chunk, one chunk of ``steps`` chunks' tokens. Returns the
        KV blocks in use once each step has its blocks (what the pool holds at the end of each step but the last,
        whose finishes free theirs), as stepping one by one would take them."""
        n, ch, kv = len(batch.decode), batch.prefill[0], self.kv
        r, used = ch.request, kv.num_used
        held = len(r.block_ids)
        # step i (1-based) holds the decodes' blocks for i tokens and the prompt's for i chunks
        dec = [0] * steps
        if n:
            i = np.arange(1, steps + 1)[:, None]
            grants = ((i + (self.slots.block_size - 1)) + self.slots.over[:n]) // self.slots.block_size
            dec = np.maximum(grants, 0).sum(axis=1).tolist()
        pre = [kv.blocks_for(ch.context_before + ch.tokens * i) - held for i in range(1, steps + 1)]
        if n:
            need = self.slots.block_need(n, steps)
            total = int(need.sum())
            if total:
                self._give_blocks(need, total)
        kv.grow(r, pre[-1])
        batch.prefill[0] = PrefillChunk(r, ch.tokens * steps, ch.context_before)
        batch.steps = steps
        return [used + d + p for d, p in zip(dec, pre)]


# Batching modes: how a step is formed. One place to add a mode (Scenario validates against it).
BATCHING: dict[str, Callable[[Scheduler, list[PrefillChunk], list[Request]], Batch]] = {
    "static": Scheduler._form_static,
    "continuous": Scheduler._form_continuous,
    "chunked": Scheduler._form_chunked,
    "inflight": Scheduler._form_inflight,
}
