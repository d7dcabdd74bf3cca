"""Where a model runs: the six facts that the cost model, the memory planner and ``servesim fit`` all take."""

from __future__ import annotations

from dataclasses import dataclass

from servesim.hwmodels.gpus import GPU
from servesim.hwmodels.models import ModelSpec, check_parallelism, get_weight_format, kv_dtype_bytes


@dataclass(frozen=True, slots=True)
class Placement:
    """``model`` on ``gpu`` with tensor parallelism ``tp`` and pipeline ``pp``, its linear weights stored in
    ``weight_format`` and its KV cache in ``kv_dtype``. Construction checks the combination (ConfigError
    naming the field), so every consumer can rely on it."""

    model: ModelSpec
    gpu: GPU
    tp: int = 1
    pp: int = 1
    weight_format: str = "bf16"
    kv_dtype: str = "bf16"

    def __post_init__(self) -> None:
        check_parallelism(self.model, self.tp, self.pp)
        object.__setattr__(self, "weight_format", get_weight_format(self.weight_format).name)
        kv_dtype_bytes(self.kv_dtype)
        object.__setattr__(self, "kv_dtype", self.kv_dtype.lower())

    @property
    def gpus(self) -> int:
        """GPUs one replica occupies."""
        return self.tp * self.pp

    def with_model(self, model: ModelSpec) -> Placement:
        """The same GPU, parallelism and formats for another model (a draft model, say), pp = 1."""
        return Placement(model, self.gpu, self.tp, 1, self.weight_format, self.kv_dtype)
