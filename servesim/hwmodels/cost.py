"""Roofline cost model: one forward step's time on one replica, per operator, from ops.py's FLOPs and bytes.

Each operator's time comes from the roofline prior (:mod:`servesim.hwmodels.prior`): per kernel a floor plus a
smooth combination of its compute and memory terms, with efficiencies fitted per GPU family to public
per-operator measurements (docs/roofline-prior.md has the fit and its errors); collectives take ``latency +
bytes / (link · eff)`` per call under the all-reduce assumption picked (``allreduce``: vLLM's custom
all-reduce under CUDA graphs, or eager NCCL); a step adds a fixed CPU overhead (``overhead_s``, 1 ms: vLLM v1
with CUDA graphs spends ~1-3 ms per step on the CPU side; the low end).

``step_time_s`` is the simulator's hot path: the coefficients are folded into floats at construction, the
call does plain arithmetic, and the part that depends on the token count alone is remembered per count.
``step_time`` evaluates the same operators generically (with the breakdown); a test holds the two equal.
:class:`StepCostModel` is the interface the simulator holds a cost model by (``Deployment.cost``); a
calibrated profile plugs in as another class with its methods and its own ``profile_id``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import ceil, inf
from typing import Protocol

import numpy as np

from servesim.errors import ConfigError
from servesim.hwmodels.moe import expert_load
from servesim.hwmodels.ops import ACT_BYTES, BatchShape, OpForm, features, head_ops, layer_ops
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.prior import ALLREDUCE_MODES, L2_KINDS, GPUPrior, op_time_s, prior_for

DEFAULT_OVERHEAD_S = 1.0e-3
_TOKEN = {"new_tokens", "touched_experts"}  # features of the operators that run whenever a step has tokens
_MEMO_MAX = 1 << 16  # token counts remembered per cost model (a step's count is bounded by its token budget)


@dataclass(frozen=True, slots=True)
class StepTime:
    """One step's time: seconds per operator (all layers of the slowest stage), overhead, and the total."""

    op_s: dict[str, float]
    bound: dict[str, str]  # operator -> "compute" | "memory" | "floor" | "link" | "idle" (| "measured": calibrated)
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
    def pass_s(self, shape: BatchShape, graph: bool, eager_scale: float = 1.0) -> float: ...  # a draft's pass


def _wave(n: int, beta: float, sms: int, tiles: tuple, g: int, memo: dict) -> float:
    """``KernelPrior.wave_factor`` for ``n`` rows from the folded constants: (the least over the candidate tiles of
    waves · SMs · tm · tn · penalty, over M · N)^β. The padded work depends on n only through ceil(n / g), g dividing
    every tile's rows (``tiles``: (tm / g, column tiles, SMs · tm · tn / N · penalty)), so ``memo`` keeps it per
    ceil(n / g); in whole numbers, as the breakdown's ceilings of exact floats."""
    r = -(-n // g)
    q = memo.get(r)
    if q is None:
        q = min(-(-(-(-r // k) * ct) // sms) * sc for k, ct, sc in tiles)
        memo[r] = q
    return (q / n) ** beta


class CostModel:
    """Roofline step time of one replica at ``placement`` (model, GPU, TP, PP, weight format, KV dtype), with
    the GPU family's prior (or ``prior``) and the all-reduce assumption ``allreduce`` (custom | nccl)."""

    def __init__(
        self,
        placement: Placement,
        prior: GPUPrior | None = None,
        allreduce: str = "custom",
        overhead_s: float = DEFAULT_OVERHEAD_S,
    ) -> None:
        if allreduce not in ALLREDUCE_MODES:
            raise ConfigError(f"unknown all-reduce mode '{allreduce}'; known: {', '.join(ALLREDUCE_MODES)}",
                              field="allreduce")
        self.placement = placement
        model, gpu, tp, pp = placement.model, placement.gpu, placement.tp, placement.pp
        self.model, self.gpu, self.tp, self.pp = model, gpu, tp, pp
        self.weight_format, self.kv_dtype = placement.weight_format, placement.kv_dtype
        self.prior = prior or prior_for(gpu)
        self.allreduce, self.overhead_s = allreduce, overhead_s
        self.stage_layers = math.ceil(model.num_layers / pp)  # the slowest stage, which also holds the LM head
        self.layer_ops = layer_ops(model, tp, self.weight_format, self.kv_dtype, placement.ep, placement.expert_skew)
        self.expert_load = expert_load(model, placement.ep, placement.expert_skew)
        self.head_ops = head_ops(model, tp)
        self._fold()

    @property
    def profile_id(self) -> str:
        return "roofline"

    # ---- generic path: the breakdown -------------------------------------------------------------------
    def op_time_s(self, op: OpForm, flops: float, nbytes: float) -> tuple[float, str]:
        """Seconds and the bound for one operator call doing ``flops`` and moving ``nbytes``."""
        return op_time_s(op, flops, nbytes, self.gpu, self.prior, self.allreduce)

    def step_time(self, shape: BatchShape) -> StepTime:
        """Per-operator breakdown of one step (the slowest pipeline stage when pp > 1)."""
        if shape.prefill_tokens + shape.decode_query_tokens == 0:
            return StepTime({}, {}, 0.0, 0.0)
        feats = features(shape, self.model, self.expert_load)
        op_s, bound = {}, {}
        for op, reps in self._ops():
            flops, nbytes = op.evaluate(feats)
            if flops or nbytes:
                t, b = self.op_time_s(op, flops, nbytes)
                op_s[op.name], bound[op.name] = t * reps, b
            else:
                op_s[op.name], bound[op.name] = 0.0, "idle"
        return StepTime(op_s, bound, self.overhead_s, self.overhead_s + sum(op_s.values()))

    def pp_transfer_s(self, tokens: int) -> float:
        """Time to send ``tokens`` hidden states (bf16) from one pipeline stage to the next (NCCL send/recv)."""
        return float(self.prior.p2p.time_s(tokens * self.model.hidden_size * ACT_BYTES,
                                           self.gpu.interconnect_bytes_per_s / 2))

    # ---- hot path ----------------------------------------------------------------------------------------
    def _ops(self) -> list[tuple[OpForm, int]]:
        return [(op, self.stage_layers) for op in self.layer_ops] + [(op, 1) for op in self.head_ops]

    def _kernels(self, op: OpForm, reps: int) -> list[tuple[dict, dict, float, float, float, float, tuple, tuple]]:
        """Each kernel of ``op`` as (compute s per feature, memory s per feature, constant memory s, row s,
        floor s, sharpness, L2 term, wave term, block term), all times ``reps``; the L2 term (the memory s its
        L2-resident bytes take at HBM speed, the share of that time L2 saves) is (0, 0) without one; the wave term
        (``_wave``'s constants) is () without one; the block term
        (per-block s per token, tokens per block wave: the row term's waves are ceil(tokens / that), 0 = none)
        is (0, 0) without one."""
        gpu, out = self.gpu, []
        parts = op.parts or ((op.kind, op.bytes.get("new_tokens", 0.0)),)
        total = sum(b for _, b in parts)
        for kind, part_bytes in parts:
            share = part_bytes / total if total else 1.0 / len(parts)
            k = self.prior.kernel(kind)
            peak = gpu.peak_flops_per_s("fp32" if kind == "sampler" else op.compute_dtype)
            rc = reps * share / (peak * k.eff_compute)
            rm = reps * share / (gpu.hbm_bytes_per_s * k.eff_memory)
            row = reps * part_bytes / k.row_bytes_per_s
            l2 = (0.0, 0.0)
            if k.l2_speedup != 1.0 and gpu.l2_bytes:
                if kind not in L2_KINDS:
                    raise AssertionError(f"the hot path prices an L2 term for {', '.join(L2_KINDS)} only, not {kind}")
                cap = float(k.l2_hit_bytes(math.inf, gpu.l2_bytes, op.fraction))
                l2 = (reps * cap / (gpu.hbm_bytes_per_s * k.eff_memory), 1.0 - 1.0 / k.l2_speedup)
            wave = ()
            if op.out_width and op.in_width and k.wave_exponent and gpu.sm_count:
                terms = k.tile_terms(op.out_width, gpu.sm_count)
                g = math.gcd(*(int(tm) for tm, _, _ in terms))
                wave = (k.wave_exponent, gpu.sm_count, tuple((int(tm) // g, int(ct), sc) for tm, ct, sc in terms), g,
                        {})  # the last: the padded work per ceil(n / g), filled as token counts come
            blk = (0.0, 0.0)  # one block a token: the launch's tokens from its bytes, as op_time_s counts them
            if (k.block_s or k.blocks_per_sm) and part_bytes and gpu.sm_count:
                per_token = op.bytes.get("new_tokens", 0.0) * share / part_bytes
                blk = (reps * k.block_s / gpu.sm_count * per_token,
                       k.blocks_per_sm * gpu.sm_count / per_token if k.blocks_per_sm and per_token else 0.0)
            out.append(({f: v * rc for f, v in op.flops.items()}, {f: v * rm for f, v in op.bytes.items()},
                        op.const_bytes * rm, row, reps * k.floor_s * op.fraction, k.sharpness, l2, wave, blk))
        return out

    def _comm(self, op: OpForm, reps: int, feature: str) -> tuple[float, float, float, float]:
        """A collective's two lines, (latency s, s per unit of ``feature``) custom then NCCL, for all its calls;
        the step takes the lower (both are NCCL's in ``nccl`` mode)."""
        link = self.gpu.interconnect_bytes_per_s / 2
        n = reps * op.calls
        lines = [self.prior.allreduce[m] for m in (self.allreduce, "nccl")]
        return tuple(v for line in lines for v in (n * line.latency_s, reps * op.bytes[feature] / (link * line.eff)))

    def _fold(self) -> None:
        """Fold every operator into the float coefficients ``step_time_s`` reads, grouped by the features they
        depend on; fail loudly if ops.py grew an operator this hot path does not read."""
        gemms, rows, comm_tok, comm_smp, head = [], {}, [], [], []
        self._ap = self._ad = self._spec = None
        kv_ups = []
        floor_tok = floor_smp = 0.0
        for op, reps in self._ops():
            fs, bs = set(op.flops), set(op.bytes)
            unread = AssertionError(f"ops.py operator {op.name} uses features the hot path does not read")
            if op.kind == "comm":
                feature = next(iter(bs)) if len(bs) == 1 and not fs else None
                if feature not in ("new_tokens", "sampled_tokens"):
                    raise unread
                (comm_tok if feature == "new_tokens" else comm_smp).append(self._comm(op, reps, feature))
                continue
            kernels = self._kernels(op, reps)
            if fs <= {"new_tokens"} and bs <= _TOKEN and (fs or bs):
                for f, b, const, row, floor, c, l2, wave, blk in kernels:
                    floor_tok += floor
                    if op.parts or op.kind == "elementwise":  # memory-only kernels: max(bytes term, row term)
                        key = (b["new_tokens"], row, *l2, blk)
                        rows[key] = rows.get(key, 0) + 1  # identical kernels (the two norms) folded as one
                    else:
                        if any(blk):
                            raise unread
                        gemms.append((f.get("new_tokens", 0.0), const, b.get("new_tokens", 0.0),
                                      b.get("touched_experts", 0.0), c, wave))
            elif fs <= {"sampled_tokens"} and bs <= {"sampled_tokens"}:
                for f, b, const, _, floor, c, _, wave, _ in kernels:
                    floor_smp += floor
                    head.append((f.get("sampled_tokens", 0.0), const, b.get("sampled_tokens", 0.0), c, wave))
            elif (len(kernels) == 1 and op.name.split("@")[0] == "kv_up"
                  and fs | bs <= {"prefill_ctx_tokens", "decode_query_tokens"}):
                # MLA: the latent's up-projection (context, then query)
                (f, b, const, _, floor, c, _, wave, _), = kernels
                if wave:
                    raise unread
                kv_ups.append((f.get("prefill_ctx_tokens", 0.0), f.get("decode_query_tokens", 0.0), const,
                               b.get("prefill_ctx_tokens", 0.0), b.get("decode_query_tokens", 0.0), c, floor))
            elif len(kernels) == 1 and op.name in ("attn_prefill", "attn_decode", "spec_verify"):
                (f, b, _, _, floor, c, _, wave, _), = kernels
                if wave:
                    raise unread
                if op.name == "attn_prefill" and fs <= {"prefill_attn_pairs"} and bs <= {
                        "prefill_tokens", "prefill_ctx_tokens"}:
                    self._ap = (f.get("prefill_attn_pairs", 0.0), b.get("prefill_tokens", 0.0),
                                b.get("prefill_ctx_tokens", 0.0), c, floor)
                elif op.name == "attn_decode" and fs <= {"decode_attn_pairs"} and bs <= {
                        "decode_query_tokens", "decode_ctx_tokens"}:
                    self._ad = (f.get("decode_attn_pairs", 0.0), b.get("decode_query_tokens", 0.0),
                                b.get("decode_ctx_tokens", 0.0), c, floor)
                elif op.name == "spec_verify" and fs <= {"spec_rows"} and bs <= {"spec_rows"}:
                    self._spec = (f.get("spec_rows", 0.0), b.get("spec_rows", 0.0), c, floor)
                else:
                    raise unread
            else:
                raise unread
        if self._ap is None or self._ad is None or self._spec is None:
            raise AssertionError("ops.py lost an attention or verification operator the hot path reads")
        self._kv_ups = tuple(kv_ups)  # one per weight format of a mixed-precision MLA model
        self._gemms = tuple(gemms)
        self._rows = tuple((k * bm, k * row, k * cap, g, k * blk[0], blk[1])
                           for (bm, row, cap, g, blk), k in rows.items())
        self._comm_tok, self._comm_smp, self._head = tuple(comm_tok), tuple(comm_smp), tuple(head)
        self._const_tok, self._floor_smp = self.overhead_s + floor_tok, floor_smp
        # Touched experts: a closed form when the busiest group's experts are equally popular (uniform routing).
        load = self.expert_load
        self._moe = load is not None
        self._moe_one = self._moe and len(load.experts) == 1
        self._moe_e = float(load.experts[0][0]) if self._moe_one else 0.0
        self._moe_q = 1.0 - load.experts[0][1] if self._moe_one else 1.0
        self._tok_memo: dict[int, float] = {}
        self._smp_memo: dict[int, float] = {}

    def _attn_decode_s(self, ds: int, dq: int, dctx: float) -> float:
        fd, bq, bc, c, f = self._ad
        a, m = fd * dctx * dq / ds, bq * dq + bc * dctx
        return f + a + m - c * a * m / (a + m)

    def step_time_s(self, shape: BatchShape) -> float:
        """Total seconds of one step, as ``step_time(shape).total_s`` but without building the breakdown."""
        t = self._base_s(shape)
        ds = shape.decode_seqs
        if ds:  # added last, so that decode_run_s reproduces every step bit for bit
            t += self._attn_decode_s(ds, shape.decode_query_tokens, shape.decode_ctx_tokens)
        return t

    def pass_s(self, shape: BatchShape, graph: bool, eager_scale: float = 1.0) -> float:
        """Device time of one forward pass of a speculative step's draft: its operators without the verification
        (the step's overhead is priced once, with the target's pass). The roofline has no eager floor, so
        ``graph`` and ``eager_scale`` (the calibrated model's) change nothing here."""
        t = self._base_s(shape, verify=False)
        ds = shape.decode_seqs
        if ds:
            t += self._attn_decode_s(ds, shape.decode_query_tokens, shape.decode_ctx_tokens)
        return t - self.overhead_s

    def _base_s(self, shape: BatchShape, verify: bool = True) -> float:
        """Everything of :meth:`step_time_s` but the decode attention (the one term that grows with context);
        ``verify=False``: without the speculative verification."""
        pt, dq = shape.prefill_tokens, shape.decode_query_tokens
        n = pt + dq
        if n == 0:
            return 0.0
        t = self._tok_memo.get(n)
        if t is None:
            t = self._token_s(n)
        for fp, fq, k, bp, bq, c, f in self._kv_ups:
            pctx = shape.prefill_ctx_tokens
            a, m = fp * pctx + fq * dq, k + bp * pctx + bq * dq
            t += f + a + m - c * a * m / (a + m)
        if pt:
            fp, bt, bc, c, f = self._ap
            a, m = fp * shape.prefill_attn_pairs, bt * pt + bc * shape.prefill_ctx_tokens
            t += f + a + m - c * a * m / (a + m)
        ds = shape.decode_seqs
        if ds and dq > ds and verify:
            fv, bv, c, f = self._spec
            a, m = fv * (dq - ds), bv * (dq - ds)
            t += f + a + m - c * a * m / (a + m)
        s = shape.sampled_tokens
        if s:
            h = self._smp_memo.get(s)
            t += self._sampled_s(s) if h is None else h
        return t

    def _token_s(self, n: int) -> float:
        """Overhead and every operator that depends on the step's token count alone (GEMMs, elementwise
        kernels, collectives), remembered per ``n``: steps repeat their token counts."""
        t = self._const_tok
        if not self._moe:
            touched = 0.0
        elif self._moe_one:
            touched = self._moe_e * (1.0 - self._moe_q**n)
        else:
            touched = self.expert_load.touched(n)
        for fc, const, bm, be, c, wave in self._gemms:
            a, m = fc * n, const + bm * n + be * touched
            if wave:  # _wave inlined: this loop runs on every step with a token count not seen before
                beta, sms, tiles, g, memo = wave
                r = -(-n // g)  # the padded work depends on n only through ceil(n / g), g | every tile's rows
                q = memo.get(r)
                if q is None:
                    q = inf
                    for k, ct, sc in tiles:  # ceil(ceil(n / tm) * ct / sms), tm = k * g, in whole numbers
                        w = -(-(-(-r // k) * ct) // sms) * sc
                        if w < q:
                            q = w
                    memo[r] = q
                a *= (q / n) ** beta
            t += a + m - c * a * m / (a + m)
        for bm, row, cap, g, blk, per_wave in self._rows:
            m = bm * n
            if g:  # the L2-resident part of the working set streams faster
                m -= (m if m < cap else cap) * g
            if blk:  # the per-block cost of one-block-per-token kernels
                m += blk * n
            if per_wave:  # their rows run in waves of resident blocks
                r = row * max(ceil(n / per_wave - 1e-9), 1)
                t += m if m > r else r
            else:
                t += m if m > row else row
        for lc, kc, ln, kn in self._comm_tok:
            x, y = lc + kc * n, ln + kn * n
            t += x if x < y else y
        if len(self._tok_memo) < _MEMO_MAX:
            self._tok_memo[n] = t
        return t

    def _sampled_s(self, s: int) -> float:
        """The LM head, the sampler and the logits gather for ``s`` sampled rows, remembered per ``s``."""
        t = self._floor_smp
        for fc, const, bm, c, wave in self._head:
            a, m = fc * s, const + bm * s
            if wave:
                a *= _wave(s, *wave)
            t += a + m - c * a * m / (a + m)
        for lc, kc, ln, kn in self._comm_smp:
            x, y = lc + kc * s, ln + kn * s
            t += x if x < y else y
        if len(self._smp_memo) < _MEMO_MAX:
            self._smp_memo[s] = t
        return t

    def decode_run_s(self, shape: BatchShape, n: int) -> np.ndarray:
        """Durations of ``n`` consecutive pure-decode steps; step i reads
        ``decode_ctx_tokens + i·decode_seqs`` KV tokens, all else equal.
        Bit for bit what :meth:`step_time_s` gives for each step (the simulator's fast-forward relies on it):
        the operations of :meth:`_attn_decode_s` in the same order, on arrays."""
        ds, dq = shape.decode_seqs, shape.decode_query_tokens
        if n <= 0:
            return np.zeros(0)
        if ds == 0 or shape.prefill_tokens:
            raise ValueError("decode_run_s takes a pure-decode shape (decode_seqs > 0, no prefill)")
        fd, bq, bc, c, f = self._ad
        c0 = shape.decode_ctx_tokens
        ctx = np.arange(c0, c0 + ds * n, ds, dtype=np.float64)  # c0 + ds * i, exact: integers below 2**53
        a = fd * ctx * dq / ds
        m = bq * dq + bc * ctx
        return self._base_s(shape) + (f + a + m - c * a * m / (a + m))
