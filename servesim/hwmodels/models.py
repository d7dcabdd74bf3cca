"""Model shapes: presets, a HuggingFace ``config.json`` loader, parameter counts, weight and KV bytes.

Weight formats say how a linear layer's weights are stored. Embeddings, the LM head and norms stay in
bf16 in every format (vLLM's default for FP8/AWQ/GPTQ checkpoints).
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

    def matrix_bytes(self, k: int, n: int) -> float:
        """Bytes of a k×n weight matrix in this format."""
        groups = -(-k // self.group_size) if self.group_size else 0
        return k * n * self.elem_bytes + n * self.channel_bytes + n * groups * self.group_bytes


WEIGHT_FORMATS: dict[str, WeightFormat] = {
    "bf16": WeightFormat("bf16", 2, 0, 0, 0, "bf16"),
    "fp16": WeightFormat("fp16", 2, 0, 0, 0, "fp16"),
    "fp8": WeightFormat("fp8", 1, 4, 0, 0, "fp8"),  # W8A8-FP8, fp32 per-channel scale
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
    """A decoder-only transformer (Llama/Mistral/Qwen2/Mixtral family): SwiGLU MLP or top-k MoE, GQA."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool = False
    num_experts: int = 0  # 0: dense MLP
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    qkv_bias: bool = False
    dtype: str = "bf16"
    max_position_embeddings: int = 0
    source: str = ""

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    def layer_matrices(self) -> dict[str, tuple[int, int, int]]:
        """Per-layer linear weights as (k in, n out, copies); copies = experts for gate_up/down."""
        h, i = self.hidden_size, self.expert_intermediate_size
        out = {"qkv": (h, self.q_size + 2 * self.kv_size, 1), "o": (self.q_size, h, 1)}
        copies = self.num_experts or 1
        out["gate_up"] = (h, 2 * i, copies)
        out["down"] = (i, h, copies)
        if self.is_moe:
            out["router"] = (h, self.num_experts, 1)
        return out

    @property
    def param_count(self) -> int:
        """All parameters: embeddings, LM head (unless tied), linear weights, qkv bias, RMSNorm weights."""
        h = self.hidden_size
        per_layer = sum(k * n * c for k, n, c in self.layer_matrices().values()) + 2 * h
        if self.qkv_bias:
            per_layer += self.q_size + 2 * self.kv_size
        embed = self.vocab_size * h * (1 if self.tied_embeddings else 2)
        return self.num_layers * per_layer + embed + h

    def weight_bytes(self, weight_format: str = "bf16") -> int:
        """Bytes of all weights with linear layers (not the router) in ``weight_format``, the rest in bf16."""
        wf = get_weight_format(weight_format)
        mats = [m for name, m in self.layer_matrices().items() if name != "router"]
        linear_bytes = sum(wf.matrix_bytes(k, n) * c for k, n, c in mats) * self.num_layers
        other_params = self.param_count - sum(k * n * c for k, n, c in mats) * self.num_layers
        return int(round(linear_bytes + 2 * other_params))

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> int:
        """KV-cache bytes one token occupies across all layers (K and V), on one GPU holding all heads."""
        return 2 * self.num_layers * self.kv_size * kv_dtype_bytes(kv_dtype)


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
    ("Mixtral-8x7B",    4096, 32, 32, 8, 128, 14336,  32000, False, False,  32768, "mistralai/Mixtral-8x7B-v0.1"),  # noqa: E501
)
# fmt: on
_MOE = {"Mixtral-8x7B": (8, 2)}  # experts, experts per token


def _preset(name, h, layers, heads, kv, hd, inter, vocab, tied, bias, max_pos, repo) -> ModelSpec:
    experts, top_k = _MOE.get(name, (0, 0))
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
        qkv_bias=bias,
        max_position_embeddings=max_pos,
        source=f"https://huggingface.co/{repo}/blob/main/config.json",
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


def check_parallelism(model: ModelSpec, tp: int, pp: int) -> None:
    """ConfigError unless ``tp`` divides the attention heads and the MLP, and ``pp`` ≤ the layers."""
    if tp < 1 or pp < 1:
        raise ConfigError(f"tp and pp must be >= 1, got tp={tp} pp={pp}", field="tp" if tp < 1 else "pp")
    if model.num_heads % tp:
        raise ConfigError(
            f"tp={tp} does not divide the {model.num_heads} attention heads of {model.name}", field="tp"
        )
    kv = model.num_kv_heads
    if kv % tp and tp % kv:  # tp > kv heads replicates them (as vLLM does) when kv divides tp
        raise ConfigError(
            f"tp={tp} and the {kv} KV heads of {model.name} do not divide each other", field="tp"
        )
    if model.expert_intermediate_size % tp:
        raise ConfigError(
            f"tp={tp} does not divide the MLP size {model.expert_intermediate_size} of {model.name}",
            field="tp",
        )
    if pp > model.num_layers:
        raise ConfigError(f"pp={pp} exceeds the {model.num_layers} layers of {model.name}", field="pp")
