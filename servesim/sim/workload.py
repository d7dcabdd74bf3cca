"""Workloads: the requests a simulation serves. The public API, in one import:

    from servesim.sim.workload import load_trace, synthesize, Poisson, Lengths, LogNormal, scale_rate

- `load_trace("azure-conv")` or `load_trace("my.csv", fmt="generic")`: built-in or file traces
  (formats in `FORMATS`, built-ins in `BUILTIN_TRACES`);
- `synthesize(n, arrival, lengths, rng)`: seeded synthetic workloads;
- transforms that return a new `Workload`: `scale_rate`, `window`, `cap_lengths`, `head`,
  `with_arrivals` (give a length-only trace arrival times).

The `Workload` table and its three kinds (open loop, length-only, closed loop) are described in
`workload_core`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from servesim.errors import ConfigError, InputError
from servesim.sim.workload_core import ClosedLoop, Workload, workload_stats
from servesim.sim.workload_loaders import FORMATS, TraceFormat, detect_format, load_file
from servesim.sim.workload_synthetic import (
    ARRIVALS,
    LENGTHS,
    ArrivalProcess,
    Constant,
    Empirical,
    Fixed,
    Gamma,
    LengthDistribution,
    Lengths,
    LogNormal,
    Poisson,
    TokenDistribution,
    Uniform,
    Zipf,
    synthesize,
    with_arrivals,
)

__all__ = [
    "ARRIVALS", "BUILTIN_TRACES", "FORMATS", "LENGTHS", "ArrivalProcess", "BuiltinTrace", "ClosedLoop",
    "Constant", "Empirical", "Fixed", "Gamma", "LengthDistribution", "Lengths", "LogNormal", "Poisson",
    "TokenDistribution", "TraceFormat", "Uniform", "Workload", "Zipf", "builtin_path", "cap_lengths",
    "detect_format", "head", "load_trace", "scale_rate", "synthesize", "window", "with_arrivals",
    "workload_stats",
]


@dataclass(frozen=True)
class BuiltinTrace:
    """A trace shipped as package data (servesim/sim/traces/, attribution in its README.md)."""

    file: str
    fmt: str
    description: str
    license: str
    attribution: str


BUILTIN_TRACES: dict[str, BuiltinTrace] = {
    "azure-conv": BuiltinTrace(
        "azure2023_conv.csv", "azure", "Azure 2023 conversation: 1 h, near-Poisson", "CC-BY-4.0",
        "Azure LLM inference trace 2023, Microsoft Azure, CC-BY 4.0"),
    "azure-code": BuiltinTrace(
        "azure2023_code.csv", "azure", "Azure 2023 code completion: 1 h, very bursty", "CC-BY-4.0",
        "Azure LLM inference trace 2023, Microsoft Azure, CC-BY 4.0"),
    "mooncake-conv": BuiltinTrace(
        "mooncake_conversation_trace.jsonl", "mooncake",
        "Mooncake conversation: 1 h, long prompts, prefix hashes", "Apache-2.0",
        "Mooncake FAST'25 conversation trace (kvcache-ai/Mooncake), Apache-2.0"),
    "arxiv-summarization": BuiltinTrace(
        "vidur_arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv", "vidur",
        "arXiv summarization lengths (Vidur), no arrival times", "MIT", "microsoft/vidur, MIT"),
    "sharegpt": BuiltinTrace(
        "sharegpt_8k_filtered_stats_llama2_tokenizer.csv", "vidur",
        "ShareGPT 8k lengths (Sarathi-Serve), no arrival times", "Apache-2.0",
        "microsoft/sarathi-serve, Apache-2.0"),
    "burstgpt": BuiltinTrace(
        "burstgpt1_first400.csv", "burstgpt", "BurstGPT first 400 rows: ~10 h, a small sample",
        "CC-BY-4.0", "BurstGPT (HPMLL/BurstGPT), CC-BY 4.0"),
}


def builtin_path(name: str) -> Path:
    """The package-data file of built-in trace `name`."""
    return Path(str(resources.files("servesim.sim") / "traces" / BUILTIN_TRACES[name].file))


def load_trace(spec: str | Path, fmt: str | None = None, *, block_tokens: int | None = None) -> Workload:
    """Load a built-in trace by name (see `BUILTIN_TRACES`) or a trace file by path. `fmt` (a key of
    `FORMATS`) overrides detection from the header; `block_tokens` sets the hash-block size of a
    generic trace with hash_ids (default 512). Bad input raises `InputError`."""
    if isinstance(spec, str) and spec in BUILTIN_TRACES:
        b = BUILTIN_TRACES[spec]
        return load_file(builtin_path(spec), fmt or b.fmt, name=spec, source=f"builtin:{spec}")
    path = Path(spec)
    if not path.exists():
        raise InputError(f"no such file (built-in traces: {', '.join(BUILTIN_TRACES)})", file=str(spec))
    return load_file(path, fmt, block_tokens=block_tokens)


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
