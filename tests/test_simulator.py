"""The simulator against closed forms, queueing theory, its own fast-forward, and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.hwmodels.ops import decode_shape, prefill_shape
from servesim.sim import workload as wl
from servesim.sim.config import Scenario
from servesim.sim.deployment import build_deployment
from servesim.sim.outputs import write_outputs
from servesim.sim.simulator import Simulation, simulate
from servesim.sim.spec import expected_accepted_tokens


def fixed_workload(n, rate, prompt, output, seed=0, arrival=None):
    proc = arrival or wl.Poisson(rate)
    return wl.synthesize(n, proc, wl.Lengths(wl.Fixed(prompt), wl.Fixed(output)), np.random.default_rng(seed))


def test_one_request_alone_closed_form():
    s = Scenario()
    cost = build_deployment(s).cost
    w = fixed_workload(1, 1.0, 1000, 50)
    r = simulate(s, w).requests.iloc[0]
    prefill = cost.step_time_s(prefill_shape(1000))
    decode = sum(cost.step_time_s(decode_shape(1, 1000 + j)) for j in range(1, 50))
    assert r.first_token_s - r.arrival_s == pytest.approx(prefill, rel=1e-12)
    assert r.finish_s - r.arrival_s == pytest.approx(prefill + decode, rel=1e-12)
    assert r.ideal_e2el_s == pytest.approx(prefill + decode, rel=1e-12)


@pytest.mark.parametrize("rho,n", [(0.5, 60_000), (0.8, 150_000)])
def test_md1_waiting_time_matches_pollaczek_khinchine(rho, n):
    # Batch size 1 and one output token: each request is one prefill step of constant time D,
    # served FCFS: an M/D/1 queue. Mean wait Wq = rho D / (2 (1 - rho)).
    s = Scenario(max_num_seqs=1)
    D = build_deployment(s).cost.step_time_s(prefill_shape(512))
    w = fixed_workload(n, rho / D, 512, 1, seed=7)
    req = simulate(s, w).requests
    wait = (req.first_scheduled_s - req.arrival_s).to_numpy()
    # Lindley's recursion on the same arrivals is the exact answer for this sample...
    gaps = np.diff(w.requests.arrival_s.to_numpy())
    lindley = np.zeros(n)
    for i, g in enumerate(gaps, start=1):
        lindley[i] = max(0.0, lindley[i - 1] + D - g)
    np.testing.assert_allclose(wait, lindley, atol=1e-9)
    # ...and the Pollaczek–Khinchine mean, at the sample's realized load (removes the noise of the
    # realized arrival rate, the dominant error term at this sample size), is within 3%.
    rho_hat = D / gaps.mean()
    pk = rho_hat * D / (2 * (1 - rho_hat))
    assert wait.mean() == pytest.approx(pk, rel=0.03)
    assert rho_hat == pytest.approx(rho, rel=0.02)


@pytest.mark.parametrize(
    "extra",
    [
        {},  # the H200's calibrated profile
        {"gpu": "H100-SXM"},  # the roofline prior
        {"batching": "continuous", "max_num_batched_tokens": 8192, "max_model_len": 8192},
        {"batching": "static", "max_num_batched_tokens": 8192, "max_model_len": 8192, "max_num_seqs": 16},
        {"num_gpu_blocks": 400, "policy": "sjf"},  # KV pressure: preemptions
        {"replicas": 3, "router": "least_kv"},
    ],
)
def test_fast_forward_gives_identical_timestamps(extra):
    w = fixed_workload(400, 6.0, 700, 300, seed=3, arrival=wl.Gamma(6.0, cv=3.0))
    base = Scenario(**extra)
    a = simulate(base, w)
    b = simulate(base.model_copy(update={"fast_forward": False}), w)
    for col in ("first_scheduled_s", "first_token_s", "finish_s", "num_preemptions", "generated_tokens"):
        np.testing.assert_array_equal(a.requests[col].to_numpy(), b.requests[col].to_numpy(), err_msg=col)
    assert a.timeline.steps.sum() == len(b.timeline)
    assert len(a.timeline) < len(b.timeline)
    np.testing.assert_array_equal(np.sort(a.itl_s), np.sort(b.itl_s))
    assert a.itl_weights.sum() == b.itl_weights.sum()


def test_same_seed_gives_byte_identical_summary(tmp_path):
    s = Scenario(num_requests=800, spec_k=3, slo_ttft_ms=200, slo_tpot_ms=50)
    for name in ("a", "b"):
        r = simulate(s)
        write_outputs(tmp_path / name, r.requests, r.timeline, r.summary, r.meta)
    assert (tmp_path / "a" / "summary.json").read_bytes() == (tmp_path / "b" / "summary.json").read_bytes()
    other = simulate(s.model_copy(update={"seed": 1}))
    assert other.summary["mean_tpot_ms"] != r.summary["mean_tpot_ms"]  # spec acceptance is seeded


def test_speculative_decoding_mean_accepted_length():
    alpha, k = 0.7, 4
    s = Scenario(spec_k=k, spec_alpha=alpha, max_num_batched_tokens=4096)
    w = fixed_workload(60, 2.0, 200, 2000, seed=1)
    r = simulate(s, w)
    emitted = (r.requests.generated_tokens - 1).sum()  # tokens from verification steps
    seq_steps = r.timeline.decode_tokens.sum() / (1 + k)
    # The last step of each request is clipped at its output length: a small downward bias.
    assert emitted / seq_steps == pytest.approx(expected_accepted_tokens(alpha, k), rel=0.02)


def test_invariants_and_no_kv_leak():
    s = Scenario(num_gpu_blocks=300, replicas=2, router="power_of_two", prefix_caching=True,
                 trace="mooncake-conv", num_requests=300, rate=2.0, max_model_len=131072)
    dep = build_deployment(s)
    from servesim.sim.deployment import build_workload

    sim = Simulation(dep, build_workload(s), seed=0)
    sim.run()
    req = sim.requests.frame()
    done = req.rejected_reason == ""
    assert (req.first_token_s[done] <= req.finish_s[done]).all()
    assert (req.arrival_s[done] <= req.first_scheduled_s[done]).all()
    assert (req.generated_tokens[done] == req.output_tokens[done]).all()
    assert (req.rejected_reason[~done].str.len() > 0).all()
    tl = sim.timeline.frame()
    for _, g in tl.groupby("replica"):
        assert (np.diff(g.start_s.to_numpy()) >= 0).all() and (g.end_s >= g.start_s).all()
    assert (tl.kv_blocks_used <= tl.kv_blocks_total).all()
    for rep in sim.replicas:
        for e in rep.engines:
            assert e.sched.kv.num_free == e.sched.kv.num_blocks and not e.sched.has_work


def test_prefix_affinity_beats_round_robin_on_shared_prefixes():
    # below saturation: at 3 req/s the load fallback sends most requests away from their home either way
    common = dict(trace="mooncake-conv", num_requests=600, rate=2.0, replicas=4, prefix_caching=True,
                  max_model_len=131072, gpu="H100-SXM")
    rr = simulate(Scenario(router="round_robin", **common)).summary["prefix_cache_hit_rate"]
    pa = simulate(Scenario(router="prefix_affinity", **common)).summary["prefix_cache_hit_rate"]
    assert pa > rr > 0


def test_closed_loop_keeps_at_most_users_outstanding():
    s = Scenario(arrival="closed", users=4, think_time_s=0.5, trace="arxiv-summarization", num_requests=60)
    r = simulate(s)
    req = r.requests.sort_values("arrival_s")
    assert len(req) == 60 and (req.rejected_reason == "").all()
    t = np.sort(np.concatenate([req.arrival_s.to_numpy(), req.finish_s.to_numpy()]))
    events = np.concatenate([np.ones(60), -np.ones(60)])[np.argsort(
        np.concatenate([req.arrival_s.to_numpy(), req.finish_s.to_numpy() - 1e-12]), kind="stable")]
    assert np.cumsum(events).max() <= 4 and len(t) == 120


def test_pipeline_parallel_overlaps_micro_batches():
    w = fixed_workload(200, 20.0, 500, 100, seed=2)
    one = simulate(Scenario(model="Llama-3.1-70B", tp=4, pp=1), w).summary
    two = simulate(Scenario(model="Llama-3.1-70B", tp=4, pp=2), w).summary
    assert two["completed"] == one["completed"] == 200
    # Two stages of half the layers each, two micro-batches in flight: similar throughput per replica
    # while each token crosses both stages.
    assert two["mean_ttft_ms"] > 0 and two["output_throughput"] > 0.5 * one["output_throughput"]


def test_impossible_configs_are_refused():
    from servesim.errors import ConfigError

    with pytest.raises(ConfigError, match="70B"):
        build_deployment(Scenario(model="Llama-3.1-70B"))
    with pytest.raises(ConfigError, match="tp=3"):
        build_deployment(Scenario(tp=3))
    with pytest.raises(ConfigError, match="arrival"):
        from servesim.sim.deployment import build_workload

        build_workload(Scenario(trace="arxiv-summarization"))


def test_token_times_are_exact_under_fast_forward():
    w = fixed_workload(120, 4.0, 300, 80, seed=5)
    s = Scenario(record_token_times=True, num_gpu_blocks=200)
    a = simulate(s, w).requests
    b = simulate(s.model_copy(update={"fast_forward": False}), w).requests
    for ta, tb, row in zip(a.token_times_s, b.token_times_s, a.itertuples()):
        assert list(ta) == list(tb)
        assert len(ta) == row.generated_tokens and ta[0] == row.first_token_s and ta[-1] == row.finish_s
        assert (np.diff(ta) > 0).all()


def test_closed_loop_with_replicas_is_exact_too():
    s = Scenario(arrival="closed", users=3, think_time_s=0.0, trace="sharegpt", num_requests=120, replicas=2,
                 router="round_robin")
    a = simulate(s).requests
    b = simulate(s.model_copy(update={"fast_forward": False})).requests
    for col in ("arrival_s", "first_token_s", "finish_s", "replica"):
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)


def test_pipeline_one_request_crosses_every_stage():
    s = Scenario(model="Llama-3.1-70B", tp=4, pp=2)
    dep = build_deployment(s)
    w = fixed_workload(1, 1.0, 800, 3)
    r = simulate(s, w).requests.iloc[0]
    shape = prefill_shape(800)
    stage = dep.cost.step_time_s(shape) + dep.cost.pp_transfer_s(800)  # the cost model prices one stage
    assert r.first_token_s - r.arrival_s == pytest.approx(2 * stage, rel=1e-9)
    decode = [dep.cost.step_time_s(decode_shape(1, 800 + j)) + dep.cost.pp_transfer_s(1) for j in (1, 2)]
    assert r.finish_s - r.arrival_s == pytest.approx(2 * stage + 2 * sum(decode), rel=1e-9)


@pytest.mark.parametrize(
    "extra",
    [
        {},  # the H200's calibrated profile
        {"gpu": "H100-SXM", "record_token_times": True},  # the roofline prior
        {"num_gpu_blocks": 900, "policy": "sjf", "record_token_times": True},  # runs cut short by the KV pool
        {"prefix_caching": True, "replicas": 2, "router": "least_kv"},
    ],
)
def test_chunked_prefill_runs_fast_forward_exactly(extra, monkeypatch):
    """Long prompts in small chunks between sparse arrivals: runs of full-budget chunks (with the decodes beside
    them) advance at once, and every timestamp, the ITL sample and the whole timeline are what stepping one by
    one gives."""
    from servesim.sim.scheduler import Scheduler

    runs = []
    extend = Scheduler.extend_chunks
    monkeypatch.setattr(Scheduler, "extend_chunks", lambda self, b, n: runs.append(n) or extend(self, b, n))
    rng = np.random.default_rng(4)
    w = wl.synthesize(80, wl.Poisson(1.5), wl.Lengths(wl.Fixed(3000), wl.Fixed(60)), rng)
    w.table["input_tokens"] = rng.integers(200, 6000, len(w))  # chunks of 256 tokens: 1 to 23 a prompt
    s = Scenario(max_num_batched_tokens=256, **extra)

    def run(chunk_runs: bool, fast_forward: bool = True):
        sim = Simulation(build_deployment(s), w, seed=0, fast_forward=fast_forward)
        sim.chunk_runs = chunk_runs and fast_forward
        sim.run()
        return sim

    a, b, c = run(True), run(False), run(False, fast_forward=False)
    assert len(runs) > 20 and sum(runs) > 3 * len(runs) / 2
    ta, tb, tc = (x.requests.table() for x in (a, b, c))
    for col in ("first_scheduled_s", "first_token_s", "finish_s", "num_preemptions", "generated_tokens",
                "cached_tokens"):
        np.testing.assert_array_equal(ta[col], tc[col], err_msg=col)
    if s.record_token_times:
        assert [list(map(float, x)) for x in ta["token_times_s"]] == [list(map(float, x)) for x in tc["token_times_s"]]
    np.testing.assert_array_equal(np.sort(a.itl_s), np.sort(c.itl_s))
    np.testing.assert_array_equal(a.itl_s, b.itl_s)
    assert a.itl_weights.sum() == c.itl_weights.sum()
    la, lb = a.timeline.table(), b.timeline.table()  # chunk steps keep one row each, as without their runs
    for col in la:
        np.testing.assert_array_equal(la[col], lb[col], err_msg=col)
