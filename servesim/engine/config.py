"""The engine's model description: a ModelSpec's shapes plus what a forward pass needs beyond them
(RMSNorm epsilon, RoPE base and scaling), from a catalog preset or a local HuggingFace ``config.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from servesim.errors import ConfigError, InputError
from servesim.hwmodels.models import ModelSpec, get_model

# RoPE and norm settings of the catalog's families (their HF config.json files), for random-weight presets.
_LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}
_FAMILY = {  # name prefix -> (architecture, rms_norm_eps, rope_theta, rope_scaling)
    "Llama-3.2": ("LlamaForCausalLM", 1e-5, 500000.0, {**_LLAMA31_ROPE, "factor": 32.0}),
    "Llama-3.1": ("LlamaForCausalLM", 1e-5, 500000.0, _LLAMA31_ROPE),
    "Mistral": ("MistralForCausalLM", 1e-5, 1e6, None),
    "Qwen2": ("Qwen2ForCausalLM", 1e-6, 1e6, None),
}
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


@dataclass(frozen=True)
class EngineModelConfig:
    """A dense Llama-family decoder: GQA attention with RoPE, SwiGLU MLP, RMSNorm (Qwen2: q/k/v bias)."""

    name: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tied_embeddings: bool = False
    qkv_bias: bool = False
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default=None, hash=False)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def check_tp(self, tp: int) -> None:
        """Raise a ConfigError (field ``tp``) unless ``tp`` ranks can split this model's heads and MLP."""
        if tp < 1:
            raise ConfigError(f"must be at least 1, got {tp}", field="tp")
        kv = self.num_kv_heads
        problems = [f"{self.num_heads} attention heads" if self.num_heads % tp else "",
                    f"{kv} KV heads (neither divides the other)" if kv % tp and tp % kv else "",
                    f"an MLP of {self.intermediate_size}" if self.intermediate_size % tp else ""]
        problems = [p for p in problems if p]
        if problems:
            raise ConfigError(f"TP {tp} cannot split {self.name}'s {' and '.join(problems)} evenly", field="tp")

    def per_rank(self, tp: int) -> EngineModelConfig:
        """What one of ``tp`` ranks holds: its query heads, its KV heads (one, replicated, where ``tp`` exceeds
        them), its share of the MLP; the hidden size and the vocabulary whole (the LM head's vocabulary-parallel
        rows are gathered before sampling)."""
        if tp == 1:
            return self
        self.check_tp(tp)
        return replace(self, num_heads=self.num_heads // tp, num_kv_heads=max(self.num_kv_heads // tp, 1),
                       intermediate_size=self.intermediate_size // tp,
                       rope_scaling=dict(self.rope_scaling) if self.rope_scaling else None)

    @classmethod
    def from_spec(cls, spec: ModelSpec, **overrides) -> EngineModelConfig:
        """A catalog model's shapes with its family's norm and RoPE settings."""
        if spec.is_moe:
            raise ConfigError(f"{spec.name} is a mixture-of-experts model; the engine runs dense decoders",
                              field="model")
        family = next((v for k, v in _FAMILY.items() if spec.name.startswith(k)), _FAMILY["Llama-3.1"])
        arch, eps, theta, scaling = family
        if spec.qkv_bias and arch != "Qwen2ForCausalLM":
            arch = "Qwen2ForCausalLM"
        values = dict(name=spec.name, architecture=arch, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                      num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                      intermediate_size=spec.intermediate_size, vocab_size=spec.vocab_size,
                      max_position_embeddings=spec.max_position_embeddings or 4096,
                      tied_embeddings=spec.tied_embeddings, qkv_bias=spec.qkv_bias, rms_norm_eps=eps,
                      rope_theta=theta, rope_scaling=scaling)
        values = {**values, **overrides}
        values["rope_scaling"] = dict(values["rope_scaling"]) if values["rope_scaling"] else None  # never shared
        return cls(**values)

    @classmethod
    def from_hf(cls, path: str | Path) -> EngineModelConfig:
        """A local HuggingFace model directory or ``config.json`` (Llama, Mistral or Qwen2 architectures)."""
        p = Path(path)
        file = p / "config.json" if p.is_dir() else p
        spec = get_model(str(file))
        cfg = json.loads(file.read_text())
        archs = cfg.get("architectures") or []
        arch = next((a for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            raise InputError(f"architecture {', '.join(archs) or '?'} is not one the engine runs "
                             f"({', '.join(ARCHITECTURES)})", file=str(file), field="architectures")
        if cfg.get("sliding_window") and cfg.get("use_sliding_window", arch == "MistralForCausalLM"):
            raise InputError("sliding-window attention is not supported by the engine", file=str(file),
                             field="sliding_window")
        rope = cfg.get("rope_parameters") or {}  # transformers 5 keeps theta and scaling together here
        theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type") not in (None, "default") else None)
        return cls.from_spec(spec, architecture=arch, rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                             rope_theta=theta, rope_scaling=scaling)

    @classmethod
    def resolve(cls, model: str) -> EngineModelConfig:
        """A catalog name or a path to a HuggingFace config.json / model directory."""
        p = Path(model)
        if p.exists():
            return cls.from_hf(p)
        return cls.from_spec(get_model(model))

    def hf_config_dict(self) -> dict:
        """The ``config.json`` that ``transformers`` would build this model from (used by the correctness tests)."""
        d = {
            "architectures": [self.architecture],
            "model_type": {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                           "Qwen2ForCausalLM": "qwen2"}[self.architecture],
            "hidden_size": self.hidden_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "intermediate_size": self.intermediate_size, "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings, "tie_word_embeddings": self.tied_embeddings,
            "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
            # transformers < 5 reads rope_theta and rope_scaling, 5.x rope_parameters (theta inside); copies, since
            # transformers rewrites these dicts in place
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "rope_parameters": {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta},
            "hidden_act": "silu", "attention_bias": self.qkv_bias and self.architecture == "LlamaForCausalLM",
            "torch_dtype": "bfloat16",
        }
        if self.architecture == "MistralForCausalLM":
            d["sliding_window"] = None
        if self.architecture == "Qwen2ForCausalLM":
            d["use_sliding_window"] = False
        return d

    def to_json(self) -> dict:
        return asdict(self)
