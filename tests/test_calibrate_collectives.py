"""Collective calibration: the message sizes a TP step sends, the measurement pipeline on the CPU (gloo, two
processes) into a version-2 profile, and the calibrated cost model pricing TP collectives from the measured
tables, with the roofline's link figures where a profile has none."""

from __future__ import annotations

import json

import numpy as np
import pytest

from servesim.errors import InputError
from servesim.hwmodels.calibrated import CalibratedCostModel
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import get_model
from servesim.hwmodels.ops import BatchShape, decode_shape
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.prior import prior_for
from servesim.hwmodels.profile import OpTable, load_profile, save_profile, with_collectives
from tests.profile_helpers import PROV, synthetic_profile

H200 = get_gpu("H200")
L8B = get_model("Llama-3.1-8B")
HIDDEN_BYTES = L8B.hidden_size * 2
VOCAB_BYTES = L8B.vocab_size * 2


def line(latency_s: float, bytes_per_s: float):
    return lambda b: latency_s + b / bytes_per_s


def collective_tables(tp: int, ar, ag) -> list[OpTable]:
    """Measured-looking tables over the message sizes of Llama-3.1-8B (times from the lines ``ar``, ``ag``)."""
    from servesim.calibrate.collectives import message_sizes

    sizes = message_sizes(["Llama-3.1-8B"])
    out = []
    for op, f in (("allreduce", ar), ("allgather", ag)):
        med = tuple(f(b) for b in sizes[op])
        out.append(OpTable(op=op, key={"tp": tp, "dtype": "bf16"}, axes=("bytes",),
                           grid=(tuple(float(b) for b in sizes[op]),), median_s=med, p20_s=med, p80_s=med))
    return out


@pytest.fixture(scope="module")
def profiles():
    base = synthetic_profile(tps=(1, 2))
    ar, ag = line(9e-6, 150e9), line(12e-6, 100e9)
    return base, with_collectives(base, collective_tables(2, ar, ag), PROV), ar, ag


def test_message_sizes_are_what_a_tp_step_sends():
    from servesim.calibrate.collectives import message_sizes

    s = message_sizes(["Llama-3.1-8B", "Llama-3.1-70B"])
    ar, ag = s["allreduce"], s["allgather"]
    assert 1 * 4096 * 2 in ar and 1 * 8192 * 2 in ar  # one decode token of each model
    assert 256 * 8192 * 2 in ar and ar[-1] == 8192 * 8192 * 2  # a 256-sequence decode, an 8192-token chunk
    assert ag[0] == 128256 * 2 and ag[-1] == 256 * 128256 * 2  # the logits of 1 .. 256 sampled rows
    assert list(ar) == sorted(set(ar)) and list(ag) == sorted(set(ag))


def test_measured_allreduce_prices_the_collective_term(profiles):
    _, measured, ar, ag = profiles
    m = CalibratedCostModel(Placement(L8B, H200, tp=2), measured)
    for seqs in (1, 64, 256):  # on the grid: exact
        st = m.step_time(decode_shape(seqs, 1000))
        assert st.op_s["allreduce"] == pytest.approx(m.layers * 2 * ar(seqs * HIDDEN_BYTES), rel=1e-12)
        assert st.op_s["logits_gather"] == pytest.approx(ag(seqs * VOCAB_BYTES), rel=1e-12)
        assert not {"allreduce(roofline)", "allgather(roofline)"} & set(st.extrapolated)
        assert st.total_s == pytest.approx(m.step_time_s(decode_shape(seqs, 1000)), rel=1e-12)
    # between grid points (100 tokens: 96 and 128 measured) linear in bytes, as the line is
    st = m.step_time(decode_shape(100, 1000))
    assert st.op_s["allreduce"] == pytest.approx(m.layers * 2 * ar(100 * HIDDEN_BYTES), rel=1e-9)


def test_without_measurements_the_roofline_link_figures_price_it(profiles):
    base, _, _, _ = profiles
    prior = prior_for(H200)
    for mode in ("custom", "nccl"):
        m = CalibratedCostModel(Placement(L8B, H200, tp=2), base, allreduce=mode)
        st = m.step_time(decode_shape(64, 1000))
        ring = 2 * (2 - 1) / 2 * 64 * HIDDEN_BYTES
        assert st.op_s["allreduce"] == pytest.approx(m.layers * 2 * prior.collective_s(ring, H200, mode), rel=1e-9)
        assert {"allreduce(roofline)", "allgather(roofline)"} <= set(st.extrapolated)
    # the profile measured TP 2 only: TP 4 falls back too
    m4 = CalibratedCostModel(Placement(L8B, H200, tp=4), profiles[1])
    assert "allreduce(roofline)" in m4.step_time(decode_shape(8, 500)).extrapolated


def test_a_slower_measured_allreduce_slows_each_step_by_exactly_its_difference(profiles):
    base = profiles[0]
    fast = with_collectives(base, collective_tables(2, line(5e-6, 300e9), line(5e-6, 300e9)), PROV)
    slow = with_collectives(base, collective_tables(2, line(25e-6, 100e9), line(5e-6, 300e9)), PROV)
    a, b = (CalibratedCostModel(Placement(L8B, H200, tp=2), p) for p in (fast, slow))
    mixed = BatchShape(prefill_seqs=1, prefill_tokens=512, prefill_attn_pairs=512 * 513 / 2, prefill_ctx_tokens=512,
                       decode_seqs=32, decode_query_tokens=32, decode_ctx_tokens=32 * 900, sampled_tokens=33)
    for shape in (decode_shape(32, 900), mixed):
        n = shape.prefill_tokens + shape.decode_query_tokens
        extra = a.layers * 2 * ((25e-6 + n * HIDDEN_BYTES / 100e9) - (5e-6 + n * HIDDEN_BYTES / 300e9))
        assert b.step_time_s(shape) - a.step_time_s(shape) == pytest.approx(extra, rel=1e-6)
    # the simulator's fast-forward stays exact with the collective terms
    shape = decode_shape(32, 900)
    run = b.decode_run_s(shape, 50)
    one = [b.step_time_s(BatchShape(decode_seqs=32, decode_query_tokens=32, decode_ctx_tokens=32 * 900 + 32 * i,
                                    sampled_tokens=32)) for i in range(50)]
    assert np.array_equal(run, np.asarray(one))


def test_tp1_has_no_collective_term(profiles):
    m = CalibratedCostModel(Placement(L8B, H200), profiles[1])
    st = m.step_time(decode_shape(8, 500))
    assert "allreduce" not in st.op_s and "logits_gather" not in st.op_s


def test_version_1_profiles_load_and_cannot_carry_collectives(profiles, tmp_path):
    base, measured, _, _ = profiles
    d = json.loads(json.dumps(base.model_dump(mode="json", by_alias=True)))
    d["version"] = 1
    (tmp_path / "v1.json").write_text(json.dumps(d))
    assert load_profile(tmp_path / "v1.json").tables == base.tables
    d = json.loads(json.dumps(measured.model_dump(mode="json", by_alias=True)))
    assert d["version"] == 2 and d["profile_id"].endswith("+collectives")
    save_profile(measured, tmp_path / "v2.json")
    assert load_profile(tmp_path / "v2.json") == measured
    d["version"] = 1
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="collective tables need profile version 2"):
        load_profile(tmp_path / "bad.json")


def test_new_measurements_replace_a_degree_and_keep_the_others(profiles):
    _, measured, _, _ = profiles
    again = with_collectives(measured, collective_tables(2, line(1e-6, 1e12), line(1e-6, 1e12)) +
                             collective_tables(4, line(2e-6, 1e12), line(2e-6, 1e12)), PROV)
    kinds = [(t.op, t.key["tp"]) for t in again.tables if t.op in ("allreduce", "allgather")]
    assert sorted(kinds) == [("allgather", 2), ("allgather", 4), ("allreduce", 2), ("allreduce", 4)]
    assert again.table("allreduce", tp=2).median_s[0] == pytest.approx(1e-6 + 8192 / 1e12)
    assert again.profile_id == measured.profile_id  # "+collectives" once


def test_cli_times_collectives_on_the_cpu_into_the_profile(profiles, tmp_path):
    """The whole pipeline with gloo and two processes: sizes, timing on every rank, the table, the file."""
    pytest.importorskip("torch")
    from servesim.calibrate.collectives import message_sizes
    from servesim.cli.main import main
    from tests.engine_helpers import tiny_config, write_config

    model = write_config(tiny_config(), tmp_path / "tiny")
    src, out = tmp_path / "p.json", tmp_path / "q.json"
    save_profile(profiles[0], src)
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "allreduce", "--profile", str(src), "--tp", "2", "--device", "cpu", "--models", model,
              "--out", str(out)])
    assert e.value.code == 0
    prof = load_profile(out)
    sizes = message_sizes([model], cpu=True)
    for op in ("allreduce", "allgather"):
        t = prof.table(op, tp=2)
        assert t.grid[0] == tuple(float(b) for b in sizes[op]) and all(v > 0 for v in t.median_s)
        assert all(lo <= m <= hi for lo, m, hi in zip(t.p20_s, t.median_s, t.p80_s, strict=True))
    assert prof.version == 2 and prof.collective_provenance.nccl == "gloo"
    assert prof.collective_provenance.condition == "cpu-wall" and "--device cpu" in prof.collective_provenance.command
    assert [t for t in prof.tables if t.op not in ("allreduce", "allgather")] == list(profiles[0].tables)
    assert load_profile(src) == profiles[0]  # --out: the source profile is left as it was
    assert prof.fit.ops["allreduce"]["points"] == len(sizes["allreduce"]) - 2  # held out: each interior point
    with pytest.raises(SystemExit) as e:  # the report puts them beside the roofline's NCCL line
        main(["calibrate", "report", str(out), "--out-dir", str(tmp_path / "report")])
    assert e.value.code == 0 and "allreduce" in (tmp_path / "report" / "report.md").read_text()


def test_cli_refuses_tp_1_and_a_bad_device(profiles, tmp_path, capsys):
    from servesim.cli.main import main

    save_profile(profiles[0], tmp_path / "p.json")
    for argv, msg in ((["--tp", "1"], "TP of at least 2"), (["--device", "tpu"], "device must be cuda or cpu")):
        with pytest.raises(SystemExit) as e:
            main(["calibrate", "allreduce", "--profile", str(tmp_path / "p.json"), *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_bench_script_writes_bus_bandwidth_per_size_with_the_card_count(tmp_path):
    """bench/allreduce.py's tables from measured-looking collectives (its timing is calibration's, tested above):
    file names carry the card count, busbw follows nccl-tests' convention."""
    from tests.bench_helpers import load_bench

    bench = load_bench("allreduce")
    tables = collective_tables(4, line(10e-6, 200e9), line(10e-6, 100e9))
    rows = bench.rows_of(tables, 4, ["Llama-3.1-8B"])
    ar = next(r for r in rows if r["op"] == "allreduce" and r["bytes"] == 64 * HIDDEN_BYTES)
    assert ar["for"] == "Llama-3.1-8B x64" and ar["median_us"] == pytest.approx(10 + 64 * HIDDEN_BYTES / 200e9 * 1e6)
    assert ar["busbw_GBps"] == pytest.approx(ar["algbw_GBps"] * 1.5)  # 2 (N - 1) / N at N = 4
    meta = {"card": "NVIDIA H200", "date": "2026-12-20", "torch": "t", "cuda": "c", "nccl": "2.27.3", "env": "e",
            "command": "python3 bench/allreduce.py --tp 4"}
    stem = bench.write(tmp_path, "h200", 4, meta, rows)
    assert stem.name == "allreduce-h200x4-2026-12-20"
    md = (tmp_path / "allreduce-h200x4-2026-12-20.md").read_text()
    assert "4 GPUs, one process each; NCCL 2.27.3" in md and "| 131,072 | Llama-3.1-8B x16 |" in md
    doc = json.loads((tmp_path / "allreduce-h200x4-2026-12-20.json").read_text())
    assert len(doc["rows"]) == len(rows) and doc["meta"]["card"] == "NVIDIA H200"
