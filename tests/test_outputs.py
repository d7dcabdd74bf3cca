"""Output files: all-or-nothing writes, byte-identical summary.json, Chrome trace, plain-text tables."""

from __future__ import annotations

import io
import json
import os
import stat

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from servesim.cli.render import render_comparison, render_slowdown, render_summary
from servesim.errors import InputError
from servesim.sim import outputs
from servesim.sim.metrics import SLO, slowdown_by_size, summarize, summarize_timeline
from servesim.sim.outputs import (
    chrome_trace_events,
    dumps_json,
    iter_trace_events,
    read_outputs,
    to_json_value,
    write_outputs,
)


@pytest.fixture
def run():
    """A tiny two-replica run: three served requests, one rejected, a four-row timeline."""
    requests = pd.DataFrame({
        "request_id": np.arange(4, dtype=np.int64),
        "replica": np.array([0, 1, 0, -1], dtype=np.int64),
        "arrival_s": [0.0, 0.1, 0.2, 0.3],
        "input_tokens": np.array([10, 20, 30, 9000], dtype=np.int64),
        "output_tokens": np.array([3, 2, 1, 5], dtype=np.int64),
        "generated_tokens": np.array([3, 2, 1, 0], dtype=np.int64),
        "cached_tokens": np.array([0, 16, 0, 0], dtype=np.int64),
        "first_scheduled_s": [0.0, 0.1, 0.25, np.nan],
        "first_token_s": [0.05, 0.15, 0.3, np.nan],
        "finish_s": [0.09, 0.18, 0.3, np.nan],
        "num_preemptions": np.array([0, 1, 0, 0], dtype=np.int64),
        "rejected_reason": pd.array(["", "", "", "prompt_too_long"], dtype="string"),
        "ideal_e2el_s": [0.08, 0.07, 0.05, 0.5],
        "priority": np.array([0, 1, 0, 0], dtype=np.int64),
        "token_times_s": [[0.05, 0.07, 0.09], [0.15, 0.18], [0.3], []],
    })
    timeline = pd.DataFrame({
        "replica": [0, 0, 1, 0], "start_s": [0.0, 0.05, 0.1, 0.25], "end_s": [0.05, 0.09, 0.15, 0.3],
        "steps": [1, 2, 1, 1], "batch_size": [1, 1, 1, 1], "prefill_tokens": [10, 0, 20, 30],
        "decode_tokens": [0, 1, 0, 1], "num_running": [1, 1, 1, 2], "num_waiting": [1, 0, 0, 0],
        "kv_blocks_used": [1, 1, 2, 3], "kv_blocks_total": [100, 100, 100, 100],
    })
    itl = np.array([0.02, 0.03])
    summary = summarize(requests, itl, np.array([2, 1]), 0.3, SLO(ttft_ms=60, mode="per-metric"),
                        gpus_total=2, usd_per_hour_per_gpu=2.5)
    summary.update(summarize_timeline(timeline))
    meta = {"version": "0.1.0", "config_hash": "abc123", "seed": 7, "profile_id": "roofline",
            "scenario": {"qps": 4.0, "policy": "fcfs"}, "wall_time_s": 0.0123}
    return requests, timeline, summary, meta


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_writes_all_files_and_round_trips(tmp_path, run):
    requests, timeline, summary, meta = run
    out = write_outputs(tmp_path / "a" / "out", requests, timeline, summary, meta)
    assert sorted(p.name for p in out.iterdir()) == ["requests.parquet", "run.json", "summary.json",
                                                      "timeline.parquet"]
    back = read_outputs(out)
    pd.testing.assert_frame_equal(back["requests"].drop(columns="token_times_s"),
                                  requests.drop(columns="token_times_s"))
    assert [list(x) for x in back["requests"]["token_times_s"]] == requests["token_times_s"].tolist()
    pd.testing.assert_frame_equal(back["timeline"], timeline)
    doc = back["summary"]
    assert doc["meta"] == {k: v for k, v in meta.items() if k != "wall_time_s"}
    assert json.loads((out / "run.json").read_text())["wall_time_s"] == 0.0123
    assert doc["completed"] == 3 and doc["slo"]["mode"] == "per-metric"
    assert doc["slo_attainment_ttft"] == pytest.approx(summary["slo_attainment_ttft"])
    assert leftovers(tmp_path / "a") == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_summary_json_is_byte_identical_and_sorted(tmp_path, run):
    requests, timeline, summary, meta = run
    a = write_outputs(tmp_path / "a", requests, timeline, summary, meta)
    reordered = dict(reversed(list(summary.items())))
    b = write_outputs(tmp_path / "b", requests, timeline, reordered, {**meta, "wall_time_s": 99.0})
    text = (a / "summary.json").read_bytes()
    assert text == (b / "summary.json").read_bytes()
    assert (a / "run.json").read_bytes() != (b / "run.json").read_bytes()
    keys = list(json.loads(text))
    assert keys == sorted(keys) and text.endswith(b"}\n")
    # NaN becomes null, never the non-JSON token NaN
    assert b"NaN" not in dumps_json({"x": float("nan")}).encode()
    assert json.loads(dumps_json({"x": float("nan"), "y": float("inf")})) == {"x": None, "y": None}


def test_failure_midway_leaves_no_files(tmp_path, run, monkeypatch):
    requests, timeline, summary, meta = run
    real = pd.DataFrame.to_parquet
    calls = []

    def flaky(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(tmp_path / "out", requests, timeline, summary, meta)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_outputs_intact(tmp_path, run, monkeypatch):
    requests, timeline, summary, meta = run
    out = write_outputs(tmp_path / "out", requests, timeline, summary, meta)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(timeline):
        yield []
        raise RuntimeError("trace failed")  # after trace.json is half written

    monkeypatch.setattr(outputs, "iter_trace_events", broken)
    with pytest.raises(RuntimeError):
        write_outputs(out, requests.iloc[:2], timeline, {**summary, "completed": 0}, meta, chrome_trace=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_rewrite_removes_stale_trace_keeps_other_files(tmp_path, run):
    requests, timeline, summary, meta = run
    out = write_outputs(tmp_path / "out", requests, timeline, summary, meta, chrome_trace=True)
    (out / "notes.txt").write_text("mine")
    write_outputs(out, requests, timeline, summary, meta)
    assert not (out / "trace.json").exists() and (out / "notes.txt").read_text() == "mine"
    assert leftovers(tmp_path) == []


def test_output_dir_that_is_a_file_is_refused(tmp_path, run):
    (tmp_path / "f").write_text("")
    with pytest.raises(InputError, match="not a directory"):
        write_outputs(tmp_path / "f", *run)


def test_chrome_trace_events(tmp_path, run):
    requests, timeline, summary, meta = run
    out = write_outputs(tmp_path / "out", requests, timeline, summary, meta, chrome_trace=True)
    trace = json.loads((out / "trace.json").read_text())
    events = trace["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert [e["name"] for e in slices] == ["prefill", "decode", "prefill", "mixed"]
    assert [e["pid"] for e in slices] == [0, 0, 1, 0]
    assert [e["ts"] for e in slices] == pytest.approx([0, 50_000, 100_000, 250_000])
    assert [e["dur"] for e in slices] == pytest.approx([50_000, 40_000, 50_000, 50_000])
    assert slices[1]["args"] == {"steps": 2, "batch_size": 1, "prefill_tokens": 0, "decode_tokens": 1,
                                 "num_running": 1, "num_waiting": 0}
    kv = [e for e in events if e["ph"] == "C" and e["name"] == "kv_blocks"]
    assert [e["args"]["used"] for e in kv] == [1, 1, 2, 3]
    queue = [e for e in events if e["ph"] == "C" and e["name"] == "queue"]
    assert [e["args"]["waiting"] for e in queue] == [1, 0, 0, 0]
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    assert names == {0: "replica 0", 1: "replica 1"}
    assert chrome_trace_events(timeline.iloc[:0])["traceEvents"] == []
    # streamed in chunks, the file holds exactly the in-memory document
    assert trace == chrome_trace_events(timeline)
    assert [len(c) for c in iter_trace_events(timeline, chunk_rows=3)] == [2, 9, 3]


def test_to_json_value_types():
    value = {"a": np.int64(3), "b": np.float32(0.5), "c": (1, np.bool_(True)), "d": np.array([1.0, np.nan])}
    assert to_json_value(value) == {"a": 3, "b": 0.5, "c": [1, True], "d": [1.0, None]}
    with pytest.raises(TypeError):
        to_json_value({"x": object()})


def test_read_outputs_refuses_other_directories(tmp_path):
    with pytest.raises(InputError, match="summary.json|parquet"):
        read_outputs(tmp_path)


def plain_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=160), buf


def test_render_summary_plain_text(run):
    summary = run[2]
    console, buf = plain_console()
    render_summary(summary, console, title="fcfs")
    text = buf.getvalue()
    assert "\x1b[" not in text  # not a terminal: no colour codes
    for word in ("TTFT", "TPOT", "ITL", "E2E", "p99", "SLO (per-metric): TTFT <= 60 ms",
                 "Request goodput", "SLO attainment, TTFT only", "USD per million output tokens"):
        assert word in text
    assert f"{summary['mean_ttft_ms']:,.2f}" in text and f"{summary['cost_usd']:,.4f}" in text


def test_render_comparison_and_slowdown(run):
    requests, _, summary, _ = run
    console, buf = plain_console()
    render_comparison({"fcfs": summary, "sjf": {**summary, "p99_e2el_ms": 1234.5}}, console)
    text = buf.getvalue()
    assert "fcfs" in text and "sjf" in text and "1,234.50" in text and "p99 E2E (ms)" in text
    tables = {"fcfs": slowdown_by_size(requests, "input_tokens", 2),
              "sjf": slowdown_by_size(requests, "input_tokens", 2)}
    console, buf = plain_console()
    render_slowdown(tables, console)
    text = buf.getvalue()
    assert "fcfs mean" in text and "sjf p99" in text and "sjf rejected" in text and "10–20" in text
    console, buf = plain_console()
    render_slowdown({"a": tables["fcfs"], "b": slowdown_by_size(requests, "input_tokens", 1)}, console)
    assert buf.getvalue().count("slowdown by request size:") == 2  # different bins: separate tables


def test_run_folders_are_replaced_as_one_set(tmp_path, run):
    """compare's run folders (and validate's predicted/ and measured/) move with the rest of their set: a failure in
    the last folder leaves the first one as it was; a success replaces each folder whole."""
    from servesim.sim.outputs import folder, run_writers, write_files

    requests, timeline, summary, meta = run
    out = write_files(tmp_path / "cmp", {"fcfs": folder(run_writers(*run)), "sjf": folder(run_writers(*run))})
    (out / "fcfs" / "stale.txt").write_text("from before")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(path):
        raise OSError("disk full")

    newer = run_writers(requests.iloc[:2], timeline, {**summary, "completed": 2}, meta)
    with pytest.raises(OSError, match="disk full"):
        write_files(out, {"fcfs": folder(newer), "sjf": folder({**newer, "summary.json": broken})})
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    write_files(out, {"fcfs": folder(newer), "sjf": folder(newer)})
    assert sorted(p.name for p in (out / "fcfs").iterdir()) == ["requests.parquet", "run.json", "summary.json",
                                                                "timeline.parquet"]  # replaced whole
    assert len(pd.read_parquet(out / "sjf" / "requests.parquet")) == 2 and leftovers(tmp_path) == []
