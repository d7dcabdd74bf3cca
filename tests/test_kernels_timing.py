"""The kernel timing harness off CUDA (it times one wall-clock call) and its Markdown tables."""

from __future__ import annotations

import pytest
import torch

from servesim.kernels import timing

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")


def test_both_methods_call_the_function_once_and_time_it_off_cuda():
    calls = []

    def work():
        calls.append(1)
        return sum(range(20000))

    for timer in (timing.cold_ms, timing.stream_ms):
        calls.clear()
        ms = timer(work)
        assert calls == [1]
        assert 0.0 < ms < 1000.0


def test_markdown_table_formats_floats_and_keeps_key_order():
    rows = [{"b": 1, "a": 2.71828, "c": "x"}, {"b": 2, "a": 1234.5}]
    assert timing.markdown_table(rows).splitlines() == [
        "| b | a | c |", "|---|---|---|", "| 1 | 2.72 | x |", "| 2 | 1.23e+03 | None |"]


def test_card_names_the_cpu_smoke_run():
    assert timing.card() == "cpu-smoke"
