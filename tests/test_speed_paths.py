"""The shortcuts that make the simulator fast give exactly what the long way gives: decode runs priced in
chunks, the lone-request E2E from one table of step times, the decode slots' running aggregates."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.hwmodels.ops import decode_shape
from servesim.sim.config import Scenario
from servesim.sim.decode_slots import DecodeSlots
from servesim.sim.deployment import build_deployment
from servesim.sim.request import Request
from servesim.sim.result import ideal_e2el
from servesim.sim.simulator import run_ends
from servesim.sim.table import Table

COST_MODELS = [{}, {"gpu": "H100-SXM"}]  # the H200's calibrated profile; the roofline prior


@pytest.mark.parametrize("extra", COST_MODELS)
def test_decode_run_in_chunks_is_one_run(extra):
    """Step ends priced chunk by chunk (each chunk the shape that many steps on) are the running sums of one
    ``decode_run_s`` over the whole run, bit for bit; a horizon stops the pricing once a step ends past it."""
    cost = build_deployment(Scenario(**extra)).cost
    rng = np.random.default_rng(0)
    for _ in range(40):
        ds, ctx, steps = int(rng.integers(1, 200)), int(rng.integers(1, 30_000)), int(rng.integers(2, 3000))
        shape = decode_shape(ds, ctx)
        t = float(rng.uniform(0, 1e4))
        whole = np.cumsum(np.concatenate(((t,), cost.decode_run_s(shape, steps))))[1:]
        assert run_ends(cost, shape, t, steps, np.inf).tobytes() == whole.tobytes()
        horizon = float(whole[int(rng.integers(0, steps))])
        cut = run_ends(cost, shape, t, steps, horizon)
        assert cut.tobytes() == whole[: len(cut)].tobytes() and cut[-1] >= horizon
        k = np.searchsorted(whole[: steps - 1], horizon)
        assert np.searchsorted(cut[: steps - 1], horizon) == k  # the same steps kept


WHOLE_PROMPTS = {"batching": "continuous", "max_num_batched_tokens": 16384, "max_model_len": 16384}


@pytest.mark.parametrize("extra", [*COST_MODELS, WHOLE_PROMPTS])
def test_ideal_e2el_from_one_table_is_each_requests_own(extra):
    dep = build_deployment(Scenario(**extra))
    rng = np.random.default_rng(1)
    p, o = rng.integers(1, 12_000, 300), rng.integers(1, 3000, 300)
    got = ideal_e2el(dep, Table({"input_tokens": p, "output_tokens": o}))
    for i in range(len(p)):
        want = ideal_e2el_one(dep, int(p[i]), int(o[i]))
        assert got[i] == want, (p[i], o[i])


def ideal_e2el_one(dep, p: int, o: int) -> float:
    """The definition, one request at a time: its prefill chunks, then its own run of lone decode steps."""
    from dataclasses import replace

    from servesim.hwmodels.ops import prefill_shape

    cost, budget = dep.cost, dep.scheduler.max_num_batched_tokens
    t, done = 0.0, 0
    while done < p:
        chunk = min(p - done, budget) if dep.scheduler.batching == "chunked" else p - done
        s = prefill_shape(chunk, done)
        t += cost.step_time_s(s if done + chunk == p else replace(s, sampled_tokens=0))
        done += chunk
    if o > 1:
        t += float(cost.decode_run_s(decode_shape(1, p + 1), o - 1).sum())
    return t


def test_decode_slot_aggregates_follow_every_change():
    """Context sum and maximum and the fewest tokens left, kept as slots join, advance, get blocks and leave,
    always equal what the arrays say."""
    rng = np.random.default_rng(2)
    slots = DecodeSlots(64, 16)
    live: list[Request] = []
    blocks: dict[int, int] = {}  # request id -> blocks granted
    for step in range(3000):
        op = rng.integers(0, 4)
        if op == 0 and len(live) < 64:
            r = Request(step, 0.0, int(rng.integers(1, 500)), int(rng.integers(2, 60)))
            r.num_computed, r.generated = r.prompt_tokens, int(rng.integers(1, r.output_tokens))
            r.block_ids = list(range(-(-r.num_computed // 16)))
            blocks[r.request_id] = len(r.block_ids)
            slots.join(r)
            live.append(r)
        elif op == 1 and live:
            r = live.pop(int(rng.integers(0, len(live))))
            slots.leave(r)
        elif op == 2 and live:
            n = len(live) if rng.random() < 0.8 else int(rng.integers(1, len(live) + 1))
            adv = int(rng.integers(1, 3)) if rng.random() < 0.7 else rng.integers(1, 4, n)
            done = slots.advance(n, adv, clip=not isinstance(adv, int))
            want = np.flatnonzero(slots.gen[:n] >= slots.out[:n])[::-1]
            assert done.tolist() == want.tolist()
            for i in done.tolist():
                r = slots.reqs[i]
                live.remove(r)
                slots.leave(r)
        elif live:
            n = len(live)
            idx = slots.short(n, 1)
            assert (slots.block_need(n, 1)[idx] == 1).all() and slots.block_need(n, 1).sum() == len(idx)
            slots.grant(idx)
            for i in idx.tolist():
                blocks[slots.reqs[i].request_id] += 1
        n = len(slots)
        assert (slots.comp[:n] - slots.over[:n]).tolist() == [16 * blocks[r.request_id] for r in slots.reqs]
        if n:
            k = int(rng.integers(1, n + 1))
            ctx = slots.contexts(k, 3)
            assert slots.context_sum(k, 3) == int(ctx.sum()) and slots.context_max(k, 3) == int(ctx.max())
            assert slots.steps_to_first_finish(k) == int((slots.out[:k] - slots.gen[:k]).min())


@pytest.mark.parametrize("trace", ["azure-conv", "azure-code", "mooncake-conv", "arxiv-summarization", "sharegpt",
                                   "burstgpt"])
def test_head_of_a_builtin_trace_reads_only_its_lines_and_equals_the_whole_parse(trace):
    from servesim.sim import workload as wl

    whole = wl.load_trace(trace)
    for n in (1, 7, 250, len(whole) - 1, len(whole), len(whole) + 3):
        part = wl.load_trace(trace, rows=n)
        assert len(part) >= min(n, len(whole))
        assert len(part) == len(whole) or len(part) == n  # fewer lines than the trace's are read
        a, b = wl.head(whole, min(n, len(whole))), wl.head(part, min(n, len(whole)))
        assert (a.name, a.source, a.block_tokens, a.notes) == (b.name, b.source, b.block_tokens, b.notes)
        assert a.table.columns == b.table.columns
        for col in a.table.columns:
            x, y = a.table[col], b.table[col]
            assert x.dtype == y.dtype, col
            if x.dtype == object:  # hash ids: a tuple per row
                assert x.tolist() == y.tolist(), col
            else:
                np.testing.assert_array_equal(x, y, err_msg=col)
    if trace != "burstgpt":  # drops failed rows: read whole, for the notes' count
        assert len(wl.load_trace(trace, rows=5)) == 5


def test_percentile_is_numpys_to_the_bit():
    """The summary's percentiles (one partition at the order statistics needed) equal np.percentile's, ties,
    a single value, q = 0 and 100 and scalar q included."""
    from servesim.sim.metrics import percentile

    rng = np.random.default_rng(0)
    for trial in range(400):
        n = int(rng.integers(1, 3000))
        v = rng.lognormal(0, 2, n) if trial % 3 else rng.integers(0, 5, n).astype(float)
        qs = np.array([50, 90, 95, 99, 0, 100, float(rng.uniform(0, 100))])
        np.testing.assert_array_equal(percentile(v, qs), np.percentile(v, qs))
        for q in (99, 50.0, 0, 100):
            x, y = percentile(v, q), np.percentile(v, q)
            assert x == y and type(x) is type(y)
    assert np.isnan(percentile(np.array([1.0, np.nan]), 50))
