"""Where a model runs: the facts that the cost model, the memory planner and ``servesim fit`` all take."""

from __future__ import annotations

from dataclasses import dataclass

from servesim.errors import ConfigError
from servesim.hwmodels.gpus import GPU
from servesim.hwmodels.models import ModelSpec, check_parallelism, kv_dtype_bytes
from servesim.hwmodels.precision import parse_quant


@dataclass(frozen=True, slots=True)
class Placement:
    """``model`` on ``gpu`` with tensor parallelism ``tp`` and pipeline ``pp``, its linear weights stored in
    ``weight_format`` (a format or a mixed-precision spec, hwmodels/precision.py) and its KV cache in
    ``kv_dtype``; an MoE model's experts spread over ``ep`` groups of
    the ``tp`` GPUs (expert parallelism) and routed with popularity skew ``expert_skew`` (hwmodels.moe).
    Construction checks the combination (ConfigError naming the field), so every consumer can rely on it."""

    model: ModelSpec
    gpu: GPU
    tp: int = 1
    pp: int = 1
    weight_format: str = "bf16"
    kv_dtype: str = "bf16"
    ep: int = 1
    expert_skew: float = 0.0

    def __post_init__(self) -> None:
        check_parallelism(self.model, self.tp, self.pp, self.ep)
        if self.expert_skew < 0:
            raise ConfigError(f"must be >= 0, got {self.expert_skew}", field="expert_skew")
        spec = parse_quant(self.weight_format)  # a format or a mixed-precision spec, canonical
        spec.check_layers(self.model.num_layers)
        object.__setattr__(self, "weight_format", spec.name)
        kv_dtype_bytes(self.kv_dtype)
        object.__setattr__(self, "kv_dtype", self.kv_dtype.lower())

    @property
    def gpus(self) -> int:
        """GPUs one replica occupies."""
        return self.tp * self.pp

    def with_model(self, model: ModelSpec) -> Placement:
        """The same GPU, parallelism and formats for another model (a draft model, say), pp = 1; expert
        parallelism only if that model has experts too."""
        ep = self.ep if model.is_moe else 1
        return Placement(model, self.gpu, self.tp, 1, self.weight_format, self.kv_dtype, ep, self.expert_skew)
