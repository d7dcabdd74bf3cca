"""Model shapes: presets, a HuggingFace ``config.json`` loader, parameter counts, weight and KV bytes.

Weight formats say how a linear layer's weights are stored and what its GEMM computes in: weight-only formats
(W8A16, W4A16) dequantize into bf16 GEMMs; W8A8 formats (``w8a8``: int8, ``fp8``) quantize the activations too,
per token and on the fly, and run int8 or fp8 tensor-core GEMMs. Embeddings, the LM head and norms stay in
bf16 in every format (vLLM's default for FP8/AWQ/GPTQ checkpoints). Mixed precision per layer group is a spec
over these formats (``hwmodels/precision.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from servesim.errors import ConfigError, unknown_name
from servesim.hwmodels.hf_config import read_hf_config


@dataclass(frozen=True, slots=True)
class WeightFormat:
    """How a (k in, n out) linear weight is stored: element bytes, channel scales, group extras."""

    name: str
    elem_bytes: float
    channel_bytes: float  # per output channel (scales)
    group_size: int  # along k; 0 = no groups
    group_bytes: float  # per (group, output channel): scale + zero point
    compute_dtype: str  # the tensor-core dtype the GEMM runs in
    act_dtype: str = "bf16"  # the GEMM's input: bf16, or int8/fp8 quantized per token before it

    @property
    def quantizes_activations(self) -> bool:
        return self.act_dtype != "bf16"

    @property
    def act_bytes(self) -> int:
        """Bytes per element of the GEMM's input activations."""
        return 2 if self.act_dtype in ("bf16", "fp16") else 1

    def matrix_bytes(self, k: int, n: int) -> float:
        """Bytes of a k×n weight matrix in this format."""
        groups = -(-k // self.group_size) if self.group_size else 0
        return k * n * self.elem_bytes + n * self.channel_bytes + n * groups * self.group_bytes


WEIGHT_FORMATS: dict[str, WeightFormat] = {
    "bf16": WeightFormat("bf16", 2, 0, 0, 0, "bf16"),
    "fp16": WeightFormat("fp16", 2, 0, 0, 0, "fp16"),
    # W8A8-FP8: e4m3 weights with an fp32 per-channel scale, activations quantized to e4m3 per token
    "fp8": WeightFormat("fp8", 1, 4, 0, 0, "fp8", "fp8"),
    # W8A8-INT8: int8 weights with an fp32 per-channel scale, int8 activations with a per-token scale
    "w8a8": WeightFormat("w8a8", 1, 4, 0, 0, "int8", "int8"),
    "w8a16": WeightFormat("w8a16", 1, 2, 0, 0, "bf16"),  # int8 weights, fp16 per-channel scale
    "w4a16": WeightFormat("w4a16", 0.5, 0, 128, 2.5, "bf16"),  # int4, group 128: fp16 scale + int4 zero
}
KV_DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}  # per-tensor scales


def get_weight_format(name: str) -> WeightFormat:
    """The :class:`WeightFormat` called ``name`` (ConfigError listing the known ones otherwise)."""
    if name.lower() not in WEIGHT_FORMATS:
        raise ConfigError(unknown_name("weight format", name, WEIGHT_FORMATS), field="quant")
    return WEIGHT_FORMATS[name.lower()]


def kv_dtype_bytes(name: str) -> int:
    """Bytes per KV element for KV dtype ``name``."""
    if name.lower() not in KV_DTYPE_BYTES:
        raise ConfigError(unknown_name("KV dtype", name, KV_DTYPE_BYTES), field="kv_dtype")
    return KV_DTYPE_BYTES[name.lower()]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer (Llama/Mistral/Qwen/Mixtral/DeepSeek family): SwiGLU MLP or top-k MoE
    (optionally with shared experts and some dense layers), GQA or multi-head latent attention (MLA)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int  # query/key width per head (MLA: the no-rotary part plus qk_rope_head_dim)
    intermediate_size: int  # the dense MLP; in an MoE model, that of its dense layers (if any)
    vocab_size: int
    tied_embeddings: bool = False
    num_experts: int = 0  # 0: dense MLP
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    qkv_bias: bool = False
    dtype: str = "bf16"
    max_position_embeddings: int = 0
    source: str = ""
    shared_expert_intermediate_size: int = 0  # MoE: width of the always-on shared expert(s), summed
    num_dense_layers: int = 0  # MoE: layers whose MLP is dense (DeepSeek's first_k_dense_replace)
    kv_lora_rank: int = 0  # MLA: width of the compressed KV latent the cache holds; 0 = GQA attention
    q_lora_rank: int = 0  # MLA: width of the compressed query (0: queries projected from the hidden state)
    qk_rope_head_dim: int = 0  # MLA: rotary part of each query/key head (carried in the cache beside the latent)
    v_head_dim: int = 0  # MLA: value width per head (0: head_dim)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def moe_layers(self) -> int:
        """Layers whose MLP is a mixture of experts."""
        return self.num_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def value_head_dim(self) -> int:
        return self.v_head_dim or self.head_dim

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    def kv_cache_width(self, tp: int = 1) -> int:
        """KV-cache elements one token holds per layer on one of ``tp`` GPUs: K and V of the GPU's KV heads
        (replicated when tp exceeds them), or MLA's latent plus rotary key (every GPU holds all of it)."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * max(self.num_kv_heads // tp, 1) * self.head_dim

    def linear_matrices(self) -> dict[str, tuple[int, int, int]]:
        """Every linear weight of the decoder layers as (k in, n out, copies in the whole model): experts
        count once per expert and MoE layer; dense layers of an MoE model are ``dense_*``."""
        h, layers = self.hidden_size, self.num_layers
        if self.is_mla:
            nope = self.head_dim - self.qk_rope_head_dim
            q = (
                {"q_a": (h, self.q_lora_rank, layers), "q_b": (self.q_lora_rank, self.q_size, layers)}
                if self.q_lora_rank
                else {"q": (h, self.q_size, layers)}
            )
            out = {
                **q,
                "kv_a": (h, self.kv_lora_rank + self.qk_rope_head_dim, layers),
                "kv_b": (self.kv_lora_rank, self.num_heads * (nope + self.value_head_dim), layers),
            }
        else:
            out = {"qkv": (h, self.q_size + 2 * self.kv_size, layers)}
        out["o"] = (self.num_heads * self.value_head_dim, h, layers)
        if not self.is_moe:
            out["gate_up"] = (h, 2 * self.intermediate_size, layers)
            out["down"] = (self.intermediate_size, h, layers)
            return out
        moe, dense, i = self.moe_layers, self.num_dense_layers, self.expert_intermediate_size
        out["gate_up"] = (h, 2 * i, self.num_experts * moe)
        out["down"] = (i, h, self.num_experts * moe)
        out["router"] = (h, self.num_experts, moe)
        if self.shared_expert_intermediate_size:
            s = self.shared_expert_intermediate_size
            out["shared_gate_up"] = (h, 2 * s, moe)
            out["shared_down"] = (s, h, moe)
        if dense:
            out["dense_gate_up"] = (h, 2 * self.intermediate_size, dense)
            out["dense_down"] = (self.intermediate_size, h, dense)
        return out

    @property
    def param_count(self) -> int:
        """All parameters: embeddings, LM head (unless tied), linear weights, qkv bias, RMSNorm weights."""
        h = self.hidden_size
        per_layer = 2 * h  # the two RMSNorms
        if self.qkv_bias:
            per_layer += self.q_size + 2 * self.kv_size
        if self.is_mla:  # RMSNorms on the compressed query and KV
            per_layer += self.q_lora_rank + self.kv_lora_rank
        linear = sum(k * n * c for k, n, c in self.linear_matrices().values())
        embed = self.vocab_size * h * (1 if self.tied_embeddings else 2)
        return linear + self.num_layers * per_layer + embed + h

    def weight_bytes(self, weight_format: str = "bf16") -> int:
        """Bytes of all weights with linear layers (not the router) in ``weight_format`` (a format or a mixed
        spec, hwmodels/precision.py), the rest in bf16."""
        from servesim.hwmodels.precision import linear_role, parse_quant  # precision imports this module

        mats = {name: m for name, m in self.linear_matrices().items() if name != "router"}
        linear_bytes = 0.0
        for fraction, fmts in parse_quant(weight_format).layer_groups(self.num_layers):
            for name, (k, n, c) in mats.items():
                linear_bytes += fraction * get_weight_format(fmts[linear_role(name)]).matrix_bytes(k, n) * c
        other_params = self.param_count - sum(k * n * c for k, n, c in mats.values())
        return int(round(linear_bytes + 2 * other_params))

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> int:
        """KV-cache bytes one token occupies across all layers, on one GPU holding all heads: what crosses
        the link when a prefill hands a prompt to a decode replica."""
        return self.num_layers * self.kv_cache_width() * kv_dtype_bytes(kv_dtype)


# fmt: off
# name, hidden, layers, heads, kv heads, head_dim, intermediate, vocab, tied, qkv bias, max positions, HF repo
_PRESETS = (
    ("Llama-3.2-1B",    2048, 16, 32, 8,  64,  8192, 128256, True,  False, 131072, "meta-llama/Llama-3.2-1B"),
    ("Llama-3.2-3B",    3072, 28, 24, 8, 128,  8192, 128256, True,  False, 131072, "meta-llama/Llama-3.2-3B"),
    ("Llama-3.1-8B",    4096, 32, 32, 8, 128, 14336, 128256, False, False, 131072, "meta-llama/Llama-3.1-8B"),
    ("Llama-3.1-70B",   8192, 80, 64, 8, 128, 28672, 128256, False, False, 131072, "meta-llama/Llama-3.1-70B"),  # noqa: E501
    ("Mistral-7B-v0.3", 4096, 32, 32, 8, 128, 14336,  32768, False, False,  32768, "mistralai/Mistral-7B-v0.3"),  # noqa: E501
    ("Qwen2.5-7B",      3584, 28, 28, 4, 128, 18944, 152064, False, True,   32768, "Qwen/Qwen2.5-7B"),
    ("Qwen2.5-14B",     5120, 48, 40, 8, 128, 13824, 152064, False, True,   32768, "Qwen/Qwen2.5-14B"),
    ("Qwen2.5-32B",     5120, 64, 40, 8, 128, 27648, 152064, False, True,   32768, "Qwen/Qwen2.5-32B"),
    ("Qwen2.5-72B",     8192, 80, 64, 8, 128, 29568, 152064, False, True,   32768, "Qwen/Qwen2.5-72B"),
    ("Llama-2-13B",     5120, 40, 40, 40, 128, 13824, 32000, False, False,   4096, "meta-llama/Llama-2-13b-hf"),  # noqa: E501
    ("Mixtral-8x7B",    4096, 32, 32, 8, 128, 14336,  32000, False, False,  32768, "mistralai/Mixtral-8x7B-v0.1"),  # noqa: E501
    ("Qwen3-30B-A3B",   2048, 48, 32, 4, 128,  6144, 151936, False, False,  40960, "Qwen/Qwen3-30B-A3B"),
    ("DeepSeek-V2-Lite", 2048, 27, 16, 16, 192, 10944, 102400, False, False, 163840, "deepseek-ai/DeepSeek-V2-Lite"),  # noqa: E501
)
# experts, experts per token, expert width (0: intermediate), shared-expert width (summed), dense layers
_MOE = {
    "Mixtral-8x7B": (8, 2, 0, 0, 0),
    "Qwen3-30B-A3B": (128, 8, 768, 0, 0),
    "DeepSeek-V2-Lite": (64, 6, 1408, 2 * 1408, 1),  # 2 shared experts; first_k_dense_replace 1
}
# kv_lora_rank, q_lora_rank, qk_rope_head_dim, v_head_dim (head_dim above = 128 no-rotary + 64 rotary)
_MLA = {"DeepSeek-V2-Lite": (512, 0, 64, 128)}
# fmt: on


def _preset(name, h, layers, heads, kv, hd, inter, vocab, tied, bias, max_pos, repo) -> ModelSpec:
    experts, top_k, moe_inter, shared, dense = _MOE.get(name, (0, 0, 0, 0, 0))
    kv_lora, q_lora, rope, v_dim = _MLA.get(name, (0, 0, 0, 0))
    return ModelSpec(
        name,
        h,
        layers,
        heads,
        kv,
        hd,
        inter,
        vocab,
        tied,
        experts,
        top_k,
        moe_inter,
        qkv_bias=bias,
        max_position_embeddings=max_pos,
        source=f"https://huggingface.co/{repo}/blob/main/config.json",
        shared_expert_intermediate_size=shared,
        num_dense_layers=dense,
        kv_lora_rank=kv_lora,
        q_lora_rank=q_lora,
        qk_rope_head_dim=rope,
        v_head_dim=v_dim,
    )


MODELS: dict[str, ModelSpec] = {row[0]: _preset(*row) for row in _PRESETS}
ALIASES = {"mistral-7b": "Mistral-7B-v0.3", "mixtral-8x7b-v0.1": "Mixtral-8x7B"}


def get_model(name_or_path: str, field: str = "model") -> ModelSpec:
    """A preset by name (case-insensitive; an ``org/`` prefix and ``-Instruct`` suffix are ignored), or a
    local HuggingFace ``config.json`` (or a directory holding one). An unknown name raises a ConfigError
    naming ``field`` and the closest presets."""
    path = Path(name_or_path)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSpec(**read_hf_config(path / "config.json"))
    if path.is_file():
        return ModelSpec(**read_hf_config(path))
    key = name_or_path.strip().split("/")[-1].lower()
    for suffix in ("-instruct", "-chat"):
        key = key.removesuffix(suffix)
    key = ALIASES.get(key, key).lower()
    for name, spec in MODELS.items():
        if name.lower() == key:
            return spec
    raise ConfigError(
        unknown_name("model", name_or_path, MODELS) + " (or give a config.json, or a directory with one)",
        field=field,
    )


def check_parallelism(model: ModelSpec, tp: int, pp: int, ep: int = 1) -> None:
    """ConfigError unless ``tp`` divides the attention heads and every MLP, ``pp`` ≤ the layers, and ``ep``
    (expert-parallel groups within the ``tp`` GPUs of a stage) divides both ``tp`` and the experts, the
    experts then split by ``tp/ep`` inside each group."""
    if tp < 1 or pp < 1 or ep < 1:
        bad = "tp" if tp < 1 else "pp" if pp < 1 else "ep"
        raise ConfigError(f"tp, pp and ep must be >= 1, got tp={tp} pp={pp} ep={ep}", field=bad)
    if model.num_heads % tp:
        raise ConfigError(
            f"tp={tp} does not divide the {model.num_heads} attention heads of {model.name}", field="tp"
        )
    kv = model.num_kv_heads
    if not model.is_mla and kv % tp and tp % kv:  # tp > kv heads replicates them (as vLLM does)
        raise ConfigError(
            f"tp={tp} and the {kv} KV heads of {model.name} do not divide each other", field="tp"
        )
    if ep > 1:
        if not model.is_moe:
            raise ConfigError(f"ep={ep}: {model.name} has no experts to spread", field="ep")
        if tp % ep:
            raise ConfigError(
                f"ep={ep} must divide tp={tp}: expert-parallel groups split the tensor-parallel GPUs of a stage",
                field="ep",
            )
        if model.num_experts % ep:
            raise ConfigError(
                f"ep={ep} does not divide the {model.num_experts} experts of {model.name}", field="ep"
            )
    expert_tp = tp // ep
    if model.expert_intermediate_size % expert_tp:
        what = "MLP size" if not model.is_moe else "expert size" if ep > 1 else "MLP size"
        raise ConfigError(
            f"tp={tp}" + (f"/ep={ep}" if ep > 1 else "")
            + f" does not divide the {what} {model.expert_intermediate_size} of {model.name}",
            field="tp",
        )
    dense = [model.shared_expert_intermediate_size] if model.is_moe else []
    if model.is_moe and model.num_dense_layers:
        dense.append(model.intermediate_size)
    for width in dense:
        if width % tp:
            raise ConfigError(f"tp={tp} does not divide the dense MLP size {width} of {model.name}", field="tp")
    if pp > model.num_layers:
        raise ConfigError(f"pp={pp} exceeds the {model.num_layers} layers of {model.name}", field="pp")
