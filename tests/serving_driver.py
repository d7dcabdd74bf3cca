"""A minimal executor for the serving core: the seam loop with a fixed step time, no SimPy.

Tests use it to drive the scheduler exactly as the simulator and the engine do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from servesim.sim.kv import KVBlockManager
from servesim.sim.request import Batch, Request
from servesim.sim.scheduler import Scheduler, SchedulerConfig


@dataclass
class Trace:
    batches: list[Batch] = field(default_factory=list)
    kv_used: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    admitted: list[int] = field(default_factory=list)  # request ids in order of first admission


def drive(
    config: SchedulerConfig,
    requests: list[Request],
    num_blocks: int,
    *,
    step_s: float = 0.01,
    block_size: int = 16,
    prefix_caching: bool = False,
    swap_blocks: int = 0,
    accept: np.random.Generator | None = None,
    max_steps: int = 200_000,
    check=None,
) -> tuple[Scheduler, Trace]:
    """Run ``requests`` (sorted by arrival) through a scheduler until all are done."""
    kv = KVBlockManager(num_blocks, block_size, prefix_caching=prefix_caching, swap_blocks=swap_blocks)
    sched = Scheduler(config, kv, np.random.default_rng(0))
    trace = Trace()
    pending = sorted(requests, key=lambda r: r.arrival_s)
    now, i, seen = 0.0, 0, set()
    for _ in range(max_steps):
        while i < len(pending) and pending[i].arrival_s <= now:
            sched.add(pending[i], now)
            i += 1
        if not sched.has_work:
            if i == len(pending):
                return sched, trace
            now = pending[i].arrival_s
            continue
        waiting_before = [entry[3] for entry in sched.waiting]
        batch = sched.schedule(now)
        for ch in batch.prefill:
            if ch.request.request_id not in seen:
                seen.add(ch.request.request_id)
                trace.admitted.append(ch.request.request_id)
        assert not batch.empty, "scheduler stalled with work"
        if check is not None:
            check(sched, batch, waiting_before)
        accepted = None
        if accept is not None and batch.decode:
            accepted = 1 + accept.integers(0, config.spec_k + 1, size=len(batch.decode))
        now += step_s
        sched.complete(batch, now, accepted)
        trace.batches.append(batch)
        trace.kv_used.append(kv.num_used)
        trace.times.append(now)
    raise AssertionError("did not finish within max_steps")
