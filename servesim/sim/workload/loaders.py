"""Trace loaders: read a CSV or JSONL file into a `Workload`, the format told by the header.

Container: a file whose first non-blank character is ``{`` is JSON Lines (one object per line, keys
are the columns), anything else is CSV with a header row. Format: the one in `FORMATS` that knows
the most header columns; `load_file(path, fmt=...)` overrides it.

Every problem is one `InputError` naming the file, the data row (1-based, header excluded; the file
line follows in brackets) and the column.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import numpy as np

from servesim.errors import InputError
from servesim.sim.table import Table
from servesim.sim.workload.core import Workload


@dataclass(frozen=True)
class TraceFormat:
    """How one trace format names its columns. `time_unit` is "datetime" (wall-clock strings, made
    relative to the first row), "ms" or "s"; `time_column` None or optional means length-only allowed."""

    name: str
    description: str
    input_column: str
    output_column: str
    time_column: str
    time_unit: str = "s"
    time_optional: bool = False
    hash_column: str | None = None
    block_tokens: int | None = None
    extra_columns: tuple[str, ...] = ()  # known columns that are read or ignored
    strict: bool = False  # any other column is an error
    drop_failed: bool = False  # rows with a zero length are failed requests: drop them and say so
    priority_column: str | None = None
    deadline_column: str | None = None

    @property
    def required(self) -> tuple[str, ...]:
        time = () if self.time_optional else (self.time_column,)
        return (*time, self.input_column, self.output_column)

    @property
    def known(self) -> tuple[str, ...]:
        cols = (self.time_column, self.input_column, self.output_column, self.hash_column,
                self.priority_column, self.deadline_column, *self.extra_columns)
        return tuple(c for c in cols if c is not None)


FORMATS: dict[str, TraceFormat] = {
    f.name: f
    for f in (
        TraceFormat("azure", "Azure LLM inference trace 2023 (CSV)", "ContextTokens", "GeneratedTokens",
                    "TIMESTAMP", time_unit="datetime"),
        TraceFormat("mooncake", "Mooncake FAST'25 trace (JSONL, timestamp in ms, 512-token hash blocks)",
                    "input_length", "output_length", "timestamp", time_unit="ms", hash_column="hash_ids",
                    block_tokens=512),
        TraceFormat("burstgpt", "BurstGPT (CSV; failed zero-token rows are dropped)", "Request tokens",
                    "Response tokens", "Timestamp", extra_columns=("Model", "Total tokens", "Log Type"),
                    drop_failed=True),
        TraceFormat("vidur", "Vidur request trace (CSV; without arrived_at: lengths only)",
                    "num_prefill_tokens", "num_decode_tokens", "arrived_at", time_optional=True,
                    extra_columns=("num_total_tokens", "pd_ratio")),
        TraceFormat("generic", "servesim generic (CSV/JSONL; CSV hash_ids: space- or ;-separated ints)",
                    "input_tokens", "output_tokens", "arrival_s", time_optional=True, hash_column="hash_ids",
                    block_tokens=512, strict=True, priority_column="priority", deadline_column="deadline_s"),
    )
}


@dataclass(frozen=True)
class _Table:
    """Raw cells of a trace file, before any conversion: a list per column (CSV: strings; JSONL: JSON values,
    None where a row lacks the key)."""

    path: str
    cells: dict[str, list]
    lines: np.ndarray  # 1-based file line of each data row
    json: bool = False

    @property
    def columns(self) -> list[str]:
        return list(self.cells)

    def __len__(self) -> int:
        return len(self.lines)

    def cell(self, i: int, column: str) -> object:
        """The raw value at data row index `i`, as a plain Python object (for messages)."""
        return self.cells[column][i]

    def error(self, i: int, column: str, problem: str) -> InputError:
        """An error at data row index `i` (0-based) of `column`."""
        return InputError(f"{problem} (line {int(self.lines[i])})", file=self.path, row=i + 1, column=column)


def _read_csv(path: str, text: str) -> _Table:
    reader = csv.reader(StringIO(text))
    try:
        header = next(reader, [])
        names = [c.strip() for c in header]
        width = len(names)
        rows = list(reader)
    except csv.Error as exc:  # a NUL byte, a cell past the csv module's field limit
        raise InputError(f"malformed CSV: {exc} (line {reader.line_num})", file=path,
                         row=max(reader.line_num - 1, 1)) from None
    if '"' in text:  # quoted cells may span lines: take each row's line from the reader
        reader = csv.reader(StringIO(text))
        next(reader, None)
        lines = [reader.line_num for _ in reader]
    else:
        lines = list(range(2, len(rows) + 2))
    if any(len(r) != width for r in rows):
        for i, rec in enumerate(rows):
            if len(rec) > width:
                raise InputError(f"malformed CSV: Expected {width} fields in line {lines[i]}, saw {len(rec)}",
                                 file=path, row=lines[i] - 1)
        rows = [r + [""] * (width - len(r)) for r in rows]  # short rows and blank lines: empty cells
    # A trailing blank line is harmless; keep inner ones so rows map to file lines exactly.
    n = len(rows)
    while n and not any(rows[n - 1]):
        n -= 1
    cols = list(zip(*rows[:n])) if n else [()] * width
    return _Table(path, {name: list(col) for name, col in zip(names, cols)}, np.array(lines[:n], dtype=np.int64))


def _read_jsonl(path: str, text: str) -> _Table:
    records, lines = [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON: {exc.msg} (line {line_no})", file=path,
                             row=len(records) + 1) from None
        except (ValueError, RecursionError) as exc:  # an integer of over 4,300 digits; nesting past the stack
            what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
            raise InputError(f"not valid JSON: {what} (line {line_no})", file=path, row=len(records) + 1) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, got {type(obj).__name__} (line {line_no})",
                             file=path, row=len(records) + 1)
        records.append(obj)
        lines.append(line_no)
    names = list(dict.fromkeys(k for r in records for k in r))  # every key, in order of first appearance
    cells = {name: [r.get(name) for r in records] for name in names}
    return _Table(path, cells, np.array(lines, dtype=np.int64), json=True)


def _require_file(path: Path) -> None:
    """An error unless `path` is an existing regular file."""
    if not path.exists():
        raise InputError("no such file", file=str(path))
    if not path.is_file():
        raise InputError("not a file", file=str(path))


def _first_lines(text: str, n: int, quotes: bool) -> str | None:
    """The first ``n`` lines of ``text`` when each is one record (no blank line, no CR, and no quote where
    ``quotes`` may span lines: CSV), else None."""
    head = text.split("\n", n)[:n]
    if any(not line.strip() or "\r" in line or (quotes and '"' in line) for line in head):
        return None
    return "\n".join(head) + "\n"


def read_table(path: Path, rows: int | None = None) -> _Table:
    """Read `path` as raw cells (CSV or JSONL, told by the first character). ``rows``: read at least the first
    ``rows`` data rows, and only those when they are plain lines (each a record; fewer when the file has fewer)."""
    name = str(path)
    _require_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("not a text file (expected CSV or JSON Lines)", file=name) from None
    if not text.strip():
        raise InputError("empty file", file=name)
    jsonl = text.lstrip().startswith("{")
    if rows is not None and not text[:1].isspace():
        head = _first_lines(text, rows + (0 if jsonl else 1), quotes=not jsonl)  # CSV: the header and the rows
        text = head if head is not None else text
    if jsonl:
        return _read_jsonl(name, text)
    return _read_csv(name, text)


def detect_format(columns: list[str], path: str) -> TraceFormat:
    """The format that knows the most of `columns`; an error listing the formats when none does."""
    scores = {name: len(set(columns) & set(f.known)) for name, f in FORMATS.items()}
    best = max(scores, key=scores.__getitem__)
    if scores[best] == 0:
        known = "; ".join(f"{n} ({', '.join(f.required)})" for n, f in FORMATS.items())
        raise InputError(f"unknown trace format: header {', '.join(columns)!r} matches none of: {known}",
                         file=path)
    return FORMATS[best]


def _describe(value: object) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return "missing value"
    if isinstance(value, float) and np.isnan(value):
        return "missing value (NaN)"
    if isinstance(value, str) and value.strip().lower() in ("nan", "na", "null", "none"):
        return f"missing value ({value.strip()})"
    try:
        if np.isinf(float(value)):  # type: ignore[arg-type]
            return f"not a finite number: {value!r}"
    except OverflowError:
        return f"not a finite number: {value!r}"
    except (TypeError, ValueError):
        pass
    return f"not a number: {value!r}"


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*|\s*[+-]?(nan|inf|infinity)\s*", re.IGNORECASE)


def _number(v: object) -> float:
    """One cell as a number; NaN when it is not one (a bool, a list, an empty or non-numeric string)."""
    if isinstance(v, bool) or v is None:
        return np.nan
    if isinstance(v, int):
        return float(v) if abs(v) < 2**1023 else (math.inf if v > 0 else -math.inf)  # past float range: not finite
    if isinstance(v, float):
        return v
    if isinstance(v, str) and _NUMBER.fullmatch(v):
        return float(v)
    return np.nan


def _numbers(t: _Table, column: str) -> np.ndarray:
    """`column` as float64; the first cell that is empty, NaN, infinite or not a number is an error."""
    raw = t.cells[column]
    values = None
    if not t.json:  # strings: numpy parses a column of plain numbers in one go
        try:
            values = np.array(raw, dtype=np.float64)
        except ValueError:
            values = None
        if values is not None and any("_" in v for v in raw):
            values = None  # numpy reads 1_000 as a number; a trace should not
    if values is None:
        values = np.array([_number(v) for v in raw], dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise t.error(i, column, _describe(t.cell(i, column)))
    return values


MAX_WHOLE = 2**40  # far past any context or priority, and safe in int64 arithmetic


def _whole(t: _Table, column: str, values: np.ndarray, skip: np.ndarray | None = None,
           positive: bool = True) -> np.ndarray:
    """`values` as int64; a fractional, too large (or, with `positive`, zero or negative) value is an error."""
    frac = values != np.floor(values)
    nonpos = values <= 0 if positive else np.zeros(len(values), dtype=bool)
    huge = np.abs(values) > MAX_WHOLE
    for bad, what in ((frac, "not a whole number"), (nonpos, "must be a positive token count"),
                      (huge, f"too large (at most {MAX_WHOLE:,})")):
        if skip is not None:
            bad = bad & ~skip
        if bad.any():
            i = int(np.argmax(bad))
            raise t.error(i, column, f"{what}, got {t.cell(i, column)!r}")
    return values.astype(np.int64)


def _arrivals(t: _Table, f: TraceFormat) -> np.ndarray:
    """Arrival times in seconds: relative to the first row for wall-clock formats, as given otherwise."""
    col = f.time_column
    if f.time_unit == "datetime":
        raw = [str(v).strip() for v in t.cells[col]]
        text = [_microseconds(v) for v in raw]
        try:
            stamps = np.array(text, dtype="datetime64[us]")
            ok = not np.isnat(stamps).any() and not {"now", "today"} & set(text)  # numpy's own words
        except ValueError:
            ok = False
        if not ok:
            i = next((i for i, v in enumerate(text) if not _timestamp(v)), 0)
            raise t.error(i, col, f"not a timestamp: {raw[i]!r}")
        whole, micro = np.divmod((stamps - stamps[0]).astype(np.int64), 1_000_000)
        seconds = whole + micro / 1e6  # seconds and their fraction apart, as pandas' total_seconds
    else:
        seconds = _numbers(t, col) / (1000.0 if f.time_unit == "ms" else 1.0)
        neg = seconds < 0
        if neg.any():
            i = int(np.argmax(neg))
            raise t.error(i, col, f"negative timestamp {t.cell(i, col)!r}")
    back = np.diff(seconds) < 0
    if back.any():
        i = int(np.argmax(back)) + 1
        raise t.error(i, col, f"timestamps not sorted: {t.cell(i, col)!r} comes after "
                              f"{t.cell(i - 1, col)!r} on the row before")
    return seconds


def _microseconds(stamp: str) -> str:
    """``stamp`` with at most six fractional digits (Azure writes seven: 100 ns ticks; microseconds are kept)."""
    dot = stamp.rfind(".")
    return stamp[:dot + 7] if dot > 0 and len(stamp) > dot + 7 and stamp[dot + 1:].isdigit() else stamp


_ISO = re.compile(r"\d{4}-\d\d-\d\d([T ]\d\d(:\d\d(:\d\d(\.\d+)?)?)?)?")


def _timestamp(text: str) -> bool:
    """Whether ``text`` is an ISO 8601 date-time numpy reads (no time zone)."""
    if not _ISO.fullmatch(text):
        return False
    try:
        np.datetime64(text, "us")
    except ValueError:
        return False
    return True


_HASH_SPLIT = re.compile(r"[;\s,]+")


def _hash_ids(t: _Table, column: str) -> list[tuple[int, ...]]:
    """Prefix-block hashes: JSON lists of ints, or CSV cells of space- or ;-separated ints."""
    out = []
    for i, cell in enumerate(t.cells[column]):
        if isinstance(cell, str):
            try:
                ids = tuple(int(tok) for tok in _HASH_SPLIT.split(cell.strip().strip("[]")) if tok)
            except ValueError:
                raise t.error(i, column, f"not a list of integers: {cell!r}") from None
        elif isinstance(cell, list) and all(type(h) is int for h in cell):
            ids = tuple(cell)
        elif cell is None or (isinstance(cell, float) and np.isnan(cell)):
            ids = ()
        else:
            raise t.error(i, column, f"not a list of integers: {cell!r}")
        if any(not -(2**63) <= h < 2**63 for h in ids):
            raise t.error(i, column, f"a hash id beyond 64 bits: {cell!r}")
        out.append(ids)
    return out


def _check_columns(t: _Table, f: TraceFormat) -> None:
    columns = t.columns
    for col in f.required:
        if col not in columns:
            raise InputError(f"missing column (format '{f.name}' needs {', '.join(f.required)})",
                             file=t.path, column=col)
    if f.strict:
        for col in columns:
            if col not in f.known:
                raise InputError(f"unexpected column; format '{f.name}' has only {', '.join(f.known)}",
                                 file=t.path, column=col)


def parse_table(t: _Table, f: TraceFormat, name: str, source: str,
                block_tokens: int | None = None) -> Workload:
    """Convert raw cells to a validated `Workload` in format `f`."""
    _check_columns(t, f)
    if len(t) == 0:
        raise InputError("empty trace: no data rows", file=t.path)
    cols: dict[str, object] = {}
    if f.time_column in t.cells:
        cols["arrival_s"] = _arrivals(t, f)
    else:
        cols["arrival_s"] = np.full(len(t), np.nan)
    inp = _numbers(t, f.input_column)
    out = _numbers(t, f.output_column)
    failed = (inp == 0) | (out == 0) if f.drop_failed else None
    cols["input_tokens"] = _whole(t, f.input_column, inp, skip=failed)
    cols["output_tokens"] = _whole(t, f.output_column, out, skip=failed)
    has_hash = f.hash_column is not None and f.hash_column in t.cells
    if has_hash:
        cols["hash_ids"] = _hash_ids(t, f.hash_column)
    if f.priority_column in t.cells:
        cols["priority"] = _whole(t, f.priority_column, _numbers(t, f.priority_column), positive=False)
    if f.deadline_column in t.cells:
        deadline = _numbers(t, f.deadline_column)
        if (deadline <= 0).any():
            i = int(np.argmax(deadline <= 0))
            raise t.error(i, f.deadline_column, f"deadline must be > 0 s, got {deadline[i]!r}")
        cols["deadline_s"] = deadline
    table = Table(cols)
    notes: tuple[str, ...] = ()
    if failed is not None and failed.any():
        table = table.take(~failed)
        notes = (f"dropped {int(failed.sum())} failed rows with zero request or response tokens",)
        if len(table) == 0:
            raise InputError("empty trace: every row is a failed request", file=t.path)
    block = (block_tokens or f.block_tokens) if has_hash else None
    return Workload(name=name, table=table, block_tokens=block, source=source, notes=notes)


def file_format(path: str | Path) -> str:
    """The format name detected for `path` from its first line alone (header or first JSON object)."""
    t = read_table_head(Path(path))
    return detect_format(t.columns, t.path).name


def read_table_head(path: Path) -> _Table:
    """Like `read_table` but reads only up to the first non-blank line (the header)."""
    _require_file(path)
    with path.open(encoding="utf-8", errors="replace") as fh:
        first = next((line for line in fh if line.strip()), "")
    if not first:
        raise InputError("empty file", file=str(path))
    return (_read_jsonl if first.lstrip().startswith("{") else _read_csv)(str(path), first)


def load_file(path: str | Path, fmt: str | None = None, *, name: str | None = None, source: str | None = None,
              block_tokens: int | None = None, rows: int | None = None) -> Workload:
    """Load one trace file; `fmt` (a key of `FORMATS`) overrides detection from the header. ``rows``: only the
    first ``rows`` requests are needed: the workload holds at least those (all the file's when it has fewer; the
    whole file when the format drops failed rows, whose count the notes give), the rows beyond are not read."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}", field="format")
    if rows is not None and (fmt is None or FORMATS[fmt].drop_failed):
        rows = None  # the format must be known ahead, and keep every row
    t = read_table(path, rows)
    f = FORMATS[fmt] if fmt is not None else detect_format(t.columns, t.path)
    return parse_table(t, f, name or path.stem, source or str(path), block_tokens)
