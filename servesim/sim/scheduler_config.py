"""Scheduler configuration: batching mode, queue policy, limits, preemption, speculation."""

from __future__ import annotations

from dataclasses import dataclass, field

from servesim.sim.policies import POLICIES, OutputPredictor

PREEMPTION = ("recompute", "swap")


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduling limits and policy for one replica (token counts are per step)."""

    batching: str = "chunked"
    policy: str = "fcfs"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 32768
    preemption: str = "recompute"
    aging: float = 0.0  # key units per second waited (tokens/s for the SJF family)
    spec_k: int = 0  # k draft tokens verified per decode step (0: no speculation)
    predictor: OutputPredictor = field(default_factory=OutputPredictor)
    record_token_times: bool = False

    def __post_init__(self) -> None:
        # The batching mode is checked by Scheduler against BATCHING, the table that defines the modes.
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {self.policy!r}")
        if self.preemption not in PREEMPTION:
            raise ValueError(f"preemption must be one of {', '.join(PREEMPTION)}; got {self.preemption!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if self.aging < 0 or self.spec_k < 0:
            raise ValueError("aging and spec_k must be >= 0")
        if self.batching != "chunked" and self.max_num_batched_tokens < self.max_model_len:
            # Without chunking a whole prompt (or a recompute of prompt + outputs) runs in one step.
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_model_len "
                f"({self.max_model_len}) without chunked prefill"
            )
        if self.max_num_batched_tokens < self.max_num_seqs * (1 + self.spec_k):
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must cover one decode step of "
                f"max_num_seqs ({self.max_num_seqs}) × {1 + self.spec_k} tokens"
            )
