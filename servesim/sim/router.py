"""Global routers: which replica an arriving request goes to.

A router is a function ``(request, replicas, rng) -> index``. Replicas expose ``outstanding``
(requests assigned and not finished) and ``kv_load`` (fraction of KV blocks in use, counting the
prompts queued there). ``ROUTERS`` is the one place to add a router.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from servesim.sim.request import Request


class RoutableReplica(Protocol):
    outstanding: int

    @property
    def kv_load(self) -> float: ...


Router = Callable[[Request, Sequence[RoutableReplica], np.random.Generator], int]


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def __call__(self, req: Request, replicas: Sequence[RoutableReplica], rng: np.random.Generator) -> int:
        i = self._next % len(replicas)
        self._next += 1
        return i


def least_outstanding(req: Request, replicas: Sequence[RoutableReplica], rng: np.random.Generator) -> int:
    """Fewest unfinished requests (ties: lowest index)."""
    return min(range(len(replicas)), key=lambda i: replicas[i].outstanding)


def least_kv(req: Request, replicas: Sequence[RoutableReplica], rng: np.random.Generator) -> int:
    """Lowest KV-cache load, queued prompts included."""
    return min(range(len(replicas)), key=lambda i: (replicas[i].kv_load, replicas[i].outstanding))


def power_of_two(req: Request, replicas: Sequence[RoutableReplica], rng: np.random.Generator) -> int:
    """Two replicas at random; the one with fewer unfinished requests (Mitzenmacher)."""
    if len(replicas) == 1:
        return 0
    a, b = rng.choice(len(replicas), size=2, replace=False)
    return int(a) if replicas[a].outstanding <= replicas[b].outstanding else int(b)


AFFINITY_BLOCKS = 2  # prefix blocks that pick a request's home replica


def prefix_affinity(req: Request, replicas: Sequence[RoutableReplica], rng: np.random.Generator) -> int:
    """Requests sharing their first ``AFFINITY_BLOCKS`` prefix blocks go to the same replica, so its cache hits.
    Two blocks, not one: a system prompt that every request starts with (Mooncake's block 0) would send every
    request to one home.

    Falls back to the least loaded replica when the request has no prefix hashes, or when the
    preferred replica has more than twice the load of the least loaded one (plus slack of 4).
    """
    best = least_outstanding(req, replicas, rng)
    if not req.hash_ids:
        return best
    home = hash(req.hash_ids[:AFFINITY_BLOCKS]) % len(replicas)
    if replicas[home].outstanding > 2 * replicas[best].outstanding + 4:
        return best
    return home


ROUTERS: dict[str, Callable[[], Router]] = {
    "round_robin": RoundRobin,
    "least_outstanding": lambda: least_outstanding,
    "least_kv": lambda: least_kv,
    "power_of_two": lambda: power_of_two,
    "prefix_affinity": lambda: prefix_affinity,
}
