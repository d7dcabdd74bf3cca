"""Compact recorders: per-request rows and per-iteration timeline rows in typed arrays.

A finished request is copied into columns (about 100 bytes) and the ``Request`` object dropped,
so memory grows with the number of requests, never with their tokens.
"""

from __future__ import annotations

from array import array

import numpy as np

from servesim.sim.request import Request
from servesim.sim.table import Table

_REQUEST_COLUMNS = {
    "request_id": "q",
    "replica": "q",
    "arrival_s": "d",
    "input_tokens": "q",
    "output_tokens": "q",
    "generated_tokens": "q",
    "cached_tokens": "q",
    "first_scheduled_s": "d",
    "first_token_s": "d",
    "finish_s": "d",
    "num_preemptions": "q",
    "priority": "q",
}

TIMELINE_COLUMNS = {  # counts in 32 bits: a timeline row costs 52 bytes, not 88
    "replica": "i",
    "start_s": "d",
    "end_s": "d",
    "steps": "i",
    "batch_size": "i",
    "prefill_tokens": "i",
    "decode_tokens": "i",
    "num_running": "i",
    "num_waiting": "i",
    "kv_blocks_used": "i",
    "kv_blocks_total": "i",
}


class RequestRecorder:
    """Columns of finished and rejected requests."""

    def __init__(self, keep_token_times: bool = False) -> None:
        self._cols = {name: array(code) for name, code in _REQUEST_COLUMNS.items()}
        self._rejected: dict[int, str] = {}  # row -> reason (rare)
        self._token_times: list[list[float]] | None = [] if keep_token_times else None

    def __len__(self) -> int:
        return len(self._cols["request_id"])

    def add(self, r: Request) -> None:
        c = self._cols
        if r.rejected_reason:
            self._rejected[len(self)] = r.rejected_reason
        c["request_id"].append(r.request_id)
        c["replica"].append(r.replica)
        c["arrival_s"].append(r.arrival_s)
        c["input_tokens"].append(r.prompt_tokens)
        c["output_tokens"].append(r.output_tokens)
        c["generated_tokens"].append(r.generated)
        c["cached_tokens"].append(r.cached_tokens)
        c["first_scheduled_s"].append(r.first_scheduled_s)
        c["first_token_s"].append(r.first_token_s if not r.rejected_reason else np.nan)
        c["finish_s"].append(r.finish_s if not r.rejected_reason else np.nan)
        c["num_preemptions"].append(r.num_preemptions)
        c["priority"].append(r.priority)
        if self._token_times is not None:
            self._token_times.append(list(r.token_times_s or ()))

    def table(self) -> Table:
        """The requests table, sorted by request id."""
        cols = {name: np.frombuffer(col, dtype=col.typecode).copy() if len(col) else
                np.zeros(0, np.int64 if col.typecode == "q" else np.float64) for name, col in self._cols.items()}
        n = len(self)
        reasons = np.full(n, "", dtype=object)
        for row, why in self._rejected.items():
            reasons[row] = why
        cols["rejected_reason"] = reasons
        if self._token_times is not None:
            times = np.empty(n, dtype=object)
            for i, t in enumerate(self._token_times):
                times[i] = t
            cols["token_times_s"] = times
        order = np.argsort(cols["request_id"], kind="stable")
        if not (order == np.arange(n)).all():
            cols = {name: col[order] for name, col in cols.items()}
        return Table(cols, rows=n)

    def frame(self):
        """The requests table as a pandas DataFrame."""
        return self.table().frame()


_TIMES = [name for name, code in TIMELINE_COLUMNS.items() if code == "d"]  # start_s, end_s
_COUNTS = [name for name, code in TIMELINE_COLUMNS.items() if code == "i"]  # replica, then steps ... kv_blocks_total


class TimelineRecorder:
    """One row per iteration (or per fast-forwarded run of identical decode iterations): the times in one
    array, the counts in another, row after row (three calls a row, not eleven)."""

    def __init__(self) -> None:
        self._times = array("d")
        self._counts = array("i")

    def add(self, replica: int, start_s: float, end_s: float, *counts: int) -> None:
        """A row: the replica, the start and end, then the counts in ``TIMELINE_COLUMNS`` order."""
        self._times.append(start_s)
        self._times.append(end_s)
        self._counts.append(replica)
        self._counts.extend(counts)

    def table(self) -> Table:
        n = len(self._times) // 2
        times = np.frombuffer(self._times, np.float64).reshape(n, 2) if n else np.zeros((0, 2))
        counts = np.frombuffer(self._counts, np.int32).reshape(n, len(_COUNTS)) if n else np.zeros((0, len(_COUNTS)))
        cols = {name: counts[:, _COUNTS.index(name)].astype(np.int64) if name in _COUNTS
                else times[:, _TIMES.index(name)].copy() for name in TIMELINE_COLUMNS}
        return Table(cols, rows=n)

    def frame(self):
        """The timeline as a pandas DataFrame."""
        return self.table().frame()
