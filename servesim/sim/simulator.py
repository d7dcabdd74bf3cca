"""The SimPy simulator: arrivals, a router, and replicas whose steps take cost-model time.

Each replica runs the serving core (``Scheduler`` + ``KVBlockManager``) in a SimPy process::

    batch = sched.schedule(t); dt = cost.step_time_s(batch.shape); yield env.timeout(dt)
    sched.complete(batch, t + dt)

An idle replica sleeps on an event that the next arrival routed to it triggers (no polling).
Between two arrivals, a pure-decode batch repeats identically until a request finishes or the
KV pool runs dry, so the replica advances such a run in one go: the scheduler says how many
steps are identical, the cost model prices them in one vector call, and every timestamp comes
out exactly as if stepped one by one (tests compare both ways). A run of full-budget chunks of one
prompt beside the same decodes is predictable too (``Scheduler.chunk_steps``): each step is priced on its
own shape and waited for on SimPy's clock with its own timeline row, without being scheduled again. A
replica keeps its own clock ``t`` as the running sum of step times, the same sum in both ways; SimPy orders
the events.

With pipeline parallelism a replica runs ``pp`` virtual engines (each its own scheduler and a
``1/pp`` share of the KV blocks, as vLLM does) whose batches pass through ``pp`` stage resources
one after another, so up to ``pp`` micro-batches are in flight.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import simpy

from servesim.hwmodels.ops import BatchShape
from servesim.sim.config import Scenario
from servesim.sim.deployment import Deployment, build_deployment, build_workload
from servesim.sim.kv import KVBlockManager
from servesim.sim.records import RequestRecorder, TimelineRecorder
from servesim.sim.request import Batch, Request
from servesim.sim.result import Result, finish_run
from servesim.sim.router import ROUTERS
from servesim.sim.scheduler import Scheduler
from servesim.sim.spec import PerRequestAcceptance, draft_step_s
from servesim.sim.table import Table
from servesim.sim.workload import Workload

if TYPE_CHECKING:
    import pandas as pd


def run_ends(cost, shape: BatchShape, t: float, steps: int, horizon: float, first: int = 16) -> np.ndarray:
    """End times of up to ``steps`` identical decode steps of ``shape`` from ``t``: running sums from ``t`` (the
    additions of stepping one by one), priced in chunks of growing size (``first``, then 4x) until one ends at or
    after ``horizon``, so a run that an arrival cuts short is not priced to its end. Chunk ``k`` prices the shape
    ``k`` steps on (contexts longer by ``k`` each), the same values as one call over the whole run."""
    parts, done, size, start = [], 0, first, t
    while done < steps:
        m = min(size, steps - done)
        s = shape if not done else replace(
            shape, decode_ctx_tokens=shape.decode_ctx_tokens + shape.decode_seqs * done,
            decode_ctx_max=shape.decode_ctx_max + done if shape.decode_ctx_max else 0)
        ends = cost.decode_run_s(s, m)  # a fresh array: summed in place, start + d0, + d1, ... as one by one
        ends[0] += start
        ends.cumsum(out=ends)
        parts.append(ends)
        done, size, start = done + m, size * 4, ends[-1]
        if start >= horizon:
            break
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class ReplicaProcess:
    """The SimPy process of one scheduler with its KV pool: a replica, or one virtual engine of a pipelined
    replica."""

    def __init__(self, sim: Simulation, replica: Replica, sched: Scheduler) -> None:
        self.sim, self.replica, self.sched = sim, replica, sched
        self.inbox: list[Request] = []
        self.wake: simpy.Event | None = None
        self.t = 0.0
        self.step_span = (0.0, 0.0)  # the current (or last) step's start and end; end = start while unknown
        self.stalled = False  # work it cannot start until blocks held elsewhere are freed (P/D)
        self._dt_s = 0.0  # mean step of the last decode run priced (how many steps the next may need)

    def submit(self, r: Request) -> None:
        self.inbox.append(r)
        self.wake_up()

    def wake_up(self) -> None:
        """End an idle (or stalled) wait: a request arrived, or KV blocks were freed."""
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def run(self):
        """The SimPy process: schedule, wait the step time, complete; sleep when idle."""
        sim, sched, env = self.sim, self.sched, self.sim.env
        dep = self.replica.dep
        pipelined = dep.pp > 1
        while True:
            if not self.inbox and (self.stalled or not sched.has_work):
                self.wake = env.event()
                yield self.wake
                self.wake = None
                self.t = env.now
                self.stalled = False
            if pipelined:
                self.t = env.now
            t = self.t
            for r in self.inbox:
                sched.add(r, t)
            self.inbox.clear()
            self.replica.collect(sched)  # rejections leave at once, not after the next step
            batch = sched.schedule(t)
            if batch.empty:
                if sched.has_work and not self.replica.may_stall:
                    raise RuntimeError(f"replica {self.replica.index}: scheduler stalled at t={t}")
                self.stalled = sched.has_work
                continue
            accepted = sim.accepted(batch.decode) if sim.spec_k and batch.decode else None
            steps = sched.identical_steps(batch) if sim.fast_forward and not pipelined else 1
            if steps > 1:
                # Keep the steps that start before the next arrival anywhere.
                horizon = sim.next_arrival_s()
                # the first chunk: the steps the last run's step time says reach the horizon, and a margin
                first = steps if horizon == math.inf else (
                    int((horizon - t) / self._dt_s * 1.25) + 4 if self._dt_s > 0 else 16)
                ends = run_ends(dep.cost, batch.shape, t, steps, horizon, first=first)
                self._dt_s = (float(ends[-1]) - t) / len(ends)
                steps = 1 + int(ends[: steps - 1].searchsorted(horizon, side="left"))
            if steps > 1:
                sched.extend(batch, steps)
                ends = ends[:steps]
                end = float(ends[-1])
            else:
                ends = used = None
                dt = sim.step_s(batch, dep)
                end = t + dt
                shape = batch.shape  # a run of chunks: no chunk finishes a prompt (sampled tokens are the decodes')
                if (sim.chunk_runs and shape.sampled_tokens == shape.decode_query_tokens and batch.prefill
                        and not pipelined):
                    run = self._chunk_run(batch, end)
                    if run is not None:
                        ends, used = run
                        end = float(ends[-1])
            if pipelined:
                self.step_span = (t, t)
                for stage in self.replica.stages:
                    with stage.request() as slot:
                        yield slot
                        yield env.timeout(dt + dep.pp_transfer_s(batch))  # cost gives one stage's time
                end = env.now
                self.step_span = (t, end)
            else:
                self.step_span = (t, end)
                if batch.steps > 1 and batch.prefill:  # a chunked-prefill run: each step on SimPy's clock and the
                    s, row = t, (self.replica.index, batch.size, batch.shape.prefill_tokens,  # timeline, as one by one
                                 batch.shape.decode_query_tokens, sched.num_running, sched.num_waiting)
                    for e, u in zip(ends.tolist(), used[:-1]):
                        yield env.timeout(e - s)
                        sim.timeline.add(row[0], s, e, 1, *row[1:], u, sched.kv.num_blocks)
                        s = e
                    t = s  # the last step's row below
                    yield env.timeout(end - s)
                else:
                    yield env.timeout(end - t)
            sched.complete(batch, end, accepted, ends)
            self.t = end
            kv = sched.kv
            steps = 1 if batch.prefill else batch.steps
            sim.timeline.add(
                self.replica.index, t, end, steps, batch.size, batch.shape.prefill_tokens,
                batch.shape.decode_query_tokens * steps, sched.num_running, sched.num_waiting,
                kv.num_used, kv.num_blocks,
            )
            self.replica.collect(sched)

    def _chunk_run(self, batch: Batch, end: float) -> tuple[np.ndarray, list[int]] | None:
        """End times of the run of chunked-prefill steps that ``batch`` (ending at ``end``) begins, when the
        scheduler allows more than one and the next starts before the next arrival anywhere (None otherwise):
        each step priced on its own shape and added to the clock as stepping one by one adds it; with the KV
        blocks in use after each step (``Scheduler.extend_chunks``)."""
        sched = self.sched
        m = sched.chunk_steps(batch)
        if m <= 1:
            return None
        horizon = self.sim.next_arrival_s()
        if end >= horizon:
            return None
        cost, ends = self.replica.dep.cost, [end]
        while len(ends) < m and end < horizon:  # keep the steps that start before the next arrival
            end = end + cost.step_time_s(sched.chunk_shape(batch, len(ends)))
            ends.append(end)
        used = sched.extend_chunks(batch, len(ends))
        return np.array(ends), used


class Replica:
    """A model replica: one engine, or ``pp`` virtual engines sharing ``pp`` pipeline stages. ``dep`` is the
    simulation's deployment unless the replica belongs to a pool of its own (P/D)."""

    may_stall = False  # whether an engine may wait for KV blocks that another process frees

    def __init__(self, sim: Simulation, index: int, dep: Deployment | None = None) -> None:
        self.sim, self.index = sim, index
        self.dep = dep = sim.dep if dep is None else dep
        self.outstanding = 0
        self.stages = [simpy.Resource(sim.env, capacity=1) for _ in range(dep.pp)] if dep.pp > 1 else []
        blocks = max(1, dep.num_blocks // dep.pp)
        self.engines = [
            ReplicaProcess(
                sim, self, Scheduler(dep.scheduler, self._kv(blocks), np.random.default_rng([sim.seed, index, v]))
            )
            for v in range(dep.pp)
        ]
        for e in self.engines:  # the cost model prices a batch by its shape: no per-decode context array
            e.sched.decode_contexts = False

    def _kv(self, blocks: int) -> KVBlockManager:
        dep = self.dep
        return KVBlockManager(
            blocks, dep.block_size, prefix_caching=dep.prefix_caching, swap_blocks=dep.swap_blocks // dep.pp
        )

    @property
    def kv_load(self) -> float:
        used = queued = total = 0
        for e in self.engines:
            kv, s = e.sched.kv, e.sched
            used += kv.num_used
            total += kv.num_blocks
            queued += sum(r.prompt_tokens for *_, r in s.waiting) + sum(r.prompt_tokens for r in e.inbox)
        return (used + queued / self.dep.block_size) / total

    def submit(self, r: Request) -> None:
        r.replica = self.index
        self.outstanding += 1
        engine = min(self.engines, key=lambda e: e.sched.num_running + e.sched.num_waiting + len(e.inbox))
        engine.submit(r)

    def collect(self, sched: Scheduler) -> None:
        """Record what the scheduler finished or rejected."""
        if not sched.finished:
            return
        for r in sched.finished:
            self.outstanding -= 1
            self.sim.done(r)
        sched.finished.clear()


class Simulation:
    """Wiring of one run: environment, workload source, router, replicas, recorders."""

    def __init__(self, dep: Deployment, workload: Workload, *, seed: int = 0, fast_forward: bool = True,
                 on_progress: Callable[[int], None] | None = None) -> None:
        self.dep, self.seed, self.fast_forward = dep, seed, fast_forward
        self.env = simpy.Environment()
        self.rng = np.random.default_rng(seed)
        self.requests = RequestRecorder(keep_token_times=dep.scheduler.record_token_times)
        self.timeline = TimelineRecorder()
        self.router = ROUTERS[dep.router]()
        self.replicas = self._make_replicas()
        self.spec_k = dep.scheduler.spec_k
        self.chunk_runs = fast_forward  # fast-forward runs of chunked-prefill steps too (P/D: off)
        self._alphas: dict[int, float] = {}
        self._on_progress = on_progress
        df = workload.table
        self._n = len(df)
        # Python lists: a request reads its row as Python numbers (numpy scalars would make every clock they
        # reach a numpy scalar, whose arithmetic is several times slower; the values are the same)
        self._arrival = np.asarray(df["arrival_s"], np.float64).tolist()
        self._inp = np.asarray(df["input_tokens"], np.int64).tolist()
        self._out = np.asarray(df["output_tokens"], np.int64).tolist()
        self._hash = df["hash_ids"].tolist() if "hash_ids" in df else None
        self._prio = np.asarray(df["priority"], np.int64).tolist() if "priority" in df else None
        self._deadline = np.asarray(df["deadline_s"], np.float64).tolist() if "deadline_s" in df else None
        self._block_tokens = workload.block_tokens or 0
        self._closed = workload.closed_loop
        if self._closed is not None and dep.replicas * dep.pp > 1:
            # A finish on one engine issues an arrival that may go to another, mid-run: the other
            # engines cannot know their next arrival ahead, so they step one by one.
            self.fast_forward = self.chunk_runs = False
        self._issued = 0
        self._pending: list[float] = []  # closed loop: times of scheduled submissions
        self.first_arrival_s = math.inf
        self.last_finish_s = 0.0

    def _make_replicas(self) -> list[Replica]:
        return [Replica(self, i) for i in range(self.dep.replicas)]

    # -- workload ---------------------------------------------------------------------------
    def _request(self, i: int, now: float) -> Request:
        arrival = now if self._closed else self._arrival[i]
        r = Request(i, arrival, self._inp[i], self._out[i])
        if self._hash is not None:
            r.hash_ids, r.hash_block_tokens = tuple(self._hash[i]), self._block_tokens
        if self._prio is not None:
            r.priority = self._prio[i]
        if self._deadline is not None and not math.isnan(self._deadline[i]):
            r.deadline_s = arrival + self._deadline[i]
        elif self.dep.slo_e2el_s is not None:
            r.deadline_s = arrival + self.dep.slo_e2el_s
        self.first_arrival_s = min(self.first_arrival_s, arrival)
        return r

    def _route(self, r: Request) -> None:
        self.replicas[self.router(r, self.replicas, self.rng)].submit(r)

    def _open_arrivals(self):
        env, arrival = self.env, self._arrival
        for i in range(self._n):
            a = arrival[i]
            if a > env.now:
                yield env.timeout(a - env.now)
            self._issued = i + 1
            self._route(self._request(i, env.now))

    def _issue(self) -> None:
        if self._issued < self._n:
            self._issued += 1
            self._route(self._request(self._issued - 1, self.env.now))

    def _issue_after(self, delay: float):
        yield self.env.timeout(delay)
        heapq.heappop(self._pending)
        self._issue()

    def next_arrival_s(self) -> float:
        """Time of the next request to arrive anywhere (inf when none is known yet)."""
        if self._closed is None:
            return self._arrival[self._issued] if self._issued < self._n else math.inf
        return self._pending[0] if self._pending else math.inf

    def done(self, r: Request) -> None:
        self.requests.add(r)
        if not r.rejected_reason:
            self.last_finish_s = max(self.last_finish_s, r.finish_s)
        if self._on_progress is not None:
            self._on_progress(len(self.requests))
        if self._closed is not None:
            think = self._closed.think_time_s
            if think == 0:
                self._issue()
            elif self._issued + len(self._pending) < self._n:
                heapq.heappush(self._pending, self.env.now + think)
                self.env.process(self._issue_after(think))

    # -- cost -------------------------------------------------------------------------------
    def step_s(self, batch: Batch, dep: Deployment | None = None) -> float:
        """One step's time on ``dep`` (default: the simulation's): target model, draft proposals, KV swaps."""
        dep = self.dep if dep is None else dep
        dt = dep.cost.step_time_s(batch.shape)
        if self.spec_k:
            dt += draft_step_s(dep.draft_cost, batch.shape, self.spec_k, dep.cost)
        if batch.swap_in_blocks or batch.swap_out_blocks:
            dt += (batch.swap_in_blocks + batch.swap_out_blocks) * dep.swap_s_per_block
        return dt

    def accepted(self, decode: list[Request]) -> np.ndarray:
        """Tokens each decoding request emits this verification step."""
        model = self.dep.acceptance
        if isinstance(model, PerRequestAcceptance):
            alphas = np.array([self._alphas.setdefault(r.request_id, model.draw_alpha(self.rng)) for r in decode])
            return model.sample_for(self.rng, alphas)
        return model.sample(self.rng, len(decode))

    # -- results ------------------------------------------------------------------------------
    def request_table(self) -> Table | pd.DataFrame:
        """The per-request table (``finish_run`` adds each request's E2E latency alone on an idle replica)."""
        return self.requests.table()

    def pool_summary(self, requests: pd.DataFrame, timeline: pd.DataFrame, duration_s: float) -> dict:
        """Summary entries beyond the fleet's (P/D: one per pool)."""
        return {}

    # -- run --------------------------------------------------------------------------------
    def run(self) -> None:
        for rep in self.replicas:
            for e in rep.engines:
                self.env.process(e.run())
        if self._closed is None:
            self.env.process(self._open_arrivals())
        else:
            for _ in range(min(self._closed.users, self._n)):
                self._issue()
        self.env.run()
        self.itl_s = np.concatenate([np.asarray(e.sched.itl_s) for rep in self.replicas for e in rep.engines])
        self.itl_weights = np.concatenate(
            [np.asarray(e.sched.itl_weights, np.int64) for rep in self.replicas for e in rep.engines]
        )


def simulate(scenario: Scenario, workload: Workload | None = None, *,
             on_progress: Callable[[int, int], None] | None = None) -> Result:
    """Run one scenario to completion and summarize it. ``on_progress(done, total)`` is called as requests
    finish (about 200 times over a run), for a progress display."""
    started = time.perf_counter()
    if scenario.disaggregated:  # a prefill pool, a decode pool and the KV link between them
        from servesim.sim.disagg import PDSimulation, build_pd

        dep, make = build_pd(scenario), PDSimulation
    else:
        dep, make = build_deployment(scenario), Simulation
    w = workload if workload is not None else build_workload(scenario)
    tick = None
    if on_progress is not None:
        total, every = len(w), max(1, len(w) // 200)

        def tick(done: int) -> None:
            if done % every == 0 or done == total:
                on_progress(done, total)

    sim = make(dep, w, seed=scenario.seed, fast_forward=scenario.fast_forward, on_progress=tick)
    sim.run()
    result = finish_run(scenario, dep, w, sim.request_table(), sim.timeline.table(), sim.itl_s, sim.itl_weights,
                        sim.first_arrival_s, sim.last_finish_s, started)
    if scenario.disaggregated:  # per-pool entries (the base simulation has none: its tables stay pandas-free)
        result.summary.update(sim.pool_summary(result.requests, result.timeline, result.summary["duration"]))
    return result
