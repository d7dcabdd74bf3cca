"""Synthetic workloads: seeded determinism, arrival-process rates and CVs, length distributions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from servesim.errors import ConfigError
from servesim.sim.workload import (
    ClosedLoop,
    Constant,
    Empirical,
    Fixed,
    Gamma,
    Lengths,
    LogNormal,
    Poisson,
    Uniform,
    Workload,
    Zipf,
    load_trace,
    synthesize,
    with_arrivals,
)

N = 200_000
FIXED = Lengths(Fixed(100), Fixed(10))


def gaps(w: Workload) -> np.ndarray:
    return np.diff(w.requests["arrival_s"].to_numpy())


def test_same_seed_same_workload_other_seed_differs() -> None:
    lengths = Lengths(LogNormal(800, 1.0), Zipf(1.1, 2000))
    a = synthesize(500, Gamma(4.0, cv=2.0), lengths, np.random.default_rng(7))
    b = synthesize(500, Gamma(4.0, cv=2.0), lengths, np.random.default_rng(7))
    c = synthesize(500, Gamma(4.0, cv=2.0), lengths, np.random.default_rng(8))
    pd.testing.assert_frame_equal(a.requests, b.requests)
    assert not a.requests.equals(c.requests)
    assert a.source.startswith("synthetic:Gamma(rate_per_s=4.0, cv=2.0")


def test_poisson_rate_and_exponential_gaps() -> None:
    w = synthesize(N, Poisson(5.0), FIXED, np.random.default_rng(1))
    s = w.stats()
    assert w.requests["arrival_s"].iloc[0] == 0.0
    assert s["rate_per_s"] == pytest.approx(5.0, rel=0.01)
    assert s["iat_cv"] == pytest.approx(1.0, abs=0.02)
    assert abs(s["burstiness"]) < 0.01
    assert stats.kstest(gaps(w), "expon", args=(0, 0.2)).pvalue > 1e-3


@pytest.mark.parametrize("arrival, cv", [
    (Gamma(2.0, cv=3.0), 3.0), (Gamma(2.0, cv=0.5), 0.5),
    (Gamma(2.0, burstiness=0.25), 2.0), (Gamma(2.0, burstiness=1.0), 1.0),
])
def test_gamma_hits_requested_cv_and_rate(arrival: Gamma, cv: float) -> None:
    w = synthesize(N, arrival, FIXED, np.random.default_rng(2))
    s = w.stats()
    assert s["rate_per_s"] == pytest.approx(2.0, rel=0.03)
    assert s["iat_cv"] == pytest.approx(cv, rel=0.04)


def test_constant_arrivals_are_evenly_spaced() -> None:
    w = synthesize(101, Constant(4.0), FIXED, np.random.default_rng(0))
    assert np.allclose(gaps(w), 0.25)
    assert w.stats()["iat_cv"] == pytest.approx(0.0, abs=1e-9)
    assert w.stats()["span_s"] == pytest.approx(25.0)


def test_closed_loop_has_no_arrival_times_but_users_and_think_time() -> None:
    w = synthesize(50, ClosedLoop(users=8, think_time_s=1.5), FIXED, np.random.default_rng(0))
    assert w.closed_loop == ClosedLoop(8, 1.5)
    assert w.requests["arrival_s"].isna().all() and not w.has_arrivals
    s = w.stats()
    assert s["closed_loop"] == {"users": 8, "think_time_s": 1.5} and s["rate_per_s"] is None
    with pytest.raises(ConfigError, match="at least one user"):
        ClosedLoop(0)


def test_fixed_and_uniform_lengths() -> None:
    rng = np.random.default_rng(3)
    inp, out = Lengths(Uniform(10, 20), Fixed(7)).sample(N, rng)
    assert inp.dtype == np.int64 and out.dtype == np.int64
    assert inp.min() == 10 and inp.max() == 20  # both ends included
    assert inp.mean() == pytest.approx(15.0, abs=0.05)
    assert np.bincount(inp)[10:21].min() > N / 11 * 0.95  # every value about equally likely
    assert (out == 7).all()


def test_lognormal_median_sigma_and_cap() -> None:
    x = LogNormal(1000, 0.8).draw(N, np.random.default_rng(4))
    assert np.median(x) == pytest.approx(1000, rel=0.01)
    assert np.log(x).std() == pytest.approx(0.8, rel=0.01)
    capped = LogNormal(1000, 2.0, max_tokens=4096).draw(N, np.random.default_rng(4))
    assert capped.max() == 4096 and capped.min() >= 1
    m = LogNormal.from_mean(500, 0.5).draw(N, np.random.default_rng(5))
    assert m.mean() == pytest.approx(500, rel=0.01)


def test_zipf_follows_power_law() -> None:
    z = Zipf(1.2, 1000)
    p = z.probabilities()
    assert p.sum() == pytest.approx(1.0) and p[0] / p[1] == pytest.approx(2**1.2)
    x = z.draw(N, np.random.default_rng(6))
    assert x.min() >= 1 and x.max() <= 1000
    freq = np.bincount(x, minlength=1001)[1:] / N
    assert np.allclose(freq[:5], p[:5], rtol=0.03)  # the head, where counts are large
    assert (x > 100).mean() == pytest.approx(p[100:].sum(), abs=0.005)  # the tail's mass


def test_empirical_resamples_joint_pairs_from_a_trace() -> None:
    src = load_trace("azure-conv")
    pairs = set(zip(src.requests["input_tokens"], src.requests["output_tokens"], strict=True))
    w = synthesize(20_000, Poisson(1.0), Empirical(src), np.random.default_rng(9))
    got = list(zip(w.requests["input_tokens"], w.requests["output_tokens"], strict=True))
    assert set(got) <= pairs  # pairs are kept together, never mixed across requests
    corr_src = np.corrcoef(src.requests["input_tokens"], src.requests["output_tokens"])[0, 1]
    corr_new = np.corrcoef(w.requests["input_tokens"], w.requests["output_tokens"])[0, 1]
    assert corr_new == pytest.approx(corr_src, abs=0.03)
    assert w.requests["input_tokens"].mean() == pytest.approx(1154.7, rel=0.03)
    by_name = synthesize(100, Poisson(1.0), Empirical("azure-conv"), np.random.default_rng(9))
    assert by_name.requests.equals(synthesize(100, Poisson(1.0), Empirical(src),
                                              np.random.default_rng(9)).requests)


def test_with_arrivals_gives_a_length_only_trace_times() -> None:
    lengths = load_trace("sharegpt")
    w = with_arrivals(lengths, Poisson(3.0), np.random.default_rng(0))
    assert w.has_arrivals and not lengths.has_arrivals
    assert w.requests["input_tokens"].equals(lengths.requests["input_tokens"])
    assert w.stats()["rate_per_s"] == pytest.approx(3.0, rel=0.03)
    closed = with_arrivals(lengths, ClosedLoop(4), np.random.default_rng(0))
    assert closed.closed_loop == ClosedLoop(4) and closed.requests["arrival_s"].isna().all()


@pytest.mark.parametrize("make", [
    lambda: Poisson(0.0), lambda: Gamma(1.0), lambda: Gamma(1.0, cv=1.0, burstiness=1.0),
    lambda: Gamma(1.0, cv=-1.0), lambda: Uniform(5, 4), lambda: Fixed(0), lambda: LogNormal(0.5, 1.0),
    lambda: Zipf(0.0, 10), lambda: Zipf(1.0, 0),
])
def test_invalid_parameters_are_refused(make) -> None:
    with pytest.raises(ConfigError):
        make()


def test_synthesize_needs_requests() -> None:
    with pytest.raises(ConfigError, match="n >= 1"):
        synthesize(0, Poisson(1.0), FIXED, np.random.default_rng(0))
