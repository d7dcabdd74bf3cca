"""Roofline cost model: one forward step's time on one replica, per operator, from ops.py's FLOPs and bytes.

Each operator takes ``max(flops / (peak · eff_compute), bytes / (bandwidth · eff_memory))``; collectives
take ``bytes / (link · eff) + calls · latency``; a step adds a fixed CPU overhead. The efficiencies below
are defaults to be replaced by calibration; they were chosen from ``bench/roofline_probe.py`` on an
H100 SXM (cuBLAS/SDPA through PyTorch; docs/hwmodels.md has the numbers):

==================  =====  ==============================================================================
gemm_compute        0.75   bf16 GEMM, M ≥ 1024 tokens: 0.70-0.79 of 989 TFLOP/s measured
gemm_memory         0.80   decode-shaped GEMM, M ≤ 256: 0.74-0.81 of 3.35 TB/s measured
attn_compute        0.55   causal flash prefill: 0.42 at 2k tokens, 0.61 at 8k measured
attn_memory         0.80   decode attention: contiguous SDPA reached 0.89-0.91; paged kernels do less
elementwise_memory  0.70   norms, SiLU, RoPE: small kernels stay below the 0.90 of a large copy
sampler_memory      0.70   softmax / top-p / rejection sampling over fp32 vocab rows
interconnect        0.80   of one direction of the link (ring all-reduce bus bandwidth)
collective_latency  6 µs   per all-reduce (custom all-reduce under CUDA graphs)
overhead_s          1 ms   per step CPU side: vLLM v1 with CUDA graphs spends ~1-3 ms; the low end
==================  =====  ==============================================================================

``step_time_s`` is the simulator's hot path: the coefficients are folded into floats at construction and
the call does plain arithmetic. ``step_time`` evaluates the same operators generically (with the
breakdown); a test holds the two equal. :class:`StepCostModel` is the interface the simulator holds a cost
model by (``Deployment.cost``); a calibrated profile plugs in as another class with its methods and its own
``profile_id``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from servesim.hwmodels.ops import ACT_BYTES, BatchShape, OpForm, features, head_ops, layer_ops
from servesim.hwmodels.placement import Placement

DEFAULT_OVERHEAD_S = 1.0e-3


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Achieved fraction of datasheet peaks per operator kind (defaults: see the module docstring)."""

    gemm_compute: float = 0.75
    gemm_memory: float = 0.80
    attn_compute: float = 0.55
    attn_memory: float = 0.80
    elementwise_memory: float = 0.70
    sampler_memory: float = 0.70
    interconnect: float = 0.80
    collective_latency_s: float = 6e-6

    def of(self, kind: str) -> tuple[float, float]:
        """(compute, memory) efficiency for an operator kind."""
        return {
            "gemm": (self.gemm_compute, self.gemm_memory),
            "attn_prefill": (self.attn_compute, self.attn_memory),
            "attn_decode": (self.attn_compute, self.attn_memory),
            "elementwise": (1.0, self.elementwise_memory),
            "sampler": (1.0, self.sampler_memory),
            "comm": (1.0, self.interconnect),
        }[kind]


@dataclass(frozen=True, slots=True)
class StepTime:
    """One step's time: seconds per operator (all layers of the slowest stage), overhead, and the total."""

    op_s: dict[str, float]
    bound: dict[str, str]  # operator -> "compute" | "memory" | "link" (| "measured" for a calibrated model)
    overhead_s: float
    total_s: float
    extrapolated: tuple[str, ...] = ()  # calibrated models: terms priced outside the measured grid


class StepCostModel(Protocol):
    """What the simulator needs from a cost model (roofline here; a calibrated profile later)."""

    profile_id: str

    def step_time(self, shape: BatchShape) -> StepTime: ...
    def step_time_s(self, shape: BatchShape) -> float: ...
    def decode_run_s(self, shape: BatchShape, n: int) -> np.ndarray: ...
    def pp_transfer_s(self, tokens: int) -> float: ...


class CostModel:
    """Roofline step time of one replica at ``placement`` (model, GPU, TP, PP, weight format, KV dtype)."""

    def __init__(
        self, placement: Placement, efficiency: Efficiency = Efficiency(), overhead_s: float = DEFAULT_OVERHEAD_S
    ) -> None:
        self.placement = placement
        model, gpu, tp, pp = placement.model, placement.gpu, placement.tp, placement.pp
        weight_format, kv_dtype = placement.weight_format, placement.kv_dtype
        self.model, self.gpu, self.tp, self.pp = model, gpu, tp, pp
        self.weight_format, self.kv_dtype = weight_format, kv_dtype
        self.efficiency, self.overhead_s = efficiency, overhead_s
        self.stage_layers = math.ceil(
            model.num_layers / pp
        )  # the slowest stage, which also holds the LM head
        self.layer_ops = layer_ops(model, tp, weight_format, kv_dtype)
        self.head_ops = head_ops(model, tp)
        self._link_bytes_per_s = gpu.interconnect_bytes_per_s / 2 * efficiency.interconnect  # one direction
        self._fold()

    @property
    def profile_id(self) -> str:
        return "roofline"

    # ---- generic path: the breakdown -------------------------------------------------------------------
    def op_time_s(self, op: OpForm, flops: float, nbytes: float) -> tuple[float, str]:
        """Seconds and the bound for one operator call doing ``flops`` and moving ``nbytes``."""
        if op.kind == "comm":
            return nbytes / self._link_bytes_per_s + op.calls * self.efficiency.collective_latency_s, "link"
        eff_c, eff_m = self.efficiency.of(op.kind)
        peak = self.gpu.peak_flops_per_s("fp32" if op.kind == "sampler" else op.compute_dtype)
        tc, tm = flops / (peak * eff_c), nbytes / (self.gpu.hbm_bytes_per_s * eff_m)
        return (tc, "compute") if tc > tm else (tm, "memory")

    def step_time(self, shape: BatchShape) -> StepTime:
        """Per-operator breakdown of one step (the slowest pipeline stage when pp > 1)."""
        if shape.prefill_tokens + shape.decode_query_tokens == 0:
            return StepTime({}, {}, 0.0, 0.0)
        feats = features(shape, self.model)
        op_s, bound = {}, {}
        for op, reps in [(op, self.stage_layers) for op in self.layer_ops] + [
            (op, 1) for op in self.head_ops
        ]:
            flops, nbytes = op.evaluate(feats)
            if flops or nbytes:
                t, b = self.op_time_s(op, flops, nbytes)
                op_s[op.name], bound[op.name] = t * reps, b
            else:
                op_s[op.name], bound[op.name] = 0.0, "idle"
        return StepTime(op_s, bound, self.overhead_s, self.overhead_s + sum(op_s.values()))

    def pp_transfer_s(self, tokens: int) -> float:
        """Time to send ``tokens`` hidden states (bf16) from one pipeline stage to the next."""
        return (
            tokens * self.model.hidden_size * ACT_BYTES / self._link_bytes_per_s
            + self.efficiency.collective_latency_s
        )

    # ---- hot path ----------------------------------------------------------------------------------------
    def _coef(self, op: OpForm, reps: int) -> tuple[dict[str, float], dict[str, float], float, float]:
        """An operator's time per unit of each feature: (compute s, memory s, constant s, latency s)."""
        if op.kind == "comm":
            rate_c, rate_m, lat = 0.0, reps / self._link_bytes_per_s, reps * op.calls
            lat *= self.efficiency.collective_latency_s
        else:
            eff_c, eff_m = self.efficiency.of(op.kind)
            peak = self.gpu.peak_flops_per_s("fp32" if op.kind == "sampler" else op.compute_dtype)
            rate_c, rate_m, lat = reps / (peak * eff_c), reps / (self.gpu.hbm_bytes_per_s * eff_m), 0.0
        return (
            {k: v * rate_c for k, v in op.flops.items()},
            {k: v * rate_m for k, v in op.bytes.items()},
            op.const_bytes * rate_m,
            lat,
        )

    def _fold(self) -> None:
        """Fold every operator into the float coefficients ``step_time_s`` reads; fail loudly if ops.py
        grew a dependency this hot path does not read."""
        reads = {  # operator -> (flops features, bytes features) the hot path reads
            "qkv": ({"new_tokens"}, {"new_tokens"}),
            "o": ({"new_tokens"}, {"new_tokens"}),
            "router": ({"new_tokens"}, {"new_tokens"}),
            "gate_up": ({"new_tokens"}, {"new_tokens", "touched_experts"}),
            "down": ({"new_tokens"}, {"new_tokens", "touched_experts"}),
            "attn_prefill": ({"prefill_attn_pairs"}, {"prefill_tokens", "prefill_ctx_tokens"}),
            "attn_decode": ({"decode_attn_pairs"}, {"decode_query_tokens", "decode_ctx_tokens"}),
            "norm_act": (set(), {"new_tokens"}),
            "allreduce": (set(), {"new_tokens"}),
            "lm_head": ({"sampled_tokens"}, {"sampled_tokens"}),
            "logits_gather": (set(), {"sampled_tokens"}),
            "sampling": ({"sampled_tokens"}, {"sampled_tokens"}),
            "spec_verify": ({"spec_rows"}, {"spec_rows"}),
        }
        c = {}
        for op, reps in [(op, self.stage_layers) for op in self.layer_ops] + [
            (op, 1) for op in self.head_ops
        ]:
            if (
                op.name not in reads
                or not set(op.flops) <= reads[op.name][0]
                or not set(op.bytes) <= reads[op.name][1]
            ):
                raise AssertionError(f"ops.py operator {op.name} uses features the hot path does not read")
            c[op.name] = self._coef(op, reps)
        # Token-linear GEMMs: (compute s/token, constant s, memory s/token, memory s per touched expert)
        self._gemms = tuple(
            (f.get("new_tokens", 0.0), k, b.get("new_tokens", 0.0), b.get("touched_experts", 0.0))
            for name in ("qkv", "o", "router", "gate_up", "down")
            if name in c
            for f, b, k, _ in [c[name]]
        )
        self._moe = self.model.is_moe
        self._moe_e = float(self.model.num_experts)
        self._moe_q = 1.0 - self.model.experts_per_token / self.model.num_experts if self._moe else 1.0
        f, b, _, _ = c["attn_prefill"]
        self._ap = (
            f.get("prefill_attn_pairs", 0.0),
            b.get("prefill_tokens", 0.0),
            b.get("prefill_ctx_tokens", 0.0),
        )
        f, b, _, _ = c["attn_decode"]
        self._ad = (
            f.get("decode_attn_pairs", 0.0),
            b.get("decode_query_tokens", 0.0),
            b.get("decode_ctx_tokens", 0.0),
        )
        per_token = c["norm_act"][1]["new_tokens"]
        self._comm_lat = 0.0
        if "allreduce" in c:
            per_token += c["allreduce"][1]["new_tokens"]
            self._comm_lat = c["allreduce"][3]
        self._per_token = per_token
        f, b, k, _ = c["lm_head"]
        self._lm = (f["sampled_tokens"], k, b["sampled_tokens"])
        f, b, _, _ = c["sampling"]
        self._smp = (f["sampled_tokens"], b["sampled_tokens"])
        self._gather = (
            (c["logits_gather"][1]["sampled_tokens"], c["logits_gather"][3])
            if "logits_gather" in c
            else (0.0, 0.0)
        )
        f, b, _, _ = c["spec_verify"]
        self._spec = (f["spec_rows"], b["spec_rows"])

    def _attn_decode_s(self, ds: int, dq: int, dctx: float) -> float:
        fd, bq, bc = self._ad
        a, m = fd * dctx * dq / ds, bq * dq + bc * dctx
        return a if a > m else m

    def step_time_s(self, shape: BatchShape) -> float:
        """Total seconds of one step, as ``step_time(shape).total_s`` but without building the breakdown."""
        t = self._base_s(shape)
        ds = shape.decode_seqs
        if ds:  # added last, so that decode_run_s reproduces every step bit for bit
            t += self._attn_decode_s(ds, shape.decode_query_tokens, shape.decode_ctx_tokens)
        return t

    def _base_s(self, shape: BatchShape) -> float:
        """Everything of :meth:`step_time_s` but the decode attention (the one term that grows with context)."""
        pt, dq = shape.prefill_tokens, shape.decode_query_tokens
        n = pt + dq
        if n == 0:
            return 0.0
        t = self.overhead_s + self._per_token * n + self._comm_lat
        touched = self._moe_e * (1.0 - self._moe_q**n) if self._moe else 0.0
        for fc, const, bm, be in self._gemms:
            a, m = fc * n, const + bm * n + be * touched
            t += a if a > m else m
        if pt:
            fp, bt, bc = self._ap
            a, m = fp * shape.prefill_attn_pairs, bt * pt + bc * shape.prefill_ctx_tokens
            t += a if a > m else m
        ds = shape.decode_seqs
        if ds and dq > ds:
            fv, bv = self._spec
            a, m = fv * (dq - ds), bv * (dq - ds)
            t += a if a > m else m
        s = shape.sampled_tokens
        if s:
            fl, kl, bl = self._lm
            a, m = fl * s, kl + bl * s
            t += a if a > m else m
            fs, bs = self._smp
            a, m = fs * s, bs * s
            t += (a if a > m else m) + self._gather[0] * s + self._gather[1]
        return t

    def decode_run_s(self, shape: BatchShape, n: int) -> np.ndarray:
        """Durations of ``n`` consecutive pure-decode steps; step i reads
        ``decode_ctx_tokens + i·decode_seqs`` KV tokens, all else equal.
        Bit for bit what :meth:`step_time_s` gives for each step (the simulator's fast-forward relies on it)."""
        ds, dq = shape.decode_seqs, shape.decode_query_tokens
        if n <= 0:
            return np.zeros(0)
        if ds == 0 or shape.prefill_tokens:
            raise ValueError("decode_run_s takes a pure-decode shape (decode_seqs > 0, no prefill)")
        fd, bq, bc = self._ad
        ctx = shape.decode_ctx_tokens + ds * np.arange(n, dtype=np.float64)
        return self._base_s(shape) + np.maximum(fd * ctx * dq / ds, bq * dq + bc * ctx)
