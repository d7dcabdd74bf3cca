"""``servesim calibrate``: time the engine's operators over the grid, fit whole-step terms on engine iterations,
and write a profile.

1. Operators (``grid.py``, ``ops.py``): each grid point timed in the in-step condition
   (:func:`servesim.kernels.timing.stream_samples_ms`: median, p20, p80 of 11 replays); the reference method
   (:func:`~servesim.kernels.timing.cold_ms`) beside it on every third point and the ends of each axis.
2. Whole steps, per weight format: the engine serves a short synthetic trace with chunked prefill; from its
   iteration log, the per-step host overhead (step time minus device time, by CUDA-graph vs eager and number of
   sequences), the per-kernel gap of graph steps and the per-step gap of eager steps over the operator sum, and
   the eager floor (a one-token eager forward). Then (step mode ``piecewise``, on by default) a second engine with
   piecewise CUDA graphs serves the same trace after its own warm-up: the gap, floors and host time of its
   piecewise steps. Fitted on the even iterations, checked on the odd ones.
3. Fit quality: each interior grid point predicted from its neighbours (held out), and the held-out steps.

On a CPU the torch reference path of a small model is timed with wall clocks (CI runs it end to end).
"""

from __future__ import annotations

import datetime
import math
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from servesim.calibrate.fit import _summary, held_out_errors, held_out_method, refit
from servesim.calibrate.grid import Table, build_grid, off_grid_points, trim
from servesim.calibrate.launch import with_launch_loads
from servesim.calibrate.ops import OpBuilder
from servesim.hwmodels.buckets import PieceBuckets
from servesim.hwmodels.calibrated import KERNELS_PER_LAYER, CalibratedCostModel
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import get_model
from servesim.hwmodels.ops import BatchShape
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.profile import VERSION, FitReport, OpTable, Profile, Provenance, StepFit
from servesim.kernels import timing
from servesim.provenance import git_commit

SECONDS_PER_POINT = 0.12  # measured on the H200: three graph captures and ~30 short replays per point
OVERHEAD_SEQS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MIN_S = 1e-7  # in-step differences of sub-microsecond kernels can come out at or below zero


@dataclass
class Calibration:
    profile: Profile
    notes: list[str] = field(default_factory=list)
    iterations: dict[str, pd.DataFrame] = field(default_factory=dict)  # format -> engine iteration log


def _quantiles(samples_ms: list[float]) -> tuple[float, float, float]:
    s = sorted(max(x * 1e-3, MIN_S) for x in samples_ms)
    q = np.quantile(s, [0.5, 0.2, 0.8])
    return float(q[0]), float(q[1]), float(q[2])


def time_point(fn: Callable[[], object], cuda: bool, reference: bool) -> tuple[float, float, float, float | None]:
    """(median, p20, p80, reference) seconds of ``fn`` in the in-step condition (wall clock on a CPU)."""
    if not cuda:
        fn()
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return (*_quantiles(samples), None)
    est = timing.cold_ms(fn, reps=3, flush="clean")
    copies = max(4, min(32, int(2.0 / max(est, 1e-3))))
    med, p20, p80 = _quantiles(timing.stream_samples_ms(fn, reps=11, copies=copies))
    ref = max(timing.cold_ms(fn, reps=10) * 1e-3, MIN_S) if reference else None
    return med, p20, p80, ref


def measure_table(t: Table, builder: OpBuilder, on_point: Callable[[], None] | None = None) -> OpTable:
    axes = [list(g) for g in t.grid]
    points = [(a,) for a in axes[0]] if len(axes) == 1 else [(a, b) for a in axes[0] for b in axes[1]]
    ends = {0, len(points) - 1}
    builder.reserve(t.op, t.keyd, t.grid)
    med, p20, p80, ref = [], [], [], []
    for idx, point in enumerate(points):
        fn = builder.build(t.op, t.keyd, point)
        m, lo, hi, r = time_point(fn, builder.cuda, reference=idx % 3 == 0 or idx in ends)
        med.append(m)
        p20.append(min(lo, m))
        p80.append(max(hi, m))
        ref.append(r)
        del fn
        if on_point:
            on_point()
    held_pts, held_s = off_grid_points(t), []
    for point in held_pts:
        fn = builder.build(t.op, t.keyd, point)
        held_s.append(time_point(fn, builder.cuda, reference=False)[0])
        del fn
        if on_point:
            on_point()
    return OpTable(op=t.op, key=t.keyd, axes=t.axes, grid=t.grid, median_s=tuple(med), p20_s=tuple(p20),
                   p80_s=tuple(p80), reference_s=tuple(ref) if builder.cuda else None,
                   held_out_points=tuple(tuple(float(v) for v in p) for p in held_pts), held_out_s=tuple(held_s))


# -- whole steps -----------------------------------------------------------------------------------------------
def _shape(row) -> BatchShape:
    return BatchShape(prefill_seqs=int(row.prefill_seqs), prefill_tokens=int(row.prefill_tokens),
                      prefill_attn_pairs=float(row.prefill_attn_pairs), prefill_ctx_tokens=int(row.prefill_ctx_tokens),
                      decode_seqs=int(row.decode_seqs), decode_query_tokens=int(row.decode_query_tokens),
                      decode_ctx_tokens=int(row.decode_ctx_tokens), sampled_tokens=int(row.sampled_tokens),
                      decode_ctx_max=int(getattr(row, "decode_ctx_max", 0)))


def _overhead_table(fmt: str, mode: str, seqs: np.ndarray, host: np.ndarray) -> OpTable | None:
    """Median host time per step by number of sequences, on the OVERHEAD_SEQS grid (empty buckets take the
    nearest filled one)."""
    if not len(seqs):
        return None
    edges = np.asarray(OVERHEAD_SEQS)
    idx = np.clip(np.searchsorted(edges, seqs, side="left"), 0, len(edges) - 1)
    med = {int(edges[i]): float(np.median(host[idx == i])) for i in np.unique(idx)}
    filled = sorted(med)
    values = [med[min(filled, key=lambda f, e=e: abs(math.log(f / e)))] for e in OVERHEAD_SEQS]
    values = [max(v, MIN_S) for v in values]
    return OpTable(op="step_overhead", key={"mode": mode, "format": fmt}, axes=("seqs",),
                   grid=(tuple(float(x) for x in OVERHEAD_SEQS),), median_s=tuple(values), p20_s=tuple(values),
                   p80_s=tuple(values))


def synthetic_workload(n: int, seed: int, max_len: int, prompt_mean: float = 900, output_mean: float = 150,
                       burst_gap_s: float = 0.002):
    """A load that walks the engine through every batch size: a slow start, then a burst, then a drain."""
    from servesim.sim.workload import Workload

    rng = np.random.default_rng(seed)
    prompt = np.clip(rng.lognormal(math.log(prompt_mean), 0.9, n), 8, max_len // 2).astype(np.int64)
    output = np.clip(rng.lognormal(math.log(output_mean), 0.8, n), 4, max_len // 2).astype(np.int64)
    gaps = np.where(np.arange(n) < n // 5, 0.05, burst_gap_s)
    df = pd.DataFrame({"arrival_s": np.cumsum(gaps), "input_tokens": prompt, "output_tokens": output})
    return Workload(name="calibration", requests=df, source=f"synthetic:calibration(n={n}, seed={seed})")


# prompt and output means of the piecewise run's trace on CUDA (tokens): chunks mostly under the 768-row cap
PIECEWISE_LENGTHS = {"prompt_mean": 300, "output_mean": 100}
STEP_PROCESSES = ("auto", "fresh", "same")
# the engine runs whole steps are fitted on: "eager" (as it runs by default: decode graphs, eager steps with prefill,
# fitting the graph and eager terms every profile needs) and "piecewise" (a second engine with piecewise graphs)
STEP_MODES = ("eager", "piecewise")
STEP_LIMITS = {"max_num_batched_tokens": 2048, "max_num_seqs": 128}  # the step-fitting engine's scheduler limits
STEP_BUCKETS = PieceBuckets.for_limits(STEP_LIMITS["max_num_batched_tokens"], STEP_LIMITS["max_num_seqs"])


def step_modes(text: str | tuple[str, ...]) -> tuple[str, ...]:
    """The step modes to fit (``eager`` always among them); ValueError naming the choices otherwise."""
    modes = tuple(dict.fromkeys(m.strip() for m in (text.split(",") if isinstance(text, str) else text)
                                if m.strip()))
    if not modes or any(m not in STEP_MODES for m in modes) or "eager" not in modes:
        raise ValueError(f"step modes are a list of {', '.join(STEP_MODES)} with eager among them, got {text!r}")
    return modes


def step_process(choice: str, device: str) -> str:
    """Where the engine runs that fits the step terms: ``fresh`` (a new process) or ``same``; ``auto`` is fresh on
    CUDA, same on the CPU.

    Fresh on the GPU so the step fit does not depend on what the operator timing left in the process (allocator,
    compiled kernels, heap), as a server starts in its own process. On the H200 it made no measured difference (the
    big-chunk eager gap: 4.56 ms in the timing process, 4.66 ms in a new one, priced with the same profile; see
    docs/calibration.md)."""
    if choice not in STEP_PROCESSES:
        raise ValueError(f"step process must be one of {STEP_PROCESSES}, got {choice!r}")
    if choice == "auto":
        return "fresh" if device == "cuda" else "same"
    return choice


def fit_steps_in(where: str, model: str, fmt: str, partial: Profile, device: str, n_requests: int,
                 modes: tuple[str, ...] = STEP_MODES):
    """:func:`fit_steps` here (``same``) or in a new spawned process (``fresh``: nothing of this process's
    allocations, compiled kernels or Python heap comes with it); the same results either way."""
    if where == "same":
        return fit_steps(model, fmt, partial, device, n_requests, modes=modes)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fit_steps, model, fmt, partial, device, n_requests, modes=modes).result()


def _serve(model: str, fmt: str, device: str, work, scenario, max_model_len: int, piecewise: bool):
    """One step-fitting engine run: built, warmed up on ``work``, then serving it; the floors (one-token steps
    alone and beside a decode) built / warmed up / after the run, the host-launch probes, the iterations past
    the first three (allocator and cache warm-up)."""
    from servesim.engine.engine import EngineConfig, build_engine
    from servesim.engine.replay import replay, warm_up

    eng = build_engine(EngineConfig(model=model, weight_format=fmt, max_model_len=max_model_len, device=device,
                                    capture_at_start=True, piecewise_graphs=piecewise, **STEP_LIMITS))
    rounds = [(_eager_floor(eng, decode=False), _eager_floor(eng, decode=True))]
    probes = [timing.host_launch_us(device)]
    warm_up(scenario, eng, work)  # kernel variants compiled before the fitted run, as validation replays them
    rounds.append((_eager_floor(eng, decode=False), _eager_floor(eng, decode=True)))
    it = replay(scenario, eng, work).iterations
    rounds.append((_eager_floor(eng, decode=False), _eager_floor(eng, decode=True)))
    probes.append(timing.host_launch_us(device))
    eng.close()
    del eng
    if device == "cuda":
        torch.cuda.empty_cache()
    return rounds, probes, it.iloc[3:].assign(run="piecewise" if piecewise else "eager")


def step_masks(it: pd.DataFrame) -> dict[str, np.ndarray]:
    """The training rows (even, per format) of each step mode: ``graph`` and ``eager`` steps of the eager engine's
    run, ``piecewise`` steps of the piecewise engine's (logs before the ``run`` column: all the eager run's)."""
    train = (np.arange(len(it)) % 2) == 0
    mode = step_mode_column(it)
    first = it.run.to_numpy() == "eager" if "run" in it else np.ones(len(it), bool)
    return {"graph": (mode == "graph") & first & train, "eager": (mode == "eager") & first & train,
            "piecewise": (mode == "piecewise") & train}


def step_mode_column(it: pd.DataFrame) -> np.ndarray:
    """How the engine ran each iteration: graph, piecewise or eager."""
    graph = it.graph.to_numpy(bool)
    pw = it.piecewise.to_numpy(bool) if "piecewise" in it else np.zeros(len(it), bool)
    return np.where(graph, "graph", np.where(pw, "piecewise", "eager"))


def fit_steps(model: str, fmt: str, partial: Profile, device: str, n_requests: int,
              max_model_len: int = 4096, modes: tuple[str, ...] = STEP_MODES
              ) -> tuple[StepFit, list[OpTable], pd.DataFrame]:
    """Serve a synthetic trace on the engine in ``fmt`` and fit the whole-step terms of the profile (``modes``:
    also on a piecewise-graph engine); returns the fit, the host-time tables and the iterations of both runs
    (judged by ``held_out_step_errors`` on the final profile)."""
    from servesim.sim.config import make_scenario

    cuda = device == "cuda"
    gpu_name = partial.gpu
    scenario = make_scenario({"model": model, "gpu": gpu_name if gpu_name != "cpu" else "H100-SXM", "quant": fmt,
                              "max_model_len": max_model_len, **STEP_LIMITS})
    lengths = {} if cuda else {"prompt_mean": 40, "output_mean": 12}  # the CPU reference path is slow
    work = synthetic_workload(n_requests, 0, max_model_len, **lengths)
    # the piecewise engine's own trace: half the requests, short prompts arriving one at a time, so that most steps
    # with prefill fit the piecewise buckets (the eager trace's burst of long prompts gave 8-14 of them a format
    # on the H200, 2026-12-04) and the second run costs less
    work_pw = synthetic_workload(max(n_requests // 2, 8), 1, max_model_len, burst_gap_s=0.05,
                                 **(PIECEWISE_LENGTHS if cuda else lengths))
    rounds, probes, it = _serve(model, fmt, device, work, scenario, max_model_len, piecewise=False)
    pw_rounds: list = []
    if "piecewise" in modes:
        pw_rounds, pw_probes, it_pw = _serve(model, fmt, device, work_pw, scenario.model_copy(
            update={"piecewise_graphs": True}), max_model_len, piecewise=True)
        probes += pw_probes
        it = pd.concat([it, it_pw], ignore_index=True)
    else:
        it = it.reset_index(drop=True)
    # the floors are host time (Python launching ~350 kernels) and drift within a run: the median of three rounds
    # (built, warmed up, after the fitted run), each the median of ten steps
    floor, floor_mixed = (float(statistics.median(r[i] for r in rounds)) for i in (0, 1))
    placement = Placement(get_model(model), get_gpu(gpu_name) if gpu_name != "cpu" else get_gpu("H100-SXM"),
                          weight_format=fmt)
    bare = CalibratedCostModel(placement, partial, overhead_s=0.0)
    bare_pw = CalibratedCostModel(placement, partial, overhead_s=0.0, piecewise=STEP_BUCKETS)
    shapes = list(map(_shape, it.itertuples()))
    runs = it.run.to_numpy()
    kernels = np.array([(bare_pw if r == "piecewise" else bare).operators_s(s) for s, r in zip(shapes, runs)])
    masks = step_masks(it)
    gpu, step = it.gpu_s.to_numpy(), it.step_s.to_numpy()
    n_kernels = KERNELS_PER_LAYER * bare.layers + 4
    g = masks["graph"]
    graph_gap = float(np.median(gpu[g] - kernels[g]) / n_kernels) if g.any() else 0.0
    if g.any():  # a gap may be negative (operators timed alone overestimate a graph), never half a step
        graph_gap = max(graph_gap, -0.5 * float(kernels[g].min()) / n_kernels)
    mixed = (it.decode_seqs.to_numpy() > 0) & (it.prefill_tokens.to_numpy() > 0)
    eager_gap = _step_gap(gpu, kernels, masks["eager"], np.where(mixed, floor_mixed, floor))
    seqs = (it.prefill_seqs + it.decode_seqs).to_numpy()
    kv = (it.decode_ctx_tokens + it.prefill_ctx_tokens).to_numpy()
    host = step - gpu
    e = masks["eager"]
    terms = dict(graph_gap_s=graph_gap, eager_gap_s=eager_gap, eager_floor_s=floor, eager_floor_mixed_s=floor_mixed,
                 host_launch_us=float(statistics.median(probes)), graph_host_s=_host_fit(seqs[g], kv[g], host[g]),
                 eager_host_s=_host_fit(seqs[e], kv[e], host[e]), schedule_s=schedule_fit(it))
    p = masks["piecewise"]
    if pw_rounds and p.any():  # the same terms of the piecewise engine's steps with prefill
        pw_floor, pw_floor_mixed = (float(statistics.median(r[i] for r in pw_rounds)) for i in (0, 1))
        terms.update(piecewise_gap_s=_step_gap(gpu, kernels, p, np.where(mixed, pw_floor_mixed, pw_floor)),
                     piecewise_floor_s=pw_floor, piecewise_floor_mixed_s=pw_floor_mixed,
                     piecewise_host_s=_host_fit(seqs[p], kv[p], host[p]), piecewise_steps=int(p.sum()))
    fit = StepFit(**terms)
    over = [t for t in (_overhead_table(fmt, "graph", seqs[g], host[g]),
                        _overhead_table(fmt, "eager", seqs[e], host[e])) if t]
    full = partial.model_copy(update={"tables": partial.tables + tuple(over), "steps": {fmt: fit}})
    model_full = CalibratedCostModel(placement, full)
    model_pw = CalibratedCostModel(placement, full, piecewise=STEP_BUCKETS)
    pred = np.array([(model_pw if r == "piecewise" else model_full).step_time_s(s) for s, r in zip(shapes, runs)])
    it = it.assign(format=fmt, mode=step_mode_column(it), predicted_s=pred, kernels_s=kernels)
    it.attrs["eager_floor_rounds_s"] = [list(r) for r in rounds]
    if pw_rounds:
        it.attrs["piecewise_floor_rounds_s"] = [list(r) for r in pw_rounds]
    return fit, over, it


def _step_gap(gpu: np.ndarray, kernels: np.ndarray, rows: np.ndarray, floor: np.ndarray) -> float:
    """Median of a step's device time over its operators' sum, on ``rows`` clear of the floor (operators above 1.5x
    it); it may be negative (operators timed alone overestimate the step), never below half the smallest sum."""
    e = rows & (kernels > 1.5 * floor)
    if not e.any():
        return 0.0
    return max(float(np.median(gpu[e] - kernels[e])), -0.5 * float(kernels[e].min()))


def _host_fit(seqs: np.ndarray, kv: np.ndarray, host: np.ndarray) -> tuple[float, float, float]:
    """Non-negative least squares ``host = a + b seqs + c kv_tokens`` (a host never gets faster with more work),
    refitted without residuals beyond 3 MADs."""
    from scipy.optimize import nnls

    if len(host) < 4:
        return (max(float(np.median(host)), 0.0) if len(host) else 0.0, 0.0, 0.0)
    x = np.column_stack([np.ones(len(host)), seqs, kv]).astype(np.float64)
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    keep = np.ones(len(host), bool)
    for _ in range(2):
        coef, _ = nnls(x[keep] / scale, host[keep])
        resid = host - (x / scale) @ coef
        mad = np.median(np.abs(resid[keep] - np.median(resid[keep]))) or 1e-12
        keep = np.abs(resid) <= 3 * 1.4826 * mad
    coef = coef / scale
    return float(coef[0]), float(coef[1]), float(coef[2])


def schedule_fit(it: pd.DataFrame) -> tuple[float, float, float]:
    """The scheduler's time per step over all of ``it`` as ``base + per running + per waiting request`` (the
    host-speed reference of :mod:`servesim.validate.hostspeed`); zeros for logs without ``schedule_s``."""
    if "schedule_s" not in it or not len(it):
        return (0.0, 0.0, 0.0)
    return _host_fit(it.num_running.to_numpy(), it.num_waiting.to_numpy(), it.schedule_s.to_numpy(np.float64))


def refit_steps(profile: Profile, steps: pd.DataFrame) -> Profile:
    """Refit the host terms of each format from the engine iterations calibration fitted on (the
    ``.steps.parquet`` written beside the profile), with the same even/odd split; the piecewise host terms too
    where the iterations hold a piecewise run."""
    fits = dict(profile.steps)
    for fmt, it in steps.groupby("format", sort=False):
        it = it.reset_index(drop=True)
        masks = step_masks(it)
        seqs = (it.prefill_seqs + it.decode_seqs).to_numpy()
        kv = (it.decode_ctx_tokens + it.prefill_ctx_tokens).to_numpy()
        host = (it.step_s - it.gpu_s).to_numpy()
        g, e, p = masks["graph"], masks["eager"], masks["piecewise"]
        update = {"graph_host_s": _host_fit(seqs[g], kv[g], host[g]),
                  "eager_host_s": _host_fit(seqs[e], kv[e], host[e]), "schedule_s": schedule_fit(it)}
        if p.any() and fits[fmt].piecewise_steps:
            update["piecewise_host_s"] = _host_fit(seqs[p], kv[p], host[p])
        fits[fmt] = fits[fmt].model_copy(update=update)
    return profile.model_copy(update={"steps": fits})


def held_out_step_errors(profile: Profile, steps: pd.DataFrame, model: str) -> dict[str, dict[str, float]]:
    """Whole-step fit quality per format on the held-out half (odd rows) of the iterations calibration fitted
    on, priced by ``profile`` as it is now (after a refit): ``median_abs``, ``p90_abs`` and ``points`` over the
    eager engine's run (as before piecewise runs existed), the count of each mode's steps, and per mode
    (``graph_median_abs``, ``eager_p90_abs``, ``piecewise_median_abs``, ...) over the mode's steps of its run."""
    out = {}
    gpu = get_gpu(profile.gpu if profile.gpu != "cpu" else "H100-SXM")  # a CPU profile: as fit_steps prices it
    for fmt, it in steps.groupby("format", sort=False):
        it = it.reset_index(drop=True)
        place = Placement(get_model(model), gpu, weight_format=fmt)
        cost, cost_pw = CalibratedCostModel(place, profile), CalibratedCostModel(place, profile, piecewise=STEP_BUCKETS)
        held = (np.arange(len(it)) % 2) == 1
        runs = it.run.to_numpy() if "run" in it else np.full(len(it), "eager")
        mode = step_mode_column(it)
        pred = np.array([(cost_pw if r == "piecewise" else cost).step_time_s(_shape(row)) if h else np.nan
                         for row, r, h in zip(it.itertuples(), runs, held)])
        err = np.abs(pred / it.step_s.to_numpy() - 1)
        first = held & (runs == "eager")
        out[fmt] = {**_summary(list(err[first])), **{f"{m}_steps": int((first & (mode == m)).sum())
                                                     for m in ("graph", "eager")}}
        for m in STEP_MODES_REPORTED:
            rows = held & (mode == m) & ((runs == "piecewise") if m == "piecewise" else (runs == "eager"))
            if rows.any():
                out[fmt].update({f"{m}_{k}": v for k, v in _summary(list(err[rows])).items() if k != "points"})
                out[fmt][f"{m}_steps"] = int(rows.sum())
    return out


STEP_MODES_REPORTED = ("graph", "eager", "piecewise")


def _eager_floor(eng, decode: bool) -> float:
    """Device span of the smallest eager step (a one-token prefill, with one decoding sequence beside it when
    ``decode``): what launching an eager step costs at least."""
    from servesim.sim.request import Batch, PrefillChunk, Request

    r = Request(10**9, 0.0, 1, 2)
    r.block_ids = [0]
    d = Request(10**9 + 1, 0.0, 17, 2)  # 16 tokens cached, its last one to compute
    d.block_ids = [1, 2]
    reqs = [d] if decode else []
    shape = BatchShape(prefill_seqs=1, prefill_tokens=1, prefill_attn_pairs=1, prefill_ctx_tokens=1,
                       decode_seqs=len(reqs), decode_query_tokens=len(reqs), decode_ctx_tokens=17 * len(reqs),
                       sampled_tokens=1 + len(reqs))
    batch = Batch([PrefillChunk(r, 1, 0)], reqs, np.full(len(reqs), 17, np.int64), 1, shape)
    samples = []
    for _ in range(12):
        eng.runner.run(batch)
        for x in (r, d):
            eng.runner.release(x)
        samples.append(eng.runner.stats.gpu_s)
    return float(statistics.median(samples[2:]))


# -- the whole calibration -------------------------------------------------------------------------------------
def provenance(command: str, wall_s: float, device: str) -> Provenance:
    commit = git_commit()
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        name, mem, driver = props.name, props.total_memory, smi.stdout.strip() or "unknown"
    else:
        name, mem, driver = "cpu", 0, "none"
    import triton

    return Provenance(gpu_name=name, memory_bytes=mem, driver=driver, cuda=str(torch.version.cuda),
                      torch=torch.__version__,
                      triton=triton.__version__, date=datetime.date.today().isoformat(), command=command,
                      git_commit=commit, condition="in-step" if device == "cuda" else "cpu-wall", wall_s=wall_s,
                      host_launch_us=timing.host_launch_us(device))


def catalog_gpu(device_name: str) -> str:
    """The catalog name of the GPU calibrated on (``NVIDIA H200`` -> ``H200``)."""
    if device_name == "cpu":
        return "cpu"
    return get_gpu(device_name.replace("NVIDIA ", "").strip()).name


def calibrate(models: list[str], formats: tuple[str, ...], kv_dtypes: tuple[str, ...], tps: tuple[int, ...],
              budget_min: float | None, device: str, command: str, step_requests: int = 160,
              on_progress: Callable[[int, int], None] | None = None, gpu: str | None = None,
              steps_in: str = "auto", modes: tuple[str, ...] = STEP_MODES) -> Calibration:
    """Run the whole calibration; ``on_progress(done, total)`` after each point (and each engine step fit).
    ``steps_in``: where the step-fitting engine runs (:func:`step_process`); ``modes``: the step modes fitted
    (:data:`STEP_MODES`)."""
    where = step_process(steps_in, device)
    modes = step_modes(modes)
    started = time.perf_counter()
    cuda = device == "cuda"
    tables = build_grid(models, formats, kv_dtypes, tps, cpu=not cuda)
    notes = []
    step_cost_s = (40.0 if cuda else 5.0) * len(formats) * len(modes)  # one engine run per mode
    if budget_min is not None:
        tables, notes = trim(tables, budget_min * 60 - step_cost_s, SECONDS_PER_POINT if cuda else 0.02)
    total = sum(t.cost_points for t in tables) + len(formats)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress(done, total)

    builder = OpBuilder(device)
    measured = [measure_table(t, builder, tick) for t in tables]
    if cuda:  # where the quantized GEMMs step, from this device's launch tables and SM count
        from servesim.kernels.counters import sm_count

        measured = with_launch_loads(measured, torch.cuda.get_device_name(), sm_count(torch.device("cuda")))
    del builder
    if cuda:
        torch.cuda.empty_cache()
    gpu_name = gpu or catalog_gpu(torch.cuda.get_device_name() if cuda else "cpu")
    prov = provenance(command, 0.0, device)
    partial = Profile(version=VERSION, profile_id="partial", gpu=gpu_name, provenance=prov, tables=tuple(measured))
    steps, overheads, logs = {}, [], {}
    notes.append("step terms fitted on an engine in " + ("a new process" if where == "fresh" else "this process")
                 + f" (step modes: {', '.join(modes)})")
    for fmt in formats:
        steps[fmt], over, logs[fmt] = fit_steps_in(where, models[0], fmt, partial, device, step_requests, modes)
        for kind in ("eager", "piecewise"):
            rounds = logs[fmt].attrs.get(f"{kind}_floor_rounds_s")
            if rounds:
                notes.append(f"{fmt} {kind} floors (alone, beside a decode) built / warmed up / after the fit: "
                             + " / ".join(f"{a * 1e3:.1f}, {b * 1e3:.1f} ms" for a, b in rounds))
        overheads += over
        tick()
    wall = time.perf_counter() - started
    date = prov.date
    pid = f"{'' if cuda else 'cpu-'}{gpu_name.lower()}-{date}-{prov.git_commit}"  # a CPU timing says so
    profile = Profile(version=VERSION, profile_id=pid, gpu=gpu_name,
                      provenance=prov.model_copy(update={"wall_s": wall}), tables=tuple(measured + overheads),
                      steps=steps, fit=FitReport(method=held_out_method(measured), ops=held_out_errors(measured)))
    profile = refit(profile)  # the whole-step errors of the model as shipped: after the refit's terms
    its = pd.concat(logs.values(), ignore_index=True)
    profile = profile.model_copy(update={"fit": profile.fit.model_copy(update={
        "steps": held_out_step_errors(profile, its, models[0])})})
    return Calibration(profile, notes, logs)
