"""Speculative-decoding acceptance: closed-form means, the exact capped-geometric law, Beta mixtures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from servesim.errors import ConfigError
from servesim.sim.spec import (
    AcceptanceModel,
    IIDAcceptance,
    PerRequestAcceptance,
    SpecConfig,
    expected_accepted_tokens,
)

N = 400_000


def exact_pmf(alpha: float, k: int) -> np.ndarray:
    """P(emitted = 1 + j), j = 0..k: accept j then reject, or accept all k."""
    j = np.arange(k + 1)
    pmf = alpha**j * (1 - alpha)
    pmf[k] = alpha**k
    return pmf


@pytest.mark.parametrize(
    ("alpha", "k", "want"), [(0.0, 4, 1.0), (1.0, 4, 5.0), (0.5, 1, 1.5), (0.5, 2, 1.75)]
)
def test_expected_tokens_closed_form(alpha, k, want):
    assert expected_accepted_tokens(alpha, k) == pytest.approx(want, rel=1e-15)


@pytest.mark.parametrize("alpha", [0.3, 0.7, 0.9, 0.999999])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_expected_tokens_is_sum_of_acceptance_probabilities(alpha, k):
    assert expected_accepted_tokens(alpha, k) == pytest.approx(sum(alpha**j for j in range(k + 1)), rel=1e-9)


@pytest.mark.parametrize(("alpha", "k"), [(0.2, 1), (0.6, 3), (0.8, 5), (0.95, 8)])
def test_iid_sample_mean_matches_closed_form(alpha, k):
    model = IIDAcceptance(alpha=alpha, k=k)
    x = model.sample(np.random.default_rng(1), N)
    pmf = exact_pmf(alpha, k)
    support = np.arange(1, k + 2)
    sd = np.sqrt(pmf @ support**2 - (pmf @ support) ** 2)
    assert x.dtype == np.int64 and x.min() >= 1 and x.max() <= k + 1
    # Four standard errors: ~0.002 tokens here, tight enough to catch an off-by-one in the cap.
    assert abs(x.mean() - expected_accepted_tokens(alpha, k)) < 4 * sd / np.sqrt(N)
    assert model.mean_emitted_tokens() == expected_accepted_tokens(alpha, k)


@pytest.mark.parametrize(("alpha", "k"), [(0.5, 4), (0.8, 3), (0.9, 6)])
def test_iid_distribution_is_capped_geometric(alpha, k):
    x = IIDAcceptance(alpha=alpha, k=k).sample(np.random.default_rng(7), 200_000)
    observed = np.bincount(x, minlength=k + 2)[1:]
    expected = exact_pmf(alpha, k) * len(x)
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # The same test rejects a slightly wrong law, so it has power.
    wrong = exact_pmf(alpha - 0.03, k) * len(x)
    assert stats.chisquare(observed, wrong).pvalue < 1e-6


def test_iid_edge_rates():
    rng = np.random.default_rng(0)
    assert (IIDAcceptance(alpha=0.0, k=5).sample(rng, 1000) == 1).all()
    assert (IIDAcceptance(alpha=1.0, k=5).sample(rng, 1000) == 6).all()


def test_samples_are_seeded():
    model = IIDAcceptance(alpha=0.7, k=4)
    a = model.sample(np.random.default_rng(3), 100)
    b = model.sample(np.random.default_rng(3), 100)
    c = model.sample(np.random.default_rng(4), 100)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(("mean", "conc", "k"), [(0.7, 2.0, 4), (0.5, 0.5, 3), (0.85, 20.0, 6)])
def test_per_request_mean_is_expectation_over_beta(mean, conc, k):
    model = PerRequestAcceptance(k=k, alpha_mean=mean, alpha_concentration=conc)
    a, b = model.beta_params
    reference, _ = integrate.quad(lambda t: expected_accepted_tokens(t, k) * stats.beta.pdf(t, a, b), 0, 1)
    assert model.mean_emitted_tokens() == pytest.approx(reference, rel=1e-7)
    x = model.sample(np.random.default_rng(11), N)
    assert abs(x.mean() - reference) < 4 * x.std() / np.sqrt(N)
    # Σ α^j is convex in α, so (Jensen) a spread of rates emits more than iid at the mean rate.
    assert model.mean_emitted_tokens() > expected_accepted_tokens(mean, k)


def test_per_request_alphas_and_vectorized_steps():
    model = PerRequestAcceptance(k=4, alpha_mean=0.6, alpha_concentration=5.0)
    rng = np.random.default_rng(5)
    alphas = model.draw_alphas(rng, 200_000)
    assert alphas.mean() == pytest.approx(0.6, abs=0.003)
    assert 0.0 <= model.draw_alpha(rng) <= 1.0
    steps = model.sample_for(rng, np.array([0.0, 1.0, 0.0, 1.0]))
    assert steps.tolist() == [1, 5, 1, 5]
    # Each sequence keeps its own rate: a block of α = 0.9 emits ~expected_accepted_tokens(0.9, 4).
    many = model.sample_for(rng, np.full(200_000, 0.9))
    assert many.mean() == pytest.approx(expected_accepted_tokens(0.9, 4), abs=0.01)


def test_models_satisfy_protocol():
    assert isinstance(IIDAcceptance(alpha=0.5, k=2), AcceptanceModel)
    assert isinstance(PerRequestAcceptance(k=2, alpha_mean=0.5, alpha_concentration=1.0), AcceptanceModel)


def test_spec_config_builds_models():
    iid = SpecConfig(draft_model="llama-3.2-1b", k=4, alpha=0.8).acceptance_model()
    assert iid == IIDAcceptance(alpha=0.8, k=4)
    per = SpecConfig(draft_model="d", k=3, alpha_mean=0.7, alpha_concentration=4.0).acceptance_model()
    assert per == PerRequestAcceptance(k=3, alpha_mean=0.7, alpha_concentration=4.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"draft_model": "", "k": 4, "alpha": 0.5}, "spec.draft_model"),
        ({"draft_model": "d", "k": 0, "alpha": 0.5}, "spec.k"),
        ({"draft_model": "d", "k": 2.5, "alpha": 0.5}, "spec.k"),
        ({"draft_model": "d", "k": 4, "alpha": 1.5}, "spec.alpha"),
        ({"draft_model": "d", "k": 4}, "spec.alpha"),
        (dict(draft_model="d", k=4, alpha=0.5, alpha_mean=0.5, alpha_concentration=1), "spec.alpha"),
        ({"draft_model": "d", "k": 4, "alpha_mean": 0.5}, "spec.alpha_concentration"),
        ({"draft_model": "d", "k": 4, "alpha_concentration": 2.0}, "spec.alpha_mean"),
        ({"draft_model": "d", "k": 4, "alpha_mean": 1.0, "alpha_concentration": 2.0}, "spec.alpha_mean"),
        (dict(draft_model="d", k=4, alpha_mean=0.5, alpha_concentration=0.0), "spec.alpha_concentration"),
    ],
)
def test_spec_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        SpecConfig(**kwargs)
    assert err.value.field == field
    assert f"field '{field}'" in str(err.value)
