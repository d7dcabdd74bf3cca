"""Speculative-decoding acceptance: closed-form means, the exact capped-geometric law, Beta mixtures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from servesim.errors import ConfigError
from servesim.sim.config import make_scenario
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
    model = IIDAcceptance(spec_alpha=alpha, spec_k=k)
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
    x = IIDAcceptance(spec_alpha=alpha, spec_k=k).sample(np.random.default_rng(7), 200_000)
    observed = np.bincount(x, minlength=k + 2)[1:]
    expected = exact_pmf(alpha, k) * len(x)
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # The same test rejects a slightly wrong law, so it has power.
    wrong = exact_pmf(alpha - 0.03, k) * len(x)
    assert stats.chisquare(observed, wrong).pvalue < 1e-6


def test_iid_edge_rates():
    rng = np.random.default_rng(0)
    assert (IIDAcceptance(spec_alpha=0.0, spec_k=5).sample(rng, 1000) == 1).all()
    assert (IIDAcceptance(spec_alpha=1.0, spec_k=5).sample(rng, 1000) == 6).all()


def test_samples_are_seeded():
    model = IIDAcceptance(spec_alpha=0.7, spec_k=4)
    a = model.sample(np.random.default_rng(3), 100)
    b = model.sample(np.random.default_rng(3), 100)
    c = model.sample(np.random.default_rng(4), 100)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(("mean", "conc", "k"), [(0.7, 2.0, 4), (0.5, 0.5, 3), (0.85, 20.0, 6)])
def test_per_request_mean_is_expectation_over_beta(mean, conc, k):
    model = PerRequestAcceptance(spec_k=k, spec_alpha=mean, spec_alpha_concentration=conc)
    a, b = model.beta_params
    reference, _ = integrate.quad(lambda t: expected_accepted_tokens(t, k) * stats.beta.pdf(t, a, b), 0, 1)
    assert model.mean_emitted_tokens() == pytest.approx(reference, rel=1e-7)
    x = model.sample(np.random.default_rng(11), N)
    assert abs(x.mean() - reference) < 4 * x.std() / np.sqrt(N)
    # Σ α^j is convex in α, so (Jensen) a spread of rates emits more than iid at the mean rate.
    assert model.mean_emitted_tokens() > expected_accepted_tokens(mean, k)


def test_per_request_alphas_and_vectorized_steps():
    model = PerRequestAcceptance(spec_k=4, spec_alpha=0.6, spec_alpha_concentration=5.0)
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
    assert isinstance(IIDAcceptance(spec_alpha=0.5, spec_k=2), AcceptanceModel)
    assert isinstance(PerRequestAcceptance(spec_k=2, spec_alpha=0.5, spec_alpha_concentration=1.0), AcceptanceModel)


def test_spec_config_builds_models():
    iid = SpecConfig(draft_model="llama-3.2-1b", spec_k=4, spec_alpha=0.8).acceptance_model()
    assert iid == IIDAcceptance(spec_alpha=0.8, spec_k=4)
    per = SpecConfig(draft_model="d", spec_k=3, spec_alpha=0.7, spec_alpha_concentration=4.0).acceptance_model()
    assert per == PerRequestAcceptance(spec_k=3, spec_alpha=0.7, spec_alpha_concentration=4.0)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"spec_k": -1}, "spec_k"),
        ({"spec_k": 2.5}, "spec_k"),
        ({"spec_k": 17}, "spec_k"),
        ({"spec_k": 4, "spec_alpha": 1.5}, "spec_alpha"),
        ({"spec_k": 4, "spec_alpha": 1.0, "spec_alpha_concentration": 2.0}, "spec_alpha"),
        ({"spec_k": 4, "spec_alpha_concentration": 0.0}, "spec_alpha_concentration"),
        ({"spec_k": 4, "draft_model": "no-such-draft"}, "draft_model"),
        ({"spec_k": 4, "max_num_seqs": 256, "max_num_batched_tokens": 1000}, "max_num_batched_tokens"),
    ],
)
def test_spec_errors_name_the_scenario_field(values, field):
    # Speculation's values are checked once, by Scenario, and every message names a field a user can set.
    with pytest.raises(ConfigError) as err:
        make_scenario(values)
    assert err.value.field == field
    assert f"field '{field}'" in str(err.value)
    assert "spec." not in str(err.value)


def test_inner_spec_configs_only_assert():
    with pytest.raises(AssertionError):
        SpecConfig(draft_model="d", spec_k=0, spec_alpha=0.5)
    with pytest.raises(AssertionError):
        PerRequestAcceptance(spec_k=2, spec_alpha=1.0, spec_alpha_concentration=1.0)


def test_iteration_view_prices_the_draft_as_the_simulator_does():
    """A verification step of the engine's log priced by validation's iteration view: the target's step plus
    the draft's passes (draft_step_s, what the simulator adds), shown as the ``draft`` term."""
    import pandas as pd

    from servesim.hwmodels.ops import BatchShape
    from servesim.sim.config import make_scenario
    from servesim.sim.deployment import build_deployment
    from servesim.sim.spec import draft_step_s
    from servesim.validate.compare import iteration_table

    dep = build_deployment(make_scenario({"spec_k": 3, "gpu": "H100-SXM", "profile": "roofline"}))
    n, k = 12, 3
    row = dict(iteration=0, end_s=0.05, step_s=0.05, gpu_s=0.045, graph=True, prefill_seqs=0, prefill_tokens=0,
               prefill_attn_pairs=0.0, prefill_ctx_tokens=0, decode_seqs=n, decode_query_tokens=n * (k + 1),
               decode_ctx_tokens=n * 900, decode_ctx_max=1500, sampled_tokens=n * (k + 1), swap_in_blocks=0,
               swap_out_blocks=0)
    it = iteration_table(pd.DataFrame([row]), dep.cost, dep.swap_s_per_block, dep.draft_cost, k)
    shape = BatchShape(decode_seqs=n, decode_query_tokens=n * (k + 1), decode_ctx_tokens=n * 900,
                       sampled_tokens=n * (k + 1), decode_ctx_max=1500)
    want = draft_step_s(dep.draft_cost, shape, k, dep.cost)
    assert want > 0 and it.op_draft[0] == want
    assert it.predicted_s[0] == dep.cost.step_time(shape).total_s + want
    without = iteration_table(pd.DataFrame([row]), dep.cost, dep.swap_s_per_block)
    assert "op_draft" not in without and without.predicted_s[0] == it.predicted_s[0] - want


def _spec_shapes(n: int, k: int, ctx: int = 900, prefill: int = 0):
    from servesim.hwmodels.ops import BatchShape

    pre = dict(prefill_seqs=1, prefill_tokens=prefill, prefill_attn_pairs=prefill * (prefill + 1) / 2,
               prefill_ctx_tokens=prefill) if prefill else {}
    verify = BatchShape(decode_seqs=n, decode_query_tokens=n * (k + 1), decode_ctx_tokens=n * ctx,
                        sampled_tokens=n * (k + 1) + (1 if prefill else 0), decode_ctx_max=ctx, **pre)
    one = BatchShape(decode_seqs=n, decode_query_tokens=n, decode_ctx_tokens=n * ctx, sampled_tokens=n,
                     decode_ctx_max=ctx)
    return verify, one


@pytest.mark.parametrize("profile", [None, "roofline"])
def test_a_pure_decode_speculative_step_is_priced_as_one_graph(profile):
    """The engine runs a pure-decode speculative step as one CUDA graph (engine/spec_graph.py): the draft's
    catch-up pass of two tokens a sequence and k - 1 passes of one, device time only, and the target's
    verification as a graph step (no eager floor); the host time is paid once."""
    from dataclasses import replace

    from servesim.sim.deployment import build_deployment
    from servesim.sim.spec import draft_step_s

    k, n = 3, 12
    dep = build_deployment(make_scenario({"spec_k": k, "profile": profile} if profile else {"spec_k": k}))
    verify, one = _spec_shapes(n, k)
    d = dep.draft_cost
    two = replace(one, decode_query_tokens=2 * n)
    assert draft_step_s(d, verify, k, dep.cost) == d.pass_s(two, True) + (k - 1) * d.pass_s(one, True)
    # a pass is a plain decode step less its host time; the catch-up's second row costs, no verification kernel
    assert d.pass_s(one, True) == pytest.approx(d.step_time_s(one) - d.step_time(one).overhead_s, rel=1e-9)
    assert d.pass_s(one, True) < d.pass_s(two, True) < d.step_time_s(two) - d.step_time(two).overhead_s
    st = dep.cost.step_time(verify)
    if profile is None:  # calibrated: the verification replays a graph (its gap, no eager floor)
        assert "eager_floor" not in st.op_s
        eager = draft_step_s(d, _spec_shapes(n, k, prefill=64)[0], k, dep.cost)
        assert eager > 3 * draft_step_s(d, verify, k, dep.cost)  # eager passes: each launched from the host


def test_a_mixed_speculative_step_runs_the_drafts_passes_eagerly():
    """With a prefill chunk the engine runs every draft pass eagerly: the chunk, the catch-up and k - 1 passes,
    each floored by the host launching it, the floor scaled by the draft's launches against the target's."""
    from servesim.hwmodels.ops import BatchShape
    from servesim.sim.deployment import build_deployment
    from servesim.sim.spec import draft_step_s, eager_scale

    k, n = 3, 8
    dep = build_deployment(make_scenario({"spec_k": k, "draft_model": "Llama-3.2-1B"}))
    d, target = dep.draft_cost, dep.cost
    scale = eager_scale(d, target)
    assert scale == (11 * 16 + 4) / (11 * 32 + 4)  # Llama-3.2-1B's 16 layers against Llama-3.1-8B's 32
    verify, one = _spec_shapes(n, k, prefill=256)
    pre = BatchShape(prefill_seqs=1, prefill_tokens=256, prefill_attn_pairs=verify.prefill_attn_pairs,
                     prefill_ctx_tokens=256, sampled_tokens=1)
    want = k * d.pass_s(one, False, scale) + d.pass_s(pre, False, scale)
    assert draft_step_s(d, verify, k, target) == want
    assert d.pass_s(one, False, scale) >= d._floor(one) * scale > d.pass_s(one, True)
    assert "eager_floor" in target.step_time(verify).op_s  # the target's pass is eager too
    # a step of prefill chunks alone runs the draft over them
    only = BatchShape(prefill_seqs=1, prefill_tokens=256, prefill_attn_pairs=verify.prefill_attn_pairs,
                      prefill_ctx_tokens=256, sampled_tokens=1)
    assert draft_step_s(d, only, k, target) == d.pass_s(pre, False, scale)
