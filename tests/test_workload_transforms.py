"""Workload transforms are pure and do what they say: target rate, time window, context cap, head."""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest

from servesim.errors import ConfigError
from servesim.sim.workload import Workload, cap_lengths, head, load_trace, repeat, scale_rate, window


@cache
def conv() -> Workload:
    return load_trace("azure-conv")


@cache
def mooncake() -> Workload:
    return load_trace("mooncake-conv")


@pytest.mark.parametrize("target", [0.5, 5.53, 40.0])
def test_scale_rate_hits_target_and_keeps_shape(target: float) -> None:
    w = conv()
    before = w.requests.copy()
    scaled = scale_rate(w, target)
    s, s0 = scaled.stats(), w.stats()
    assert s["rate_per_s"] == pytest.approx(target, rel=1e-12)
    assert s["iat_cv"] == pytest.approx(s0["iat_cv"], rel=1e-9)  # same burst pattern
    assert s["span_s"] == pytest.approx(s0["span_s"] * s0["rate_per_s"] / target)
    assert scaled.requests["arrival_s"].iloc[0] == w.requests["arrival_s"].iloc[0]
    assert scaled.requests["input_tokens"].equals(w.requests["input_tokens"])
    pd.testing.assert_frame_equal(w.requests, before)  # the input is untouched
    assert scaled.name == f"azure-conv[rate={target:g}/s]" and "rate=" in scaled.source


def test_scale_rate_keeps_a_late_first_arrival() -> None:
    w = load_trace("burstgpt")  # first arrival at 5 s
    scaled = scale_rate(w, 1.0)
    t = scaled.requests["arrival_s"].to_numpy()
    assert t[0] == 5.0
    assert (len(t) - 1) / (t[-1] - t[0]) == pytest.approx(1.0)


def test_scale_rate_needs_arrival_times() -> None:
    with pytest.raises(ConfigError, match="with_arrivals"):
        scale_rate(load_trace("sharegpt"), 2.0)
    with pytest.raises(ConfigError, match="> 0"):
        scale_rate(conv(), 0.0)


def test_window_keeps_requests_in_range_shifted_to_zero() -> None:
    w = conv()
    t = w.requests["arrival_s"].to_numpy()
    part = window(w, 600.0, 1200.0)
    expected = int(((t >= 600.0) & (t < 1200.0)).sum())
    assert len(part) == expected > 0
    pt = part.requests["arrival_s"].to_numpy()
    assert pt.min() >= 0.0 and pt.max() < 600.0
    first = int(np.argmax(t >= 600.0))
    assert pt[0] == pytest.approx(t[first] - 600.0)
    assert part.requests["input_tokens"].iloc[0] == w.requests["input_tokens"].iloc[first]
    assert list(part.requests.index) == list(range(len(part)))
    with pytest.raises(ConfigError, match="no request"):
        window(w, 1e6, 2e6)
    with pytest.raises(ConfigError, match="end_s > start_s"):
        window(w, 10.0, 10.0)


def test_cap_lengths_fits_every_request_in_the_context() -> None:
    w = mooncake()
    cap = 8192
    capped = cap_lengths(w, cap)
    df, df0 = capped.requests, w.requests
    total = df["input_tokens"] + df["output_tokens"]
    assert (total <= cap).all() and (df["output_tokens"] >= 1).all()
    assert (df["input_tokens"] == np.minimum(df0["input_tokens"], cap - 1)).all()
    fits = (df0["input_tokens"] + df0["output_tokens"]) <= cap
    assert df[fits].equals(df0[fits])  # requests that fit are left alone
    assert 0 < fits.sum() < len(df)
    blocks = df["hash_ids"].map(len).to_numpy()
    assert np.array_equal(blocks, -(-df["input_tokens"].to_numpy() // 512))  # hashes cover the cut prompt
    assert df["hash_ids"].iloc[0] == df0["hash_ids"].iloc[0][: blocks[0]]
    assert capped.stats()["input_tokens"]["max"] == cap - 1


def test_cap_lengths_small_case_by_hand() -> None:
    df = pd.DataFrame({"arrival_s": [0.0, 1.0, 2.0], "input_tokens": [10, 90, 200],
                       "output_tokens": [5, 50, 7]})
    out = cap_lengths(Workload("t", df), 100).requests
    assert out["input_tokens"].tolist() == [10, 90, 99]
    assert out["output_tokens"].tolist() == [5, 10, 1]
    with pytest.raises(ConfigError):
        cap_lengths(Workload("t", df), 1)


def test_head_takes_the_first_requests() -> None:
    w = head(conv(), 10)
    assert len(w) == 10 and w.requests.equals(conv().requests.iloc[:10])
    with pytest.raises(ConfigError):
        head(conv(), 0)


def test_repeat_tiles_rows_and_continues_arrivals() -> None:
    w = load_trace("burstgpt")
    n0 = len(w)
    r = repeat(w, 2 * n0 + 5)
    assert len(r) == 2 * n0 + 5 and r.name == f"burstgpt[{2 * n0 + 5} repeating {n0}]"
    t0, t = w.table["arrival_s"], r.table["arrival_s"]
    period = (t0[-1] - t0[0]) * n0 / (n0 - 1)  # the span plus one mean gap: the rate stays the trace's
    assert np.array_equal(t[:n0], t0) and np.allclose(t[n0:2 * n0], t0 + period)
    assert (np.diff(t) >= 0).all() and t[n0] > t[n0 - 1]
    for col in ("input_tokens", "output_tokens"):
        assert np.array_equal(r.table[col], np.tile(w.table[col], 3)[: 2 * n0 + 5])
    lengths_only = repeat(load_trace("arxiv-summarization"), 30_000)
    assert np.isnan(lengths_only.table["arrival_s"]).all() and len(lengths_only) == 30_000
