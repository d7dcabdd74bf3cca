"""Transforms that return a new `Workload`: rescale the rate, cut a time window, cap lengths, take the head."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from servesim.errors import ConfigError
from servesim.sim.workload.core import Workload


def _derived(w: Workload, df, suffix: str, **changes) -> Workload:
    return replace(w, requests=df.reset_index(drop=True), name=f"{w.name}{suffix}",
                   source=f"{w.source} | {suffix.strip('[]')}", **changes)


def _need_arrivals(w: Workload, what: str) -> np.ndarray:
    if not w.has_arrivals:
        raise ConfigError(f"{what} needs arrival times; {w.name!r} has none (use with_arrivals first)")
    return w.requests["arrival_s"].to_numpy()


def scale_rate(w: Workload, target_rate_per_s: float) -> Workload:
    """Stretch or squeeze inter-arrival times so the rate (n-1)/span becomes `target_rate_per_s`;
    the first arrival stays where it is and the burst pattern keeps its shape."""
    t = _need_arrivals(w, "scale_rate")
    rate = w.stats()["rate_per_s"]
    if rate is None:
        raise ConfigError(f"{w.name!r} has no rate to scale (fewer than two distinct arrival times)")
    if not target_rate_per_s > 0:
        raise ConfigError(f"target_rate_per_s must be > 0, got {target_rate_per_s}")
    df = w.requests.copy()
    df["arrival_s"] = t[0] + (t - t[0]) * (rate / target_rate_per_s)
    return _derived(w, df, f"[rate={target_rate_per_s:g}/s]")


def window(w: Workload, start_s: float, end_s: float) -> Workload:
    """Requests arriving in [start_s, end_s), shifted so that start_s becomes time 0."""
    t = _need_arrivals(w, "window")
    if not end_s > start_s:
        raise ConfigError(f"window needs end_s > start_s, got [{start_s}, {end_s})")
    keep = (t >= start_s) & (t < end_s)
    if not keep.any():
        raise ConfigError(f"no request of {w.name!r} arrives in [{start_s}, {end_s}) s")
    df = w.requests[keep].copy()
    df["arrival_s"] -= start_s
    return _derived(w, df, f"[{start_s:g}s:{end_s:g}s]")


def cap_lengths(w: Workload, max_context_tokens: int) -> Workload:
    """Clip prompts to max_context_tokens - 1 and outputs so that input + output <= max_context_tokens
    (every request keeps at least one output token); hash_ids are cut to the blocks the prompt still
    covers."""
    if max_context_tokens < 2:
        raise ConfigError(f"max_context_tokens must be >= 2, got {max_context_tokens}")
    df = w.requests.copy()
    inp = np.minimum(df["input_tokens"].to_numpy(), max_context_tokens - 1)
    df["input_tokens"] = inp
    df["output_tokens"] = np.minimum(df["output_tokens"].to_numpy(), max_context_tokens - inp)
    if "hash_ids" in df.columns:
        blocks = -(-inp // w.block_tokens)
        df["hash_ids"] = [ids[:b] for ids, b in zip(df["hash_ids"], blocks, strict=True)]
    return _derived(w, df, f"[cap={max_context_tokens}]")


def head(w: Workload, n: int) -> Workload:
    """The first `n` requests."""
    if n < 1:
        raise ConfigError(f"head needs n >= 1, got {n}")
    return _derived(w, w.requests.iloc[:n].copy(), f"[:{n}]")
