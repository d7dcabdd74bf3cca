"""From a Scenario to the concrete pieces a simulation runs: cost models, KV blocks, scheduler config.

Values are validated by ``Scenario``; what needs the model, the GPU or the trace to be known is refused
here, before any simulation starts, with the field at fault named: a model that does not fit the GPU, a TP
degree that does not divide the heads, a KV pool smaller than the pipeline, a trace without arrival times
and no arrival process.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass

import numpy as np

from servesim.errors import ConfigError
from servesim.hwmodels.buckets import PieceBuckets
from servesim.hwmodels.calibrated import CalibratedCostModel, ProfileMismatch
from servesim.hwmodels.cost import CostModel, StepCostModel
from servesim.hwmodels.gpus import GPU, get_gpu, load_gpus_yaml
from servesim.hwmodels.memory import MemoryPlan, plan_memory
from servesim.hwmodels.models import ModelSpec, get_model
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.profile import Profile, load_profile, shipped_profiles
from servesim.sim import workload as wl
from servesim.sim.config import Scenario
from servesim.sim.policies import OutputPredictor
from servesim.sim.request import Batch
from servesim.sim.scheduler import SchedulerConfig
from servesim.sim.spec import IIDAcceptance, PerRequestAcceptance, SpecConfig

GIB = 1024**3


@dataclass(frozen=True)
class Deployment:
    """The resolved configuration of every replica (identical replicas)."""

    model: ModelSpec
    gpu: GPU
    tp: int
    pp: int
    replicas: int
    cost: StepCostModel
    memory: MemoryPlan
    num_blocks: int
    block_size: int
    swap_blocks: int
    swap_s_per_block: float
    prefix_caching: bool
    scheduler: SchedulerConfig
    router: str
    usd_per_gpu_hour: float
    draft_cost: StepCostModel | None = None
    acceptance: IIDAcceptance | PerRequestAcceptance | None = None
    slo_e2el_s: float | None = None
    warnings: tuple[str, ...] = ()  # things a user should know about the run (printed, and in the summary's meta)

    @property
    def gpus_total(self) -> int:
        return self.tp * self.pp * self.replicas

    def pp_transfer_s(self, batch: Batch) -> float:
        return self.cost.pp_transfer_s(batch.num_tokens)


@dataclass(frozen=True)
class ReplicaPlan:
    """What one replica of a scenario is: its placement, scheduler step limits and memory plan. The one
    resolution of defaults that ``simulate`` and ``servesim fit`` share."""

    placement: Placement
    max_model_len: int
    max_num_batched_tokens: int
    memory: MemoryPlan


def plan_replica(s: Scenario) -> ReplicaPlan:
    """Resolve ``s``'s model, GPU, formats, step limits and memory; ConfigError naming the field otherwise."""
    model = get_model(s.model)
    gpu = get_gpu(s.gpu, load_gpus_yaml(s.gpus_file) if s.gpus_file else None)
    max_model_len, budget = s.step_limits(model)
    placement = Placement(model, gpu, tp=s.tp, pp=s.pp, weight_format=s.quant, kv_dtype=s.kv_dtype, ep=s.ep,
                          expert_skew=s.expert_skew)
    memory = plan_memory(
        placement, gpu_memory_utilization=s.gpu_memory_utilization, block_size=s.block_size,
        max_num_batched_tokens=budget, max_num_seqs=s.max_num_seqs, fraction_of=s.memory_fraction_of,
    )
    return ReplicaPlan(placement, max_model_len, budget, memory)


@functools.lru_cache(maxsize=8)
def _profile(path: str, mtime: float) -> Profile:
    return load_profile(path)


def cost_model(
    placement: Placement, profile: str | None, allreduce: str = "custom", overhead_s: float | None = None,
    piecewise: PieceBuckets | None = None, host_speed: float = 1.0,
) -> tuple[StepCostModel, tuple[str, ...]]:
    """The calibrated cost model over ``profile`` (a file, or by default the one shipped for the GPU), or the
    roofline (``profile='roofline'``, or no shipped profile), with the all-reduce assumption ``allreduce`` (the
    calibrated model's too, for collectives its profile did not measure); and warnings a user should see.
    ``overhead_s``: a fixed host time per step instead of the model's own. ``piecewise``: the engine's
    piecewise-graph buckets, for steps with prefill priced as it runs them (the roofline has no step modes).
    ``host_speed``: the calibrated model's host-time factor (the roofline ignores it)."""
    def roofline() -> CostModel:
        if overhead_s is None:
            return CostModel(placement, allreduce=allreduce)
        return CostModel(placement, allreduce=allreduce, overhead_s=overhead_s)

    if profile == "roofline":
        return roofline(), ()
    path = profile or shipped_profiles().get(placement.gpu.name)
    if path is None:
        return roofline(), ()
    path = str(path)
    prof = _profile(path, os.path.getmtime(path) if os.path.exists(path) else 0.0)
    try:
        model = CalibratedCostModel(placement, prof, overhead_s=overhead_s, allreduce=allreduce, piecewise=piecewise,
                                    host_speed=host_speed)
    except ProfileMismatch as exc:
        if profile:
            raise ConfigError(f"{exc}", field="profile") from None
        note = f"the shipped {placement.gpu.name} profile cannot price this deployment ({exc}); using the roofline"
        return roofline(), (note,)
    warnings = []
    if prof.gpu != placement.gpu.name:
        warnings.append(f"profile {prof.profile_id} was measured on {prof.gpu}, the deployment runs on "
                        f"{placement.gpu.name}")
    return model, tuple(warnings)


def build_deployment(s: Scenario) -> Deployment:
    """Resolve ``s`` into a Deployment, or raise a ConfigError naming the field."""
    plan = plan_replica(s)
    placement, memory = plan.placement, plan.memory
    model, gpu = placement.model, placement.gpu
    sched = SchedulerConfig(
        batching=s.batching,
        policy=s.policy,
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        max_model_len=plan.max_model_len,
        preemption=s.preemption,
        admission=s.admission,
        aging=s.aging,
        spec_k=s.spec_k,
        predictor=OutputPredictor(s.predictor, s.predictor_sigma, s.predictor_accuracy),
        record_token_times=s.record_token_times,
    )
    overhead_s = None if s.step_overhead_ms is None else s.step_overhead_ms / 1000
    pieces, piece_note = piecewise_buckets(s, plan)
    cost, cost_warnings = cost_model(placement, s.profile, s.allreduce, overhead_s, pieces, s.host_speed)
    num_blocks = s.num_gpu_blocks or memory.kv_blocks
    if s.admission == "slots":
        num_blocks = _slot_blocks(s, plan, num_blocks)
    if num_blocks < s.pp:
        raise ConfigError(f"{num_blocks} KV blocks cannot be shared by {s.pp} pipeline engines", field="num_gpu_blocks")
    warnings = list(cost_warnings) + ([piece_note] if piece_note else [])
    if s.num_gpu_blocks is not None and s.num_gpu_blocks > memory.kv_blocks:
        warnings.append(
            f"num_gpu_blocks {s.num_gpu_blocks:,} is more than the {memory.kv_blocks:,} KV blocks of "
            f"{s.block_size} tokens that fit on {gpu.name} ({memory.kv_cache_bytes / 1e9:.1f} GB of KV cache per "
            f"GPU at gpu_memory_utilization {s.gpu_memory_utilization}); simulating {s.num_gpu_blocks:,} as asked"
        )
    block_bytes = memory.kv_bytes_per_block
    draft_cost = acceptance = None
    if s.spec_k:
        draft = placement.with_model(get_model(s.draft_model, field="draft_model"))
        draft_cost, _ = cost_model(draft, s.profile, s.allreduce, overhead_s, host_speed=s.host_speed)
        acceptance = SpecConfig(s.draft_model, s.spec_k, s.spec_alpha, s.spec_alpha_concentration).acceptance_model()
    return Deployment(
        model=model, gpu=gpu, tp=s.tp, pp=s.pp, replicas=s.replicas, cost=cost, memory=memory,
        num_blocks=num_blocks, block_size=s.block_size,
        swap_blocks=int(s.swap_space_gib * GIB // block_bytes) if block_bytes else 0,
        swap_s_per_block=block_bytes / gpu.pcie_bytes_per_s * 2,  # one direction of a PCIe link
        prefix_caching=s.prefix_caching, scheduler=sched, router=s.router,
        usd_per_gpu_hour=gpu.usd_per_hour if s.usd_per_gpu_hour is None else s.usd_per_gpu_hour,
        draft_cost=draft_cost, acceptance=acceptance,
        slo_e2el_s=None if s.slo_e2el_ms is None else s.slo_e2el_ms / 1000, warnings=tuple(warnings),
    )


def piecewise_buckets(s: Scenario, plan: ReplicaPlan) -> tuple[PieceBuckets | None, str | None]:
    """The engine's piecewise-graph buckets for ``s`` (None: off, or a deployment the engine runs eagerly:
    TP > 1, speculative decoding), and a note when the setting is on but has no effect."""
    if not s.piecewise_graphs:
        return None, None
    if s.tp > 1 or s.spec_k:
        why = "TP > 1" if s.tp > 1 else "speculative decoding"
        return None, f"piecewise_graphs has no effect with {why}: the engine runs steps with prefill eagerly"
    return PieceBuckets.for_limits(plan.max_num_batched_tokens, s.max_num_seqs), None


def _slot_blocks(s: Scenario, plan: ReplicaPlan, available: int) -> int:
    """The KV pool of ``slots`` admission: every slot holds its whole context (``max_model_len`` tokens, as
    llama.cpp allocates ``n_ctx`` at start-up), so the pool is exactly the slots' blocks, if they fit."""
    per_slot = -(-(plan.max_model_len + s.spec_k) // s.block_size)
    need = s.max_num_seqs * per_slot * s.pp
    if need > available:
        raise ConfigError(
            f"{s.max_num_seqs} slots of {plan.max_model_len:,} tokens need {need:,} KV blocks of {s.block_size} "
            f"tokens; {s.gpu} holds {available:,}: lower max_num_seqs (slots) or max_model_len (tokens per slot)",
            field="max_num_seqs",
        )
    return need


def _windowed(trace: str, fmt: str | None, start_s: float | None, duration_s: float | None,
              rows: int | None = None) -> wl.Workload:
    w = wl.load_trace(trace, fmt, rows=rows if start_s is None and duration_s is None else None)
    if start_s is not None or duration_s is not None:
        if not w.has_arrivals:
            raise ConfigError(f"trace {trace} has no arrival times to window", field="duration_s")
        start = (start_s or 0.0) + float(w.table["arrival_s"][0])
        w = wl.window(w, start, start + duration_s)
    return w


@functools.lru_cache(maxsize=16)
def trace_rows(trace: str, fmt: str | None = None, start_s: float | None = None,
               duration_s: float | None = None) -> int:
    """Requests a trace holds (in its window): the most ``num_requests`` may ask for without ``repeat``."""
    return len(_windowed(trace, fmt, start_s, duration_s))


def build_workload(s: Scenario) -> wl.Workload:
    """The scenario's workload: a trace (windowed, scaled, capped) or synthetic arrivals over it."""
    # A head of a built-in trace reads only its own lines (a 100-request run need not parse 19,366).
    w = _windowed(s.trace, s.trace_format, s.start_s, s.duration_s, None if s.repeat else s.num_requests)
    rng = np.random.default_rng([s.seed, 1])
    if s.num_requests is not None and s.num_requests > len(w):
        if not s.repeat:
            raise ConfigError(
                f"{s.num_requests:,} requests asked of {w.name}, which has {len(w):,}: ask for at most {len(w):,}, "
                f"or add --repeat to repeat the trace", field="num_requests")
        w = wl.repeat(w, s.num_requests)
    elif s.num_requests is not None:
        w = wl.head(w, s.num_requests)
    if s.max_context_tokens is not None:
        w = wl.cap_lengths(w, s.max_context_tokens)
    if s.arrival == "trace":
        if not w.has_arrivals:
            raise ConfigError(
                f"trace {s.trace} has lengths only: choose an arrival process (--arrival poisson --rate R)",
                field="arrival",
            )
        if s.rate is not None:
            w = wl.scale_rate(w, s.rate)
        return w
    # An arrival process from ARRIVALS takes the Scenario fields its constructor names.
    process = wl.ARRIVALS[s.arrival]
    given = {"rate_per_s": s.rate, "cv": s.cv, "users": s.users, "think_time_s": s.think_time_s}
    wanted = {f.name for f in dataclasses.fields(process)}
    return wl.with_arrivals(w, process(**{k: v for k, v in given.items() if k in wanted}), rng)
