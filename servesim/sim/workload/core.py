"""The `Workload` record the simulator consumes, and its statistics.

A workload is a table of requests, one row each, sorted by arrival:

| column          | dtype              | meaning                                                            |
|-----------------|--------------------|--------------------------------------------------------------------|
| `arrival_s`     | float64            | arrival in seconds, as the trace gives it (NaN: no arrival times)  |
| `input_tokens`  | int64 > 0          | prompt tokens                                                      |
| `output_tokens` | int64 > 0          | tokens to generate                                                 |
| `hash_ids`      | object (optional)  | `tuple[int, ...]` of prefix-block hashes (`block_tokens` each) |
| `priority`      | int64 (optional)   | scheduling priority (policy decides whether lower or higher wins)  |
| `deadline_s`    | float64 (optional) | seconds after arrival by which the request should finish           |

Three kinds of workload, told apart by `arrival_s` and `closed_loop`:
- open loop (traces, Poisson, ...): every `arrival_s` is a number, sorted;
- length-only (Vidur arXiv, ShareGPT): every `arrival_s` is NaN and `closed_loop` is None; give it
  arrivals with `with_arrivals` before simulating;
- closed loop: every `arrival_s` is NaN and `closed_loop` holds `users` and `think_time_s`. The
  simulator issues rows in order: rows 0..users-1 at time 0, then each time a request finishes, its
  user waits `think_time_s` and issues the next unissued row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from servesim.errors import ConfigError
from servesim.sim.table import Table

if TYPE_CHECKING:
    import pandas as pd

REQUIRED_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")
OPTIONAL_COLUMNS = ("hash_ids", "priority", "deadline_s")


@dataclass(frozen=True)
class ClosedLoop:
    """Arrival process of `users` concurrent users, each sending its next request `think_time_s` after
    its previous one finished. It has no arrival times of its own: the simulator produces them."""

    users: int
    think_time_s: float = 0.0

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ConfigError(f"ClosedLoop needs at least one user, got {self.users}")
        if not self.think_time_s >= 0:
            raise ConfigError(f"ClosedLoop think_time_s must be >= 0, got {self.think_time_s}")


@dataclass(frozen=True, eq=False, init=False)
class Workload:
    """A table of requests plus where it came from. Build one with `load_trace`, `synthesize` or
    a transform; treat its table as read-only (transforms return new workloads).

    `table` holds the columns (numpy arrays: what the simulator reads); `requests` is the same table as a
    pandas DataFrame, built on first use. Construct with either (`requests=` a DataFrame or `table=`)."""

    name: str
    table: Table
    block_tokens: int | None = None  # tokens per `hash_ids` block; None when there are no hash_ids
    source: str = ""  # file path, "builtin:NAME" or "synthetic:..." for run metadata
    notes: tuple[str, ...] = ()  # what loading changed, e.g. failed rows dropped
    closed_loop: ClosedLoop | None = None
    _frame: Any = field(default=None, init=False, repr=False, compare=False)

    def __init__(self, name: str, requests: pd.DataFrame | Table | None = None, block_tokens: int | None = None,
                 source: str = "", notes: tuple[str, ...] = (), closed_loop: ClosedLoop | None = None, *,
                 table: Table | None = None) -> None:
        if (requests is None) == (table is None):
            raise ValueError("give a workload's requests (a DataFrame) or its table, not both")
        t = Table.of(requests if table is None else table)  # a DataFrame's columns are copied: the table is its own
        for k, v in (("name", name), ("table", t), ("block_tokens", block_tokens), ("source", source),
                     ("notes", tuple(notes)), ("closed_loop", closed_loop), ("_frame", None)):
            object.__setattr__(self, k, v)
        self._check()

    def _check(self) -> None:
        t = self.table
        missing = [c for c in REQUIRED_COLUMNS if c not in t]
        if missing:
            raise ValueError(f"workload {self.name!r} lacks columns {missing}")
        unknown = [c for c in t.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if unknown:
            raise ValueError(f"workload {self.name!r} has unknown columns {unknown}")
        if ("hash_ids" in t) != (self.block_tokens is not None):
            raise ValueError("block_tokens must be set exactly when hash_ids is present")
        if self.closed_loop is not None and not np.isnan(np.asarray(t["arrival_s"], np.float64)).all():
            raise ValueError("a closed-loop workload has no arrival times (arrival_s must be NaN)")

    @property
    def requests(self) -> pd.DataFrame:
        """The requests as a pandas DataFrame (built once, on first use; imports pandas)."""
        if self._frame is None:
            object.__setattr__(self, "_frame", self.table.frame())
        return self._frame

    def __len__(self) -> int:
        return len(self.table)

    @property
    def has_arrivals(self) -> bool:
        """True when every request has an arrival time (an open-loop trace or generator)."""
        t = self.table
        return len(t) > 0 and not bool(np.isnan(np.asarray(t["arrival_s"], np.float64)).any())

    def stats(self) -> dict[str, Any]:
        """Summary statistics: see `workload_stats`."""
        return workload_stats(self)


def _percentiles(values: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])  # linear interpolation, as pandas
    return {
        "mean": float(values.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "min": int(values.min()),
        "max": int(values.max()),
    }


def _arrival_stats(t: np.ndarray) -> dict[str, Any]:
    """Rate, span and burstiness of arrival times `t` (sorted seconds)."""
    span = float(t[-1] - t[0])
    out: dict[str, Any] = {"span_s": span, "rate_per_s": (len(t) - 1) / span if span > 0 else None}
    gaps = np.diff(t)
    mean_gap = gaps.mean() if len(gaps) else 0.0
    cv = float(gaps.std() / mean_gap) if mean_gap > 0 else None
    out["iat_cv"] = cv  # 1 for Poisson, 0 for constant, >1 bursty
    # Goh-Barabasi burstiness (cv-1)/(cv+1): -1 periodic, 0 Poisson, -> 1 very bursty.
    out["burstiness"] = (cv - 1) / (cv + 1) if cv is not None else None
    # Requests per minute, counted over the minutes that have any (a span of years is as cheap as one of minutes);
    # the quietest minute has none when some minute of the span is empty.
    minutes = (t - t[0]) // 60
    seen, counts = np.unique(minutes, return_counts=True)
    out["per_minute_min"] = int(counts.min()) if len(seen) == minutes[-1] + 1 else 0
    out["per_minute_max"] = int(counts.max())
    return out


def _hash_stats(hash_ids) -> dict[str, Any]:
    """Prefix-block reuse: the share of blocks whose id appeared in an earlier request (or earlier in
    the same one), i.e. what an infinite prefix cache could skip."""
    flat = np.fromiter((h for ids in hash_ids for h in ids), dtype=np.int64)
    if len(flat) == 0:
        return {"hash_blocks_mean": 0.0, "hash_block_reuse": 0.0}
    first_seen = len(np.unique(flat))
    return {
        "hash_blocks_mean": len(flat) / len(hash_ids),
        "hash_block_reuse": 1.0 - first_seen / len(flat),
    }


def workload_stats(w: Workload) -> dict[str, Any]:
    """Statistics of a workload as a JSON-ready dict: `requests`; for open-loop workloads `span_s`,
    `rate_per_s` ((n-1)/span), `iat_cv` (inter-arrival coefficient of variation), `burstiness`
    ((cv-1)/(cv+1)), `per_minute_min`/`max`; `input_tokens`/`output_tokens` as mean/p50/p90/p99/min/max;
    with hash_ids `hash_blocks_mean` and `hash_block_reuse`; `closed_loop` users/think time; `notes`."""
    df = w.table
    out: dict[str, Any] = {"name": w.name, "source": w.source, "requests": len(df)}
    if len(df) == 0:
        return out
    if w.has_arrivals:
        out.update(_arrival_stats(np.asarray(df["arrival_s"], np.float64)))
    else:
        out.update({"span_s": None, "rate_per_s": None, "iat_cv": None, "burstiness": None})
    out["input_tokens"] = _percentiles(np.asarray(df["input_tokens"]))
    out["output_tokens"] = _percentiles(np.asarray(df["output_tokens"]))
    if "hash_ids" in df.columns:
        out["block_tokens"] = w.block_tokens
        out.update(_hash_stats(df["hash_ids"]))
    if w.closed_loop is not None:
        out["closed_loop"] = {"users": w.closed_loop.users, "think_time_s": w.closed_loop.think_time_s}
    out["notes"] = list(w.notes)
    return out
