"""Preemption and resume through the scheduler: recompute, swap, swap falling back to recompute."""

from __future__ import annotations

import pytest

from servesim.sim.request import Request, State
from servesim.sim.scheduler import SchedulerConfig
from tests.serving_driver import drive

NON_CHUNKED = dict(max_num_seqs=4, max_num_batched_tokens=256, max_model_len=256)


def pair():
    """Two requests of 8 blocks each at the end (60 + 64 tokens, blocks of 16) on a 12-block pool."""
    return Request(0, 0.0, 60, 64), Request(1, 0.0, 60, 64)  # FCFS tie: the higher id ranks last


def preempting_steps(trace):
    return [b for b in trace.batches if b.preempted]


@pytest.mark.parametrize("mode", ["static", "continuous", "chunked"])
def test_swap_resumes_in_every_mode(mode):
    # Regression: static batching never swapped requests back in and stalled with work left.
    a, b = pair()
    cfg = SchedulerConfig(batching=mode, preemption="swap", **NON_CHUNKED)
    sched, trace = drive(cfg, [a, b], num_blocks=12, swap_blocks=64)
    assert a.state == b.state == State.FINISHED and a.generated == b.generated == 64
    out = sum(x.swap_out_blocks for x in trace.batches)
    assert out > 0 and out == sum(x.swap_in_blocks for x in trace.batches)
    assert sched.kv.swap_free == 64 and sched.kv.num_free == 12
    # Swapped KV comes back intact: b's prompt is prefilled exactly once.
    assert sum(c.tokens for x in trace.batches for c in x.prefill if c.request is b) == 60


def test_swap_out_moves_the_victims_blocks_to_cpu():
    a, b = pair()
    cfg = SchedulerConfig(preemption="swap", max_num_seqs=4, max_num_batched_tokens=256)
    sched, trace = drive(cfg, [a, b], num_blocks=12, swap_blocks=64)
    first = preempting_steps(trace)[0]
    assert first.preempted == [b]  # FCFS: the later arrival is the victim
    # b held blocks for its context at preemption time: 60 prompt + tokens decoded so far.
    assert first.swap_out_blocks in (4, 5, 6) and b.num_preemptions >= 1 and a.num_preemptions == 0


def test_swap_full_falls_back_to_recompute():
    a, b = pair()
    cfg = SchedulerConfig(preemption="swap", max_num_seqs=4, max_num_batched_tokens=256)
    sched, trace = drive(cfg, [a, b], num_blocks=12, swap_blocks=2)  # too small for b's blocks
    assert all(x.swap_out_blocks == 0 and x.swap_in_blocks == 0 for x in trace.batches)
    assert b.num_preemptions >= 1 and b.generated == 64 and sched.kv.swap_free == 2
    # Recompute: b's prefill covers its prompt again plus the tokens it had generated.
    resumed = [c for x in trace.batches for c in x.prefill if c.request is b][1:]
    assert resumed and resumed[0].context_before == 0 and resumed[0].tokens > 60


def test_recompute_resume_keeps_emitted_tokens_and_times():
    a, b = pair()
    cfg = SchedulerConfig(preemption="recompute", record_token_times=True, max_num_seqs=4, max_num_batched_tokens=256)
    sched, trace = drive(cfg, [a, b], num_blocks=12)
    step = preempting_steps(trace)[0]
    assert step.preempted == [b]
    # The recompute chunk re-prefills prompt + generated and emits the next token: no token is lost or doubled.
    assert len(b.token_times_s) == 64 and b.token_times_s == sorted(b.token_times_s)
    assert b.first_token_s < b.finish_s and b.token_times_s[-1] == b.finish_s
    assert sum(sched.itl_weights) == 2 * 63


def test_victims_follow_the_policy():
    # Under SJF (shortest prompt) the longer prompt is ranked last and is the victim, though it arrived first.
    long, short = Request(0, 0.0, 70, 60), Request(1, 0.001, 50, 60)
    cfg = SchedulerConfig(policy="sjf", max_num_seqs=4, max_num_batched_tokens=256)
    _, trace = drive(cfg, [long, short], num_blocks=12)
    assert preempting_steps(trace)[0].preempted == [long]
    assert short.num_preemptions == 0 and long.generated == 60
