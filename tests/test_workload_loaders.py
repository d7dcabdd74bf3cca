"""Trace loaders: the built-ins match /work/shared/traces/README.md, every format reads, detection works."""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from servesim.sim.workload import BUILTIN_TRACES, FORMATS, Workload, builtin_path, file_format, load_trace


@cache
def builtin(name: str) -> Workload:
    return load_trace(name)


# rows, span_s, (prompt mean, p50, p90, p99), (output mean, p50, p90, p99), from the traces README.
README_STATS = {
    "azure-code": (8819, 3435.9, (2047.8, 1469, 5188, 7436), (27.9, 13, 55, 251.5)),
    "azure-conv": (19366, 3501.7, (1154.7, 1020, 2734.5, 4142), (211.1, 129, 424, 601)),
    "mooncake-conv": (12031, 3537.0, (12035.1, 6909, 27367, 85400), (342.6, 350, 597, 1118.5)),
    "arxiv-summarization": (28257, None, (2588.1, 2730, 3702, 3933.4), (291.4, 167, 372, 3271.3)),
    "sharegpt": (30731, None, (2340.0, 1730, 5696, 7433.7), (438.7, 415, 834, 998)),
}


@pytest.mark.parametrize("name", list(README_STATS))
def test_builtin_statistics_match_readme(name: str) -> None:
    rows, span, prompt, output = README_STATS[name]
    s = builtin(name).stats()
    assert s["requests"] == rows
    if span is None:
        assert s["span_s"] is None and s["rate_per_s"] is None
        assert builtin(name).requests["arrival_s"].isna().all()
    else:
        assert s["span_s"] == pytest.approx(span, abs=0.05)
        assert s["rate_per_s"] == pytest.approx((rows - 1) / s["span_s"])
    for got, want in ((s["input_tokens"], prompt), (s["output_tokens"], output)):
        for key, value in zip(("mean", "p50", "p90", "p99"), want, strict=True):
            assert got[key] == pytest.approx(value, abs=0.51), key  # README rounds to 0.1 or to integers


def test_azure_burstiness_and_per_minute_counts() -> None:
    conv, code = builtin("azure-conv").stats(), builtin("azure-code").stats()
    assert conv["iat_cv"] == pytest.approx(1.09, abs=0.005)
    assert code["iat_cv"] == pytest.approx(13.15, abs=0.005)
    assert (conv["per_minute_min"], conv["per_minute_max"]) == (37, 507)
    assert (code["per_minute_min"], code["per_minute_max"]) == (0, 632)
    assert conv["burstiness"] == pytest.approx((conv["iat_cv"] - 1) / (conv["iat_cv"] + 1))


def test_azure_timestamps_keep_seven_digit_precision() -> None:
    # First two rows of azure2023_code.csv: 18:17:03.9799600 and 18:17:04.0319600.
    t = builtin("azure-code").requests["arrival_s"].to_numpy()
    assert t[0] == 0.0
    assert t[1] == pytest.approx(0.052, abs=1e-9)
    assert np.all(np.diff(t) >= 0)


def test_mooncake_hash_blocks() -> None:
    w = builtin("mooncake-conv")
    s = w.stats()
    assert w.block_tokens == 512
    assert s["hash_blocks_mean"] == pytest.approx(24.0, abs=0.05)
    assert s["hash_block_reuse"] == pytest.approx(0.366, abs=0.0005)
    df = w.requests
    assert df["hash_ids"].iloc[0] == tuple(range(14))
    # Every prompt is covered by exactly ceil(input / 512) blocks.
    blocks = df["hash_ids"].map(len).to_numpy()
    assert np.array_equal(blocks, -(-df["input_tokens"].to_numpy() // 512))
    assert s["per_minute_min"] == 144 and s["per_minute_max"] == 247


def test_burstgpt_drops_failed_rows_and_says_how_many() -> None:
    w = builtin("burstgpt")
    assert len(w) == 400 - 17
    assert w.notes == ("dropped 17 failed rows with zero request or response tokens",)
    s = w.stats()
    # The README's means count the 17 zero rows over all 400: the kept rows carry the same token sum.
    assert s["input_tokens"]["mean"] * len(w) / 400 == pytest.approx(520.5, abs=0.05)
    assert s["output_tokens"]["mean"] * len(w) / 400 == pytest.approx(276.5, abs=0.05)
    assert s["span_s"] == 37269.0  # timestamps 5 .. 37274, both ends kept
    assert w.requests["arrival_s"].iloc[0] == 5.0  # numeric timestamps are kept as given


def test_builtin_dtypes_and_metadata() -> None:
    for name, b in BUILTIN_TRACES.items():
        w = builtin(name)
        df = w.requests
        assert df["arrival_s"].dtype == np.float64
        assert df["input_tokens"].dtype == np.int64 and df["output_tokens"].dtype == np.int64
        assert (df["input_tokens"] > 0).all() and (df["output_tokens"] > 0).all()
        assert w.source == f"builtin:{name}" and w.name == name
        assert file_format(builtin_path(name)) == b.fmt


def test_builtin_files_match_readme_sha256() -> None:
    text = (resources.files("servesim.sim.workload.traces") / "README.md").read_text()
    sums = dict((f, h) for h, f in re.findall(r"^([0-9a-f]{64})  (\S+)$", text, flags=re.M))
    assert set(sums) == {b.file for b in BUILTIN_TRACES.values()}
    for name in BUILTIN_TRACES:
        path = builtin_path(name)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[path.name]


def test_generic_csv_with_all_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("arrival_s,input_tokens,output_tokens,hash_ids,priority,deadline_s\n"
                    "0.5,100,10,1 2 3,0,2.5\n"
                    "1.25,600,20,1;2;4,-1,10\n"
                    "1.25,30,5,,3,1\n")
    w = load_trace(path)
    df = w.requests
    assert w.name == "mine" and w.source == str(path) and w.block_tokens == 512
    assert df["arrival_s"].tolist() == [0.5, 1.25, 1.25]
    assert df["hash_ids"].tolist() == [(1, 2, 3), (1, 2, 4), ()]
    assert df["priority"].tolist() == [0, -1, 3] and df["priority"].dtype == np.int64
    assert df["deadline_s"].tolist() == [2.5, 10.0, 1.0]
    assert load_trace(path, block_tokens=16).block_tokens == 16


def test_generic_jsonl_and_length_only(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"arrival_s": 0, "input_tokens": 7, "output_tokens": 3, "hash_ids": [9, 8]}\n\n'
                    '{"arrival_s": 2, "input_tokens": 8, "output_tokens": 4, "hash_ids": [9]}\n')
    w = load_trace(path)
    assert w.requests["hash_ids"].tolist() == [(9, 8), (9,)]
    assert w.stats()["rate_per_s"] == pytest.approx(0.5)
    lengths = tmp_path / "lengths.csv"
    lengths.write_text("input_tokens,output_tokens\n5,6\n7,8\n")
    w = load_trace(lengths)
    assert not w.has_arrivals and w.requests["arrival_s"].isna().all()
    assert w.requests["input_tokens"].tolist() == [5, 7]


def test_vidur_with_arrivals(tmp_path: Path) -> None:
    path = tmp_path / "vidur.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,2\n0.75,20,3\n")
    w = load_trace(path)
    assert w.requests["arrival_s"].tolist() == [0.0, 0.75]
    assert w.requests["output_tokens"].tolist() == [2, 3]


def test_mooncake_timestamps_are_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"timestamp": 1500, "input_length": 600, "output_length": 3, "hash_ids": [4, 5]}\n'
                    '{"timestamp": 4000, "input_length": 10, "output_length": 3, "hash_ids": [4]}\n')
    w = load_trace(path)
    assert w.requests["arrival_s"].tolist() == [1.5, 4.0]
    assert w.block_tokens == 512


def test_format_override_and_detection(tmp_path: Path) -> None:
    # A generic file read as generic by detection; the same columns can also be forced.
    path = tmp_path / "x.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0,1,1\n")
    assert file_format(path) == "generic"
    assert len(load_trace(path, "generic")) == 1
    # Extra columns are tolerated for third-party formats (only generic is strict).
    az = tmp_path / "az.csv"
    az.write_text("TIMESTAMP,ContextTokens,GeneratedTokens,Region\n2023-11-16 18:15:46,5,6,eu\n")
    assert load_trace(az).requests["input_tokens"].tolist() == [5]
    assert {"azure", "mooncake", "burstgpt", "vidur", "generic"} <= set(FORMATS)


def test_workload_rejects_malformed_tables() -> None:
    df = pd.DataFrame({"arrival_s": [0.0], "input_tokens": [1], "output_tokens": [1]})
    with pytest.raises(ValueError, match="lacks columns"):
        Workload("x", df.drop(columns="output_tokens"))
    with pytest.raises(ValueError, match="unknown columns"):
        Workload("x", df.assign(colour="red"))
    with pytest.raises(ValueError, match="block_tokens"):
        Workload("x", df.assign(hash_ids=[(1,)]))


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_generic_round_trip(tmp_path: Path, suffix: str) -> None:
    # A slice of Mooncake (with hash_ids) written in the generic format reads back identical.
    src = load_trace("mooncake-conv").requests.iloc[:300].copy()
    src["priority"] = np.arange(len(src)) % 3
    path = tmp_path / f"rt.{suffix}"
    if suffix == "csv":
        out = src.assign(hash_ids=src["hash_ids"].map(lambda ids: " ".join(map(str, ids))))
        out.to_csv(path, index=False, float_format="%.17g")
    else:
        src.assign(hash_ids=src["hash_ids"].map(list)).to_json(path, orient="records", lines=True)
    back = load_trace(path)
    assert back.block_tokens == 512
    pd.testing.assert_frame_equal(back.requests, src)


def test_builtin_traces_read_as_pandas_reads_them() -> None:
    """The loader reads CSV without pandas; every built-in trace comes out as pandas' reading gave it (Azure's
    wall-clock stamps to the same float seconds as ``to_datetime(...).dt.total_seconds()``)."""
    import pandas as pd

    from servesim.sim.workload import BUILTIN_TRACES, builtin_path, load_trace

    for name, b in BUILTIN_TRACES.items():
        w = load_trace(name)
        assert len(w.requests) == len(w) and list(w.requests.columns) == w.table.columns
        if b.fmt != "azure":
            continue
        raw = pd.read_csv(builtin_path(name), dtype=str)
        stamps = pd.to_datetime(raw["TIMESTAMP"].str.replace(r"(\.\d{6})\d+", r"\1", regex=True), format="ISO8601")
        seconds = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy()
        assert w.table["arrival_s"].tobytes() == seconds.tobytes()
        assert np.array_equal(w.table["input_tokens"], raw["ContextTokens"].astype(np.int64).to_numpy())
