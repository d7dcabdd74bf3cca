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

from dataclasses import dataclass, field

from servesim.hwmodels.models import ModelSpec, get_weight_format, kv_dtype_bytes

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


def features(shape: BatchShape, model: ModelSpec) -> dict[str, float]:
    """The shape's features that operator costs are linear in (see :data:`FEATURES`)."""
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
        "touched_experts": expected_touched_experts(new, model.num_experts, model.experts_per_token),
    }


@dataclass(frozen=True, slots=True)
class OpForm:
    """An operator's FLOPs and bytes on one GPU: ``const + Σ coef·feature``. ``kind`` picks the prior's parameters
    (gemm, gemm_w8a16, gemm_w4a16, attn_prefill, attn_decode, elementwise, comm, sampler); ``calls`` counts
    collectives (latency). ``parts`` lists the kernels an operator of several launches runs, each as (kernel
    kind, bytes per new token); their bytes sum to the operator's, and the cost model prices each with its own
    floor."""

    name: str
    kind: str
    flops: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, float] = field(default_factory=dict)
    const_bytes: float = 0.0  # weights read once per step
    compute_dtype: str = "bf16"
    calls: int = 0
    parts: tuple[tuple[str, float], ...] = ()

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


def gemm_kind(weight_format: str) -> str:
    """The operator kind of a GEMM whose weights are stored in ``weight_format``: weight-only integer formats
    run their own dequantizing kernels (``gemm_w8a16``, ``gemm_w4a16``), the rest a tensor-core GEMM in their
    compute dtype (``gemm``)."""
    return f"gemm_{weight_format}" if weight_format in ("w8a16", "w4a16") else "gemm"


def _gemm(
    name: str, k: int, n: int, weight_bytes: float, dtype: str, copies: float = 1.0, kind: str = "gemm"
) -> OpForm:
    # copies: rows each token feeds (top-k for experts); weights read once per step.
    return OpForm(
        name,
        kind,
        {"new_tokens": 2.0 * k * n * copies},
        {"new_tokens": (k + n) * copies * ACT_BYTES},
        weight_bytes,
        dtype,
    )


def layer_ops(
    model: ModelSpec, tp: int = 1, weight_format: str = "bf16", kv_dtype: str = "bf16"
) -> list[OpForm]:
    """The operators of one decoder layer on one of ``tp`` GPUs."""
    wf, kvb = get_weight_format(weight_format), kv_dtype_bytes(kv_dtype)
    h, q, dt, gk = model.hidden_size, model.q_size // tp, wf.compute_dtype, gemm_kind(wf.name)
    kv = max(model.num_kv_heads // tp, 1) * model.head_dim  # KV heads are replicated when tp exceeds them
    qkv_n = q + 2 * kv
    qkv_bias = qkv_n * ACT_BYTES if model.qkv_bias else 0.0
    ops = [
        _gemm("qkv", h, qkv_n, wf.matrix_bytes(h, qkv_n) + qkv_bias, dt, kind=gk),
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
        _gemm("o", q, h, wf.matrix_bytes(q, h), dt, kind=gk),
    ]
    if model.is_moe:
        i, e, k = model.expert_intermediate_size // tp, model.num_experts, model.experts_per_token
        ops.append(_gemm("router", h, e, 2.0 * h * e, "bf16"))
        for name, kk, nn in (("gate_up", h, 2 * i), ("down", i, h)):
            op = _gemm(name, kk, nn, 0.0, dt, copies=k)
            # Only the experts some token was routed to are read.
            ops.append(
                OpForm(name, gk, op.flops, {**op.bytes, "touched_experts": wf.matrix_bytes(kk, nn)}, 0.0, dt)
            )
        mlp_act = k * i
    else:
        i = model.intermediate_size // tp
        ops += [
            _gemm("gate_up", h, 2 * i, wf.matrix_bytes(h, 2 * i), dt, kind=gk),
            _gemm("down", i, h, wf.matrix_bytes(i, h), dt, kind=gk),
        ]
        mlp_act = i
    # Four kernels: two fused RMSNorm+residual, SiLU·mul, RoPE on q and k.
    norm = fused_add_rms_norm_bytes(h)
    parts = (("norm", norm), ("norm", norm), ("act", silu_mul_bytes(mlp_act)), ("rope", rope_bytes(q, kv)))
    ops.append(OpForm("norm_act", "elementwise", {}, {"new_tokens": sum(b for _, b in parts)}, parts=parts))
    if tp > 1:  # two all-reduces (after O and after down), ring: each GPU sends and receives 2(tp−1)/tp of it
        ops.append(
            OpForm("allreduce", "comm", {}, {"new_tokens": 2 * 2 * (tp - 1) / tp * h * ACT_BYTES}, calls=2)
        )
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
) -> dict[str, tuple[float, float]]:
    """(FLOPs, bytes) per operator for one step on one GPU: layer operators × ``layers`` (all by default)
    plus the head operators."""
    feats = features(shape, model)
    n = model.num_layers if layers is None else layers
    out = {}
    for op in layer_ops(model, tp, weight_format, kv_dtype):
        f, b = op.evaluate(feats)
        out[op.name] = (f * n, b * n)
    for op in head_ops(model, tp):
        out[op.name] = op.evaluate(feats)
    return out
