"""Random scenarios through the whole simulator: accounting, invariants, fast-forward exactness."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servesim.sim import workload as wl
from servesim.sim.config import Scenario
from servesim.sim.simulator import simulate

scenarios = st.fixed_dictionaries(
    {
        "batching": st.sampled_from(["static", "continuous", "chunked"]),
        "policy": st.sampled_from(["fcfs", "sjf", "sjf-oracle", "sjf-predicted", "srpt", "priority", "edf"]),
        "preemption": st.sampled_from(["recompute", "swap"]),
        "replicas": st.integers(1, 3),
        "router": st.sampled_from(["round_robin", "least_outstanding", "least_kv", "power_of_two",
                                   "prefix_affinity"]),
        "pp": st.sampled_from([1, 1, 2]),
        "spec_k": st.sampled_from([0, 0, 2]),
        "num_gpu_blocks": st.integers(80, 800),
        "block_size": st.sampled_from([8, 16]),
        "max_num_seqs": st.sampled_from([4, 16, 64]),
        "aging": st.sampled_from([0.0, 500.0]),
        "seed": st.integers(0, 3),
    }
)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(extra=scenarios, n=st.integers(1, 50), rate=st.floats(0.5, 40.0), cv=st.floats(0.5, 4.0))
def test_random_scenarios_account_for_every_request(extra, n, rate, cv):
    rng = np.random.default_rng(extra["seed"])
    lengths = wl.Lengths(wl.Uniform(1, 700), wl.Uniform(1, 120))
    w = wl.synthesize(n, wl.Gamma(rate, cv=cv), lengths, rng)
    budget = 1024 if extra["batching"] == "chunked" else 2048
    s = Scenario(max_num_batched_tokens=budget, max_model_len=2048, **extra)
    a = simulate(s, w)
    req = a.requests
    assert len(req) == n and sorted(req.request_id) == list(range(n))
    done = (req.rejected_reason == "").to_numpy()
    assert (req.generated_tokens[done] == req.output_tokens[done]).all()
    assert (req.arrival_s[done] <= req.first_scheduled_s[done]).all()
    assert (req.first_token_s[done] <= req.finish_s[done]).all()
    assert a.summary["completed"] + a.summary["rejected"] == n
    tl = a.timeline
    assert (tl.kv_blocks_used <= tl.kv_blocks_total).all() and (tl.end_s >= tl.start_s).all()
    assert a.itl_weights.sum() == int((req.generated_tokens[done] - 1).clip(lower=0).sum()) or extra["spec_k"]
    b = simulate(s.model_copy(update={"fast_forward": False}), w)
    for col in ("first_scheduled_s", "first_token_s", "finish_s", "num_preemptions", "replica"):
        np.testing.assert_array_equal(a.requests[col].to_numpy(), b.requests[col].to_numpy(), err_msg=col)
