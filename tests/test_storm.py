"""A preemption storm in the simulator: a KV pool far too small for a burst of requests, under both preemption
modes and every policy. Every request finishes with all its tokens or is rejected with its reason; none is lost,
and the pool and swap space are whole again at the end. (The engine's storm, on the CPU backend:
tests/test_engine_replay.py.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from servesim.sim.deployment import build_deployment
from servesim.sim.simulator import Simulation
from servesim.sim.workload import Workload

BLOCKS = 48  # 768 tokens of KV for 120 requests of up to 1,200 tokens arriving within 0.2 s
N = 120
TOO_BIG = 3  # requests longer than the whole pool: rejected, with their reason


def storm_workload(seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    inp = rng.integers(16, 400, N)
    out = rng.integers(8, 300, N)
    inp[:TOO_BIG] = 900  # prompt + output beyond the pool
    df = pd.DataFrame({"arrival_s": np.sort(rng.uniform(0, 0.2, N)), "input_tokens": inp, "output_tokens": out,
                       "priority": rng.integers(0, 4, N), "deadline_s": rng.uniform(1, 60, N)})
    return Workload(name="storm", requests=df, source="storm")


def lost(req: pd.DataFrame, n: int) -> int:
    """Requests neither finished with all their tokens nor rejected with a reason (and any missing row)."""
    reason = req["rejected_reason"].fillna("")
    finished = (reason == "") & (req["generated_tokens"] == req["output_tokens"]) & req["finish_s"].notna()
    rejected = reason.str.len() > 0
    return n - int(finished.sum()) - int(rejected.sum()) + int((finished & rejected).sum())


CASES = [(b, m, p) for m in ("recompute", "swap") for b, p in
         [("chunked", p) for p in ("fcfs", "sjf", "srpt", "priority", "edf", "sjf-predicted")]
         + [("continuous", "fcfs"), ("static", "sjf")]]


@pytest.mark.parametrize(("batching", "preemption", "policy"), CASES)
def test_preemption_storm_loses_no_request(batching, preemption, policy):
    from servesim.sim.config import Scenario

    s = Scenario(num_gpu_blocks=BLOCKS, block_size=16, preemption=preemption, policy=policy, batching=batching,
                 swap_space_gib=0.02, max_num_seqs=32, max_model_len=4096,
                 max_num_batched_tokens=512 if batching == "chunked" else 4096)
    dep = build_deployment(s)
    w = storm_workload()
    sim = Simulation(dep, w, seed=1)
    swapped = []
    step_s = sim.step_s
    sim.step_s = lambda batch, d=None: (swapped.append(batch.swap_out_blocks), step_s(batch, d))[1]
    sim.run()
    req = sim.requests.frame()
    assert len(req) == N and sorted(req["request_id"]) == list(range(N))
    assert lost(req, N) == 0
    reasons = req["rejected_reason"].fillna("")
    assert (reasons.iloc[np.flatnonzero(req["request_id"] < TOO_BIG)] != "").all()
    assert (reasons != "").sum() == TOO_BIG and reasons[reasons != ""].str.contains("KV blocks").all()
    assert req["num_preemptions"].sum() > N // 4  # a storm, not a drizzle
    if preemption == "swap":
        assert sum(swapped) > 0
    for rep in sim.replicas:
        for e in rep.engines:
            kv = e.sched.kv
            assert kv.num_free == kv.num_blocks and kv.swap_free == dep.swap_blocks and not e.sched.has_work
