"""Engine personalities: named presets of the scheduler, memory and cost mechanisms a serving engine is known by.

A preset is a set of Scenario defaults (``Scenario.preset``): the fields a user sets still win, so
``--preset tensorrt-llm --quant bf16`` is TensorRT-LLM's scheduling with bf16 weights. What each engine does and
where that is documented is in docs/engines.md; the values here are the engines' own defaults, and where an
engine's default depends on the GPU (vLLM's batch limits) the preset reads it from the GPU catalog.

Only behaviour is imitated (batching, admission, KV reservation, memory budget, host time per step); the
kernels' speed is the cost model's for the chosen GPU, the same for every preset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from servesim.hwmodels.gpus import GIB, GPU


@dataclass(frozen=True)
class EnginePreset:
    """One engine's defaults: ``fields(gpu)`` gives Scenario field values for a deployment on ``gpu``."""

    name: str
    summary: str
    fields: Callable[[GPU | None], dict]


def _vllm(gpu: GPU | None) -> dict:
    # vLLM v1 (EngineArgs.get_batch_defaults): the OpenAI server on a GPU of >= 70 GiB that is not an A100 gets
    # 8192 tokens and 1024 sequences per step, any other GPU 2048 and 256.
    big = gpu is not None and gpu.memory_bytes >= 70 * GIB and "a100" not in gpu.name.lower()
    return dict(batching="chunked", prefix_caching=True, preemption="recompute", admission="max_utilization",
                max_num_batched_tokens=8192 if big else 2048, max_num_seqs=1024 if big else 256,
                gpu_memory_utilization=0.9, memory_fraction_of="total")


def _tensorrt_llm(gpu: GPU | None) -> dict:
    # trtllm-serve defaults: in-flight batching without chunked context, max_num_tokens 8192 (a prompt must fit
    # one step, so max_seq_len is held to it), max_batch_size 2048, GUARANTEED_NO_EVICT, KV block reuse on,
    # KV cache = 0.9 of the memory free after weights; FP8 weights and KV (a ModelOpt FP8 checkpoint).
    return dict(batching="inflight", admission="guaranteed_no_evict", preemption="recompute", prefix_caching=True,
                max_num_batched_tokens=8192, max_model_len=8192, max_num_seqs=2048,
                gpu_memory_utilization=0.9, memory_fraction_of="free", quant="fp8", kv_dtype="fp8")


def _llamacpp(gpu: GPU | None) -> dict:
    # llama-server -c 32768 -np 4 --no-kv-unified: 4 slots of 8192 tokens, each holding its whole context's KV;
    # continuous batching (-cb) of every generating slot plus prompt tokens up to n_batch = 2048 per step.
    return dict(batching="chunked", admission="slots", max_num_seqs=4, max_model_len=8192,
                max_num_batched_tokens=2048, prefix_caching=False, preemption="recompute")


def _static(gpu: GPU | None) -> dict:
    # Hugging Face transformers' generate() on a list of prompts: one padded batch at a time, run until its last
    # member finishes, eager PyTorch (no CUDA graphs): ~21 ms of host time per step (gpt-fast's eager baseline
    # against its compiled one on an A100, docs/engines.md).
    return dict(batching="static", admission="guaranteed_no_evict", max_num_seqs=32, prefix_caching=False,
                preemption="recompute", step_overhead_ms=21.0)


PRESETS: dict[str, EnginePreset] = {
    p.name: p for p in (
        EnginePreset("vllm", "vLLM v1: chunked prefill, prefix caching, recompute preemption, CUDA graphs", _vllm),
        EnginePreset("tensorrt-llm", "TensorRT-LLM: in-flight batching, GUARANTEED_NO_EVICT, FP8 weights and KV",
                     _tensorrt_llm),
        EnginePreset("llamacpp", "llama.cpp server: 4 slots of 8192 tokens, each reserving its context", _llamacpp),
        EnginePreset("static", "HF generate: static batches of 32, nothing admitted mid-batch, eager steps",
                     _static),
    )
}
