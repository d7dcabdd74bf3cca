"""Memory planner: weights, activation workspace and KV-cache capacity per GPU, as vLLM budgets them.

vLLM gives the engine ``gpu_memory_utilization × memory``; from that it takes the weights, the peak
activation workspace of a profiling forward pass of ``max_num_batched_tokens`` tokens, and the memory
outside PyTorch's allocator (CUDA context, cuBLAS/NCCL workspaces, CUDA-graph pools); the rest is KV cache,
cut into blocks of ``block_size`` tokens. The activation and runtime terms here are estimates (the engine
reports the measured block count, which validation uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from servesim.errors import ConfigError
from servesim.hwmodels.models import ModelSpec, kv_dtype_bytes
from servesim.hwmodels.ops import ACT_BYTES, LOGIT_BYTES, head_ops, layer_ops
from servesim.hwmodels.placement import Placement

GB = 1e9
DEFAULT_RUNTIME_BYTES = 2**30  # CUDA context (~0.5 GiB) + cuBLAS/NCCL workspaces + CUDA-graph pool


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """Where one GPU's memory goes (the fullest pipeline stage), in bytes."""

    memory_bytes: int
    usable_bytes: float  # memory_bytes × gpu_memory_utilization
    weights_bytes: float
    activation_bytes: float
    runtime_bytes: float
    kv_cache_bytes: float  # kv_blocks × kv_bytes_per_block
    kv_bytes_per_token: int
    kv_bytes_per_block: int
    kv_blocks: int
    kv_capacity_tokens: int
    headroom_bytes: float  # not allocated: (1 − utilization) × memory + less than one block


def stage_weight_bytes(
    model: ModelSpec, tp: int = 1, pp: int = 1, weight_format: str = "bf16", ep: int = 1
) -> float:
    """Weight bytes on one GPU of the fullest pipeline stage: ⌈layers/pp⌉ layers (every expert: the
    ``1/ep`` of them its group holds, each split ``tp/ep`` ways), the LM head (last stage) and, when pp = 1,
    the embedding (shared with the head when tied); from ops.py's operator weights."""
    per_layer = 2 * model.hidden_size * ACT_BYTES  # two RMSNorm weights, replicated
    experts_here = model.num_experts // ep
    for op in layer_ops(model, tp, weight_format, ep=ep):
        per_layer += op.const_bytes + experts_here * op.bytes.get("touched_experts", 0.0)
    head = next(op.const_bytes for op in head_ops(model, tp) if op.name == "lm_head")
    embed = 0.0 if pp > 1 or model.tied_embeddings else head  # vocab-parallel, the same size as the head
    return math.ceil(model.num_layers / pp) * per_layer + head + embed + model.hidden_size * ACT_BYTES


def activation_bytes(
    model: ModelSpec, tp: int = 1, max_num_batched_tokens: int = 8192, max_num_seqs: int = 256
) -> float:
    """Peak activation workspace on one GPU for a forward pass of ``max_num_batched_tokens`` tokens:
    hidden state, residual, norm and attention outputs, QKV, the MLP's gate/up and activated outputs (per
    routed expert slot for MoE, plus fp32 router logits), and fp32 logits and probabilities of
    ``max_num_seqs`` rows in the sampler."""
    h, v = model.hidden_size, model.vocab_size
    if model.is_mla:  # query, latent, and a prefill's decompressed K and V
        heads = model.num_heads // tp
        qkv = heads * model.head_dim + model.kv_cache_width() + heads * (model.head_dim + model.value_head_dim)
    else:
        qkv = model.q_size // tp + 2 * max(model.num_kv_heads // tp, 1) * model.head_dim
    if model.is_moe:
        mlp = model.experts_per_token * 3 * model.expert_intermediate_size // tp + 2 * model.num_experts
        mlp += 3 * model.shared_expert_intermediate_size // tp
    else:
        mlp = 3 * model.intermediate_size // tp
    per_token = (4 * h + qkv + mlp) * ACT_BYTES
    return max_num_batched_tokens * per_token + max_num_seqs * v * LOGIT_BYTES * 2


def plan_memory(
    placement: Placement,
    gpu_memory_utilization: float = 0.9,
    block_size: int = 16,
    max_num_batched_tokens: int = 8192,
    max_num_seqs: int = 256,
    runtime_bytes: float = DEFAULT_RUNTIME_BYTES,
    fraction_of: str = "total",
) -> MemoryPlan:
    """Plan one GPU's memory; ConfigError (with the numbers) when the weights or one KV block do not fit.

    ``fraction_of="total"``: ``gpu_memory_utilization`` of the GPU's memory holds everything (vLLM);
    ``"free"``: that fraction of what weights, activations and runtime leave free is KV cache (TensorRT-LLM's
    ``free_gpu_memory_fraction``)."""
    if fraction_of not in ("total", "free"):
        raise ConfigError(f"must be 'total' or 'free', got {fraction_of!r}", field="memory_fraction_of")
    model, gpu, tp, pp = placement.model, placement.gpu, placement.tp, placement.pp
    weight_format, kv_dtype = placement.weight_format, placement.kv_dtype
    if not 0 < gpu_memory_utilization <= 1:
        raise ConfigError(f"must be in (0, 1], got {gpu_memory_utilization}", field="gpu_memory_utilization")
    if block_size < 1 or max_num_batched_tokens < 1:
        raise ConfigError("block_size and max_num_batched_tokens must be >= 1", field="block_size")
    usable = gpu.memory_bytes * (gpu_memory_utilization if fraction_of == "total" else 1.0)
    weights = stage_weight_bytes(model, tp, pp, weight_format, placement.ep)
    where = f"at tp={tp}" + (f" pp={pp}" if pp > 1 else "") + (f" ep={placement.ep}" if placement.ep > 1 else "")
    has = (f"{gpu.name} has {usable / GB:.1f} GB usable at gpu_memory_utilization {gpu_memory_utilization:.2f}"
           if fraction_of == "total" else f"{gpu.name} has {usable / GB:.1f} GB")
    if weights > usable:
        raise ConfigError(
            f"{model.name} in {weight_format} needs {weights / GB:.1f} GB of weights per GPU {where}; {has}"
        )
    act = activation_bytes(model, tp, max_num_batched_tokens, max_num_seqs)
    kv_layers = math.ceil(model.num_layers / pp)
    per_token = kv_layers * model.kv_cache_width(tp) * kv_dtype_bytes(kv_dtype)
    per_block = per_token * block_size
    room = usable - weights - act - runtime_bytes
    if fraction_of == "free":
        room = gpu_memory_utilization * (gpu.memory_bytes - weights - act - runtime_bytes)
        usable = weights + act + runtime_bytes + room
    if room < per_block:
        raise ConfigError(
            f"{model.name} in {weight_format} {where} leaves no room for the KV cache on "
            f"{gpu.name}: {usable / GB:.1f} GB usable - {weights / GB:.1f} GB weights - "
            f"{act / GB:.1f} GB activations - {runtime_bytes / GB:.1f} GB runtime = "
            f"{room / GB:.2f} GB, less than one {per_block / 1e6:.1f} MB block"
        )
    blocks = int(room // per_block)
    return MemoryPlan(
        memory_bytes=gpu.memory_bytes,
        usable_bytes=usable,
        weights_bytes=weights,
        activation_bytes=act,
        runtime_bytes=runtime_bytes,
        kv_cache_bytes=blocks * per_block,
        kv_bytes_per_token=per_token,
        kv_bytes_per_block=per_block,
        kv_blocks=blocks,
        kv_capacity_tokens=blocks * block_size,
        headroom_bytes=gpu.memory_bytes - usable + room - blocks * per_block,
    )
