"""Every kind of bad trace input gives one InputError naming the file, the data row and the column."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from servesim.errors import InputError
from servesim.sim.workload import load_trace

AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GEN = "arrival_s,input_tokens,output_tokens\n"
BG = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
M0 = '{"timestamp": 0, "input_length": 5, "output_length": 5}'  # a good Mooncake line


@dataclass(frozen=True)
class Bad:
    """A bad trace file and the error it must give (row: 1-based data row; None: not about a row)."""

    id: str
    filename: str | None  # None: the file does not exist
    content: str | bytes
    row: int | None
    column: str | None
    match: str
    fmt: str | None = None


def _moon(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


BAD_INPUTS = [
    Bad("missing-file", None, "", None, None, "no such file"),
    Bad("directory", ".", "", None, None, "not a file"),
    Bad("empty-file", "e.csv", "", None, None, "empty file"),
    Bad("blank-file", "e.csv", "\n\n  \n", None, None, "empty file"),
    Bad("binary-file", "b.csv", b"\xff\xfe\x00\x81garbage", None, None, "not a text file"),
    Bad("unknown-format", "u.csv", "foo,bar\n1,2\n", None, None,
        "unknown trace format: header 'foo, bar' matches none of: azure (TIMESTAMP"),
    Bad("unknown-format-name", "g.csv", GEN + "0,1,1\n", None, None, "unknown format 'parquet'",
        fmt="parquet"),
    Bad("missing-column-azure", "a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.6805900,3\n", None,
        "GeneratedTokens", "missing column (format 'azure'"),
    Bad("missing-column-generic", "g.csv", "arrival_s,input_tokens\n0,5\n", None, "output_tokens",
        "missing column"),
    Bad("missing-column-forced-format", "m.jsonl", M0 + "\n", None, "TIMESTAMP",
        "missing column (format 'azure'", fmt="azure"),
    Bad("extra-column-generic", "g.csv", "arrival_s,input_tokens,output_tokens,colour\n0,1,1,red\n", None,
        "colour", "unexpected column; format 'generic' has only"),
    Bad("extra-key-generic-jsonl", "g.jsonl",
        _moon('{"arrival_s": 0, "input_tokens": 1, "output_tokens": 1}',
              '{"arrival_s": 1, "input_tokens": 1, "output_tokens": 1, "user": 7}'), None, "user",
        "unexpected column"),
    Bad("non-numeric-csv", "a.csv", AZ + "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:47.0,abc,5\n",
        2, "ContextTokens", "not a number: 'abc' (line 3)"),
    Bad("non-numeric-jsonl", "m.jsonl",
        _moon(M0, "",
              '{"timestamp": 1, "input_length": "many", "output_length": 5}'),
        2, "input_length", "not a number: 'many' (line 3)"),
    Bad("list-in-numeric-cell", "m.jsonl", '{"timestamp": 0, "input_length": [5], "output_length": 5}\n',
        1, "input_length", "not a number: [5]"),
    Bad("bool-in-numeric-cell", "m.jsonl", '{"timestamp": 0, "input_length": true, "output_length": 5}\n',
        1, "input_length", "not a number: True"),
    Bad("bad-timestamp", "a.csv", AZ + "2023-11-16 18:15:46.6805900,374,44\nyesterday,3,5\n", 2, "TIMESTAMP",
        "not a timestamp: 'yesterday'"),
    Bad("negative-length", "g.csv", GEN + "0,10,5\n1,-5,5\n", 2, "input_tokens",
        "must be a positive token count, got '-5' (line 3)"),
    Bad("zero-length-generic", "g.csv", GEN + "0,10,5\n1,10,5\n2,10,0\n", 3, "output_tokens",
        "must be a positive token count, got '0'"),
    Bad("zero-length-azure", "a.csv", AZ + "2023-11-16 18:15:46.6805900,0,44\n", 1, "ContextTokens",
        "must be a positive token count"),
    Bad("negative-length-burstgpt", "bg.csv", BG + "5,ChatGPT,472,-18,490,Conversation log\n", 1,
        "Response tokens", "must be a positive token count, got '-18'"),
    Bad("fractional-length", "g.csv", GEN + "0,10.5,5\n", 1, "input_tokens",
        "not a whole number, got '10.5'"),
    Bad("nan-cell", "g.csv", GEN + "0,10,5\n1,nan,5\n", 2, "input_tokens", "missing value (nan)"),
    Bad("empty-cell", "g.csv", GEN + "0,10,5\n1,,5\n", 2, "input_tokens", "missing value (line 3)"),
    Bad("nan-json", "m.jsonl", '{"timestamp": NaN, "input_length": 5, "output_length": 5}\n', 1, "timestamp",
        "missing value (NaN)"),
    Bad("null-json", "m.jsonl", '{"timestamp": 0, "input_length": null, "output_length": 5}\n', 1,
        "input_length", "missing value"),
    Bad("missing-key-json", "m.jsonl",
        _moon(M0, '{"timestamp": 0, "input_length": 5}'),
        2, "output_length", "missing value"),
    Bad("infinite", "g.csv", GEN + "0,inf,5\n", 1, "input_tokens", "not a finite number: 'inf'"),
    Bad("empty-trace", "a.csv", AZ, None, None, "empty trace: no data rows"),
    Bad("empty-trace-jsonl-forced", "m.jsonl", "\n", None, None, "empty file", fmt="mooncake"),
    Bad("all-failed-burstgpt", "bg.csv", BG + "5,ChatGPT,0,0,0,Conversation log\n", None, None,
        "empty trace: every row is a failed request"),
    Bad("unsorted-generic", "g.csv", GEN + "0,1,1\n5,1,1\n4.5,1,1\n", 3, "arrival_s",
        "timestamps not sorted: '4.5' comes after '5'"),
    Bad("unsorted-azure", "a.csv", AZ + "2023-11-16 18:15:46.6805900,3,4\n2023-11-16 18:15:45.1,3,4\n", 2,
        "TIMESTAMP", "timestamps not sorted"),
    Bad("unsorted-mooncake", "m.jsonl",
        _moon('{"timestamp": 3000, "input_length": 5, "output_length": 5}',
              '{"timestamp": 2000, "input_length": 5, "output_length": 5}'), 2, "timestamp", "not sorted"),
    Bad("negative-timestamp", "g.csv", GEN + "-1,1,1\n", 1, "arrival_s", "negative timestamp '-1'"),
    Bad("bad-hash-ids-csv", "g.csv", "arrival_s,input_tokens,output_tokens,hash_ids\n0,1,1,1 2 x\n", 1,
        "hash_ids", "not a list of integers: '1 2 x'"),
    Bad("bad-hash-ids-json", "m.jsonl",
        '{"timestamp": 0, "input_length": 5, "output_length": 5, "hash_ids": [1, 2.5]}\n', 1, "hash_ids",
        "not a list of integers"),
    Bad("fractional-priority", "g.csv", "arrival_s,input_tokens,output_tokens,priority\n0,1,1,1.5\n", 1,
        "priority", "not a whole number"),
    Bad("zero-deadline", "g.csv", "arrival_s,input_tokens,output_tokens,deadline_s\n0,1,1,0\n", 1,
        "deadline_s", "deadline must be > 0 s"),
    Bad("malformed-csv", "g.csv", GEN + "0,1,1\n1,2,3,4\n", 2, None, "Expected 3 fields in line 3, saw 4"),
    Bad("invalid-json", "m.jsonl",
        _moon(M0, '{"timestamp": 1, "input_length": 5'),
        2, None, "not valid JSON"),
    Bad("json-not-object", "m.jsonl", _moon(M0, "[1, 2]"),
        2, None, "expected a JSON object, got list (line 2)"),
]


def write_bad(tmp_path: Path, case: Bad) -> Path:
    """Write `case` under tmp_path; the path (not created for a missing file)."""
    if case.filename is None:
        return tmp_path / "nowhere" / "trace.csv"
    path = tmp_path / case.filename
    if case.filename != ".":
        if isinstance(case.content, bytes):
            path.write_bytes(case.content)
        else:
            path.write_text(case.content)
    return path


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.id for c in BAD_INPUTS])
def test_bad_input_names_file_row_column(tmp_path: Path, case: Bad) -> None:
    path = write_bad(tmp_path, case)
    with pytest.raises(InputError) as info:
        load_trace(path, case.fmt)
    err = info.value
    assert case.match in str(err)
    assert "\n" not in str(err)
    if case.id != "unknown-format-name":  # that one names the option, not a file
        assert err.file == str(path)
        assert str(path) in str(err)
    assert err.row == case.row
    assert err.column == case.column
    if case.row is not None:
        assert f"row {case.row}" in str(err)
    if case.column is not None:
        assert f"column '{case.column}'" in str(err)


def test_missing_builtin_name_lists_builtins() -> None:
    with pytest.raises(InputError, match="built-in traces: azure-conv, azure-code"):
        load_trace("azure-conversation")


def test_first_bad_row_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text(GEN + "0,1,1\n1,x,1\n2,y,1\n")
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert info.value.row == 2


def test_trailing_blank_lines_are_harmless(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text(GEN + "0,1,1\n1,2,2\n\n\n")
    assert len(load_trace(path)) == 2
