"""Building the engine: weights, the KV cache sized from the GPU memory left after a profiling pass, the
runner and its CUDA graphs; a memory report that says where every byte went.

KV capacity follows vLLM's budget: ``total × gpu_memory_utilization`` minus the weights, the peak
activation memory of a forward pass of ``max_num_batched_tokens`` tokens, and the memory outside
PyTorch's allocator (CUDA context, cuBLAS workspaces); what is left is cut into blocks. The count is
reported so the simulator can be given the same number (validation does).

Tensor parallelism (``tp`` > 1): :func:`build_engine` starts one process per rank (``servesim.engine.tp``); each
builds its shard with :func:`build_rank`, the ranks agree on the smallest KV block count any of them can hold,
and the returned engine is rank 0's, whose runner sends every step to the others. ``Engine.close`` stops them.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from servesim.engine.config import EngineModelConfig
from servesim.engine.kernels import BACKENDS
from servesim.engine.model import AttentionMeta, KVCache, LlamaModel
from servesim.engine.runner import ModelRunner, kv_block_bytes
from servesim.engine.weights import (
    QUANTIZERS,
    Shard,
    build_weights,
    engine_spec,
    load_state_dict,
    needs_calibration,
    random_state_dict,
)
from servesim.errors import ConfigError
from servesim.hwmodels.buckets import PIECEWISE_MAX_TOKENS, piecewise_max_tokens
from servesim.hwmodels.precision import parse_quant

GIB = 2**30
KV_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.float8_e4m3fn}
GRAPH_RESERVE_BYTES = 2 * GIB  # CUDA-graph pool (plain or speculative decode) and workspaces, before the KV cache


@dataclass(frozen=True)
class EngineConfig:
    """What the engine runs: model, weights, formats, memory and scheduler-facing limits."""

    model: str = "Llama-3.1-8B"
    weights: str | None = None  # local HF directory with safetensors; None: random weights
    weight_format: str = "bf16"
    quantizer: str = "rtn"
    kv_dtype: str = "bf16"
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 8192
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    num_gpu_blocks: int | None = None  # override the memory planner
    device: str = "cuda"
    cuda_graphs: bool = True
    # steps with prefill as piecewise CUDA graphs, attention eager between them (engine/piecewise.py), for steps of
    # at most piecewise_max_tokens rows (the bucket rule's cap, hwmodels/buckets.py; the cost model assumes it)
    piecewise_graphs: bool = False
    piecewise_max_tokens: int = PIECEWISE_MAX_TOKENS
    seed: int = 0
    temperature: float = 0.0
    num_layers: int | None = None  # truncate the model (tests and quick timing only)
    capture_at_start: bool = True  # capture every decode graph when built (else on first use)
    # speculative decoding: a draft model proposing spec_k tokens per step (engine/spec.py)
    spec_k: int = 0
    draft_model: str | None = None
    draft_weights: str | None = None
    spec_mode: str = "greedy"  # greedy | controlled (acceptance drawn with spec_alpha; labelled in outputs)
    spec_alpha: float = 0.7
    spec_alpha_concentration: float | None = None
    tp: int = 1  # tensor-parallel ranks, one process (and one GPU) each

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise ConfigError(f"must be at least 1, got {self.tp}", field="tp")
        if self.tp > 1 and self.spec_k:
            raise ConfigError("speculative decoding runs at TP 1", field="tp")
        if self.tp > 1 and self.quantizer in ("awq", "gptq") and self.weight_format != "bf16":
            raise ConfigError(f"{self.quantizer.upper()} calibrates on the whole model: quantize with --quantizer rtn "
                              "at TP > 1", field="quantizer")
        engine_spec(self.weight_format)
        if self.kv_dtype not in KV_DTYPES:
            raise ConfigError(f"the engine runs KV dtypes {', '.join(KV_DTYPES)}, not {self.kv_dtype!r}",
                              field="kv_dtype")
        if self.quantizer not in QUANTIZERS:
            raise ConfigError(f"quantizer must be one of {', '.join(QUANTIZERS)}", field="quantizer")


@dataclass
class MemoryReport:
    total_bytes: int
    weights_bytes: int
    activation_peak_bytes: int
    non_torch_bytes: int
    graph_reserve_bytes: int
    kv_bytes_per_block: int
    num_blocks: int
    kv_cache_bytes: int
    planned_by: str  # "memory" (profiled) or "override"
    graph_pool_bytes: int = 0  # what capturing the CUDA graphs at start took (inside the graph reserve)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Engine:
    config: EngineConfig
    model_config: EngineModelConfig
    model: LlamaModel
    runner: ModelRunner
    memory: MemoryReport
    timings_s: dict = field(default_factory=dict)
    shutdown: Callable[[], None] | None = None  # tensor parallelism: stops the other ranks

    @property
    def num_blocks(self) -> int:
        return self.runner.cache.num_blocks

    def close(self) -> None:
        """Stop the other ranks of a tensor-parallel engine (nothing at TP 1); idempotent."""
        if self.shutdown is not None:
            stop, self.shutdown = self.shutdown, None
            stop()


def _dtype(cfg: EngineConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.device == "cuda" else torch.float32


def resolve_model(cfg: EngineConfig, mc: EngineModelConfig | None = None) -> EngineModelConfig:
    """The whole model ``cfg`` runs, checked against the config (context, device, TP split)."""
    mc = mc or EngineModelConfig.resolve(cfg.model)
    if cfg.num_layers is not None:
        mc = EngineModelConfig(**{**mc.to_json(), "num_layers": cfg.num_layers})
    if cfg.max_model_len > mc.max_position_embeddings:
        raise ConfigError(f"max_model_len {cfg.max_model_len} exceeds {mc.name}'s max_position_embeddings "
                          f"{mc.max_position_embeddings}", field="max_model_len")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("no CUDA device: run the engine with device 'cpu' (torch reference kernels)",
                          field="device")
    if cfg.device == "cuda" and cfg.tp > torch.cuda.device_count():
        raise ConfigError(f"TP {cfg.tp} needs {cfg.tp} GPUs; this machine has {torch.cuda.device_count()}",
                          field="tp")
    mc.check_tp(cfg.tp)
    return mc


def build_engine(cfg: EngineConfig, mc: EngineModelConfig | None = None) -> Engine:
    """Load or draw the weights, plan and allocate the KV cache, capture decode graphs (at TP > 1: on every
    rank, each in its own process; the engine returned is rank 0's)."""
    mc = resolve_model(cfg, mc)
    if cfg.tp > 1:
        from servesim.engine.tp import launch

        return launch(cfg, mc)
    return build_rank(cfg, mc)


def build_rank(cfg: EngineConfig, mc: EngineModelConfig, comm=None) -> Engine:
    """The engine of one rank: the whole model at TP 1, or this rank's shard (``comm``: its process group)."""
    dev = torch.device("cuda", torch.cuda.current_device()) if cfg.device == "cuda" else torch.device(cfg.device)
    shard = Shard(mc, comm.rank, comm.world) if comm is not None else None
    local = mc.per_rank(cfg.tp)
    timings = {}
    t0 = time.perf_counter()
    dtype = _dtype(cfg)
    try:
        if cfg.weights:
            sd = load_state_dict(cfg.weights, mc, dtype, dev, shard)
        else:
            sd = random_state_dict(mc, cfg.seed, dtype, dev, shard)
        calib = _calibration(mc, sd, cfg, dev) if needs_calibration(mc, cfg.weight_format, cfg.quantizer) else None
        weights = build_weights(local, sd, cfg.weight_format, calib, cfg.quantizer,
                                tied_head=shard.vocab_rows if shard else None)
    except torch.cuda.OutOfMemoryError:
        need = _weight_estimate(mc, cfg.weight_format) / cfg.tp  # a rank's share (embeddings are whole: more)
        raise ConfigError(f"out of GPU memory loading {mc.name} in {cfg.weight_format} (about {need / GIB:.1f} GiB "
                          f"of weights; the GPU has {torch.cuda.get_device_properties(dev).total_memory / GIB:.1f} "
                          "GiB): use w4a16 or a smaller model", field="model") from None
    timings["weights_s"] = time.perf_counter() - t0
    backend = BACKENDS["triton" if dev.type == "cuda" else "torch"]
    model = LlamaModel(local, weights, backend, max_positions=cfg.max_model_len, comm=comm)
    draft = _draft_model(cfg, mc, backend, dtype, dev) if cfg.spec_k else None
    t0 = time.perf_counter()
    cache, memory = _plan_and_allocate(cfg, local, model, dev, draft, comm)
    timings["kv_plan_s"] = time.perf_counter() - t0
    if dev.type == "cuda":
        t0 = time.perf_counter()
        _warmup(model, cache, cfg, (1, 1 + cfg.spec_k) if cfg.spec_k else (1,))
        timings["warmup_s"] = time.perf_counter() - t0
    runner = ModelRunner(model, cache, cfg.max_model_len, seed=cfg.seed, temperature=cfg.temperature,
                         cuda_graphs=cfg.cuda_graphs and dev.type == "cuda", max_graph_batch=cfg.max_num_seqs,
                         piecewise_tokens=piecewise_max_tokens(cfg.max_num_batched_tokens, cfg.max_num_seqs,
                                                                cfg.piecewise_max_tokens)
                         if cfg.piecewise_graphs else 0)
    if draft is not None:
        from servesim.engine.spec import SpecDecoder
        from servesim.sim.spec import SpecConfig

        acceptance = None
        if cfg.spec_mode == "controlled":
            acceptance = SpecConfig(cfg.draft_model, cfg.spec_k, cfg.spec_alpha,
                                    cfg.spec_alpha_concentration).acceptance_model()
        draft_cache = _cache(draft.cfg, cfg, cache.num_blocks, dev)
        if dev.type == "cuda":  # the draft's own shapes (heads, head_dim): compiled now, not mid-replay
            t0 = time.perf_counter()
            _warmup(draft, draft_cache, cfg)
            timings["warmup_s"] = timings.get("warmup_s", 0.0) + time.perf_counter() - t0
        runner.spec = SpecDecoder(draft, draft_cache, cfg.spec_k, cfg.spec_mode, acceptance,
                                  np.random.default_rng([cfg.seed, 7]))
    if dev.type == "cuda":  # cached blocks out first: capturing empties the cache, which could show as negative
        torch.cuda.empty_cache()
    reserved = torch.cuda.memory_reserved(dev) if dev.type == "cuda" else 0
    timings["graph_capture_s"] = runner.capture_all() if cfg.capture_at_start else 0.0
    if dev.type == "cuda":
        memory.graph_pool_bytes = torch.cuda.memory_reserved(dev) - reserved
        # what start-up built (weights' wrappers, thousands of captured graphs) out of the collector's scans
        # for the rest of the process, as vLLM does after capture: a replay's steps then pay no walk over it
        gc.collect()
        gc.freeze()
    return Engine(cfg, mc, model, runner, memory, timings)


def _draft_model(cfg: EngineConfig, mc: EngineModelConfig, backend, dtype, dev) -> LlamaModel:
    """The draft model of speculative decoding (random weights unless ``draft_weights``; bf16)."""
    if not cfg.draft_model:
        raise ConfigError("speculative decoding needs a draft model", field="draft_model")
    dmc = EngineModelConfig.resolve(cfg.draft_model)
    if dmc.vocab_size != mc.vocab_size:
        raise ConfigError(f"the draft {dmc.name} has a vocabulary of {dmc.vocab_size:,} tokens, the target "
                          f"{mc.vocab_size:,}: they must share one", field="draft_model")
    sd = (load_state_dict(cfg.draft_weights, dmc, dtype, dev) if cfg.draft_weights
          else random_state_dict(dmc, cfg.seed + 1, dtype, dev))
    return LlamaModel(dmc, build_weights(dmc, sd, "bf16"), backend, max_positions=cfg.max_model_len)


WARM_M = (1, 2, 16, 17, 32, 33, 64, 65, 128, 256, 257, 512, 1024, 2048, 4096, 8192)
WARM_SPLITS = (1, 2, 4, 8, 16, 32, 64, 128)


def _warmup(model: LlamaModel, cache: KVCache, cfg: EngineConfig, queries: tuple[int, ...] = (1,)) -> None:
    """Compile the kernel variants eager steps meet (quantized GEMM configs by M bucket, decode attention by split
    count and by query tokens per sequence), so that no replayed iteration pays a Triton compile."""
    dev, mc = model.w.embed.device, model.cfg
    layer = model.w.layers[0]
    for lin in (layer.qkv, layer.o, layer.gate_up, layer.down):
        if isinstance(lin, torch.nn.Module):
            for m in (m for m in WARM_M if m <= cfg.max_num_batched_tokens):
                lin(torch.randn(m, lin.in_features, device=dev, dtype=model.dtype))
    for n in queries:  # one query token a sequence; 1 + k in an eager speculative verification
        bt = torch.zeros((1, -(-n // cfg.block_size)), dtype=torch.int32, device=dev)
        q = torch.randn(1, *(() if n == 1 else (n,)), mc.num_heads, mc.head_dim, device=dev, dtype=model.dtype)
        kvl = torch.full((1,), n, dtype=torch.int32, device=dev)
        for s in WARM_SPLITS:
            model.backend.decode_attention(q, cache.k[0], cache.v[0], bt, kvl, max_kv_len=s * 256, num_splits=s,
                                           **cache.scales)
    torch.cuda.synchronize()


def _weight_estimate(mc: EngineModelConfig, fmt: str) -> float:
    """Bytes of the weights, about (a mixed spec counted at its widest format)."""
    per = max({"bf16": 2.0, "w8a16": 1.0, "w4a16": 0.56, "w8a8": 1.0, "fp8": 1.0}[f]
              for f in parse_quant(fmt).formats())
    linear = mc.num_layers * mc.hidden_size * (mc.q_size + 2 * mc.kv_size + mc.q_size + 3 * mc.intermediate_size)
    return linear * per + mc.vocab_size * mc.hidden_size * 2 * (1 if mc.tied_embeddings else 2)


def _cache(mc: EngineModelConfig, cfg: EngineConfig, blocks: int, dev) -> KVCache:
    kdt = KV_DTYPES[cfg.kv_dtype] if dev.type == "cuda" else (
        torch.float8_e4m3fn if cfg.kv_dtype == "fp8" else torch.float32)
    shape = (blocks, cfg.block_size, mc.num_kv_heads, mc.head_dim)
    k = [torch.zeros(shape, dtype=kdt, device=dev) for _ in range(mc.num_layers)]
    v = [torch.zeros(shape, dtype=kdt, device=dev) for _ in range(mc.num_layers)]
    scales = {}
    if cfg.kv_dtype == "fp8":
        scales = {n: torch.ones(mc.num_kv_heads, dtype=torch.float32, device=dev) for n in ("k_scale", "v_scale")}
    return KVCache(k, v, **scales)


def _profile_forward(model: LlamaModel, mc: EngineModelConfig, cfg: EngineConfig, dev) -> None:
    """One forward pass of ``max_num_batched_tokens`` prompt tokens and ``max_num_seqs`` sampled rows, over a
    one-block cache it does not write to: the activation peak the KV budget must leave room for."""
    n = cfg.max_num_batched_tokens
    cache = _cache(mc, cfg, 1, dev)
    meta = AttentionMeta(
        num_prefill_tokens=n, prefill_cu_seqlens=torch.tensor([0, n], dtype=torch.int32, device=dev),
        prefill_kv_lens=torch.tensor([n], dtype=torch.int32, device=dev),
        prefill_block_tables=torch.zeros((1, -(-n // cfg.block_size)), dtype=torch.int32, device=dev),
        prefill_max_q_len=n)
    ids = torch.randint(0, mc.vocab_size, (n,), device=dev)
    pos = torch.arange(n, dtype=torch.int32, device=dev)
    slots = torch.full((n,), -1, dtype=torch.int64, device=dev)
    sample = torch.arange(n - min(n, cfg.max_num_seqs), n, device=dev)
    model.forward(ids, pos, slots, meta, cache, sample)
    del cache


def _plan_and_allocate(cfg: EngineConfig, mc: EngineModelConfig, model: LlamaModel, dev,
                       draft: LlamaModel | None = None, comm=None) -> tuple[KVCache, MemoryReport]:
    """The KV cache ``mc`` (one rank's heads under TP) gets; under TP every rank takes the smallest block count
    any rank can hold, so the scheduler's block ids are valid on all of them."""
    elem = torch.tensor([], dtype=KV_DTYPES[cfg.kv_dtype]).element_size()
    block_bytes = kv_block_bytes(mc.num_layers, cfg.block_size, mc.num_kv_heads, mc.head_dim, elem)
    weights = model.w.nbytes()
    if draft is not None:  # the draft's cache shares the block ids: every block costs both
        d = draft.cfg
        block_bytes += kv_block_bytes(d.num_layers, cfg.block_size, d.num_kv_heads, d.head_dim, elem)
        weights += draft.w.nbytes()
    need_one = -(-cfg.max_model_len // cfg.block_size)
    if dev.type != "cuda":
        blocks = cfg.num_gpu_blocks or need_one * min(cfg.max_num_seqs, 8)
        report = MemoryReport(0, weights, 0, 0, 0, block_bytes, blocks, blocks * block_bytes,
                              "override" if cfg.num_gpu_blocks else "cpu")
        return _cache(mc, cfg, blocks, dev), report
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    try:
        _profile_forward(model, mc, cfg, dev)
    except torch.cuda.OutOfMemoryError:
        raise ConfigError(f"out of GPU memory in a forward pass of {cfg.max_num_batched_tokens} tokens after "
                          f"{weights / GIB:.1f} GiB of weights: lower max_num_batched_tokens",
                          field="max_num_batched_tokens") from None
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    free, total = torch.cuda.mem_get_info()
    non_torch = max(0, total - free - torch.cuda.memory_reserved())
    budget = (total * cfg.gpu_memory_utilization - torch.cuda.memory_allocated() - peak - non_torch
              - GRAPH_RESERVE_BYTES)
    planned = int(budget // block_bytes)
    if comm is not None:
        planned = comm.min_int(planned)
    blocks = cfg.num_gpu_blocks or planned
    if cfg.num_gpu_blocks and cfg.num_gpu_blocks > planned:
        raise ConfigError(f"num_gpu_blocks {cfg.num_gpu_blocks} needs {cfg.num_gpu_blocks * block_bytes / GIB:.1f} "
                          f"GiB; {max(budget, 0) / GIB:.1f} GiB is left for the KV cache ({planned} blocks)",
                          field="num_gpu_blocks")
    if not cfg.num_gpu_blocks and blocks < need_one:
        raise ConfigError(
            f"{mc.name} in {cfg.weight_format} leaves {max(budget, 0) / GIB:.2f} GiB for the KV cache "
            f"({max(planned, 0)} blocks of {cfg.block_size} tokens), less than one {cfg.max_model_len}-token "
            f"sequence ({need_one} blocks): lower max_model_len or max_num_batched_tokens, raise "
            "gpu_memory_utilization, or use w4a16",
            field="max_model_len")
    try:
        cache = _cache(mc, cfg, blocks, dev)
    except torch.cuda.OutOfMemoryError:
        raise ConfigError(f"out of GPU memory allocating {blocks} KV blocks ({blocks * block_bytes / GIB:.1f} GiB): "
                          "lower gpu_memory_utilization or num_gpu_blocks", field="num_gpu_blocks") from None
    report = MemoryReport(total, weights, peak, non_torch, GRAPH_RESERVE_BYTES, block_bytes, blocks,
                          blocks * block_bytes, "override" if cfg.num_gpu_blocks else "memory")
    return cache, report


def _calibration(mc: EngineModelConfig, sd: dict, cfg: EngineConfig, dev):
    """AWQ and GPTQ need each linear layer's input activations: run the unquantized model on calibration tokens."""
    from servesim.engine.calibration_inputs import linear_inputs

    return linear_inputs(mc, sd, cfg, dev)
