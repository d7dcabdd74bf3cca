"""The scenario: one pydantic model that says everything a simulation needs.

It loads from YAML, every field is also a ``servesim simulate`` flag (``--max-num-seqs 128``), and
its canonical JSON hashes to the config hash stamped on every output. It is the one place where
user-facing values are validated: every error names the field a user sets. The choice lists come from
the registries that define the variants (``POLICIES``, ``ROUTERS``, ``BATCHING``, ``ARRIVALS``, the
weight formats and KV dtypes), and names resolve to their canonical spelling (a GPU alias to its catalog
name, a model alias to its preset), so two spellings of one scenario hash alike. An engine preset
(``preset``: ``PRESETS`` of sim/presets.py) supplies the defaults of the fields not given. The inner configs
built from it (``SchedulerConfig``, ``SpecConfig``, ``Deployment``) only assert.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from servesim.errors import ConfigError, InputError, unknown_name
from servesim.hwmodels.gpus import get_gpu, load_gpus_yaml, read_yaml
from servesim.hwmodels.links import LINKS
from servesim.hwmodels.models import KV_DTYPE_BYTES, WEIGHT_FORMATS, ModelSpec, get_model
from servesim.hwmodels.precision import parse_quant
from servesim.sim.policies import POLICIES
from servesim.sim.presets import PRESETS
from servesim.sim.router import ROUTERS
from servesim.sim.scheduler import ADMISSION, BATCHING, PREEMPTION
from servesim.sim.workload.synthetic import ARRIVALS

# Default token budget per step with chunked prefill (vLLM's); without chunking it is max_model_len.
CHUNKED_TOKEN_BUDGET = 2048

# Scenario fields whose value is one of a registry's keys, read when a value is checked (and by the CLI
# help), so a variant added to its registry is a valid choice with no other change.
_REGISTRIES = {
    "quant": lambda: WEIGHT_FORMATS,
    "kv_dtype": lambda: KV_DTYPE_BYTES,
    "batching": lambda: BATCHING,
    "policy": lambda: POLICIES,
    "preemption": lambda: PREEMPTION,
    "admission": lambda: ADMISSION,
    "preset": lambda: PRESETS,
    "router": lambda: ROUTERS,
    "arrival": lambda: ("trace", *ARRIVALS),  # "trace": the trace's own arrival times
    "kv_link": lambda: LINKS,
}
# Optional fields over a registry (None: take another field's value).
_OPTIONAL_REGISTRIES = {"prefill_router": "router", "decode_router": "router"}


CHOICE_FIELDS = tuple(_REGISTRIES)

# Bounds past which a count means nothing (and numpy's int64 arithmetic would overflow on it).
MAX_COUNT = 2**40
MAX_REQUESTS = 100_000_000  # the simulator keeps ~100 bytes a request: 10 GB at this bound
_COUNTS = ("tp", "pp", "replicas", "block_size", "num_gpu_blocks", "ep", "max_num_seqs", "max_num_batched_tokens",
           "max_model_len", "prefill_replicas", "decode_replicas", "prefill_tp", "decode_tp", "prefill_ep", "decode_ep",
           "prefill_max_num_seqs", "decode_max_num_seqs", "prefill_max_num_batched_tokens",
           "decode_max_num_batched_tokens", "users", "max_context_tokens", "seed")


def choices(field: str) -> tuple[str, ...]:
    """The valid values of Scenario field ``field`` (one with a registry of variants)."""
    return tuple(_REGISTRIES[field]())
def _choice(field: str, value: str) -> str:
    """``value`` spelled as in ``field``'s registry; ValueError naming the closest choices otherwise."""
    known = choices(field)
    by_lower = {k.lower(): k for k in known}
    if value.lower() not in by_lower:
        raise ValueError(unknown_name(_WHAT.get(field, field), value, known))
    return by_lower[value.lower()]


_WHAT = {"quant": "weight format", "kv_dtype": "KV dtype", "batching": "batching mode", "arrival": "arrival process",
         "preemption": "preemption mode", "kv_link": "KV link", "admission": "admission policy",
         "preset": "engine preset"}


class Scenario(BaseModel):
    """A deployment, a scheduler, a router and a workload; units in the field names."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    preset: str | None = Field(None, description="engine personality: its settings fill the fields not given")
    # Deployment.
    model: str = Field("Llama-3.1-8B", description="catalog model name or path to a HuggingFace config.json")
    gpus_file: str | None = Field(None, description="YAML file of extra GPUs, same fields as the catalog")
    gpu: str = Field("H200", description="catalog GPU name or alias (or one from gpus_file)")
    tp: int = Field(1, ge=1, description="tensor-parallel GPUs per replica")
    pp: int = Field(1, ge=1, description="pipeline stages per replica")
    replicas: int = Field(
        1, ge=1, description="model replicas behind the router (P/D: copies of the prefill:decode pool unit)"
    )
    quant: str = Field("bf16", description="weight format, or mixed precision per layer group: "
                       "w4a16,attn=bf16,first:2=bf16,last:2=bf16 (docs/quantization.md)")
    kv_dtype: str = Field("bf16", description="KV-cache dtype")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="fraction of GPU memory servesim may use")
    memory_fraction_of: Literal["total", "free"] = Field(
        "total", description="gpu_memory_utilization of the GPU's memory (vLLM) or of what weights, activations and "
        "runtime leave free, all of it KV (TensorRT-LLM)")
    block_size: int = Field(16, ge=1, description="tokens per KV block")
    num_gpu_blocks: int | None = Field(None, ge=1, description="KV blocks per replica (default: memory planner)")
    swap_space_gib: float = Field(4.0, ge=0, description="CPU swap space per replica, GiB")
    prefix_caching: bool = Field(False, description="reuse KV blocks of shared prompt prefixes")
    usd_per_gpu_hour: float | None = Field(None, ge=0, description="GPU price, $/hour (default: catalog)")
    profile: str | None = Field(None, description="calibration profile JSON, or 'roofline' (default: the profile "
                                "shipped for the GPU when there is one, else the roofline)")
    allreduce: Literal["custom", "nccl"] = Field(
        "custom", description="TP all-reduce the roofline assumes: custom (vLLM's, under CUDA graphs) or nccl (eager)"
    )
    ep: int = Field(1, ge=1, description="MoE: expert-parallel groups within the tp GPUs of a stage (divides tp)")
    expert_skew: float = Field(
        0.0, ge=0, description="MoE: Zipf exponent of expert popularity (0: tokens route uniformly)"
    )
    step_overhead_ms: float | None = Field(None, ge=0, description="host time per step, ms (default: the cost "
                                           "model's: 1 ms roofline, the profile's fitted host time)")
    host_speed: float = Field(1.0, gt=0, description="the serving host's launch speed relative to the calibration "
                              "host's, as a time factor (1.2: host work takes 20% longer): scales the calibrated "
                              "profile's host-time terms (step overheads, eager and piecewise floors; the roofline "
                              "ignores it)")
    piecewise_graphs: bool = Field(False, description="steps with a prefill chunk run as piecewise CUDA graphs, "
                                   "attention eager (TP 1, no speculation): the engine of replay/validate runs them "
                                   "so and the calibrated cost model prices them so")
    # Scheduler.
    batching: str = Field("chunked", description="batching mode")
    policy: str = Field("fcfs", description="waiting-queue order")
    max_num_seqs: int = Field(256, ge=1, description="most requests running at once, per replica")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description=f"token budget per step (default: {CHUNKED_TOKEN_BUDGET} chunked, else max_model_len)"
    )
    max_model_len: int | None = Field(None, ge=1, description="longest prompt+output, tokens (default: model's)")
    preemption: str = Field("recompute", description="what to do when KV runs out")
    admission: str = Field("max_utilization", description="KV a request must find to be admitted")
    aging: float = Field(0.0, ge=0, description="SJF/SRPT/priority aging, key units per second waited")
    predictor: Literal["lognormal", "buckets"] = Field("lognormal", description="sjf-predicted error model")
    predictor_sigma: float = Field(0.5, ge=0, description="lognormal predictor: sigma of log error")
    predictor_accuracy: float = Field(0.8, ge=0, le=1, description="bucket predictor: accuracy")
    router: str = Field("round_robin", description="how arrivals pick a replica")
    # Prefill/decode disaggregation (servesim.sim.disagg): two pools; unset pool fields take the fields above.
    prefill_replicas: int = Field(
        0, ge=0, description="P/D: prefill replicas per unit (0: colocated serving; pools = replicas x unit)"
    )
    decode_replicas: int = Field(0, ge=0, description="P/D: decode replicas per unit")
    prefill_gpu: str | None = Field(None, description="P/D: prefill-pool GPU (default: gpu)")
    decode_gpu: str | None = Field(None, description="P/D: decode-pool GPU (default: gpu)")
    prefill_tp: int | None = Field(None, ge=1, description="P/D: prefill-pool tensor parallelism (default: tp)")
    decode_tp: int | None = Field(None, ge=1, description="P/D: decode-pool tensor parallelism (default: tp)")
    prefill_ep: int | None = Field(None, ge=1, description="P/D: prefill-pool expert parallelism (default: ep)")
    decode_ep: int | None = Field(None, ge=1, description="P/D: decode-pool expert parallelism (default: ep)")
    prefill_max_num_seqs: int | None = Field(None, ge=1, description="P/D: prefill-pool max_num_seqs")
    decode_max_num_seqs: int | None = Field(None, ge=1, description="P/D: decode-pool max_num_seqs")
    prefill_max_num_batched_tokens: int | None = Field(
        None, ge=1, description="P/D: prefill-pool token budget per step, tokens"
    )
    decode_max_num_batched_tokens: int | None = Field(
        None, ge=1, description="P/D: decode-pool token budget per step, tokens"
    )
    prefill_router: str | None = Field(None, description="P/D: how arrivals pick a prefill replica (default: router)")
    decode_router: str | None = Field(
        None, description="P/D: how prefilled requests pick a decode replica (default: router)"
    )
    kv_link: str = Field("ib", description="P/D: the link KV caches cross from prefill to decode GPUs")
    kv_link_gbps: float | None = Field(  # inf: a free transfer (what-ifs); NaN fails gt=0
        None, gt=0, allow_inf_nan=True,
        description="P/D: link bandwidth per GPU, one direction, GB/s (default: per link and GPU)"
    )
    kv_link_latency_us: float | None = Field(None, ge=0, description="P/D: fixed cost per KV transfer, µs")
    kv_link_efficiency: float | None = Field(None, gt=0, le=1, description="P/D: achieved fraction of the link")
    kv_overlap: bool = Field(False, description="P/D: send each layer's KV as soon as the prefill computed it")
    # Workload.
    trace: str = Field("azure-conv", description="built-in trace name or path to a trace file")
    trace_format: str | None = Field(None, description="trace format (default: detected from the header)")
    arrival: str = Field("trace", description="arrival process: the trace's own times or a synthetic one")
    rate: float | None = Field(None, gt=0, description="arrival rate, requests/s (scales a trace's times)")
    cv: float = Field(2.0, gt=0, description="gamma arrivals: coefficient of variation of inter-arrivals")
    users: int = Field(16, ge=1, description="closed loop: concurrent users")
    think_time_s: float = Field(0.0, ge=0, description="closed loop: pause between a reply and the next request, s")
    num_requests: int | None = Field(None, ge=1, le=MAX_REQUESTS, description="use only the first N requests (at "
                                     "most the trace's rows, unless repeat)")
    repeat: bool = Field(False, description="num_requests beyond the trace's rows repeats the trace end to end")
    start_s: float | None = Field(None, ge=0, description="window of the trace: start, s")
    duration_s: float | None = Field(None, gt=0, description="window of the trace: length, s")
    max_context_tokens: int | None = Field(None, ge=2, description="cap prompt+output lengths, tokens")
    # Speculative decoding.
    spec_k: int = Field(0, ge=0, le=16, description="draft tokens per verification step (0: off)")
    spec_alpha: float = Field(0.7, ge=0, le=1, description="per-token acceptance rate (the mean, per request)")
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
    seed: int = Field(0, ge=0, description="seed of every random draw")
    fast_forward: bool = Field(True, description="advance runs of identical decode steps (and of full-budget "
                               "prefill chunks) at once")
    record_token_times: bool = Field(False, description="keep every token's timestamp (memory grows)")

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, values):
        """A preset's settings under the values given (they win); the preset named in its canonical spelling."""
        if not isinstance(values, dict) or values.get("preset") is None:
            return values
        name = str(values["preset"])
        by_lower = {k.lower(): k for k in PRESETS}
        if name.lower() not in by_lower:
            raise ConfigError(unknown_name("engine preset", name, PRESETS), field="preset")
        preset = PRESETS[by_lower[name.lower()]]
        try:
            gpus_file = values.get("gpus_file")
            gpu = get_gpu(values.get("gpu", cls.model_fields["gpu"].default),
                          load_gpus_yaml(gpus_file) if gpus_file else None)
        except InputError:
            gpu = None  # the gpu field's own check reports it
        return {**preset.fields(gpu), **values, "preset": preset.name}

    @field_validator(*_COUNTS)
    @classmethod
    def _bounded(cls, value: int | None) -> int | None:
        if value is not None and value > MAX_COUNT:
            raise ValueError(f"{value:,} is too large (at most {MAX_COUNT:,})")
        return value

    @field_validator("quant")
    @classmethod
    def _quant_spec(cls, value: str) -> str:
        return parse_quant(value).name  # a format or a mixed-precision spec (hwmodels/precision.py), canonical

    @field_validator(*(f for f in _REGISTRIES if f != "quant"))
    @classmethod
    def _one_of(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _choice(info.field_name, value)  # None: no preset

    @field_validator(*_OPTIONAL_REGISTRIES)
    @classmethod
    def _one_of_or_none(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _choice(_OPTIONAL_REGISTRIES[info.field_name], value)

    @field_validator("gpu", "prefill_gpu", "decode_gpu")
    @classmethod
    def _canonical_gpu(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        gpus_file = info.data.get("gpus_file")
        return get_gpu(value, load_gpus_yaml(gpus_file) if gpus_file else None).name

    @field_validator("profile")
    @classmethod
    def _profile_file(cls, value: str | None) -> str | None:
        if value is None or value == "roofline" or Path(value).is_file():
            return value
        raise ValueError(f"no such profile file {value!r} (give a file written by servesim calibrate, or 'roofline')")

    @field_validator("model", "draft_model")
    @classmethod
    def _canonical_model(cls, value: str) -> str:
        if Path(value).exists():  # a config.json (or its directory): read and checked here, kept as given
            get_model(value)
            return value
        return get_model(value).name

    @model_validator(mode="after")
    def _coherent(self) -> Scenario:
        if self.start_s is not None and self.duration_s is None:
            raise ConfigError("start_s needs duration_s", field="duration_s")
        process = ARRIVALS.get(self.arrival)
        if process is not None and "rate_per_s" in {f.name for f in dataclasses.fields(process)} and not self.rate:
            raise ConfigError(f"arrival '{self.arrival}' needs a rate (--rate requests/s)", field="rate")
        if self.spec_alpha_concentration is not None and not 0 < self.spec_alpha < 1:
            raise ConfigError(f"must lie in (0, 1) with spec_alpha_concentration, got {self.spec_alpha}",
                              field="spec_alpha")
        one_decode_step = self.max_num_seqs * (1 + self.spec_k)
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < one_decode_step:
            raise ConfigError(
                f"{self.max_num_batched_tokens:,} tokens do not cover one decode step of max_num_seqs "
                f"{self.max_num_seqs} x {1 + self.spec_k} tokens (1 + spec_k); raise it or lower max_num_seqs",
                field="max_num_batched_tokens",
            )
        model = get_model(self.model)
        self.step_limits(model)  # the limits that need the model's positions
        parse_quant(self.quant).check_layers(model.num_layers)
        return self

    @model_validator(mode="after")
    def _pd_coherent(self) -> Scenario:
        if self.prefill_replicas == 0 and self.decode_replicas == 0:
            fields = type(self).model_fields
            given = [name for name in PD_FIELDS if getattr(self, name) != fields[name].default]
            if given:
                raise ConfigError("a P/D field: give prefill_replicas and decode_replicas too (--pd P:D)",
                                  field=given[0])
            return self
        if not self.prefill_replicas or not self.decode_replicas:
            missing = "decode_replicas" if self.prefill_replicas else "prefill_replicas"
            raise ConfigError("P/D needs both prefill_replicas and decode_replicas >= 1 (--pd P:D)", field=missing)
        return self

    @property
    def disaggregated(self) -> bool:
        """Prefill and decode in separate pools (servesim.sim.disagg)."""
        return self.prefill_replicas > 0

    def step_limits(self, model: ModelSpec) -> tuple[int, int]:
        """``(max_model_len, max_num_batched_tokens)`` with their defaults resolved for ``model``; a ConfigError
        naming the field when they cannot work (longer than the model's positions, a budget below one prompt
        without chunked prefill)."""
        positions = model.max_position_embeddings
        if self.max_model_len is None and not positions:
            raise ConfigError(f"{model.name} gives no max_position_embeddings: set max_model_len",
                              field="max_model_len")
        max_model_len = self.max_model_len or positions
        if positions and max_model_len > positions:
            raise ConfigError(
                f"{max_model_len:,} tokens exceed the {positions:,} max_position_embeddings of {model.name}",
                field="max_model_len",
            )
        chunked = self.batching == "chunked"
        one_decode_step = self.max_num_seqs * (1 + self.spec_k)
        budget = self.max_num_batched_tokens or max(CHUNKED_TOKEN_BUDGET if chunked else max_model_len,
                                                    one_decode_step)
        if not chunked and budget < max_model_len:
            # Without chunking a whole prompt (or a recompute of prompt + outputs) runs in one step.
            raise ConfigError(
                f"{budget:,} tokens per step cannot hold a {max_model_len:,}-token prompt without chunked "
                f"prefill; raise it to max_model_len or lower max_model_len",
                field="max_num_batched_tokens",
            )
        return max_model_len, budget

    def config_hash(self) -> str:
        """Hash of the canonical JSON of every field (defaults included)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# How `servesim simulate --help` groups the fields (every field in exactly one group; tested).
FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "Deployment": ("preset", "model", "gpus_file", "gpu", "tp", "pp", "replicas", "quant", "kv_dtype",
                   "gpu_memory_utilization", "memory_fraction_of", "block_size", "num_gpu_blocks", "swap_space_gib",
                   "prefix_caching", "usd_per_gpu_hour", "profile", "allreduce", "ep", "expert_skew",
                   "step_overhead_ms", "host_speed", "piecewise_graphs"),
    "Scheduler": ("batching", "policy", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "preemption",
                  "admission", "aging", "predictor", "predictor_sigma", "predictor_accuracy", "router"),
    "Prefill/decode disaggregation": (
        "prefill_replicas", "decode_replicas", "prefill_gpu", "decode_gpu", "prefill_tp", "decode_tp", "prefill_ep",
        "decode_ep", "prefill_max_num_seqs", "decode_max_num_seqs", "prefill_max_num_batched_tokens",
        "decode_max_num_batched_tokens", "prefill_router", "decode_router", "kv_link", "kv_link_gbps",
        "kv_link_latency_us", "kv_link_efficiency", "kv_overlap",
    ),
    "Workload": ("trace", "trace_format", "arrival", "rate", "cv", "users", "think_time_s", "num_requests",
                 "repeat", "start_s", "duration_s", "max_context_tokens"),
    "Speculative decoding": ("spec_k", "spec_alpha", "spec_alpha_concentration", "draft_model"),
    "SLOs": ("slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms", "slo_mode"),
    "Run": ("seed", "fast_forward", "record_token_times"),
}


PD_FIELDS = FIELD_GROUPS["Prefill/decode disaggregation"]
PD_POOL_FIELDS = ("gpu", "tp", "ep", "max_num_seqs", "max_num_batched_tokens", "router")  # prefill_X / decode_X


def _first_error(exc: ValidationError, source: str | None) -> InputError:
    """The first problem as one line naming the field (and the scenario file, when there is one). A problem
    found in another file (a gpus_file, a model's config.json) is reported against that file."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or None
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, InputError):
        if cause.file is not None:
            return cause
        return ConfigError(cause.problem, file=source, field=loc or cause.field)
    if isinstance(cause, ValueError):
        return ConfigError(str(cause), file=source, field=loc)
    return ConfigError(err["msg"], file=source, field=loc)


def make_scenario(values: dict, source: str | None = None) -> Scenario:
    """Validate ``values`` into a Scenario; the first problem becomes a one-line ConfigError."""
    try:
        return Scenario(**values)
    except ValidationError as exc:
        raise _first_error(exc, source) from None


def load_scenario(path: str | Path, overrides: dict | None = None) -> Scenario:
    """Read a YAML scenario and apply ``overrides`` (field -> value) on top."""
    return make_scenario({**read_scenario_values(path), **(overrides or {})}, source=str(path))


def read_scenario_values(path: str | Path) -> dict:
    """The field values a YAML scenario file gives (not yet validated; InputError naming the file otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such scenario file", file=str(p))
    values = read_yaml(p) or {}
    if not isinstance(values, dict):
        raise InputError("a scenario file must be a mapping of field: value", file=str(p))
    return {str(k).replace("-", "_"): v for k, v in values.items()}
