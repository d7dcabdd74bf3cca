"""Scheduler configuration: batching mode, queue policy, admission, limits, preemption, speculation (values
validated by ``Scenario``; this only asserts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from servesim.sim.policies import POLICIES, OutputPredictor

PREEMPTION = ("recompute", "swap")

# How much KV a request must find before it is admitted (``SchedulerConfig.admission``), one line each.
ADMISSION: dict[str, str] = {
    "max_utilization": "blocks on demand as the sequence grows; preempt when the pool runs dry (vLLM; "
                       "TensorRT-LLM's MAX_UTILIZATION)",
    "guaranteed_no_evict": "the blocks of the prompt and every output token reserved at admission; nothing is "
                           "ever preempted (TensorRT-LLM's default GUARANTEED_NO_EVICT)",
    "slots": "max_num_seqs slots, each reserving max_model_len tokens of KV; a request longer than a slot is "
             "refused (llama.cpp's server)",
}


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduling limits and policy for one replica (token counts are per step)."""

    batching: str = "chunked"
    policy: str = "fcfs"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 32768
    preemption: str = "recompute"
    admission: str = "max_utilization"
    aging: float = 0.0  # key units per second waited (tokens/s for the SJF family)
    spec_k: int = 0  # k draft tokens verified per decode step (0: no speculation)
    predictor: OutputPredictor = field(default_factory=OutputPredictor)
    record_token_times: bool = False

    def __post_init__(self) -> None:
        # User values are validated (with the Scenario field named) in sim/config.py; these hold the
        # invariants the scheduler relies on. The batching mode is checked by Scheduler against BATCHING.
        assert self.policy in POLICIES and self.preemption in PREEMPTION, (self.policy, self.preemption)
        assert self.admission in ADMISSION, self.admission
        assert min(self.max_num_seqs, self.max_num_batched_tokens, self.max_model_len) > 0, self
        assert self.aging >= 0 and self.spec_k >= 0, self
        # Without chunking a whole prompt (or a recompute of prompt + outputs) runs in one step.
        assert self.batching == "chunked" or self.max_num_batched_tokens >= self.max_model_len, self
        assert self.max_num_batched_tokens >= self.max_num_seqs * (1 + self.spec_k), self

    @property
    def reserves(self) -> bool:
        """Whether admission reserves a request's KV for its whole life (so nothing is ever preempted)."""
        return self.admission != "max_utilization"
