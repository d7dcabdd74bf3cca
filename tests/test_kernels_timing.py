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


@pytest.mark.parametrize(("name", "slug"), [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 PCIe", "h100"), ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA L40S", "l40s"), ("AMD Instinct MI300X", "mi300x"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"), ("cpu-smoke", "cpu"),
])
def test_result_files_spell_each_gpu_one_way(name, slug):
    assert timing.card_slug(name) == slug


def test_results_folder_holds_one_result_per_benchmark_and_gpu():
    # bench/results: <bench>-<gpu>-<date>.{md,json,log} (a result's data companion may add -<part>.parquet), one
    # date per (bench, gpu); git keeps older rounds
    import re
    from pathlib import Path

    names = [p.name for p in (Path(__file__).parent.parent / "bench" / "results").iterdir()]
    pattern = re.compile(r"^([a-z0-9_]+)-([a-z0-9]+(?:-\d+)?)-(\d{4}-\d{2}-\d{2})"
                         r"(?:\.(?:md|json|log)|-[a-z0-9_]+\.parquet)$")
    assert all(pattern.match(n) for n in names), [n for n in names if not pattern.match(n)]
    dates: dict = {}
    for n in names:
        bench, gpu, date = pattern.match(n).groups()
        dates.setdefault((bench, gpu), set()).add(date)
    assert all(len(d) == 1 for d in dates.values()), dates
