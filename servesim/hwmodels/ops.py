"""The operators of one forward step and their FLOPs and bytes, per GPU: the one place these formulas live.

A step is described by a :class:`BatchShape` of aggregates. Every operator's FLOPs and bytes are linear in
a few *features* of the shape (new tokens, causal pairs, KV tokens read, ...) plus a constant (its
weights), so each operator is an :class:`OpForm`: coefficients per feature. The roofline cost model turns
those coefficients into seconds once, at construction; a calibrated profile can replace the time of an
operator without touching these counts.

Conventions: per GPU under tensor parallelism ``tp`` (column-parallel QKV and gate/up, row-parallel O and
down, vocab-parallel LM head); activations bf16 (2 bytes); one FLOP = one multiply or add (a GEMM is
2·m·k·n). An operator whose features are all zero does not run (its weights are not read).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from servesim.hwmodels.models import ModelSpec, WeightFormat, get_weight_format, kv_dtype_bytes
from servesim.hwmodels.moe import ExpertLoad, expert_load
from servesim.hwmodels.precision import linear_role, parse_quant

ACT_BYTES = 2  # bf16 activations
LOGIT_BYTES = 4  # fp32 logits and probabilities in the sampler
FEATURES = (
    "new_tokens",
    "prefill_tokens",
    "prefill_attn_pairs",
    "prefill_ctx_tokens",
    "decode_seqs",
    "decode_query_tokens",
    "decode_ctx_tokens",
    "decode_attn_pairs",
    "sampled_tokens",
    "spec_rows",
    "touched_experts",
)


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What one forward step of one replica computes, as aggregates so costing is O(1) per step."""

    prefill_seqs: int = 0  # sequences with a prefill chunk this step
    prefill_tokens: int = 0  # Σ chunk lengths (new tokens)
    prefill_attn_pairs: float = (
        0  # Σ over chunks of Σ_{i<chunk} (ctx_before + i + 1): causal (query, key) pairs
    )
    prefill_ctx_tokens: int = 0  # Σ (ctx_before + chunk): KV tokens the prefill chunks read
    decode_seqs: int = 0  # sequences decoding this step
    decode_query_tokens: int = (
        0  # Σ (1 + k) over decode seqs (k speculative tokens); = decode_seqs without spec
    )
    decode_ctx_tokens: int = 0  # Σ context length (KV tokens read) over decode sequences
    sampled_tokens: int = 0  # logits rows computed by the LM head (finished prefills + decode query tokens)
    decode_ctx_max: int = 0  # the longest decode context (0: unknown; costed at the mean)


def prefill_shape(prompt_tokens: int, ctx_before: int = 0) -> BatchShape:
    """One prefill chunk of ``prompt_tokens`` after ``ctx_before`` cached tokens, finishing its prompt."""
    n, c = prompt_tokens, ctx_before
    return BatchShape(
        prefill_seqs=1,
        prefill_tokens=n,
        prefill_attn_pairs=n * c + n * (n + 1) / 2,
        prefill_ctx_tokens=c + n,
        sampled_tokens=1,
    )


def decode_shape(batch: int, ctx_tokens: int, spec_k: int = 0) -> BatchShape:
    """``batch`` sequences decoding at context ``ctx_tokens`` each, verifying ``spec_k`` drafts each."""
    q = batch * (1 + spec_k)
    return BatchShape(
        decode_seqs=batch, decode_query_tokens=q, decode_ctx_tokens=batch * ctx_tokens, sampled_tokens=q,
        decode_ctx_max=ctx_tokens,
    )


def expected_touched_experts(tokens: float, num_experts: int, top_k: int) -> float:
    """Expected distinct experts hit by ``tokens`` tokens each routed to ``top_k`` of ``num_experts``
    uniformly: E·(1 − (1 − k/E)^n)."""
    if num_experts == 0 or tokens <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


def features(shape: BatchShape, model: ModelSpec, load: ExpertLoad | None = None) -> dict[str, float]:
    """The shape's features that operator costs are linear in (see :data:`FEATURES`); ``touched_experts``
    counts the experts of the busiest expert-parallel group (``load``; default: all, uniform routing)."""
    s = shape
    new = s.prefill_tokens + s.decode_query_tokens
    # Σ_i q_i·ctx_i; exact when every decode sequence verifies the same number of speculative tokens.
    dpairs = s.decode_ctx_tokens * s.decode_query_tokens / s.decode_seqs if s.decode_seqs else 0.0
    return {
        "new_tokens": new,
        "prefill_tokens": s.prefill_tokens,
        "prefill_attn_pairs": s.prefill_attn_pairs,
        "prefill_ctx_tokens": s.prefill_ctx_tokens,
        "decode_seqs": s.decode_seqs,
        "decode_query_tokens": s.decode_query_tokens,
        "decode_ctx_tokens": s.decode_ctx_tokens,
        "decode_attn_pairs": dpairs,
        "sampled_tokens": s.sampled_tokens,
        "spec_rows": s.decode_query_tokens - s.decode_seqs,
        "touched_experts": (load or expert_load(model) or _NO_EXPERTS).touched(new),
    }


_NO_EXPERTS = ExpertLoad(0.0, ())


@dataclass(frozen=True, slots=True)
class OpForm:
    """An operator's FLOPs and bytes on one GPU: ``const + Σ coef·feature``. ``kind`` picks the prior's parameters
    (gemm, gemm_w8a16, gemm_w4a16, gemm_w8a8, gemm_fp8, attn_prefill, attn_decode, elementwise, comm, sampler);
    ``calls`` counts collectives (latency). ``parts`` lists the kernels an operator of several launches runs,
    each as (kernel kind, bytes per new token); their bytes sum to the operator's, and the cost model prices each
    with its own floor."""

    name: str
    kind: str
    flops: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, float] = field(default_factory=dict)
    const_bytes: float = 0.0  # weights read once per step
    compute_dtype: str = "bf16"
    calls: float = 0  # per layer: fractional in the average layer of a model with dense and MoE layers
    parts: tuple[tuple[str, float], ...] = ()
    in_width: float = 0.0  # GEMMs: input elements per token (what a per-token activation quantizer reads)
    out_width: float = 0.0  # one dense GEMM: its N on this GPU (the prior's wave term); 0 = not one GEMM of known N
    fraction: float = 1.0  # share of the layers that run it (the average layer of a mixed model): scales floors

    def evaluate(self, feats: dict[str, float]) -> tuple[float, float]:
        """(FLOPs, bytes) for these features; (0, 0) when the operator does not run."""
        if not any(feats[k] for k in (*self.flops, *self.bytes)):
            return 0.0, 0.0
        return (
            sum(c * feats[k] for k, c in self.flops.items()),
            self.const_bytes + sum(c * feats[k] for k, c in self.bytes.items()),
        )


# Bytes per token of the elementwise kernels (bf16), the one place their traffic is counted. The engine and vLLM
# fuse the residual add into RMSNorm; the unfused forms are what Vidur's public tables time (bench/fit_prior.py).
def fused_add_rms_norm_bytes(h: int) -> float:
    """Read x and the residual, write both."""
    return 4 * h * ACT_BYTES


def rms_norm_bytes(h: int) -> float:
    """Read x, write the normalized x."""
    return 2 * h * ACT_BYTES


def residual_add_bytes(h: int) -> float:
    """Read two rows, write their sum."""
    return 3 * h * ACT_BYTES


def silu_mul_bytes(i: int) -> float:
    """Read gate and up (2i), write i."""
    return 3 * i * ACT_BYTES


def rope_bytes(q: int, kv: int) -> float:
    """Rotate q and k in place: read and write both."""
    return 2 * (q + kv) * ACT_BYTES


QUANT_GEMM_FORMATS = ("w8a16", "w4a16", "w8a8", "fp8")


def gemm_kind(weight_format: str) -> str:
    """The operator kind of a GEMM whose weights are stored in ``weight_format``: quantized formats run their own
    kernels (``gemm_w8a16`` and ``gemm_w4a16`` dequantize into bf16 tensor cores, ``gemm_w8a8`` runs int8 ones,
    ``gemm_fp8`` fp8 ones), bf16 and fp16 the plain tensor-core GEMM (``gemm``)."""
    return f"gemm_{weight_format}" if weight_format in QUANT_GEMM_FORMATS else "gemm"


def act_quant_bytes(k: float, act_bytes: int = 1) -> float:
    """Per-token activation quantization of a k-wide row: read it in bf16, write its codes and one fp32 scale."""
    return k * (ACT_BYTES + act_bytes) + 4


def _gemm(
    name: str, k: int, n: int, weight_bytes: float, dtype: str, copies: float = 1.0, kind: str = "gemm",
    in_bytes: int = ACT_BYTES,
) -> OpForm:
    # copies: rows each token feeds (top-k for experts); weights read once per step; inputs in_bytes each
    # (1 when the activations were quantized to int8/fp8 before the GEMM), outputs bf16.
    return OpForm(
        name,
        kind,
        {"new_tokens": 2.0 * k * n * copies},
        {"new_tokens": (k * in_bytes + n * ACT_BYTES) * copies},
        weight_bytes,
        dtype,
        in_width=k * copies,
        out_width=float(n) if copies == 1.0 else 0.0,  # experts: rows per expert vary, no wave term
    )


def _linear(name: str, k: int, n: int, wf: WeightFormat, extra_bytes: float = 0.0, copies: float = 1.0,
            weights: bool = True) -> OpForm:
    """A linear layer's GEMM in weight format ``wf`` (``weights=False``: its weights are priced elsewhere)."""
    return _gemm(name, k, n, wf.matrix_bytes(k, n) + extra_bytes if weights else 0.0, wf.compute_dtype, copies,
                 gemm_kind(wf.name), wf.act_bytes)


def _scaled(op: OpForm, fraction: float) -> OpForm:
    """``op`` in ``fraction`` of the layers, as a share of the average layer."""
    if fraction == 1.0:
        return op
    return replace(
        op,
        flops={k: v * fraction for k, v in op.flops.items()},
        bytes={k: v * fraction for k, v in op.bytes.items()},
        const_bytes=op.const_bytes * fraction,
        calls=op.calls * fraction,
        parts=tuple((kind, b * fraction) for kind, b in op.parts),
        in_width=op.in_width * fraction,
        fraction=op.fraction * fraction,
    )


def _summed(a: OpForm, b: OpForm) -> OpForm:
    """One operator from two shares of it (same name, kind, dtype and kernels) in different layers."""
    def add(x: dict, y: dict) -> dict:
        return {k: x.get(k, 0.0) + y.get(k, 0.0) for k in {**x, **y}}

    parts = tuple((k, x + y) for (k, x), (_, y) in zip(a.parts, b.parts))
    return replace(a, flops=add(a.flops, b.flops), bytes=add(a.bytes, b.bytes),
                   const_bytes=a.const_bytes + b.const_bytes, calls=a.calls + b.calls, parts=parts,
                   in_width=a.in_width + b.in_width, fraction=a.fraction + b.fraction)


def _attention_ops(
    model: ModelSpec, tp: int, wf: dict[str, WeightFormat], kvb: int
) -> tuple[list[OpForm], tuple[int, int]]:
    """GQA attention: QKV, prefill and decode attention, O; and the q and k widths RoPE rotates per token."""
    h, q = model.hidden_size, model.q_size // tp
    kv = max(model.num_kv_heads // tp, 1) * model.head_dim  # KV heads are replicated when tp exceeds them
    qkv_n = q + 2 * kv
    qkv_bias = qkv_n * ACT_BYTES if model.qkv_bias else 0.0
    return [
        _linear("qkv", h, qkv_n, wf["qkv"], qkv_bias),
        # FlashAttention: 2 FLOPs for QK^T and 2 for PV per (query, key) pair per head dim; reads Q, the KV
        # it attends to once (re-reads per query tile are ignored), writes O and the new K/V.
        OpForm(
            "attn_prefill",
            "attn_prefill",
            {"prefill_attn_pairs": 4.0 * q},
            {"prefill_tokens": 2 * q * ACT_BYTES + 2 * kv * kvb, "prefill_ctx_tokens": 2 * kv * kvb},
        ),
        OpForm(
            "attn_decode",
            "attn_decode",
            {"decode_attn_pairs": 4.0 * q},
            {"decode_query_tokens": 2 * q * ACT_BYTES + 2 * kv * kvb, "decode_ctx_tokens": 2 * kv * kvb},
        ),
        _linear("o", q, h, wf["o"]),
    ], (q, kv)


def _mla_attention_ops(
    model: ModelSpec, tp: int, wfs: dict[str, WeightFormat], kvb: int
) -> tuple[list[OpForm], tuple[int, int]]:
    """Multi-head latent attention (DeepSeek-V2), as vLLM runs it: the cache holds one latent of
    ``kv_lora_rank`` plus the rotary key per token (on every GPU); a prefill decompresses the latent of every
    context token into K and V (``kv_up`` over the context) and attends at head width; a decode folds the
    up-projection into the query and the output (``kv_up`` over the query tokens) and attends over the
    latent itself."""
    wf = wfs["qkv"]
    h, dt, heads, gk = model.hidden_size, wf.compute_dtype, model.num_heads // tp, gemm_kind(wf.name)
    r, rope, v = model.kv_lora_rank, model.qk_rope_head_dim, model.value_head_dim
    nope, q, latent = model.head_dim - rope, heads * model.head_dim, r + rope
    qr = model.q_lora_rank
    parts = ([(h, qr), (qr, q)] if qr else [(h, q)]) + [(h, latent)]  # query path, then the KV down-projection
    up = heads * (nope + v)  # decompressed K (no-rotary part) and V of this GPU's heads
    return [
        OpForm(
            "qkv",
            gk,
            {"new_tokens": sum(2.0 * a * b for a, b in parts)},
            {"new_tokens": sum(a * wf.act_bytes + b * ACT_BYTES for a, b in parts)},
            sum(wf.matrix_bytes(a, b) for a, b in parts),
            dt,
            in_width=sum(a for a, _ in parts),
        ),
        OpForm(
            "kv_up",
            gk,
            {"prefill_ctx_tokens": 2.0 * r * up, "decode_query_tokens": 2.0 * r * up},
            {
                "prefill_ctx_tokens": (r + up) * ACT_BYTES,  # read the latent, write K and V
                "decode_query_tokens": (heads * (nope + 2 * r) + heads * v) * ACT_BYTES,  # q in/out, o in/out
            },
            wf.matrix_bytes(r, up),
            dt,
        ),
        OpForm(
            "attn_prefill",
            "attn_prefill",
            {"prefill_attn_pairs": 2.0 * heads * (model.head_dim + v)},
            {
                "prefill_tokens": (q + heads * v) * ACT_BYTES + latent * kvb,  # Q in, O out, latent cached
                "prefill_ctx_tokens": heads * (model.head_dim + v) * ACT_BYTES,  # decompressed K and V read
            },
        ),
        OpForm(
            "attn_decode",
            "attn_decode",
            {"decode_attn_pairs": 2.0 * heads * (latent + r)},  # scores over latent+rope, output over latent
            {"decode_query_tokens": heads * (latent + r) * ACT_BYTES + latent * kvb, "decode_ctx_tokens": latent * kvb},
        ),
        _linear("o", heads * v, h, wfs["o"]),
    ], (heads * rope, rope)  # RoPE turns only the rotary parts of q and k


def _mlp_ops(
    model: ModelSpec, tp: int, wfs: dict[str, WeightFormat], load: ExpertLoad | None, ep: int
) -> tuple[list[OpForm], float]:
    """The MLP operators of the average layer and the width SiLU·mul touches per token.

    MoE: the router on every GPU; the routed experts over the assignments their GPU group receives
    (``top_k × share`` rows per token), reading only the experts some token reached; shared experts on
    every token; the dense layers' MLP weighted by their fraction of the layers."""
    h, wg, wd = model.hidden_size, wfs["gate_up"], wfs["down"]
    if load is None:
        i = model.intermediate_size // tp
        return [_linear("gate_up", h, 2 * i, wg), _linear("down", i, h, wd)], i
    moe = model.moe_layers / model.num_layers
    i, e = model.expert_intermediate_size // (tp // ep), model.num_experts
    copies = model.experts_per_token * load.share
    ops = [_gemm("router", h, e, 2.0 * h * e, "bf16")]
    for name, kk, nn, wf in (("gate_up", h, 2 * i, wg), ("down", i, h, wd)):
        op = _linear(name, kk, nn, wf, copies=copies, weights=False)
        # Only the experts some token was routed to are read.
        ops.append(replace(op, bytes={**op.bytes, "touched_experts": wf.matrix_bytes(kk, nn)}, out_width=0.0))
    act = copies * i
    if model.shared_expert_intermediate_size:
        s = model.shared_expert_intermediate_size // tp
        ops += [_linear("shared_gate_up", h, 2 * s, wg), _linear("shared_down", s, h, wd)]
        act += s
    ops, act = [_scaled(op, moe) for op in ops], act * moe
    if model.num_dense_layers:
        d = model.intermediate_size // tp
        ops += [
            _scaled(_linear("dense_gate_up", h, 2 * d, wg), 1.0 - moe),
            _scaled(_linear("dense_down", d, h, wd), 1.0 - moe),
        ]
        act += (1.0 - moe) * d
    return ops, act


def _comm_ops(model: ModelSpec, tp: int, load: ExpertLoad | None, ep: int) -> list[OpForm]:
    """Collectives of the average layer. Dense layers (and every layer at ep = 1): two ring all-reduces,
    after O and after the MLP, each GPU sending and receiving 2(tp−1)/tp of the hidden states. MoE layers at
    ep > 1: the attention output is reduce-scattered (each GPU keeps 1/tp of the tokens), each token's
    top-k copies are dispatched to the GPUs of its experts' groups and the results combined back (two
    all-to-alls; the busiest group receives ``share`` of the copies), then the tokens are all-gathered."""
    h = model.hidden_size
    ring = 2 * (tp - 1) / tp * h * ACT_BYTES  # one all-reduce, bytes per token per GPU
    if ep == 1:
        return [OpForm("allreduce", "comm", {}, {"new_tokens": 2 * ring}, calls=2)]
    moe = model.moe_layers / model.num_layers
    copies = 2 * model.experts_per_token * load.share * (tp - 1) / tp * h * ACT_BYTES
    return [
        OpForm("allreduce", "comm", {}, {"new_tokens": (2.0 - moe) * ring}, calls=2),
        OpForm("all_to_all", "comm", {}, {"new_tokens": moe * copies}, calls=2 * moe),
    ]


def layer_ops(
    model: ModelSpec,
    tp: int = 1,
    weight_format: str = "bf16",
    kv_dtype: str = "bf16",
    ep: int = 1,
    expert_skew: float = 0.0,
) -> list[OpForm]:
    """The operators of one decoder layer on one of ``tp`` GPUs, the experts in ``ep`` groups routed with
    ``expert_skew``. In an MoE model with dense layers, of the average layer: each MLP's operators weighted
    by the fraction of the layers that have it.

    ``weight_format`` is a format or a mixed-precision spec (hwmodels/precision.py). A spec whose layers differ
    (``first:N``, ``last:N``) gives the average layer too: each linear's GEMM once per format, weighted by the
    share of the layers in it (the share of the most layers keeps the bare name, the others are ``name@format``).
    A linear in a W8A8 format has its input quantized per token first: an ``act_quant_<linear>`` kernel."""
    kvb = kv_dtype_bytes(kv_dtype)
    load = expert_load(model, ep, expert_skew)
    ops: dict[tuple, OpForm] = {}
    names: dict[str, str] = {}  # op name -> the format of its bare-named share
    for fraction, formats in parse_quant(weight_format).layer_groups(model.num_layers):
        wfs = {linear: get_weight_format(f) for linear, f in formats.items()}
        for op in _one_layer_ops(model, tp, wfs, kvb, load, ep):
            op = _scaled(op, fraction)
            fmt = formats.get(linear_role(op.name), "") if op.kind.startswith("gemm") else ""
            names.setdefault(op.name, fmt)
            key = (op.name, op.kind, op.compute_dtype, tuple(k for k, _ in op.parts))
            if key in ops:
                ops[key] = _summed(ops[key], op)
            else:
                ops[key] = op if names[op.name] == fmt else replace(op, name=f"{op.name}@{fmt}")
    return list(ops.values())


def _one_layer_ops(model: ModelSpec, tp: int, wfs: dict[str, WeightFormat], kvb: int, load: ExpertLoad | None,
                   ep: int) -> list[OpForm]:
    """The operators of a decoder layer whose linears are in the formats ``wfs`` (linear -> format)."""
    h = model.hidden_size
    ops, rope = (_mla_attention_ops if model.is_mla else _attention_ops)(model, tp, wfs, kvb)
    mlp, mlp_act = _mlp_ops(model, tp, wfs, load, ep)
    ops += mlp
    # A W8A8 linear's input is quantized per token (dynamic scales) by a kernel of its own, one per linear.
    quant: dict[str, float] = {}
    for op in ops:
        role = linear_role(op.name)
        if op.in_width and role in wfs and wfs[role].quantizes_activations and op.kind.startswith("gemm_"):
            quant[role] = quant.get(role, 0.0) + act_quant_bytes(op.in_width, wfs[role].act_bytes)
    for role, b in quant.items():
        ops.append(OpForm(f"act_quant_{role}", "elementwise", {}, {"new_tokens": b}, parts=(("act_quant", b),)))
    # Four kernels: two fused RMSNorm+residual, SiLU·mul, RoPE on q and k.
    norm = fused_add_rms_norm_bytes(h)
    parts = (("norm", norm), ("norm", norm), ("act", silu_mul_bytes(mlp_act)), ("rope", rope_bytes(*rope)))
    ops.append(OpForm("norm_act", "elementwise", {}, {"new_tokens": sum(b for _, b in parts)}, parts=parts))
    if tp > 1:
        ops += _comm_ops(model, tp, load, ep)
    return ops


def head_ops(model: ModelSpec, tp: int = 1) -> list[OpForm]:
    """Once per step, on the last pipeline stage: LM head on sampled rows, sampler, spec verification."""
    h, v = model.hidden_size, model.vocab_size
    vp = -(-v // tp)  # vocab rows on this GPU
    ops = [
        OpForm(
            "lm_head",
            "gemm",
            {"sampled_tokens": 2.0 * h * vp},
            {"sampled_tokens": (h + vp) * ACT_BYTES},
            2.0 * h * vp,
            in_width=h,
            out_width=vp,
        )
    ]  # kept in bf16 in every weight format
    if tp > 1:  # gather the vocab-parallel logits
        ops.append(
            OpForm("logits_gather", "comm", {}, {"sampled_tokens": (tp - 1) / tp * v * LOGIT_BYTES}, calls=1)
        )
    # Softmax, top-p/top-k and sampling over the full vocabulary: ~3 passes over fp32 rows.
    ops.append(
        OpForm("sampling", "sampler", {"sampled_tokens": 5.0 * v}, {"sampled_tokens": 3.0 * v * LOGIT_BYTES})
    )
    # Rejection sampling reads the target and draft probability rows of every speculative token.
    ops.append(OpForm("spec_verify", "sampler", {"spec_rows": 4.0 * v}, {"spec_rows": 2.0 * v * LOGIT_BYTES}))
    return ops


def step_flops_bytes(
    shape: BatchShape,
    model: ModelSpec,
    tp: int = 1,
    weight_format: str = "bf16",
    kv_dtype: str = "bf16",
    layers: int | None = None,
    ep: int = 1,
    expert_skew: float = 0.0,
) -> dict[str, tuple[float, float]]:
    """(FLOPs, bytes) per operator for one step on one GPU: layer operators × ``layers`` (all by default)
    plus the head operators."""
    feats = features(shape, model, expert_load(model, ep, expert_skew))
    n = model.num_layers if layers is None else layers
    out = {}
    for op in layer_ops(model, tp, weight_format, kv_dtype, ep, expert_skew):
        f, b = op.evaluate(feats)
        out[op.name] = (f * n, b * n)
    for op in head_ops(model, tp):
        out[op.name] = op.evaluate(feats)
    return out
