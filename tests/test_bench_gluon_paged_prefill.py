"""bench/gluon_paged_prefill.py on the CPU: candidates, selection, ratios and the report, and the child loop it
shares with bench/gluon_attention.py (the GPU run is the lead's)."""

from __future__ import annotations

import pytest

from tests.bench_helpers import load_bench

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bench():
    return load_bench("gluon_paged_prefill")


def test_candidates_are_valid_and_named_uniquely(bench):
    gpp = pytest.importorskip("servesim.kernels.attention.gluon_paged_prefill")
    for cfg in bench.CANDIDATES:
        gpp.check_config({**gpp.DEFAULT_CONFIG, **cfg}, bench.D, 16)
    names = [bench.name(c) for c in bench.CANDIDATES]
    assert len(set(names)) == len(names)
    assert bench.CANDIDATES[0] == gpp.DEFAULT_CONFIG and names[0] == "64x64 s2 w4 kv1 qreg r240"
    assert bench.select("1, 64x64 s2 w4 kv1") == [bench.CANDIDATES[1], bench.CANDIDATES[4]]
    for bad in ("99", "ws 64x64"):
        with pytest.raises(SystemExit, match="--candidates"):
            bench.select(bad)


def test_shapes_are_the_issue_and_engine_shapes(bench):
    assert [(q, c) for _, q, c in bench.SHAPES] == [(4096, 0), (8192, 0), (16384, 0), (2048, 0), (2048, 4096),
                                                    (2048, 8192)]


def test_ratios_and_report(bench):
    labels = [s for s, *_ in bench.SHAPES]
    rows = [{"name": "cudnn", "kind": "cudnn", "status": "ok", **{f"tflops_{s}": 600.0 for s in labels},
             "note_2k+4k": "explicit mask"},
            {"name": "triton", "kind": "triton", "status": "ok", **{f"tflops_{s}": 450.0 for s in labels}},
            {"name": "64x64", "kind": "gluon", "status": "ok", **{f"tflops_{s}": 540.0 for s in labels}},
            {"name": "bad", "kind": "gluon", "status": "compile/launch error", "error": "CompilationError: x"}]
    bench.ratios(rows)
    assert rows[2]["vs_cudnn_S16k"] == pytest.approx(0.9) and rows[2]["vs_triton_2k+8k"] == pytest.approx(1.2)
    assert "vs_cudnn_S4k" not in rows[3]
    md = bench.report(rows, {"card": "test card"})
    assert "CompilationError: x" in md and "explicit mask" in md and "0.9" in md and "1.2" in md


class _Pipe:
    def __init__(self):
        self.sent = []

    def send(self, msg):
        self.sent.append(msg)


class _Runner:
    def run(self, job):
        return {"name": job["name"], "status": "ok"}

    def healthy(self):
        return True


def test_the_child_loop_takes_another_runner(bench):
    pipe = _Pipe()
    bench.GA.child([{"name": "a"}, {"name": "b"}], pipe, _Runner)
    assert [m[0] for m in pipe.sent] == ["ready", "start", "done", "start", "done"]
    assert pipe.sent[-1] == ("done", 1, {"name": "b", "status": "ok"})
