"""The model runner: turns the scheduler's ``Batch`` into one forward pass over the paged KV cache.

It owns what the scheduler does not: each request's token ids, the KV cache tensors, the CPU copies of
swapped-out blocks, CUDA graphs of pure-decode steps, and sampling. The block ids come from the scheduler's
``KVBlockManager`` unchanged (``Request.block_ids``), so block tables and slot mappings are built from them:
position ``p`` of a request lives in slot ``block_ids[p // block_size] * block_size + p % block_size``.

Prompts: a trace gives lengths, not text, so prompt token ids are drawn from a generator seeded by the
request (or, for traces with prefix hashes, by each hash block's id, so requests that share a prefix share
its tokens and a prefix-cache hit reuses KV that is really the same).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from servesim.engine import spec_graph
from servesim.engine.model import AttentionMeta, KVCache, LlamaModel
from servesim.engine.piecewise import PiecewiseGraphs
from servesim.hwmodels.buckets import doubling
from servesim.kernels.attention.decode import choose_num_splits
from servesim.kernels.counters import SplitCounters, sm_count
from servesim.sim.request import Batch, Request, State

GRAPH_BATCHES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)


def graph_ctx_buckets(max_model_len: int) -> tuple[int, ...]:
    """Longest-context buckets of the decode graphs: powers of two from 512 up to ``max_model_len``."""
    return doubling(512, max_model_len)


@dataclass
class StepStats:
    """What one ``run`` did, for the iteration log and calibration."""

    gpu_s: float = 0.0  # forward + sampling on the device (CUDA events; wall time on a CPU)
    host_s: float = 0.0  # building inputs, swaps and launches before the device work
    graph: bool = False  # replayed a captured decode graph (plain or speculative)
    piecewise: bool = False  # a step with prefill ran as piecewise graphs (or their pieces uncaptured, on a CPU)
    swap_in_blocks: int = 0
    swap_out_blocks: int = 0


@dataclass
class SwapPlan:
    """One step's block copies, in this order: ``out`` to the CPU, ``into`` back into new blocks (a block freed
    by a swap-out may receive a swapped-in request's data, but only after its old contents left); ``drop``: CPU
    copies no longer needed. Keyed by request id."""

    out: list[tuple[int, list[int]]] = field(default_factory=list)
    into: list[tuple[int, list[int]]] = field(default_factory=list)
    drop: list[int] = field(default_factory=list)


@dataclass
class StepPlan:
    """Everything one step runs, on the host: the swaps, the packed token inputs, the attention metadata and
    whether a captured decode graph replays it. Under tensor parallelism rank 0 builds it from the scheduler's
    ``Batch`` and every rank executes the same plan (``servesim.engine.tp`` sends it)."""

    swaps: SwapPlan
    ids: np.ndarray  # int64 [T]
    pos: np.ndarray  # int32 [T]
    slots: np.ndarray  # int64 [T]
    sample: np.ndarray  # int64 [S]: the rows that reach the LM head
    n_pre: int  # prefill tokens (packed first)
    prefill_cu: np.ndarray  # int32 [P+1]
    prefill_kvl: np.ndarray  # int32 [P]
    prefill_table: np.ndarray  # int32 [P, max_blocks]
    prefill_max_q: int
    decode_ctx: np.ndarray  # int32 [D]
    decode_table: np.ndarray  # int32 [D, max_blocks]
    decode_q: int
    graph: tuple[int, int, int] | None  # (batch, context bucket, query) of the decode graph, or eager
    piecewise: int | None = None  # the padded token bucket of a piecewise step (engine/piecewise.py)


class ModelRunner:
    """Runs batches of one replica on ``model``; ``run(batch)`` returns the tokens each decode emits."""

    def __init__(self, model: LlamaModel, cache: KVCache, max_model_len: int, *, seed: int = 0,
                 temperature: float = 0.0, cuda_graphs: bool = True, max_graph_batch: int = 256,
                 piecewise_tokens: int = 0) -> None:
        self.model, self.cache, self.max_model_len = model, cache, max_model_len
        self.device = model.w.embed.device
        self.block_size = cache.block_size
        self.max_blocks = -(-max_model_len // self.block_size)
        self.vocab = model.cfg.vocab_size
        self.seed, self.temperature = seed, temperature
        self.tokens: dict[int, list[int]] = {}
        self._blocks: dict[int, list[int]] = {}  # block ids each running request held after its last step
        self._swapped: dict[int, tuple[Request, int]] = {}  # request id -> (request, blocks saved on the CPU)
        self._saved: dict[int, list[torch.Tensor]] = {}  # request id -> its KV blocks' CPU copies
        self._drops: list[int] = []  # released while swapped: their copies go with the next plan
        self.publish: Callable[[StepPlan], None] | None = None  # tensor parallelism: send each plan to the ranks
        self.drafts: dict[int, list[int]] = {}  # request id -> draft tokens to verify this step
        self._rows: dict[int, list] = {}  # request id -> [block-table row, entries filled]
        self.spec = None  # a SpecDecoder when the engine speculates (set by build_engine)
        self.cuda = self.device.type == "cuda"
        self.graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # speculative steps in fixed shapes (spec_graph.py) where a batch allows: captured with CUDA graphs; set
        # on without them, the same steps run uncaptured (how the CPU tests check them)
        self.static_spec = self.cuda and cuda_graphs
        self._spec_static: dict[int, spec_graph.StaticStep] = {}  # graph batch -> its buffers
        self._graph_batches = tuple(b for b in GRAPH_BATCHES if b <= max_graph_batch)
        self._ctx_buckets = graph_ctx_buckets(max_model_len)
        self._gen = torch.Generator(device=self.device).manual_seed(seed)
        self._counters = SplitCounters(self.device)  # decode attention's split-merge counters, this runner's
        if self.cuda and cuda_graphs:
            self._static = self._static_buffers(max(self._graph_batches))
        # piecewise graphs of steps with prefill up to ``piecewise_tokens`` (0: off); uncaptured without CUDA
        self.pieces = None
        if piecewise_tokens and (cuda_graphs or not self.cuda) and model.comm is None:
            self.pieces = PiecewiseGraphs(model, cache, piecewise_tokens, max_graph_batch)
        self.stats = StepStats()

    # -- prompts ----------------------------------------------------------------------------
    def prompt_ids(self, r: Request) -> list[int]:
        """Deterministic prompt token ids of ``r`` (shared per prefix-hash block)."""
        v = self.vocab
        if r.hash_ids and r.hash_block_tokens:
            ids: list[int] = []
            for h in r.hash_ids:
                ids += np.random.default_rng([self.seed, 1, h]).integers(0, v, r.hash_block_tokens).tolist()
            if len(ids) < r.prompt_tokens:
                tail = np.random.default_rng([self.seed, 2, r.request_id]).integers(0, v, r.prompt_tokens - len(ids))
                ids += tail.tolist()
            return ids[: r.prompt_tokens]
        return np.random.default_rng([self.seed, 0, r.request_id]).integers(0, v, r.prompt_tokens).tolist()

    def _ids(self, r: Request) -> list[int]:
        ids = self.tokens.get(r.request_id)
        if ids is None:
            ids = self.tokens[r.request_id] = self.prompt_ids(r)
        return ids

    def release(self, r: Request) -> None:
        """Forget a finished or rejected request."""
        self.tokens.pop(r.request_id, None)
        self._blocks.pop(r.request_id, None)
        self._rows.pop(r.request_id, None)
        if self._swapped.pop(r.request_id, None) is not None:
            self._drops.append(r.request_id)
        self.drafts.pop(r.request_id, None)
        if self.spec is not None:
            self.spec.release(r)

    # -- swaps ------------------------------------------------------------------------------
    def _swap_plan(self, batch: Batch) -> SwapPlan:
        """The copies this step needs: swapped-out requests' blocks to the CPU, then swapped-in ones into their
        new blocks. The scheduler may swap a request in and out again (or in and then preempt it by recompute)
        within one ``schedule``; its data then never left the CPU copy."""
        plan, self._drops = SwapPlan(drop=self._drops), []
        for r in batch.preempted:  # their blocks were freed: their table rows start again when they come back
            self._rows.pop(r.request_id, None)
        for r in batch.preempted:
            if r.state == State.SWAPPED and r.request_id not in self._swapped:
                ids = list(self._blocks.get(r.request_id, [])[: r.swapped_blocks])
                self._swapped[r.request_id] = (r, len(ids))
                plan.out.append((r.request_id, ids))
        for rid, (r, n) in list(self._swapped.items()):
            if r.state == State.SWAPPED:
                continue
            del self._swapped[rid]
            if r.state != State.RUNNING:  # preempted by recompute right after coming back: nothing to restore
                plan.drop.append(rid)
                continue
            plan.into.append((rid, list(r.block_ids[:n])))
            self._blocks[rid] = list(r.block_ids[:n])  # where its data lives now, should it leave again
            self._rows.pop(rid, None)
        return plan

    def _apply_swaps(self, plan: SwapPlan) -> None:
        tensors = self._cache_tensors()
        for rid, ids in plan.out:
            idx = torch.tensor(ids, dtype=torch.long, device=self.device)
            self._saved[rid] = [t.index_select(0, idx).cpu() for t in tensors]
        for rid, ids in plan.into:
            saved = self._saved.pop(rid)
            idx = torch.tensor(ids, dtype=torch.long, device=self.device)
            for t, s in zip(tensors, saved, strict=True):
                t.index_copy_(0, idx, s.to(self.device))
        for rid in plan.drop:
            self._saved.pop(rid, None)
        self.stats.swap_in_blocks = sum(len(ids) for _, ids in plan.into)
        self.stats.swap_out_blocks = sum(len(ids) for _, ids in plan.out)

    def _cache_tensors(self) -> list[torch.Tensor]:
        """Every KV tensor a swap moves: the target's and, with speculation, the draft's (same block ids)."""
        out = [*self.cache.k, *self.cache.v]
        if self.spec is not None:
            out += [*self.spec.cache.k, *self.spec.cache.v]
        return out

    # -- inputs -----------------------------------------------------------------------------
    def _slots(self, block_ids: list[int], start: int, end: int) -> np.ndarray:
        pos = np.arange(start, end)
        return np.asarray(block_ids, np.int64)[pos // self.block_size] * self.block_size + pos % self.block_size

    def _row(self, r: Request) -> np.ndarray:
        """``r``'s block-table row, kept between steps and extended in place as it gains blocks (rebuilt when its
        blocks were replaced: preemption, swap)."""
        ids = r.block_ids
        cached = self._rows.get(r.request_id)
        if cached is None:
            cached = self._rows[r.request_id] = [np.zeros(self.max_blocks, np.int32), 0]
        row, n = cached
        if n > len(ids) or (n and row[n - 1] != ids[n - 1]) or (n and row[0] != ids[0]):
            n = 0
        if n < len(ids):
            row[n:len(ids)] = ids[n:]
            cached[1] = len(ids)
        return row

    def _table(self, reqs: list[Request], rows: int) -> np.ndarray:
        bt = np.zeros((rows, self.max_blocks), np.int32)
        if reqs:
            bt[: len(reqs)] = np.stack([self._row(r) for r in reqs])
        return bt

    def _inputs(self, batch: Batch):
        """Host arrays of the packed iteration: ids, positions, slots, sample rows, attention metadata."""
        ids, pos, slots, sample = [], [], [], []
        cu, kvl = [0], []
        n_tok = 0
        for ch in batch.prefill:
            r = ch.request
            s, e = ch.context_before, ch.context_before + ch.tokens
            ids += self._ids(r)[s:e]
            pos.append(np.arange(s, e))
            slots.append(self._slots(r.block_ids, s, e))
            n_tok += ch.tokens
            cu.append(n_tok)
            kvl.append(e)
            if ch.completes:
                sample.append(n_tok - 1)
        nd, q = len(batch.decode), batch.decode_query
        ctx = np.asarray(batch.decode_ctx[:nd], np.int64)
        if nd and q == 1:  # one token each: plain integer arithmetic, no per-request arrays
            bs, tokens = self.block_size, self.tokens
            dslots = []
            for r, c in zip(batch.decode, ctx.tolist(), strict=True):
                toks = tokens.get(r.request_id) or self._ids(r)
                ids.append(toks[c - 1])
                dslots.append(r.block_ids[(c - 1) // bs] * bs + (c - 1) % bs)
            slots.append(np.asarray(dslots, np.int64))
        else:
            for r, c in zip(batch.decode, ctx.tolist(), strict=True):
                ids += self._spec_inputs(r, self._ids(r), c, q)
                slots.append(self._slots(r.block_ids, c - q, c))
        if nd:
            pos.append((ctx[:, None] - q + np.arange(q)[None, :]).ravel())
            sample += range(n_tok, n_tok + nd * q)
        return (np.asarray(ids, np.int64), np.concatenate(pos).astype(np.int32) if pos else np.zeros(0, np.int32),
                np.concatenate(slots) if slots else np.zeros(0, np.int64), np.asarray(sample, np.int64),
                np.asarray(cu, np.int32), np.asarray(kvl, np.int32), ctx.astype(np.int32), n_tok)

    def _spec_inputs(self, r: Request, toks: list[int], ctx: int, q: int) -> list[int]:
        """The last emitted token and the ``q - 1`` drafts proposed after it (set by the speculative decoder)."""
        return [toks[ctx - q], *self.drafts[r.request_id]]

    def _plan(self, batch: Batch, swaps: SwapPlan) -> StepPlan:
        ids, pos, slots, sample, cu, kvl, dctx, n_pre = self._inputs(batch)
        pre, nd = [ch.request for ch in batch.prefill], len(batch.decode)
        graph = self._graph_key(batch, dctx) if self.cuda and hasattr(self, "_static") else None
        return StepPlan(swaps, ids, pos, slots, sample, n_pre, cu, kvl, self._table(pre, len(pre)),
                        max((ch.tokens for ch in batch.prefill), default=0), dctx, self._table(batch.decode, nd),
                        batch.decode_query, graph, self._piece_key(batch))

    def _piece_key(self, batch: Batch) -> int | None:
        """The token bucket of a piecewise step, or None (eager): steps with a prefill chunk, not speculative,
        whose tokens fit the largest bucket, on a runner built with them (at TP 1)."""
        if self.pieces is None or not batch.prefill or self.spec is not None or batch.decode_query != 1:
            return None
        return self.pieces.bucket(batch.num_tokens)

    # -- run --------------------------------------------------------------------------------
    def run(self, batch: Batch) -> np.ndarray:
        """Run one iteration; returns each decode's emitted token count (all 1 without speculation)."""
        t0 = time.perf_counter()
        swaps = self._swap_plan(batch)
        nd, q = len(batch.decode), batch.decode_query
        if self.spec is not None:
            self._apply_swaps(swaps)
            return self._run_spec(batch, t0)
        plan = self._plan(batch, swaps)
        self._check(plan.ids, plan.pos, plan.slots, batch)
        if self.publish is not None:
            self.publish(plan)
        self._apply_swaps(swaps)
        staged = self._stage(plan)
        host = time.perf_counter() - t0
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        out, graph = self._launch(plan, staged)
        sampled = out[: nd * q] if graph else self._sample(out)
        if self.cuda:
            end.record()
        tokens = sampled.tolist()  # synchronises (unless nothing was sampled: a chunk that completes no prompt)
        self._finish_stats(t0, host, start if self.cuda else None, end if self.cuda else None, graph,
                           plan.piecewise is not None)
        self._emit(batch, tokens)
        return np.ones(nd, np.int64)

    def execute(self, plan: StepPlan) -> torch.Tensor:
        """Run a plan another rank built (tensor parallelism): its swaps and forward pass; the logits (eager) or
        the sampled tokens (a graph replay)."""
        self._apply_swaps(plan.swaps)
        return self._launch(plan, self._stage(plan))[0]

    def logits(self, batch: Batch, piecewise: bool = False) -> torch.Tensor:
        """The logits of ``batch``'s sampled rows, as an eager step computes them (its swaps included), without
        sampling or advancing any request (tests compare models with it); ``piecewise``: as the piecewise step
        does, where one runs it."""
        plan = self._plan(batch, self._swap_plan(batch))
        plan.graph = None
        if not piecewise:
            plan.piecewise = None
        if self.publish is not None:
            self.publish(plan)
        self._apply_swaps(plan.swaps)
        return self._launch(plan, self._stage(plan))[0]

    def _stage(self, plan: StepPlan):
        """The host side of the device work: the graph's static inputs loaded, or the eager step's tensors."""
        if plan.graph is not None:
            self._load_static(plan)
            return None
        if plan.piecewise is not None:
            self.pieces.load(plan.ids, plan.pos, plan.slots, plan.sample, plan.piecewise)
            return self._meta(plan)
        return self._eager_tensors(plan)

    def _launch(self, plan: StepPlan, staged) -> tuple[torch.Tensor, bool]:
        """The device work: (sampled tokens, True) from a graph replay, or (logits, False) from an eager pass."""
        if plan.graph is not None:
            graph, out = self.graphs[plan.graph] if plan.graph in self.graphs else self._capture(*plan.graph)
            graph.replay()
            return out, True
        if plan.piecewise is not None:
            if self.cuda and plan.piecewise not in self.pieces.graphs:
                self._pool = self.pieces.capture(plan.piecewise, getattr(self, "_pool", None))
            return self.pieces.run(plan.piecewise, len(plan.ids), len(plan.sample), staged), False
        meta, tensors = staged
        return self.model.forward(*tensors[:3], meta, self.cache, tensors[3]), False

    def _check(self, ids, pos, slots, batch: Batch) -> None:
        if not len(ids) == len(pos) == len(slots) == batch.num_tokens:
            raise RuntimeError(f"inputs of {len(ids)} tokens for a batch of {batch.num_tokens}: a request's token ids "
                               "are out of step with its progress")

    def _eager_tensors(self, plan: StepPlan):
        return self._meta(plan), [torch.from_numpy(a).to(self.device) for a in (plan.ids, plan.pos, plan.slots,
                                                                                 plan.sample)]

    def _meta(self, plan: StepPlan) -> AttentionMeta:
        dev = self.device
        meta = AttentionMeta(num_prefill_tokens=plan.n_pre, decode_counters=self._counters)
        if len(plan.prefill_kvl):
            meta.prefill_cu_seqlens = torch.from_numpy(plan.prefill_cu).to(dev)
            meta.prefill_kv_lens = torch.from_numpy(plan.prefill_kvl).to(dev)
            meta.prefill_block_tables = torch.from_numpy(plan.prefill_table).to(dev)
            meta.prefill_max_q_len = plan.prefill_max_q
        if len(plan.decode_ctx):
            meta.decode_kv_lens = torch.from_numpy(plan.decode_ctx).to(dev)
            meta.decode_block_tables = torch.from_numpy(plan.decode_table).to(dev)
            meta.decode_num_q, meta.decode_max_kv_len = plan.decode_q, int(plan.decode_ctx.max())
        return meta

    def _finish_stats(self, t0: float, host: float, start, end, graph: bool, piecewise: bool = False) -> None:
        if self.cuda:
            end.synchronize()
        gpu = start.elapsed_time(end) * 1e-3 if self.cuda else time.perf_counter() - t0 - host
        self.stats = StepStats(gpu_s=gpu, host_s=host, graph=graph, piecewise=piecewise,
                               swap_in_blocks=self.stats.swap_in_blocks, swap_out_blocks=self.stats.swap_out_blocks)

    def _run_spec(self, batch: Batch, t0: float) -> np.ndarray:
        """A speculative step: the draft over the prefill chunks and its proposals, the target over everything,
        then acceptance. Pure-decode batches within the graph buckets run the fixed-shape step (one CUDA graph),
        the others eagerly. The device time covers the draft's passes too."""
        spec, nd, q = self.spec, len(batch.decode), batch.decode_query
        if nd and q != spec.k + 1:
            raise RuntimeError(f"a decode step of {q} tokens each; the engine speculates {spec.k} drafts")
        for r in batch.decode:  # token lists exist before the draft reads them
            self._ids(r)
        key = self._spec_key(batch) if self.static_spec else None
        if key is not None:
            return self._run_spec_static(batch, key, t0)
        start = end = None
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        host_a = time.perf_counter() - t0
        if self.cuda:
            start.record()
        pre = [ch.request for ch in batch.prefill]
        if batch.prefill:
            plan = self._plan(replace(batch, decode=[]), SwapPlan())
            meta, tensors = self._eager_tensors(plan)
            spec.prefill(*tensors[:3], meta, plan.n_pre)
        self.drafts = spec.propose(self, batch, pre) if nd else {}
        t1 = time.perf_counter()
        plan = self._plan(batch, SwapPlan())
        self._check(plan.ids, plan.pos, plan.slots, batch)
        meta, tensors = self._eager_tensors(plan)
        host = host_a + (time.perf_counter() - t1)
        logits = self.model.forward(*tensors[:3], meta, self.cache, tensors[3])
        sampled = self._sample(logits)
        if self.cuda:
            end.record()
        tokens = sampled.tolist()
        self._finish_stats(t0, host, start, end, False)
        n_done = sum(ch.completes for ch in batch.prefill)
        for i, ch in enumerate([ch for ch in batch.prefill if ch.completes]):
            self._ids(ch.request).append(tokens[i])
        return self._accept(batch, tokens[n_done:])

    def _accept(self, batch: Batch, target: list[int]) -> np.ndarray:
        """Acceptance of this step's drafts against the target's tokens at every verification row; each decode's
        emitted token count."""
        emitted = self.spec.accept(list(batch.decode), self.drafts, target) if batch.decode else []
        for r, toks in zip(batch.decode, emitted, strict=True):
            self._ids(r).extend(toks)
        for r in [ch.request for ch in batch.prefill] + list(batch.decode):
            self._blocks[r.request_id] = list(r.block_ids)
        return np.array([len(e) for e in emitted], np.int64)

    def _spec_key(self, batch: Batch) -> tuple[int, int, int] | None:
        """``(batch, context bucket, 1 + k)`` of the fixed-shape step that runs ``batch``, or None (eager): mixed
        batches, batches or contexts past the buckets, a draft more than two tokens behind (the catch-up pass
        holds two), and temperature sampling (the graph takes the target's argmax)."""
        nd = len(batch.decode)
        if batch.prefill or not nd or self.temperature != 0:
            return None
        ctx = np.asarray(batch.decode_ctx[:nd], np.int64)
        bucket = self._buckets(nd, int(ctx.max()))
        if bucket is None or self.spec.behind(batch.decode, ctx - batch.decode_query).max() > 2:
            return None
        return (*bucket, batch.decode_query)

    def _run_spec_static(self, batch: Batch, key: tuple[int, int, int], t0: float) -> np.ndarray:
        """The fixed-shape speculative step ``key`` (a CUDA graph replay, or its body run uncaptured)."""
        spec, reqs = self.spec, list(batch.decode)
        b, k, nd = key[0], spec.k, len(reqs)
        ctx = np.asarray(batch.decode_ctx[:nd], np.int64)
        p0 = ctx - (k + 1)
        inputs = spec_graph.step_inputs(self._table(reqs, b), ctx, [self.tokens[r.request_id] for r in reqs],
                                        spec.behind(reqs, p0), k, self.block_size)
        self._spec_buffers(b).load(inputs)
        host = time.perf_counter() - t0
        start = end = None
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        out = self._spec_launch(key)
        if self.cuda:
            end.record()
        vals = out.tolist()
        captured = self.cuda and hasattr(self, "_static")
        self._finish_stats(t0, host, start, end, captured)
        self.drafts = {r.request_id: vals[i * k:(i + 1) * k] for i, r in enumerate(reqs)}
        spec.proposed(reqs, p0)
        return self._accept(batch, vals[b * k: b * k + nd * (k + 1)])

    def _spec_buffers(self, b: int) -> spec_graph.StaticStep:
        st = self._spec_static.get(b)
        if st is None:
            st = self._spec_static[b] = spec_graph.StaticStep(b, self.spec.k, self.max_blocks, self.device)
        return st

    def _spec_launch(self, key: tuple[int, int, int]) -> torch.Tensor:
        b, c, _ = key
        if not (self.cuda and hasattr(self, "_static")):
            return spec_graph.step_body(self, self._spec_buffers(b), c)()
        graph, out = self.graphs[key] if key in self.graphs else self._capture_spec(b, c)
        graph.replay()
        return out

    def _emit(self, batch: Batch, tokens: list[int]) -> None:
        i = 0
        for ch in batch.prefill:
            if ch.completes:
                self._ids(ch.request).append(tokens[i])
                i += 1
        for r in batch.decode:
            self._ids(r).append(tokens[i])
            i += batch.decode_query
        for r in [ch.request for ch in batch.prefill] + list(batch.decode):
            self._blocks[r.request_id] = list(r.block_ids)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return torch.argmax(logits, dim=-1)
        u = torch.rand(logits.shape, generator=self._gen, device=logits.device, dtype=torch.float32)
        return torch.argmax(logits.float() / self.temperature - torch.log(-torch.log(u.clamp_min(1e-20))), dim=-1)

    # -- CUDA graphs of pure-decode steps ---------------------------------------------------------
    def _graph_key(self, batch: Batch, dctx: np.ndarray) -> tuple[int, int, int] | None:
        nd = len(batch.decode)
        if batch.prefill or nd == 0 or batch.decode_query != 1:
            return None
        bucket = self._buckets(nd, int(dctx.max()))
        return None if bucket is None else (*bucket, 1)

    def _buckets(self, nd: int, longest: int) -> tuple[int, int] | None:
        """The graph batch and context bucket of ``nd`` decodes whose longest context is ``longest``, or None."""
        if nd > self._graph_batches[-1]:
            return None
        b = next(x for x in self._graph_batches if x >= nd)
        c = next((x for x in self._ctx_buckets if x >= longest), None)
        return None if c is None else (b, c)

    def _static_buffers(self, rows: int) -> dict[str, torch.Tensor]:
        dev = self.device
        return {"ids": torch.zeros(rows, dtype=torch.int64, device=dev),
                "slots": torch.full((rows,), -1, dtype=torch.int64, device=dev),
                "pos": torch.zeros(rows, dtype=torch.int32, device=dev),
                "kvl": torch.ones(rows, dtype=torch.int32, device=dev),
                "bt": torch.zeros((rows, self.max_blocks), dtype=torch.int32, device=dev),
                "sample": torch.arange(rows, dtype=torch.int64, device=dev)}

    def _load_static(self, plan: StepPlan) -> None:
        s, b = self._static, plan.graph[0]
        pad = b - len(plan.ids)
        s["ids"][:b].copy_(torch.from_numpy(np.pad(plan.ids, (0, pad))), non_blocking=True)
        s["slots"][:b].copy_(torch.from_numpy(np.pad(plan.slots, (0, pad), constant_values=-1)), non_blocking=True)
        s["pos"][:b].copy_(torch.from_numpy(np.pad(plan.pos, (0, pad))), non_blocking=True)
        s["kvl"][:b].copy_(torch.from_numpy(np.pad(plan.decode_ctx, (0, pad), constant_values=1)), non_blocking=True)
        s["bt"][:b].copy_(torch.from_numpy(np.pad(plan.decode_table, ((0, pad), (0, 0)))), non_blocking=True)

    def _graph_meta(self, b: int, c: int, q: int) -> AttentionMeta:
        s, heads = self._static, self.model.cfg.num_kv_heads
        sms = sm_count(self.device)
        return AttentionMeta(num_prefill_tokens=0, decode_kv_lens=s["kvl"][:b], decode_block_tables=s["bt"][:b],
                             decode_num_q=q, decode_max_kv_len=c,
                             decode_num_splits=choose_num_splits(b, heads, c, sms), decode_split_per_seq=True,
                             decode_counters=self._counters)

    def _capture(self, b: int, c: int, q: int):
        """Capture the decode step of ``b`` sequences whose longest context is at most ``c``."""
        s = self._static
        meta = self._graph_meta(b, c, q)
        self._counters.take(b * self.model.cfg.num_kv_heads)  # allocated outside the capture

        def body() -> torch.Tensor:
            logits = self.model.forward(s["ids"][:b], s["pos"][:b], s["slots"][:b], meta, self.cache,
                                        s["sample"][:b])
            return torch.argmax(logits, dim=-1)

        return self._capture_body((b, c, q), body)

    def _capture_spec(self, b: int, c: int):
        """Capture the fixed-shape speculative step of ``b`` sequences in context bucket ``c``."""
        return self._capture_body((b, c, self.spec.k + 1), spec_graph.step_body(self, self._spec_buffers(b), c))

    def _capture_body(self, key: tuple[int, int, int], body: Callable[[], torch.Tensor]):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            body()  # warm-up: compiles kernels and allocates outside the graph
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        pool = getattr(self, "_pool", None)
        with torch.cuda.graph(graph, pool=pool):
            out = body()
        self._pool = graph.pool()
        self.graphs[key] = (graph, out)
        return graph, out

    def capture_all(self, max_ctx: int | None = None) -> float:
        """Capture every decode graph up front (largest first, sharing one memory pool); seconds taken. With
        speculation the decode steps are the speculative ones (``1 + k`` tokens each): their graphs instead."""
        if not (self.cuda and hasattr(self, "_static")):
            return 0.0
        t0 = time.perf_counter()
        top = self._ctx_buckets[-1] if max_ctx is None else next(c for c in self._ctx_buckets if c >= max_ctx)
        q = 1 if self.spec is None else self.spec.k + 1
        for c in [c for c in reversed(self._ctx_buckets) if c <= top]:
            for b in reversed(self._graph_batches):
                if (b, c, q) in self.graphs:
                    continue
                if q == 1:
                    self._capture(b, c, 1)
                elif self.static_spec:
                    self._capture_spec(b, c)
        self.capture_pieces()
        torch.cuda.synchronize()
        return time.perf_counter() - t0


    def capture_pieces(self) -> None:
        """Capture the piecewise graphs of every token bucket (largest first) into the decode graphs' pool."""
        if self.pieces is None or not self.cuda:
            return
        for t in reversed(self.pieces.buckets):
            if t not in self.pieces.graphs:
                self._pool = self.pieces.capture(t, getattr(self, "_pool", None))


def kv_block_bytes(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, elem_bytes: int) -> int:
    """Bytes of one KV block across all layers (K and V)."""
    return 2 * num_layers * block_size * num_kv_heads * head_dim * elem_bytes


def blocks_for_memory(free_bytes: float, block_bytes: int) -> int:
    return max(0, math.floor(free_bytes / block_bytes))
