"""Expert routing of mixture-of-experts layers: how many experts a step's tokens reach, and how their work
falls on the GPUs that hold the experts.

A token picks ``top_k`` distinct experts. With ``skew = 0`` every expert is equally likely (what the
load-balancing losses of Mixtral, Qwen-MoE and DeepSeek train for); ``skew > 0`` makes popularity
Zipf-like, p_e ∝ (e+1)^−skew, so a few experts take most tokens (what an unbalanced checkpoint or a
narrow workload shows). The probability that a token routes to expert e is π_e = top_k·p_e, capped at 1
with the excess spread over the others (Σ π_e = top_k). Tokens route independently, so a step of n tokens
reaches expert e with probability 1 − (1 − π_e)^n.

With expert parallelism the experts are dealt to ``ep`` GPU groups round-robin by popularity (the
placement an expert-load balancer approximates); the group holding the most popular expert receives the
most tokens and sets the layer's time, so the cost model prices that group. The expectation is taken
over routing: the random excess of the busiest group over its mean in one step is not modelled.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from servesim.errors import ConfigError
from servesim.hwmodels.models import ModelSpec


@dataclass(frozen=True, slots=True)
class ExpertLoad:
    """The routed experts' work on the busiest expert-parallel group (all experts when ``ep`` = 1)."""

    share: float  # fraction of all (token, expert) assignments the group serves: 1/ep when balanced
    experts: tuple[tuple[int, float], ...]  # its experts as (count, probability a token routes to each)

    def touched(self, tokens: float) -> float:
        """Expected experts of the group that at least one of ``tokens`` tokens routes to."""
        if tokens <= 0:
            return 0.0
        return sum(count * (1.0 - (1.0 - p) ** tokens) for count, p in self.experts)


def routing_probabilities(num_experts: int, top_k: int, skew: float = 0.0) -> list[float]:
    """π_e, the probability that a token routes to expert e, most popular first (Σ π = top_k, each ≤ 1)."""
    if skew < 0:
        raise ConfigError(f"must be >= 0, got {skew}", field="expert_skew")
    if skew == 0:
        return [top_k / num_experts] * num_experts
    weights = [(e + 1.0) ** -skew for e in range(num_experts)]
    for capped in range(top_k + 1):  # the most popular experts saturate first: cap a prefix at 1
        rest = sum(weights[capped:])
        pi = [1.0] * capped + [(top_k - capped) * w / rest for w in weights[capped:]]
        if capped == num_experts or pi[capped] <= 1.0:
            return pi
    return pi


@functools.lru_cache(maxsize=256)
def expert_load(model: ModelSpec, ep: int = 1, skew: float = 0.0) -> ExpertLoad | None:
    """How the routed experts' work falls on the busiest of ``ep`` groups (None for a dense model)."""
    if not model.is_moe:
        return None
    e, k = model.num_experts, model.experts_per_token
    if skew == 0:
        return ExpertLoad(1.0 / ep, ((e // ep, k / e),))
    busiest = routing_probabilities(e, k, skew)[::ep]  # experts 0, ep, 2·ep, ...: dealt by popularity
    return ExpertLoad(sum(busiest) / k if ep > 1 else 1.0, tuple((1, p) for p in busiest))
