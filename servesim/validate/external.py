"""External engines' benchmark results, read into servesim's terms for ``servesim validate --from-files``.

    run = load_external("vllm-4.0qps-Llama-3.1-8B.json")     # the tool is told from the file's content
    run.requests      # one row per request: arrival_s, first_token_s, finish_s, tokens, itl_s, ...
    run.summary       # the tool's own aggregates under vLLM's keys (mean_ttft_ms, p99_tpot_ms, ...)
    run.alignment     # how each metric's definition was aligned to vLLM's bench serve
    external_summary(run)   # the same keys recomputed from the rows with servesim's (vLLM's) definitions
    workload = external_workload(run)                        # the same requests, for servesim to simulate

Formats (docs/validation-external.md has the details and what cannot be aligned):
- ``vllm``: ``vllm bench serve --save-result --save-detailed`` JSON (``external_formats/vllm.py``);
- ``guidellm``: GuideLLM's ``benchmarks.json`` / ``.yaml``, 0.2-0.3 and 0.4+ layouts (``external_formats/guidellm.py``);
- ``aiperf``: AIPerf's ``profile_export.jsonl`` and/or ``profile_export_aiperf.json`` (``external_formats/aiperf.py``).

A path may also be a directory holding one of the tools' default file names. Every malformed input is one
`InputError` naming the file and the field or request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from servesim.errors import InputError, unknown_name
from servesim.hwmodels.gpus import read_yaml
from servesim.sim.metrics import latency_stats
from servesim.sim.workload.core import ClosedLoop, Workload
from servesim.validate.external_formats import aiperf, guidellm, vllm
from servesim.validate.external_formats.common import (
    REQUEST_COLUMNS,
    TOOLS,
    ExternalRun,
    read_json,
    read_jsonl,
    replayable,
)

__all__ = ["REQUEST_COLUMNS", "TOOLS", "ExternalRun", "detect_tool", "external_summary", "external_workload",
           "load_external", "load_external_all"]

LOADERS = {"vllm": vllm.load, "guidellm": guidellm.load, "aiperf": aiperf.load}
DEFAULT_FILES = ("benchmarks.json", "benchmarks.yaml", "profile_export.jsonl", "profile_export_aiperf.json")


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        found = [p / name for name in DEFAULT_FILES if (p / name).is_file()]
        if not found:
            raise InputError(f"a directory without a results file ({', '.join(DEFAULT_FILES)})", file=str(p))
        return found[0]
    if not p.is_file():
        raise InputError("no such file", file=str(p))
    return p


def _read(p: Path) -> Any:
    """The parsed document: YAML for .yaml/.yml, a list of records for JSON Lines, else one JSON value."""
    if p.suffix.lower() in (".yaml", ".yml"):
        return read_yaml(p)
    if p.suffix.lower() == ".jsonl":
        return read_jsonl(p)
    try:
        return read_json(p)
    except InputError:
        if p.suffix.lower() == ".json":
            raise
        return read_jsonl(p)  # some other name: JSON Lines, or the JSON error of its first bad line


def _detect(doc: Any, file: str) -> str:
    if guidellm.looks_like(doc):
        return "guidellm"
    if vllm.looks_like(doc):
        return "vllm"
    if aiperf.looks_like_records(doc) or aiperf.looks_like_aggregate(doc):
        return "aiperf"
    keys = ", ".join(list(doc)[:8]) if isinstance(doc, dict) else type(doc).__name__
    raise InputError(f"not a result file of vLLM bench serve, GuideLLM or AIPerf (found: {keys})", file=file)


def detect_tool(path: str | Path) -> str:
    """Which tool wrote the results at ``path`` ("vllm", "guidellm" or "aiperf"), told from the content."""
    p = _resolve(path)
    return _detect(_read(p), str(p))


def load_external_all(path: str | Path, tool: str | None = None) -> list[ExternalRun]:
    """Every run in the file: one for vLLM and AIPerf, one per benchmark of a GuideLLM report (a sweep)."""
    if tool is not None and tool not in LOADERS:
        raise InputError(unknown_name("results tool", tool, TOOLS))
    p = _resolve(path)
    doc = _read(p)
    return LOADERS[tool or _detect(doc, str(p))](doc, str(p))


def load_external(path: str | Path, tool: str | None = None, *, benchmark: int | None = None) -> ExternalRun:
    """The run in an external tool's result file; ``tool`` None tells the tool from the content.

    A GuideLLM report of several benchmarks (a sweep) needs ``benchmark`` (its index) to pick one;
    `load_external_all` returns them all.
    """
    runs = load_external_all(path, tool)
    if benchmark is None:
        if len(runs) > 1:
            kinds = ", ".join(f"{i}: {r.meta.get('strategy')}@{r.meta.get('rate_per_s') or r.meta.get('concurrency')}"
                              for i, r in enumerate(runs))
            raise InputError(f"holds {len(runs)} benchmarks ({kinds}); pick one with benchmark=N",
                             file=runs[0].source, field="benchmarks")
        return runs[0]
    if not 0 <= benchmark < len(runs):
        raise InputError(f"no benchmark {benchmark} (the file holds {len(runs)})", file=runs[0].source,
                         field="benchmarks")
    return runs[benchmark]


def external_workload(run: ExternalRun, *, closed_loop: bool | None = None) -> Workload:
    """The run's completed requests as a servesim workload (arrival_s, input_tokens, output_tokens).

    Replayed the way the tool drove the server: a closed loop of ``meta['concurrency']`` users for runs
    that kept a fixed number of requests in flight (``meta['loop'] == "closed"``: vLLM ``--max-concurrency``
    at an infinite rate, GuideLLM synchronous/concurrent, AIPerf ``--concurrency``), else the measured send
    times as open-loop arrivals. ``closed_loop`` overrides that. Failed requests are dropped (their output
    length is unknown) and said so in ``notes``; a run without send times gives a length-only workload.
    """
    df = run.requests
    served = replayable(df)
    rows = df[served].sort_values("request_id")  # send order; row k is simulated as request k
    if rows.empty:
        raise InputError("no completed request to replay", file=run.source)
    notes = [f"{run.tool} results: {len(rows)} completed requests"]
    if (dropped := int((~served).sum())):
        notes.append(f"{dropped} failed or empty requests dropped (their output length is unknown)")
    closed = run.meta.get("loop") == "closed" if closed_loop is None else closed_loop
    users = run.meta.get("concurrency")
    loop = None
    if closed:
        if not isinstance(users, int) or users < 1:
            raise InputError("a closed-loop replay needs the run's concurrency, which the file does not give",
                             file=run.source, field="concurrency")
        loop = ClosedLoop(users=users, think_time_s=0.0)
        arrival = np.full(len(rows), np.nan)
        notes.append(f"replayed as a closed loop of {users} users (as the run was driven)")
    else:
        arrival = rows["arrival_s"].to_numpy(dtype=np.float64)
        if np.isnan(arrival).any():
            arrival = np.full(len(rows), np.nan)
            notes.append("no send times in the file: a length-only workload (give it arrivals with with_arrivals, "
                         f"e.g. at the run's rate {run.meta.get('rate_per_s')}/s)")
        else:
            notes.append(f"open loop at the measured send times ({run.meta.get('send_times')})")
    table = rows[["input_tokens", "output_tokens"]].reset_index(drop=True)
    table.insert(0, "arrival_s", arrival)
    name = f"{run.tool}:{Path(run.source).name}"
    if (run.meta.get("benchmarks") or 1) > 1:
        name += f"#{run.meta['benchmark']}"
    return Workload(name=name, requests=table, source=run.source, notes=tuple(notes), closed_loop=loop)


def external_summary(run: ExternalRun) -> dict[str, float]:
    """The run's statistics recomputed from its rows with servesim's own code for vLLM's definitions
    (`servesim.sim.metrics.latency_stats`), over the completed requests inside the tool's measurement window:
    the measured side to set against a simulation's summary, defined exactly as that summary is.

    ``{mean,median,std,p50,p90,p95,p99}_{ttft,tpot,itl,e2el}_ms`` (ITL only where the file has per-chunk
    times), ``completed``, ``failed``, token totals, ``duration`` (first send to last finish of the measured
    requests; the tool's own duration where send times are unknown) and the three throughputs over it.
    """
    df = run.requests[run.requests["measured"]]
    ok = df[df["rejected_reason"] == ""]
    multi = ok[ok["output_tokens"] > 1]
    tpot = (multi["e2el_s"] - multi["ttft_s"]) / (multi["output_tokens"] - 1)
    gaps = [g for lst in ok["itl_s"] if lst is not None for g in lst]
    out: dict[str, float] = {**latency_stats("ttft", ok["ttft_s"].dropna().to_numpy()),
                             **latency_stats("tpot", tpot.dropna().to_numpy()),
                             **latency_stats("e2el", ok["e2el_s"].to_numpy())}
    if gaps:
        out.update(latency_stats("itl", np.asarray(gaps, dtype=np.float64)))
    if df["arrival_s"].notna().all() and len(ok):
        duration = float(ok["finish_s"].max() - df["arrival_s"].min())
    else:
        duration = float(run.summary.get("duration", np.nan))
    inp, gen = int(ok["input_tokens"].sum()), int(ok["output_tokens"].sum())
    rate = (lambda x: x / duration) if duration > 0 else (lambda x: np.nan)
    out.update(completed=float(len(ok)), failed=float(len(df) - len(ok)), duration=duration,
               total_input_tokens=float(inp), total_output_tokens=float(gen), request_throughput=rate(len(ok)),
               output_throughput=rate(gen), total_token_throughput=rate(inp + gen))
    return out
