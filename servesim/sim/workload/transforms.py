"""Transforms that return a new `Workload`: rescale the rate, cut a time window, cap lengths, take the head,
repeat the trace."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from servesim.errors import ConfigError
from servesim.sim.table import Table
from servesim.sim.workload.core import Workload


def _derived(w: Workload, table: Table, suffix: str, **changes) -> Workload:
    return replace(w, table=table, name=f"{w.name}{suffix}", source=f"{w.source} | {suffix.strip('[]')}", **changes)


def _need_arrivals(w: Workload, what: str) -> np.ndarray:
    if not w.has_arrivals:
        raise ConfigError(f"{what} needs arrival times; {w.name!r} has none (use with_arrivals first)")
    return w.table["arrival_s"]


def scale_rate(w: Workload, target_rate_per_s: float) -> Workload:
    """Stretch or squeeze inter-arrival times so the rate (n-1)/span becomes `target_rate_per_s`;
    the first arrival stays where it is and the burst pattern keeps its shape."""
    t = _need_arrivals(w, "scale_rate")
    rate = w.stats()["rate_per_s"]
    if rate is None:
        raise ConfigError(f"{w.name!r} has no rate to scale (fewer than two distinct arrival times)")
    if not target_rate_per_s > 0:
        raise ConfigError(f"target_rate_per_s must be > 0, got {target_rate_per_s}")
    table = w.table.copy()
    table["arrival_s"] = t[0] + (t - t[0]) * (rate / target_rate_per_s)
    return _derived(w, table, f"[rate={target_rate_per_s:g}/s]")


def window(w: Workload, start_s: float, end_s: float) -> Workload:
    """Requests arriving in [start_s, end_s), shifted so that start_s becomes time 0."""
    t = _need_arrivals(w, "window")
    if not end_s > start_s:
        raise ConfigError(f"window needs end_s > start_s, got [{start_s}, {end_s})")
    keep = (t >= start_s) & (t < end_s)
    if not keep.any():
        raise ConfigError(f"no request of {w.name!r} arrives in [{start_s}, {end_s}) s")
    table = w.table.take(keep)
    table["arrival_s"] = table["arrival_s"] - start_s
    return _derived(w, table, f"[{start_s:g}s:{end_s:g}s]")


def cap_lengths(w: Workload, max_context_tokens: int) -> Workload:
    """Clip prompts to max_context_tokens - 1 and outputs so that input + output <= max_context_tokens
    (every request keeps at least one output token); hash_ids are cut to the blocks the prompt still
    covers."""
    if max_context_tokens < 2:
        raise ConfigError(f"max_context_tokens must be >= 2, got {max_context_tokens}")
    table = w.table.copy()
    inp = np.minimum(table["input_tokens"], max_context_tokens - 1)
    table["input_tokens"] = inp
    table["output_tokens"] = np.minimum(table["output_tokens"], max_context_tokens - inp)
    if "hash_ids" in table:
        blocks = -(-inp // w.block_tokens)
        table["hash_ids"] = [ids[:b] for ids, b in zip(table["hash_ids"], blocks.tolist(), strict=True)]
    return _derived(w, table, f"[cap={max_context_tokens}]")


def head(w: Workload, n: int) -> Workload:
    """The first `n` requests."""
    if n < 1:
        raise ConfigError(f"head needs n >= 1, got {n}")
    return _derived(w, w.table.take(slice(0, n)), f"[:{n}]")


def repeat(w: Workload, n: int) -> Workload:
    """`n` requests: the trace's rows over and over, in order. Arrival times (when it has them) continue: copy
    `k` is shifted by `k` times the span plus one mean gap, so the rate stays the trace's own."""
    if n < 1:
        raise ConfigError(f"repeat needs n >= 1, got {n}")
    rows = len(w)
    index = np.arange(n) % rows
    table = w.table.take(index)
    if w.has_arrivals:
        t = w.table["arrival_s"]
        period = float(t[-1] - t[0]) * rows / (rows - 1) if rows > 1 else 1.0
        table["arrival_s"] = table["arrival_s"] + (np.arange(n) // rows) * period
    return _derived(w, table, f"[{n} repeating {rows}]")
