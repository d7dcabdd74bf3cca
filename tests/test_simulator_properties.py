"""Random scenarios through the whole simulator: accounting, invariants, fast-forward exactness."""

from __future__ import annotations

import numpy as np
import pandas as pd
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


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(extra=scenarios, n=st.integers(1, 40), closed=st.booleans(), users=st.integers(1, 6),
       think=st.sampled_from([0.0, 0.05]), prefixes=st.integers(1, 4))
def test_shared_prefixes_and_closed_loops(extra, n, closed, users, think, prefixes):
    # Requests share one of a few 64-token-block prefixes (hash ids), as in the Mooncake trace.
    rng = np.random.default_rng(extra["seed"])
    blocks = rng.integers(1, 8, size=n)
    family = rng.integers(0, prefixes, size=n)
    hash_ids = [tuple(int(f) * 1000 + j for j in range(b)) for f, b in zip(family, blocks)]
    df = pd.DataFrame({
        "arrival_s": np.nan if closed else np.sort(rng.uniform(0, 5, size=n)),
        "input_tokens": blocks * 64 + rng.integers(0, 40, size=n),
        "output_tokens": rng.integers(1, 80, size=n),
        "hash_ids": hash_ids,
    })
    w = wl.Workload("prefixes", df, block_tokens=64,
                    closed_loop=wl.ClosedLoop(users, think) if closed else None)
    budget = 1024 if extra["batching"] == "chunked" else 2048
    s = Scenario(max_num_batched_tokens=budget, max_model_len=2048, prefix_caching=True, **extra)
    a = simulate(s, w)
    req = a.requests
    done = (req.rejected_reason == "").to_numpy()
    assert len(req) == n and (req.generated_tokens[done] == req.output_tokens[done]).all()
    assert (req.cached_tokens <= req.input_tokens - 1).all()
    b = simulate(s.model_copy(update={"fast_forward": False}), w)
    for col in ("arrival_s", "first_scheduled_s", "first_token_s", "finish_s", "cached_tokens", "replica"):
        np.testing.assert_array_equal(a.requests[col].to_numpy(), b.requests[col].to_numpy(), err_msg=col)
