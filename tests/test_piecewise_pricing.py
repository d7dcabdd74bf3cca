"""Steps with prefill priced as the engine runs them with piecewise CUDA graphs (hwmodels/buckets.py, the
calibrated cost model's piecewise mode), on a synthetic profile (no GPU, no torch)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from servesim.hwmodels.buckets import PIECEWISE_MAX_TOKENS, PieceBuckets, doubling, piece_buckets, piecewise_max_tokens
from servesim.hwmodels.calibrated import CalibratedCostModel
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import get_model
from servesim.hwmodels.ops import BatchShape, decode_shape, prefill_shape
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.profile import save_profile
from tests.profile_helpers import synthetic_profile

H200 = get_gpu("H200")
L8B = Placement(get_model("Llama-3.1-8B"), H200)
PIECES = PieceBuckets(2048 + 128, 128)  # the uncapped rule of 2,048-token chunks beside 128 sequences
MEASURED = dict(piecewise_gap_s=4e-4, piecewise_floor_s=2.5e-3, piecewise_floor_mixed_s=3e-3,
                piecewise_host_s=(5e-4, 5e-6, 1e-9), piecewise_steps=200)


@pytest.fixture(scope="module")
def profile():
    return synthetic_profile(noise=0.02)


@pytest.fixture(scope="module")
def measured(profile):
    return profile.model_copy(update={"steps": {f: s.model_copy(update=MEASURED) for f, s in profile.steps.items()}})


def chunk(n: int, decodes: int = 0, ctx: int = 0, sampled: int | None = None) -> BatchShape:
    """One prefill chunk of ``n`` tokens after ``ctx`` cached ones, beside ``decodes`` decodes of 1,000 tokens."""
    return BatchShape(prefill_seqs=1, prefill_tokens=n, prefill_attn_pairs=n * ctx + n * (n + 1) / 2,
                      prefill_ctx_tokens=ctx + n, decode_seqs=decodes, decode_query_tokens=decodes,
                      decode_ctx_tokens=1000 * decodes, sampled_tokens=decodes + 1 if sampled is None else sampled)


def test_bucket_rule():
    assert doubling(16, 100) == (16, 32, 64, 100) and piece_buckets(72) == (16, 32, 48, 64, 72)
    b = PIECES.buckets
    assert b[:3] == (16, 32, 48) and b[-3:] == (1984, 2048, 2176) and PIECES.largest == 2048 + 128
    assert len(b) == 65 and {b[i + 1] - b[i] for i in range(31)} == {16}  # 16-row steps to 512
    assert max((PIECES.bucket(n) - n) / n for n in range(512, 2049)) < 1 / 16  # then under 1/16 padding
    assert PieceBuckets.for_limits(2048, 128).largest == PIECEWISE_MAX_TOKENS == 768  # longer steps: eager
    assert PieceBuckets.for_limits(256, 64).largest == 320 and piecewise_max_tokens(2048, 128, cap=4096) == 2176
    for n in range(1, PIECES.largest + 1):
        t = PIECES.bucket(n)
        assert t >= n and t in PIECES.buckets and not any(n <= b < t for b in PIECES.buckets)
    assert PIECES.bucket(PIECES.largest + 1) is None
    assert PIECES.sample_rows(16) == 16 and PIECES.sample_rows(1024) == 128


def test_which_steps_are_piecewise(profile):
    m = CalibratedCostModel(L8B, profile, piecewise=PIECES)
    assert m.step_mode(chunk(1)) == m.step_mode(chunk(500, 20)) == m.step_mode(chunk(2176 - 20, 20)) == "piecewise"
    assert m.step_mode(chunk(2177 - 20, 20)) == "eager"  # past the largest bucket
    assert m.step_mode(decode_shape(64, 900)) == "graph" and m.step_mode(decode_shape(300, 900)) == "eager"
    spec = replace(chunk(100, 4), decode_query_tokens=16)  # a verification of 1 + 3 tokens beside a chunk
    assert m.step_mode(spec) == "eager"
    assert CalibratedCostModel(L8B, profile).step_mode(chunk(100)) == "eager"  # built without buckets
    tp2 = synthetic_profile(tps=(2,))
    assert CalibratedCostModel(Placement(get_model("Llama-3.1-8B"), H200, tp=2), tp2,
                               piecewise=PIECES).step_mode(chunk(100)) == "eager"  # the engine: eager at TP > 1


def test_padding_rows_are_priced(profile):
    """A step of 17 tokens (a 13-token chunk and 4 decodes) costs its bucket's 32 rows of token ops: with the host
    time fixed it differs from a step of 32 tokens by their attention alone; eagerly by the token ops too."""
    pw = CalibratedCostModel(L8B, profile, overhead_s=0.0, piecewise=PIECES)
    eager = CalibratedCostModel(L8B, profile, overhead_s=0.0)
    s17, s32 = chunk(13, 4), chunk(28, 4)

    def no_attention(m, s):
        st = m.step_time(s)
        return st.total_s - st.op_s["attn_prefill"] - st.op_s["attn_decode"]

    assert no_attention(pw, s17) == pytest.approx(no_attention(pw, s32), rel=1e-12)
    assert no_attention(eager, s17) < no_attention(eager, s32) * (1 - 1e-6)
    st = pw.step_time(s17)
    tokens = ("qkv", "o", "gate_up", "down", "rms_norm", "rotary", "kv_write", "silu_mul")
    at32, at17 = eager.step_time(s32), eager.step_time(s17)
    rows = sum(at32.op_s[k] - at17.op_s[k] for k in tokens)  # 15 padding rows of every token op
    assert rows > 0
    assert st.op_s["padding"] == pytest.approx(rows + _head_delta(eager, 5, 32), rel=1e-9)
    assert st.op_s["attn_prefill"] == at17.op_s["attn_prefill"]  # attention at the real rows


def _head_delta(m, sampled: int, rows: int) -> float:
    """LM head and final norm over ``rows`` rows less over ``sampled`` (the sampling itself stays at the real rows)."""
    return sum(m.step_time(replace(decode_shape(4, 1000), sampled_tokens=r)).op_s[k] * sign
               for r, sign in ((rows, 1), (sampled, -1)) for k in ("lm_head", "final_norm"))


def test_lm_head_runs_min_of_bucket_and_max_num_seqs_rows(profile):
    """A 64-token prefill chunk sampling one row: its LM head runs 64 rows with 128 sequences allowed, 8 with 8."""
    eager = CalibratedCostModel(L8B, profile, overhead_s=0.0)
    pads = {}
    for seqs in (8, 128):
        m = CalibratedCostModel(L8B, profile, overhead_s=0.0, piecewise=PieceBuckets.for_limits(2048, seqs))
        pads[seqs] = m.step_time(chunk(64)).op_s["padding"]  # n = T: the head's rows are all the padding
        assert pads[seqs] == pytest.approx(_head_delta(eager, 1, min(64, seqs)), rel=1e-9)
    assert pads[128] > pads[8] > 0
    # a chunk that completes no prompt samples nothing, and the head still runs its rows
    none = CalibratedCostModel(L8B, profile, overhead_s=0.0, piecewise=PIECES).step_time(chunk(64, sampled=0))
    assert none.op_s["sampling"] == 0 and none.op_s["padding"] == pytest.approx(
        sum(eager.step_time(replace(decode_shape(4, 1000), sampled_tokens=64)).op_s[k] for k in ("lm_head",
                                                                                             "final_norm")), rel=1e-9)


@pytest.mark.parametrize("decodes", [0, 16])
def test_piecewise_time_is_monotone_in_tokens_and_flat_within_a_bucket(profile, decodes):
    """Up to the largest bucket: never faster with more tokens; within a bucket only attention grows (host time
    fixed), and the step jumps at each bucket edge by the padding rows' token ops."""
    pw = CalibratedCostModel(L8B, profile, piecewise=PIECES)
    top = PIECES.largest - decodes
    times = np.array([pw.step_time_s(chunk(n, decodes)) for n in range(1, top + 1)])
    assert (np.diff(times) >= -1e-15).all()
    flat = CalibratedCostModel(L8B, profile, overhead_s=0.0, piecewise=PIECES)
    for prev, t in zip(PIECES.buckets, PIECES.buckets[1:-1]):
        lo, hi = prev + 1 - decodes, t - decodes  # a bucket's first and last token counts
        if lo < 1:
            continue
        a, b = (flat.step_time(chunk(n, decodes)) for n in (lo, hi))
        grow = b.op_s["attn_prefill"] - a.op_s["attn_prefill"]  # the token ops stay at the bucket's rows
        assert b.total_s - a.total_s == pytest.approx(grow, rel=1e-6, abs=1e-12)
        edge = flat.step_time_s(chunk(hi + 1, decodes)) - flat.step_time_s(chunk(hi, decodes))
        assert edge > 0


def test_breakdown_sums_to_the_step_and_names_the_piecewise_terms(profile, measured):
    for prof in (profile, measured):
        m = CalibratedCostModel(L8B, prof, piecewise=PIECES)
        for s in (chunk(1), chunk(17, 4), chunk(1025, 100), chunk(2048, 128), chunk(2100, 100), chunk(3000, 8),
                  decode_shape(64, 2000), prefill_shape(20)):
            st = m.step_time(s)
            assert st.total_s == m.step_time_s(s)
            assert st.total_s == pytest.approx(st.overhead_s + sum(st.op_s.values()), rel=1e-9)
            piecewise = m.step_mode(s) == "piecewise"
            assert {"padding", "piecewise_gap", "piecewise_floor"} <= set(st.op_s) if piecewise else \
                not {"padding", "piecewise_gap", "piecewise_floor"} & set(st.op_s)
            assert ("piecewise(fallback)" in st.extrapolated) == (piecewise and prof is profile)


def test_measured_terms_price_the_step_and_floors_hold(measured):
    m = CalibratedCostModel(L8B, measured, piecewise=PIECES)
    assert m.piecewise_measured
    tiny, mixed = chunk(1), chunk(1, 1)
    for s, floor in ((tiny, MEASURED["piecewise_floor_s"]), (mixed, MEASURED["piecewise_floor_mixed_s"])):
        st = m.step_time(s)
        b0, b1, b2 = MEASURED["piecewise_host_s"]
        assert st.overhead_s == pytest.approx(b0 + b1 * (1 + s.decode_seqs) + b2 * (s.decode_ctx_tokens + 1))
        assert st.total_s >= st.overhead_s + floor * (1 - 1e-12)
    big = m.step_time(chunk(1500, 64))
    assert big.op_s["piecewise_gap"] == MEASURED["piecewise_gap_s"] and big.op_s["piecewise_floor"] == 0
    assert not m.extrapolated


def test_fallback_terms_come_from_the_eager_and_graph_fits(profile):
    """No piecewise terms: the graph gap per captured kernel plus the eager gap per attention launch; floors the
    eager ones scaled by the host's launches; the eager host time."""
    m = CalibratedCostModel(L8B, profile, piecewise=PIECES)
    fit, layers, launches = profile.steps["bf16"], m.layers, m.launches
    assert not m.piecewise_measured
    st = m.step_time(chunk(1000))
    assert st.op_s["piecewise_gap"] == pytest.approx(fit.graph_gap_s * (launches - layers)
                                                     + fit.eager_gap_s / launches * layers)
    assert m._pw_floor == pytest.approx(fit.eager_floor_s * (2 * layers + 1) / launches)
    assert m._pw_floor_mixed == pytest.approx(fit.eager_floor_mixed_s * (3 * layers + 1) / (launches + layers))
    eager = CalibratedCostModel(L8B, profile)
    assert st.overhead_s == eager.step_time(chunk(1000)).overhead_s
    assert "piecewise(fallback)" in m.extrapolated
    plain = CalibratedCostModel(L8B, profile, piecewise=PIECES)
    plain.step_time_s(decode_shape(8, 1000))
    assert not plain.extrapolated  # decode steps need no piecewise term


def test_decode_runs_are_unchanged(profile):
    pw, eager = CalibratedCostModel(L8B, profile, piecewise=PIECES), CalibratedCostModel(L8B, profile)
    for s in (decode_shape(8, 100), decode_shape(200, 3000)):
        assert pw.decode_run_s(s, 50).tolist() == eager.decode_run_s(s, 50).tolist()


def test_the_scenario_setting_reaches_the_cost_model(profile, tmp_path, capsys):
    from servesim.cli.main import main
    from servesim.sim.config import make_scenario
    from servesim.sim.deployment import build_deployment

    path = tmp_path / "p.json"
    save_profile(profile, path)
    base = {"profile": str(path), "max_num_seqs": 64, "max_num_batched_tokens": 1024}
    dep = build_deployment(make_scenario({**base, "piecewise_graphs": True}))
    assert dep.cost.piecewise == PieceBuckets.for_limits(1024, 64) and not dep.warnings
    assert build_deployment(make_scenario(base)).cost.piecewise is None
    for extra in ({"tp": 2}, {"spec_k": 3}):
        d = build_deployment(make_scenario({**base, "piecewise_graphs": True, **extra}))
        assert (d.cost.piecewise is None or d.cost.tp > 1) and any("piecewise_graphs has no effect" in w
                                                                    for w in d.warnings)
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--profile", str(path), "--num-requests", "60", "--piecewise-graphs", "--json"])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    meta = json.loads(out.out)["meta"]
    assert meta["scenario"]["piecewise_graphs"] is True and "piecewise(fallback)" in meta["cost_extrapolated"]


def test_calibrations_piecewise_trace_gives_steps_the_buckets_hold():
    """Calibration's piecewise engine serves its own trace (short prompts one at a time): simulated on the H200
    profile, far more of its steps with prefill fit the 768-row cap than the eager trace's, in less time."""
    from servesim.calibrate.run import PIECEWISE_LENGTHS, STEP_LIMITS, synthetic_workload
    from servesim.sim.config import make_scenario
    from servesim.sim.simulator import simulate

    sc = make_scenario({"model": "Llama-3.1-8B", "gpu": "H200", "max_model_len": 4096, "piecewise_graphs": True,
                        **STEP_LIMITS})
    out = {}
    for name, w in (("eager", synthetic_workload(160, 0, 4096)),
                    ("piecewise", synthetic_workload(80, 1, 4096, burst_gap_s=0.05, **PIECEWISE_LENGTHS))):
        t = simulate(sc, w).timeline
        p = t[t.prefill_tokens > 0]
        out[name] = (int((p.prefill_tokens + p.decode_tokens <= PIECEWISE_MAX_TOKENS).sum()), t.end_s.max())
    assert out["piecewise"][0] >= 3 * out["eager"][0] and out["piecewise"][1] < out["eager"][1]
