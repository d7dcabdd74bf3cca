"""Trace replay: the simulator's scheduler and KV manager, unchanged, driving the engine in real time.

The loop is the simulator's replica process with the cost model replaced by the GPU::

    sched.add(request, now)             # each request when the clock passes its (time-scaled) arrival
    batch = sched.schedule(now)
    runner.run(batch)                   # one forward pass; the clock advances by what it really took
    sched.complete(batch, clock())

Each request's output length is forced from the trace (the scheduler finishes it after that many tokens),
so the engine makes the same policy decisions the simulator makes for the same step times. Outputs are the
simulator's files (the shared writers) plus an iteration log: the batch composition and measured time of
every iteration, which validation and calibration read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from servesim.engine.engine import Engine
from servesim.errors import ConfigError
from servesim.sim.config import Scenario
from servesim.sim.deployment import Deployment, build_deployment, build_workload
from servesim.sim.kv import KVBlockManager
from servesim.sim.records import RequestRecorder, TimelineRecorder
from servesim.sim.request import Request
from servesim.sim.result import Result, finish_run
from servesim.sim.scheduler import Scheduler
from servesim.sim.workload import Workload

ITERATION_COLUMNS = (
    "iteration", "start_s", "end_s", "step_s", "gpu_s", "host_s", "schedule_s", "graph", "piecewise",
    "prefill_seqs", "prefill_tokens", "prefill_attn_pairs", "prefill_ctx_tokens",
    "decode_seqs", "decode_query_tokens", "decode_ctx_tokens", "decode_ctx_max", "sampled_tokens",
    "swap_in_blocks", "swap_out_blocks", "preempted", "num_running", "num_waiting", "kv_blocks_used",
)


@dataclass
class ReplayResult:
    result: Result
    iterations: pd.DataFrame


def workload_requests(w: Workload, slo_e2el_s: float | None = None) -> list[Request]:
    """The workload's rows as fresh ``Request`` objects in arrival order (open-loop workloads)."""
    df = w.requests
    if w.closed_loop is not None or not w.has_arrivals:
        raise ValueError("replay takes open-loop workloads with arrival times")
    hashes = df["hash_ids"].tolist() if "hash_ids" in df.columns else None
    prio = df["priority"].to_numpy(np.int64) if "priority" in df.columns else None
    deadline = df["deadline_s"].to_numpy(np.float64) if "deadline_s" in df.columns else None
    out = []
    for i, (a, p, o) in enumerate(zip(df["arrival_s"].tolist(), df["input_tokens"].tolist(),
                                      df["output_tokens"].tolist(), strict=True)):
        r = Request(i, a, int(p), int(o))
        if hashes is not None:
            r.hash_ids, r.hash_block_tokens = tuple(hashes[i]), w.block_tokens or 0
        if prio is not None:
            r.priority = int(prio[i])
        if deadline is not None and not np.isnan(deadline[i]):
            r.deadline_s = a + float(deadline[i])
        elif slo_e2el_s is not None:
            r.deadline_s = a + slo_e2el_s
        out.append(r)
    return out


def engine_deployment(scenario: Scenario, engine: Engine) -> Deployment:
    """The scenario's deployment with the engine's actual KV block count (or the scenario's ``num_gpu_blocks``,
    when it asks for fewer: the scheduler then uses part of the engine's cache)."""
    dep = build_deployment(scenario)
    if dep.replicas != 1 or dep.pp != 1:
        raise ConfigError("the engine replays one replica without pipeline stages (replicas = pp = 1)",
                          field="replicas")
    if dep.tp != engine.config.tp:
        raise ConfigError(f"the scenario runs TP {dep.tp}; the engine was built for TP {engine.config.tp}",
                          field="tp")
    asked = scenario.num_gpu_blocks
    if asked is not None and asked > engine.num_blocks:
        raise ConfigError(f"num_gpu_blocks {asked:,} is more than the engine's {engine.num_blocks:,} KV blocks",
                          field="num_gpu_blocks")
    return replace(dep, num_blocks=asked or engine.num_blocks)


WARMUP_REQUESTS, WARMUP_OUTPUT_TOKENS, WARMUP_SPEEDUP = 32, 32, 20.0


def warm_up(scenario: Scenario, engine: Engine, workload: Workload | None = None,
            n: int = WARMUP_REQUESTS, force: bool = False) -> float:
    """Replay the workload's first ``n`` requests (outputs cut to 32 tokens, arrivals 20x faster) and drop the
    result; returns the seconds it took. Triton compiles a kernel variant the first time an argument class
    appears (a block-table width of one, a multiple of 16 or neither; a model's head counts; a draft's shapes),
    0.7-1.9 s each on the H200, and a measured run that meets one records a stall that a server past its
    first minutes never has (seen in a suite run on a machine with an empty Triton cache: four ~0.8 s steps in
    3,039). The KV manager and scheduler are the replay's own, so nothing carries over but compiled kernels.
    A CPU engine (torch reference kernels: nothing to compile) skips it unless ``force``."""
    if engine.config.device != "cuda" and not force:
        return 0.0
    w = workload if workload is not None else build_workload(scenario)
    df = w.requests.head(n).copy()
    if df.empty or w.closed_loop is not None or not w.has_arrivals:
        return 0.0
    df["arrival_s"] = (df["arrival_s"] - df["arrival_s"].iloc[0]) / WARMUP_SPEEDUP
    df["output_tokens"] = df["output_tokens"].clip(upper=WARMUP_OUTPUT_TOKENS)
    started = time.perf_counter()
    replay(scenario, engine, Workload(f"{w.name}[warm-up]", df, block_tokens=w.block_tokens, source=w.source))
    return time.perf_counter() - started


def replay(scenario: Scenario, engine: Engine, workload: Workload | None = None, *, time_scale: float = 1.0,
           on_progress=None) -> ReplayResult:
    """Serve ``workload`` (default: the scenario's) on ``engine`` in real time; arrivals ``time_scale``× faster."""
    started = time.perf_counter()
    dep = engine_deployment(scenario, engine)
    w = workload if workload is not None else build_workload(scenario)
    reqs = workload_requests(w, dep.slo_e2el_s)
    if time_scale != 1.0:
        t0 = reqs[0].arrival_s if reqs else 0.0
        for r in reqs:
            r.arrival_s = t0 + (r.arrival_s - t0) / time_scale
    kv = KVBlockManager(dep.num_blocks, dep.block_size, prefix_caching=dep.prefix_caching, swap_blocks=dep.swap_blocks)
    sched = Scheduler(dep.scheduler, kv, np.random.default_rng([scenario.seed, 0, 0]))
    runner = engine.runner
    spec = dep.scheduler.spec_k > 0
    if spec != (runner.spec is not None) or (spec and runner.spec.k != dep.scheduler.spec_k):
        raise ConfigError(f"the scenario speculates {dep.scheduler.spec_k} tokens per step, the engine "
                          f"{runner.spec.k if runner.spec else 0}", field="spec_k")
    recorder = RequestRecorder(keep_token_times=dep.scheduler.record_token_times)
    timeline = TimelineRecorder()
    log: list[tuple] = []
    first = reqs[0].arrival_s if reqs else 0.0
    origin = time.perf_counter() - first
    clock = lambda: time.perf_counter() - origin  # noqa: E731  trace time: 0 at the trace's origin
    i, n, last_finish, it = 0, len(reqs), first, 0
    busy_since = None  # end of the previous iteration while the engine stays busy (its steps are back to back)

    def collect() -> None:
        nonlocal last_finish
        for r in sched.finished:
            recorder.add(r)
            runner.release(r)
            if not r.rejected_reason:
                last_finish = max(last_finish, r.finish_s)
        if sched.finished and on_progress is not None:
            on_progress(len(recorder), n)
        sched.finished.clear()

    while i < n or sched.has_work:
        now = clock()
        while i < n and reqs[i].arrival_s <= now:
            sched.add(reqs[i], now)
            i += 1
        collect()
        t_sched = clock()
        batch = sched.schedule(t_sched)
        schedule_s = clock() - t_sched
        if batch.empty:
            if sched.has_work:
                raise RuntimeError(f"scheduler stalled at t={now}")
            if i < n:
                time.sleep(max(0.0, reqs[i].arrival_s - clock()))
            busy_since = None
            continue
        emitted = runner.run(batch)
        end = clock()
        step = end - (now if busy_since is None else busy_since)  # what the simulator's step time stands for
        busy_since = end
        sched.complete(batch, end, emitted if spec and len(batch.decode) else None)
        st, s = runner.stats, batch.shape
        timeline.add(0, now, end, 1, batch.size, s.prefill_tokens, s.decode_query_tokens, sched.num_running,
                     sched.num_waiting, kv.num_used, kv.num_blocks)
        log.append((it, now, end, step, st.gpu_s, st.host_s, schedule_s, st.graph, st.piecewise, s.prefill_seqs,
                    s.prefill_tokens, s.prefill_attn_pairs, s.prefill_ctx_tokens, s.decode_seqs, s.decode_query_tokens,
                    s.decode_ctx_tokens, int(batch.decode_ctx.max()) if len(batch.decode) else 0, s.sampled_tokens,
                    st.swap_in_blocks, st.swap_out_blocks, len(batch.preempted), sched.num_running, sched.num_waiting,
                    kv.num_used))
        it += 1
        collect()
    itl = (np.asarray(sched.itl_s, np.float64), np.asarray(sched.itl_weights, np.int64))
    meta = {"engine": {"device": engine.config.device, "memory": engine.memory.to_json(),
                       "timings_s": engine.timings_s, "time_scale": time_scale,
                       "weights": engine.config.weights or "random", "weight_format": engine.config.weight_format,
                       "quantizer": engine.config.quantizer, "backend": engine.model.backend.name,
                       "tp": engine.config.tp,
                       "speculation": None if not spec else {
                           "k": runner.spec.k, "draft": engine.config.draft_model, "mode": runner.spec.mode,
                           "note": ("acceptance drawn from the simulator's model (alpha "
                                    f"{engine.config.spec_alpha}); the draft and verification passes are real")
                           if runner.spec.mode == "controlled" else "greedy verification of the draft's tokens"}},
            "profile_id": "engine"}
    result = finish_run(scenario, dep, w, recorder.frame(), timeline.frame(), *itl, first, last_finish, started, meta)
    return ReplayResult(result, pd.DataFrame(log, columns=list(ITERATION_COLUMNS)))
