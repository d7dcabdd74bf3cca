"""The traces shipped as package data (the files beside this module; attribution in README.md), and
`load_trace`, which reads a built-in trace by name or any trace file by path."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from servesim.errors import InputError
from servesim.sim.workload.core import Workload
from servesim.sim.workload.loaders import load_file


@dataclass(frozen=True)
class BuiltinTrace:
    """A trace shipped as package data (servesim/sim/workload/traces/, attribution in its README.md)."""

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
    return Path(str(resources.files("servesim.sim.workload.traces") / BUILTIN_TRACES[name].file))


def load_trace(spec: str | Path, fmt: str | None = None, *, block_tokens: int | None = None,
               rows: int | None = None) -> Workload:
    """Load a built-in trace by name (see `BUILTIN_TRACES`) or a trace file by path. `fmt` (a key of
    `FORMATS`) overrides detection from the header; `block_tokens` sets the hash-block size of a
    generic trace with hash_ids (default 512). Bad input raises `InputError`. ``rows`` (built-in traces,
    which are known to be valid): only the first ``rows`` requests are wanted, so only those lines are parsed
    (the workload holds at least them, all the trace's when it has fewer)."""
    if isinstance(spec, str) and spec in BUILTIN_TRACES:
        b = BUILTIN_TRACES[spec]
        return load_file(builtin_path(spec), fmt or b.fmt, name=spec, source=f"builtin:{spec}", rows=rows)
    path = Path(spec)
    if not path.exists():
        raise InputError(f"no such file (built-in traces: {', '.join(BUILTIN_TRACES)})", file=str(spec))
    return load_file(path, fmt, block_tokens=block_tokens)
