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


_REQUEST_INTS = [name for name, code in _REQUEST_COLUMNS.items() if code == "q"]
_REQUEST_TIMES = [name for name, code in _REQUEST_COLUMNS.items() if code == "d"]


class RequestRecorder:
    """Columns of finished and rejected requests: the counts of each in one array, its times in another, request
    after request (``_REQUEST_COLUMNS`` order within each)."""

    def __init__(self, keep_token_times: bool = False) -> None:
        self._ints = array("q")
        self._times = array("d")
        self._rejected: dict[int, str] = {}  # row -> reason (rare)
        self._token_times: list[list[float]] | None = [] if keep_token_times else None

    def __len__(self) -> int:
        return len(self._ints) // len(_REQUEST_INTS)

    def add(self, r: Request) -> None:
        if r.rejected_reason:
            self._rejected[len(self)] = r.rejected_reason
            first, finish = np.nan, np.nan
        else:
            first, finish = r.first_token_s, r.finish_s
        self._ints.extend((r.request_id, r.replica, r.prompt_tokens, r.output_tokens, r.generated, r.cached_tokens,
                           r.num_preemptions, r.priority))
        self._times.extend((r.arrival_s, r.first_scheduled_s, first, finish))
        if self._token_times is not None:
            self._token_times.append(list(r.token_times_s or ()))

    def table(self) -> Table:
        """The requests table, sorted by request id."""
        n = len(self)
        ints = np.frombuffer(self._ints, np.int64).reshape(n, len(_REQUEST_INTS)) if n else \
            np.zeros((0, len(_REQUEST_INTS)), np.int64)
        times = np.frombuffer(self._times, np.float64).reshape(n, len(_REQUEST_TIMES)) if n else \
            np.zeros((0, len(_REQUEST_TIMES)))
        cols = {name: ints[:, _REQUEST_INTS.index(name)].copy() if name in _REQUEST_INTS
                else times[:, _REQUEST_TIMES.index(name)].copy() for name in _REQUEST_COLUMNS}
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
