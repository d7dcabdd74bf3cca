"""The scenario: one pydantic model that says everything a simulation needs.

It loads from YAML, every field is also a ``servesim simulate`` flag (``--max-num-seqs 128``), and
its canonical JSON hashes to the config hash stamped on every output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from servesim.errors import ConfigError, InputError


class Scenario(BaseModel):
    """A deployment, a scheduler, a router and a workload; units in the field names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Deployment.
    model: str = Field("Llama-3.1-8B", description="catalog model name or path to a HuggingFace config.json")
    gpu: str = Field("H100-SXM", description="catalog GPU name (or one from gpus_file)")
    gpus_file: str | None = Field(None, description="YAML file of extra GPUs, same fields as the catalog")
    tp: int = Field(1, ge=1, description="tensor-parallel GPUs per replica")
    pp: int = Field(1, ge=1, description="pipeline stages per replica")
    replicas: int = Field(1, ge=1, description="model replicas behind the router")
    quant: str = Field("bf16", description="weight format: bf16, fp16, fp8, w8a16, w4a16")
    kv_dtype: str = Field("bf16", description="KV-cache dtype: bf16, fp16, fp8, int8")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="fraction of GPU memory servesim may use")
    block_size: int = Field(16, ge=1, description="tokens per KV block")
    num_gpu_blocks: int | None = Field(None, ge=1, description="KV blocks per replica (default: memory planner)")
    swap_space_gib: float = Field(4.0, ge=0, description="CPU swap space per replica, GiB")
    prefix_caching: bool = Field(False, description="reuse KV blocks of shared prompt prefixes")
    usd_per_gpu_hour: float | None = Field(None, ge=0, description="GPU price, $/hour (default: catalog)")
    # Scheduler.
    batching: Literal["static", "continuous", "chunked"] = Field("chunked", description="batching mode")
    policy: Literal["fcfs", "sjf", "sjf-oracle", "sjf-predicted", "srpt", "priority", "edf"] = Field(
        "fcfs", description="waiting-queue order"
    )
    max_num_seqs: int = Field(256, ge=1, description="most requests running at once, per replica")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="token budget per step, tokens (default: 2048 chunked, else max_model_len)"
    )
    max_model_len: int | None = Field(None, ge=1, description="longest prompt+output, tokens (default: model's)")
    preemption: Literal["recompute", "swap"] = Field("recompute", description="what to do when KV runs out")
    aging: float = Field(0.0, ge=0, description="SJF/SRPT/priority aging, key units per second waited")
    predictor: Literal["lognormal", "buckets"] = Field("lognormal", description="sjf-predicted error model")
    predictor_sigma: float = Field(0.5, ge=0, description="lognormal predictor: sigma of log error")
    predictor_accuracy: float = Field(0.8, ge=0, le=1, description="bucket predictor: accuracy")
    router: Literal["round_robin", "least_outstanding", "least_kv", "power_of_two", "prefix_affinity"] = Field(
        "round_robin", description="how arrivals pick a replica"
    )
    # Workload.
    trace: str = Field("azure-conv", description="built-in trace name or path to a trace file")
    trace_format: str | None = Field(None, description="trace format (default: detected from the header)")
    arrival: Literal["trace", "poisson", "gamma", "constant", "closed"] = Field(
        "trace", description="arrival process: the trace's own times or a synthetic one"
    )
    rate: float | None = Field(None, gt=0, description="arrival rate, requests/s (scales a trace's times)")
    cv: float = Field(2.0, gt=0, description="gamma arrivals: coefficient of variation of inter-arrivals")
    users: int = Field(16, ge=1, description="closed loop: concurrent users")
    think_time_s: float = Field(0.0, ge=0, description="closed loop: pause between a reply and the next request, s")
    num_requests: int | None = Field(None, ge=1, description="use only the first N requests")
    start_s: float | None = Field(None, ge=0, description="window of the trace: start, s")
    duration_s: float | None = Field(None, gt=0, description="window of the trace: length, s")
    max_context_tokens: int | None = Field(None, ge=2, description="cap prompt+output lengths, tokens")
    # Speculative decoding.
    spec_k: int = Field(0, ge=0, le=16, description="draft tokens per verification step (0: off)")
    spec_alpha: float = Field(0.7, ge=0, le=1, description="per-token acceptance rate")
    spec_alpha_concentration: float | None = Field(
        None, gt=0, description="per-request acceptance ~ Beta with this concentration (default: iid alpha)"
    )
    draft_model: str = Field("Llama-3.2-1B", description="draft model (catalog name or config.json)")
    # SLOs.
    slo_ttft_ms: float | None = Field(None, gt=0, description="TTFT limit, ms")
    slo_tpot_ms: float | None = Field(None, gt=0, description="TPOT limit, ms")
    slo_e2el_ms: float | None = Field(None, gt=0, description="end-to-end latency limit, ms")
    slo_mode: Literal["joint", "per-metric"] = Field("joint", description="goodput needs all limits, or report each")
    # Run.
    seed: int = Field(0, description="seed of every random draw")
    fast_forward: bool = Field(True, description="advance runs of identical decode steps at once")
    record_token_times: bool = Field(False, description="keep every token's timestamp (memory grows)")

    @model_validator(mode="after")
    def _coherent(self) -> Scenario:
        if self.start_s is not None and self.duration_s is None:
            raise ValueError("start_s needs duration_s")
        return self

    def config_hash(self) -> str:
        """Hash of the canonical JSON of every field (defaults included)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# How `servesim simulate --help` groups the fields (every field in exactly one group; tested).
FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "Deployment": ("model", "gpu", "gpus_file", "tp", "pp", "replicas", "quant", "kv_dtype", "gpu_memory_utilization",
                   "block_size", "num_gpu_blocks", "swap_space_gib", "prefix_caching", "usd_per_gpu_hour"),
    "Scheduler": ("batching", "policy", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "preemption",
                  "aging", "predictor", "predictor_sigma", "predictor_accuracy", "router"),
    "Workload": ("trace", "trace_format", "arrival", "rate", "cv", "users", "think_time_s", "num_requests",
                 "start_s", "duration_s", "max_context_tokens"),
    "Speculative decoding": ("spec_k", "spec_alpha", "spec_alpha_concentration", "draft_model"),
    "SLOs": ("slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms", "slo_mode"),
    "Run": ("seed", "fast_forward", "record_token_times"),
}


def _first_error(exc: ValidationError, source: str | None) -> InputError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or None
    return ConfigError(err["msg"], file=source, field=loc)


def make_scenario(values: dict, source: str | None = None) -> Scenario:
    """Validate ``values`` into a Scenario; the first problem becomes a one-line ConfigError."""
    try:
        return Scenario(**values)
    except ValidationError as exc:
        raise _first_error(exc, source) from None


def load_scenario(path: str | Path, overrides: dict | None = None) -> Scenario:
    """Read a YAML scenario and apply ``overrides`` (field -> value) on top."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such scenario file", file=str(p))
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({exc.__class__.__name__})", file=str(p)) from None
    if not isinstance(values, dict):
        raise InputError("a scenario file must be a mapping of field: value", file=str(p))
    values = {k.replace("-", "_"): v for k, v in values.items()}
    return make_scenario({**values, **(overrides or {})}, source=str(p))
