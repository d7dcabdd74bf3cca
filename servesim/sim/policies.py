"""Queue-ordering policies and the output-length predictor behind ``sjf-predicted``.

A policy is a function ``request -> key``; the waiting queue serves the smallest key first and
preemption takes the running request with the largest. Aging lowers a waiting request's key by
``aging`` key-units per second waited: ``key - aging * (now - arrival)``. Since ``aging * now`` is
the same for every request at any instant, ordering by ``key + aging * arrival`` is identical
and never changes while requests wait, so the queue is a plain heap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from servesim.sim.request import Request

PolicyKey = Callable[[Request], float]

POLICIES: dict[str, PolicyKey] = {
    "fcfs": lambda r: r.arrival_s,
    "sjf": lambda r: r.prompt_tokens,  # shortest prompt
    "sjf-oracle": lambda r: r.output_tokens,  # true output length
    "sjf-predicted": lambda r: r.predicted_output_tokens,  # predicted output length
    "srpt": lambda r: r.remaining_tokens,  # least remaining work, in tokens
    "priority": lambda r: r.priority,  # lower value = more important
    "edf": lambda r: r.deadline_s,  # earliest deadline first
}

# Policies whose key is a time already (aging would double-count the wait).
_TIME_KEYED = {"fcfs", "edf"}


def policy_key(policy: str, aging: float) -> PolicyKey:
    """The static ordering key of ``policy`` with linear aging folded in."""
    base = POLICIES[policy]
    if aging == 0 or policy in _TIME_KEYED:
        return base
    return lambda r: base(r) + aging * r.arrival_s


PREDICTORS = ("lognormal", "buckets")


@dataclass(frozen=True)
class OutputPredictor:
    """Predicts output lengths with a controlled error, for ``sjf-predicted``.

    ``kind="lognormal"``: prediction = true × exp(N(0, sigma)).
    ``kind="buckets"``: a classifier over length buckets (edges in tokens) that names the true
    bucket with probability ``accuracy`` and another bucket uniformly otherwise; the prediction
    is that bucket's midpoint (the last bucket's lower edge × 1.5).
    """

    kind: str = "lognormal"
    sigma: float = 0.5
    accuracy: float = 0.8
    bucket_edges: tuple[int, ...] = (64, 128, 256, 512, 1024)

    def __post_init__(self) -> None:
        assert self.kind in PREDICTORS and self.sigma >= 0 and 0 <= self.accuracy <= 1, self
        assert self.bucket_edges and list(self.bucket_edges) == sorted(set(self.bucket_edges)), self.bucket_edges

    def predict(self, true_tokens: int, rng: np.random.Generator) -> int:
        if self.kind == "lognormal":
            return max(1, round(true_tokens * float(np.exp(rng.normal(0.0, self.sigma)))))
        edges = self.bucket_edges
        nb = len(edges) + 1
        bucket = int(np.searchsorted(edges, true_tokens, side="right"))
        if nb > 1 and rng.random() >= self.accuracy:
            bucket = int(rng.choice([b for b in range(nb) if b != bucket]))
        lo = 0 if bucket == 0 else edges[bucket - 1]
        hi = edges[bucket] if bucket < len(edges) else int(edges[-1] * 2)
        return max(1, (lo + hi) // 2)
