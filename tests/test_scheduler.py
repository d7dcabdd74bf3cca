"""The scheduler on hand-checkable cases: batching modes, limits, prefix cache, preemption."""

from __future__ import annotations

import math

import pytest

from servesim.sim.request import Request, State
from servesim.sim.scheduler import SchedulerConfig
from tests.serving_driver import drive


def req(i, prompt, output, arrival=0.0, **kw):
    return Request(i, arrival, prompt, output, **kw)


def test_single_request_chunked_closed_form():
    r = req(0, 100, 5)
    sched, trace = drive(SchedulerConfig(), [r], num_blocks=64)
    assert r.state == State.FINISHED and r.generated == 5
    assert r.first_token_s == pytest.approx(0.01)  # one prefill step
    assert r.finish_s == pytest.approx(0.05)  # + 4 decode steps
    assert [b.shape.prefill_tokens for b in trace.batches] == [100, 0, 0, 0, 0]
    assert [b.shape.decode_seqs for b in trace.batches] == [0, 1, 1, 1, 1]
    # contexts attended by the decode steps: 101, 102, 103, 104
    assert [b.shape.decode_ctx_tokens for b in trace.batches[1:]] == [101, 102, 103, 104]
    assert sched.kv.num_free == 64


def test_chunked_prefill_splits_long_prompt():
    r = req(0, 5000, 2)
    _, trace = drive(SchedulerConfig(max_num_batched_tokens=2048, max_num_seqs=8), [r], num_blocks=1000)
    chunks = [b.prefill[0] for b in trace.batches if b.prefill]
    assert [c.tokens for c in chunks] == [2048, 2048, 904]
    assert [c.context_before for c in chunks] == [0, 2048, 4096]
    assert r.first_token_s == pytest.approx(0.03)
    # causal pairs of the last chunk: 904 queries over 4096 cached + their own causal triangle
    assert trace.batches[2].shape.prefill_attn_pairs == 904 * 4096 + 904 * 905 // 2


def test_chunked_mixes_decodes_with_new_prefill():
    a, b = req(0, 32, 10), req(1, 64, 3, arrival=0.015)
    _, trace = drive(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=256), [a, b], num_blocks=64)
    mixed = [x for x in trace.batches if x.prefill and x.decode]
    assert mixed and mixed[0].prefill[0].request is b and mixed[0].decode == [a]


def test_continuous_never_mixes_prefill_and_decode():
    a, b = req(0, 32, 10), req(1, 64, 3, arrival=0.015)
    cfg = SchedulerConfig(batching="continuous", max_num_seqs=4, max_num_batched_tokens=4096, max_model_len=4096)
    _, trace = drive(cfg, [a, b], num_blocks=64)
    assert all(not (x.prefill and x.decode) for x in trace.batches)
    # b's prefill step stalls a: a's decode gap spans two steps there
    assert a.finish_s > 0.10 + 1e-9


def test_static_batch_runs_to_completion_before_next():
    a, b = req(0, 32, 10), req(1, 16, 2, arrival=0.001)
    cfg = SchedulerConfig(batching="static", max_num_seqs=4, max_num_batched_tokens=4096, max_model_len=4096)
    _, trace = drive(cfg, [a, b], num_blocks=64)
    assert b.first_scheduled_s >= a.finish_s


def test_rejections_have_reasons():
    long = req(0, 30_000, 5000)
    huge = req(1, 2000, 10)
    ok = req(2, 10, 2)
    sched, _ = drive(SchedulerConfig(max_model_len=32_768), [long, huge, ok], num_blocks=64)
    assert long.state == State.REJECTED and "max_model_len" in long.rejected_reason
    assert huge.state == State.REJECTED and "KV blocks" in huge.rejected_reason
    assert ok.state == State.FINISHED and not ok.rejected_reason


def test_config_asserts_its_invariants():
    # User values are refused by Scenario with the field named (tests/test_config.py); the inner config asserts.
    with pytest.raises(AssertionError):
        SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=128)
    with pytest.raises(AssertionError):
        SchedulerConfig(batching="continuous", max_num_batched_tokens=2048, max_model_len=4096)
    with pytest.raises(AssertionError):
        SchedulerConfig(policy="lifo")


def test_prefix_cache_hits_shared_prefix():
    shared = (11, 22, 33)
    a = req(0, 3 * 64 + 10, 2, hash_ids=shared + (44,), hash_block_tokens=64)
    b = req(1, 3 * 64 + 30, 2, arrival=0.1, hash_ids=shared + (55,), hash_block_tokens=64)
    sched, trace = drive(SchedulerConfig(), [a, b], num_blocks=64, prefix_caching=True)
    assert a.cached_tokens == 0
    assert b.cached_tokens == 3 * 64  # the three shared hash blocks = 12 KV blocks of 16
    first_b = next(x.prefill[0] for x in trace.batches if x.prefill and x.prefill[0].request is b)
    assert first_b.context_before == 192 and first_b.tokens == 30
    assert sched.kv.num_free == 64  # cached blocks are resident but free


def test_prefix_cache_never_serves_the_last_prompt_token():
    ids = (1, 2)
    a = req(0, 128, 2, hash_ids=ids, hash_block_tokens=64)
    b = req(1, 128, 2, arrival=0.1, hash_ids=ids, hash_block_tokens=64)
    drive(SchedulerConfig(), [a, b], num_blocks=64, prefix_caching=True)
    assert b.cached_tokens == 112  # 7 full blocks; the 8th holds the last prompt token


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_and_resume(mode):
    # 12 blocks of 16 tokens; two requests that each need 8 blocks at the end.
    a, b = req(0, 60, 64), req(1, 60, 64, arrival=0.001)
    cfg = SchedulerConfig(preemption=mode, max_num_seqs=4, max_num_batched_tokens=256)
    sched, trace = drive(cfg, [a, b], num_blocks=12, swap_blocks=64 if mode == "swap" else 0)
    assert a.generated == 64 and b.generated == 64
    assert b.num_preemptions >= 1 and a.num_preemptions == 0  # FCFS preempts the later arrival
    assert sched.kv.num_free == 12 and max(trace.kv_used) <= 12
    prefill_tokens_b = sum(c.tokens for x in trace.batches for c in x.prefill if c.request is b)
    if mode == "recompute":
        assert prefill_tokens_b > 60  # recomputed prompt + generated tokens
        assert all(x.swap_in_blocks == 0 for x in trace.batches)
    else:
        assert prefill_tokens_b == 60
        assert sum(x.swap_out_blocks for x in trace.batches) == sum(x.swap_in_blocks for x in trace.batches) > 0
        assert sched.kv.swap_free == 64


def test_sjf_admits_shortest_prompt_first():
    rs = [req(i, p, 2) for i, p in enumerate([300, 100, 200, 50])]
    _, trace = drive(SchedulerConfig(policy="sjf", max_num_seqs=1, max_num_batched_tokens=1024), rs, num_blocks=256)
    assert trace.admitted == [3, 1, 2, 0]


def test_sjf_oracle_and_srpt_order_by_output():
    rs = [req(i, 10, o) for i, o in enumerate([40, 5, 20])]
    for policy in ("sjf-oracle", "srpt"):
        fresh = [req(r.request_id, r.prompt_tokens, r.output_tokens) for r in rs]
        _, trace = drive(SchedulerConfig(policy=policy, max_num_seqs=1, max_num_batched_tokens=1024), fresh,
                         num_blocks=256)
        assert trace.admitted == [1, 2, 0], policy


def test_priority_and_edf():
    rs = [req(0, 10, 2, priority=5), req(1, 10, 2, priority=1), req(2, 10, 2, priority=3)]
    _, trace = drive(SchedulerConfig(policy="priority", max_num_seqs=1, max_num_batched_tokens=1024), rs,
                     num_blocks=64)
    assert trace.admitted == [1, 2, 0]
    rs = [req(0, 10, 2, deadline_s=9.0), req(1, 10, 2, deadline_s=3.0), req(2, 10, 2, deadline_s=math.inf)]
    _, trace = drive(SchedulerConfig(policy="edf", max_num_seqs=1, max_num_batched_tokens=1024), rs,
                     num_blocks=64)
    assert trace.admitted == [1, 0, 2]


def test_aging_bounds_the_wait_of_the_longest_job():
    # A stream of short jobs, one every 1 ms, each needing 3 ms of service (overload), and one long
    # job arriving just after the first short one.
    def workload():
        return [req(0, 1000, 2, arrival=0.0005)] + [req(i, 100, 2, arrival=0.001 * (i - 1)) for i in range(1, 400)]

    cfg = dict(policy="sjf", max_num_seqs=1, max_num_batched_tokens=1024)
    starve = workload()
    drive(SchedulerConfig(**cfg), starve, num_blocks=512, step_s=0.0015)
    aged = workload()
    drive(SchedulerConfig(aging=20_000.0, **cfg), aged, num_blocks=512, step_s=0.0015)
    # Without aging the long job waits for the whole stream (399 jobs x 3 ms). With aging its key
    # 1000 + 20000 x 0.0005 = 1010 beats a short job's 100 + 20000 x arrival once arrival > 45.5 ms:
    # only ~46 short jobs (x 3 ms = 0.14 s) can pass it.
    assert starve[0].first_scheduled_s > 1.19
    assert 0.13 < aged[0].first_scheduled_s < 0.15


def test_sjf_predicted_uses_the_predictor():
    from servesim.sim.policies import OutputPredictor

    rs = [req(i, 10, o) for i, o in enumerate([400, 10, 100])]
    cfg = SchedulerConfig(policy="sjf-predicted", predictor=OutputPredictor("lognormal", sigma=0.0),
                          max_num_seqs=1, max_num_batched_tokens=1024)
    _, trace = drive(cfg, rs, num_blocks=256)
    assert trace.admitted == [1, 2, 0]  # sigma 0: the prediction is exact
    assert [r.predicted_output_tokens for r in rs] == [400, 10, 100]


def test_itl_sample_counts_every_token_after_the_first():
    rs = [req(i, 20 + i, 5 + 3 * i, arrival=0.003 * i) for i in range(6)]
    sched, _ = drive(SchedulerConfig(max_num_seqs=3, max_num_batched_tokens=64), rs, num_blocks=20)
    assert sum(sched.itl_weights) == sum(r.generated - 1 for r in rs)
    assert all(v > 0 for v in sched.itl_s)


def test_swap_in_never_thrashes_in_the_same_step():
    # A pool far too small for 20 prompts: requests are swapped out and back in many times, but
    # never swapped in and out again within one step (the running requests get their blocks first).
    rs = [req(i, 100 + 7 * i, 60) for i in range(20)]
    round_trips = []

    def check(sched, batch, waiting_before):
        # A request swapped out before this step can only be preempted now if it came back in it.
        was_out = {id(r) for r in swapped_before}
        round_trips.extend(r for r in batch.preempted if id(r) in was_out)
        swapped_before[:] = list(sched.swapped)

    swapped_before: list = []
    cfg = SchedulerConfig(preemption="swap", max_num_seqs=32, max_num_batched_tokens=512)
    sched, trace = drive(cfg, rs, num_blocks=40, swap_blocks=160, check=check)
    assert sum(b.swap_in_blocks for b in trace.batches) > 0
    assert not round_trips
    assert all(r.generated == r.output_tokens for r in rs)
