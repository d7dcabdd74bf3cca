"""Property-based tests of the serving core: random workloads and configs, every batching mode × policy, each
example under one of the admission policies.

Each example runs a workload through ``drive`` (the seam loop) and checks the invariants of
``tests.scheduler_invariants`` after every ``schedule()`` and at the end: no block leaks, capacity
never exceeded, every request finished or rejected with a reason, tokens conserved, token budget and
``max_num_seqs`` respected, timestamps monotone, admissions in policy order; under a reserving admission
nothing is preempted and the blocks held stay within the reservations. A second property checks
that aging bounds the wait of the longest job under every policy that takes aging.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servesim.sim.policies import POLICIES, OutputPredictor
from servesim.sim.request import Request, State
from servesim.sim.scheduler import ADMISSION, BATCHING, SchedulerConfig
from tests.scheduler_invariants import Invariants, RecordingAccept
from tests.serving_driver import drive

MODES = list(BATCHING)
ALL_POLICIES = list(POLICIES)
AGING_POLICIES = [p for p in ALL_POLICIES if p not in ("fcfs", "edf")]
PROPS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
STEP_S = 0.01


@st.composite
def workloads(draw) -> list[Request]:
    """1-30 requests, prompts 1-400, outputs 1-60, spread or bursty, optional shared prefixes."""
    n = draw(st.one_of(st.integers(1, 4), st.integers(8, 30)))
    bursty = draw(st.booleans())
    hash_block = draw(st.sampled_from([0, 8, 32]))  # 0: no hash_ids
    groups = draw(st.integers(1, 3))
    t, reqs = 0.0, []
    for i in range(n):
        if bursty:
            t = draw(st.sampled_from([0.0, 0.05, 0.3]))
        else:
            t += draw(st.floats(0.0, 0.02, allow_nan=False))
        prompt = draw(st.integers(1, 400))
        output = draw(st.integers(1, 60))
        ids: tuple[int, ...] = ()
        if hash_block:
            nblocks = -(-prompt // hash_block)
            shared = draw(st.integers(0, nblocks))
            g = draw(st.integers(0, groups - 1))
            own = 10**6 * (i + 1)  # ids no other request uses
            ids = tuple(1000 * g + j for j in range(shared)) + tuple(own + j for j in range(shared, nblocks))
        reqs.append(Request(
            i, t, prompt, output, hash_ids=ids, hash_block_tokens=hash_block,
            priority=draw(st.integers(0, 3)), deadline_s=t + draw(st.sampled_from([0.1, 1.0, 10.0])),
        ))
    return reqs


@st.composite
def cases(draw, mode: str, policy: str) -> tuple[list[Request], SchedulerConfig, dict]:
    """A workload, a scheduler config and the KV arguments of ``drive``.

    The pool is sized from the workload's largest request, from too small (it is rejected) to a few
    times larger, so that concurrent requests often run it dry and preempt each other.
    """
    reqs = draw(workloads())
    block = draw(st.sampled_from([16, 4]))
    spec = draw(st.sampled_from([0, 2]))
    seqs = draw(st.integers(1, 16))
    model_len = draw(st.sampled_from([512, 512, 512, 128]))  # 128 rejects the longer requests
    if mode == "chunked":
        budget = draw(st.integers(max(16, seqs * (1 + spec)), 512))
    else:
        budget = draw(st.integers(model_len, 1024))
    preemption = draw(st.sampled_from(["recompute", "swap"]))
    admission = draw(st.sampled_from(list(ADMISSION)))
    largest = max(-(-(r.prompt_tokens + r.output_tokens - 1 + spec) // block) for r in reqs)
    if admission == "slots":  # from one slot (a little short of it: every request rejected) to all of them
        largest = -(-(model_len + spec) // block)
        num_blocks = max(1, int(largest * draw(st.floats(0.9, seqs + 0.5))))
    else:
        num_blocks = max(1, int(largest * draw(st.floats(0.8, 2.5))))
    swap = draw(st.sampled_from([4 * num_blocks, num_blocks // 4, 0])) if preemption == "swap" else 0
    config = SchedulerConfig(
        batching=mode, policy=policy, max_num_seqs=seqs, max_num_batched_tokens=budget,
        max_model_len=model_len, preemption=preemption, admission=admission, spec_k=spec,
        aging=draw(st.sampled_from([0.0, 0.0, 50.0, 5000.0])),
        predictor=draw(st.sampled_from([OutputPredictor("lognormal", sigma=0.7),
                                        OutputPredictor("buckets", accuracy=0.6, bucket_edges=(8, 24, 40))])),
        record_token_times=draw(st.booleans()),
    )
    kv = dict(num_blocks=num_blocks, block_size=block, prefix_caching=draw(st.booleans()), swap_blocks=swap)
    return reqs, config, kv


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize("mode", MODES)
def test_invariants_hold(mode, policy):
    @PROPS
    @given(case=cases(mode, policy), seed=st.integers(0, 2**16))
    def prop(case, seed):
        reqs, config, kv = case
        accept = RecordingAccept(np.random.default_rng(seed)) if config.spec_k else None
        inv = Invariants(config, accept)
        sched, _ = drive(config, reqs, step_s=STEP_S, accept=accept, max_steps=50_000, check=inv.check, **kv)
        inv.finish(sched, reqs, kv["swap_blocks"])

    prop()


def _key_gap(policy: str) -> float:
    """Key of the long job minus the key of a short one (see ``_aging_workload``)."""
    return {"sjf": 300 - 10, "sjf-oracle": 20 - 1, "sjf-predicted": 20 - 1, "srpt": 320 - 11, "priority": 5}[policy]


def _aging_workload(n_short: int, gap_s: float, long_at_s: float) -> list[Request]:
    """A long job (prompt 300, output 20, priority 5) in a stream of short ones (10, 1, priority 0)."""
    shorts = [Request(i + 1, i * gap_s, 10, 1) for i in range(n_short)]
    return [Request(0, long_at_s, 300, 20, priority=5)] + shorts


@pytest.mark.parametrize("policy", AGING_POLICIES)
@pytest.mark.parametrize("mode", MODES)
def test_aging_bounds_the_wait_of_the_longest_job(mode, policy):
    """One job at a time, each short job one step: an overloaded stream starves the long job unless aged.

    With aging ``a`` the long job's key ``K_L + a*t_L`` is below every short job's ``K_S + a*t`` once
    ``t > t_L + (K_L - K_S)/a``: only the short jobs that arrived by then (plus the one running) can
    pass it, whatever else happens.
    """
    @settings(max_examples=8, deadline=None, derandomize=True, database=None)
    @given(bound_s=st.floats(0.02, 0.6), gap_frac=st.floats(0.3, 0.9), long_at=st.integers(0, 20))
    def prop(bound_s, gap_frac, long_at):
        gap_s = STEP_S * gap_frac  # arrivals faster than service: the queue only grows
        n_short = 400
        t_long = long_at * gap_s + gap_s / 2
        aging = _key_gap(policy) / bound_s  # short jobs arriving after t_long + bound_s rank behind
        cfg = dict(batching=mode, policy=policy, max_num_seqs=1, max_num_batched_tokens=1024, max_model_len=1024,
                   predictor=OutputPredictor("lognormal", sigma=0.0))
        aged = _aging_workload(n_short, gap_s, t_long)
        drive(SchedulerConfig(aging=aging, **cfg), aged, num_blocks=256, step_s=STEP_S)
        passing = sum(1 for r in aged[1:] if r.arrival_s <= t_long + bound_s)
        assert passing < n_short - 10, "the stream must outlast the bound for the test to mean anything"
        assert aged[0].first_scheduled_s <= aged[1].arrival_s + (passing + 1) * STEP_S + 1e-9
        assert all(r.state == State.FINISHED for r in aged)
        starved = _aging_workload(n_short, gap_s, t_long)
        drive(SchedulerConfig(aging=0.0, **cfg), starved, num_blocks=256, step_s=STEP_S)
        assert starved[0].first_scheduled_s >= max(r.first_scheduled_s for r in starved[1:])

    prop()
