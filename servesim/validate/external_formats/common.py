"""What the external-results readers share: the `ExternalRun` record, JSON reading, typed fields, the request table.

Every problem a reader finds is one `InputError` naming the file and the field path inside it
(``benchmarks[0].requests.successful[2].info.timings.request_start``), never another exception.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from servesim.errors import InputError

#: Columns of `ExternalRun.requests`: servesim's request columns, then what only an external run has.
REQUEST_COLUMNS = {
    "request_id": "int64",  # the id servesim gives it on replay: replayable requests 0.. in send order, then the rest
    "arrival_s": "float64",  # send time, seconds after the first request's (NaN: the file has no send times)
    "input_tokens": "int64",
    "output_tokens": "int64",  # tokens actually generated (as the tool counted them)
    "first_token_s": "float64",  # same clock as arrival_s; NaN for failed requests (and unknown arrivals)
    "finish_s": "float64",  # last token, same clock; NaN for failed requests (and unknown arrivals)
    "rejected_reason": "object",  # "" or the tool's error
    "itl_s": "object",  # list of seconds between streamed chunks, or None where the file has none
    "ttft_s": "float64",  # the tool's per-request TTFT, kept even where arrivals are unknown
    "e2el_s": "float64",  # the tool's per-request E2E latency (send to last token)
    "measured": "bool",  # inside the tool's measurement window (its aggregates cover these rows only)
    "tool_request_id": "object",  # the tool's own id for the request (str)
}

LATENCY_STATS = ("mean", "median", "std", "p50", "p90", "p95", "p99")
TOOLS = ("vllm", "guidellm", "aiperf")


@dataclass(frozen=True, eq=False)
class ExternalRun:
    """One benchmark run read from an external tool's result file, in servesim's terms.

    ``requests`` has one row per request sent (columns `REQUEST_COLUMNS`, sorted by arrival);
    ``summary`` the tool's own aggregates under vLLM's keys, exactly as the file reports them (ms, req/s,
    tok/s), only where the tool reports a quantity vLLM's bench serve also reports; ``alignment`` one
    sentence per metric on how the tool's definition relates to vLLM's; ``meta`` what the file says about
    the run (standard keys: ``model``, ``tool_version``, ``date``, ``schema``, ``rate_per_s``,
    ``concurrency``, ``loop`` ("open" | "closed"), ``send_times`` ("measured" | "reconstructed" |
    "unknown"), plus tool-specific ones).
    """

    tool: str
    source: str
    requests: pd.DataFrame
    summary: dict[str, float]
    alignment: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def _number_only(value: Any) -> Any:
    """JSON numbers only: reject strings and booleans that pydantic's lax mode would coerce."""
    if isinstance(value, (str, bool)):
        raise ValueError("must be a number")
    return value


# Times: strict floats (ints accepted, strings/bools/NaN/inf refused) are checked in pydantic's core, fast
# enough for millions of inter-token gaps. Counts: integral JSON numbers (5 or 5.0), bounded to stay int64.
Seconds = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Count = Annotated[int, BeforeValidator(_number_only), Field(ge=0, le=2**40)]
Nanos = Annotated[int, BeforeValidator(_number_only), Field(ge=0, le=2**62)]  # time.time_ns() stamps


class Lax(BaseModel):
    """A part of a tool's file: the fields we read are typed, anything else is ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _path(loc: tuple, root: str) -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@functools.cache
def _adapter(type_: Any) -> TypeAdapter:
    return TypeAdapter(type_)


def parse(type_: Any, data: Any, file: str, root: str = "") -> Any:
    """``data`` validated as ``type_`` (a pydantic model or any type pydantic knows); the first problem
    becomes one InputError naming the field path under ``root``."""
    try:
        if isinstance(type_, type) and issubclass(type_, BaseModel):
            return type_.model_validate(data)
        return _adapter(type_).validate_python(data)
    except ValidationError as exc:
        errors = exc.errors()
        err = errors[0]
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise InputError(f"{msg}{more}", file=file, field=_path(tuple(err["loc"]), root) or None) from None


def read_json(path: Path) -> Any:
    """The file's JSON value; unreadable, non-UTF-8 or malformed files are InputErrors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    except UnicodeDecodeError:
        raise InputError("not a text file (not UTF-8)", file=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", file=str(path)) from None
    except RecursionError:
        raise InputError("not valid JSON: nested too deeply", file=str(path)) from None


def read_jsonl(path: Path) -> list[Any]:
    """One JSON value per non-blank line; a bad line is an InputError naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    except UnicodeDecodeError:
        raise InputError("not a text file (not UTF-8)", file=str(path)) from None
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):
            raise InputError(f"line {number} is not valid JSON", file=str(path)) from None
    return out


def find_key(obj: Any, key: str, want: type | tuple[type, ...] = object, depth: int = 4) -> Any:
    """The first value of type ``want`` under ``key`` in nested dicts, depth first: where a tool keeps a
    setting (the model name, the concurrency) moves between its versions."""
    if depth < 0 or not isinstance(obj, dict):
        return None
    value = obj.get(key)
    if value is not None and isinstance(value, want) and not (isinstance(value, bool) and want is not bool):
        return value
    for child in obj.values():
        if (found := find_key(child, key, want, depth - 1)) is not None:
            return found
    return None


def error_text(error: str | None, fallback: str) -> str:
    """A failed request's reason on one line: the last non-blank line of the tool's message (a traceback
    ends with the exception), or ``fallback`` when the tool gave none."""
    lines = [ln.strip() for ln in (error or "").splitlines() if ln.strip()]
    return lines[-1] if lines else fallback


def check_not_before(later: np.ndarray, earlier: np.ndarray, what: str, file: str, field_of) -> None:
    """Raise naming the first request where ``later < earlier`` (beyond clock rounding); NaN pairs pass."""
    bad = np.flatnonzero(later < earlier - 1e-6 * np.maximum(1.0, np.abs(earlier)))
    if len(bad):
        i = int(bad[0])
        raise InputError(f"{what} (request {i})", file=file, field=field_of(i))


def requests_frame(
    *,
    file: str,
    send_s: np.ndarray,
    ttft_s: np.ndarray,
    e2el_s: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    reasons: list[str],
    itl_s: list[list[float] | None] | None = None,
    measured: np.ndarray | None = None,
    tool_ids: list[str] | None = None,
) -> pd.DataFrame:
    """The request table (`REQUEST_COLUMNS`) from per-request arrays in the tool's order.

    ``send_s`` is each request's send time on the tool's clock (NaN where unknown), ``ttft_s``/``e2el_s``
    its latencies from the send (NaN for failed requests), ``reasons`` "" for served requests.
    Rows are sorted by send time (stable). They are numbered as `external_workload` replays them, so a
    simulated request and its measured row share ``request_id``: the `replayable` rows 0.. in send order,
    then the others.
    """
    n = len(reasons)
    send = np.asarray(send_s, dtype=np.float64)
    ttft = np.asarray(ttft_s, dtype=np.float64)
    e2el = np.asarray(e2el_s, dtype=np.float64)
    failed = np.array([bool(r) for r in reasons], dtype=bool)
    ttft[failed] = np.nan
    e2el[failed] = np.nan
    origin = np.nanmin(send) if n and not np.isnan(send).all() else 0.0
    arrival = send - origin
    first = arrival + ttft
    finish = arrival + e2el
    for name, col in (("arrival", arrival), ("first token", first), ("finish", finish)):
        if np.isinf(col).any():  # finite inputs can still overflow when added
            raise InputError(f"{name} time overflows (request {int(np.flatnonzero(np.isinf(col))[0])})", file=file)
    df = pd.DataFrame({
        "arrival_s": arrival,
        "input_tokens": np.asarray(input_tokens, dtype=np.int64),
        "output_tokens": np.asarray(output_tokens, dtype=np.int64),
        "first_token_s": first,
        "finish_s": finish,
        "rejected_reason": pd.Series(list(reasons), dtype=object),
        "itl_s": pd.Series(list(itl_s) if itl_s is not None else [None] * n, dtype=object),
        "ttft_s": ttft,
        "e2el_s": e2el,
        "measured": np.ones(n, dtype=bool) if measured is None else np.asarray(measured, dtype=bool),
        "tool_request_id": pd.Series(list(tool_ids) if tool_ids is not None else [str(i) for i in range(n)],
                                     dtype=object),
    })
    df = df.sort_values("arrival_s", kind="stable", na_position="last").reset_index(drop=True)
    ok = replayable(df).to_numpy()
    ids = np.empty(n, dtype=np.int64)
    ids[ok] = np.arange(ok.sum())
    ids[~ok] = np.arange(ok.sum(), n)
    df.insert(0, "request_id", ids)
    return df[list(REQUEST_COLUMNS)]


def replayable(requests: pd.DataFrame) -> pd.Series:
    """Rows a simulation can replay: served, with a prompt and at least one generated token."""
    return (requests["rejected_reason"] == "") & (requests["input_tokens"] > 0) & (requests["output_tokens"] > 0)


def latency_summary(stats: dict[str, float | None], metric: str, scale: float = 1.0) -> dict[str, float]:
    """``{mean,median,std,p50,...}`` (the tool's names already mapped to vLLM's) -> ``<stat>_<metric>_ms``,
    times ``scale`` (to ms); missing or null statistics are left out."""
    out = {}
    for stat in LATENCY_STATS:
        value = stats.get(stat)
        if value is not None and math.isfinite(value):
            out[f"{stat}_{metric}_ms"] = float(value) * scale
    return out
