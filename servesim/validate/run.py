"""``servesim validate``: replay a scenario on the engine, simulate the same workload with the calibrated profile
and the engine's KV block count, and compare; or compare a simulation with an external engine's results; or
run a suite of cases, resumable case by case."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from servesim.errors import ConfigError, InputError
from servesim.sim.config import Scenario, make_scenario
from servesim.sim.deployment import build_deployment, build_workload
from servesim.sim.workload import Workload, scale_rate
from servesim.validate import compare
from servesim.validate.report import Report, write_report


@dataclass
class EngineOptions:
    device: str = "cuda"
    weights: str | None = None
    quantizer: str = "rtn"
    cuda_graphs: bool = True
    draft_weights: str | None = None
    spec_mode: str | None = None  # default: greedy with real weights, controlled with random ones


def spec_fields(s: Scenario, opts: EngineOptions) -> dict:
    """The engine's speculative-decoding settings for scenario ``s`` (none without spec_k)."""
    if not s.spec_k:
        return {}
    mode = opts.spec_mode or ("greedy" if opts.weights and opts.draft_weights else "controlled")
    return dict(spec_k=s.spec_k, draft_model=s.draft_model, draft_weights=opts.draft_weights, spec_mode=mode,
                spec_alpha=s.spec_alpha, spec_alpha_concentration=s.spec_alpha_concentration)


def scaled_workload(s: Scenario, time_scale: float) -> Workload:
    """The scenario's workload with arrivals ``time_scale`` times faster (the same one feeds both runs)."""
    w = build_workload(s)
    if time_scale != 1.0:
        w = scale_rate(w, w.stats()["rate_per_s"] * time_scale)
    return w


def engine_config(s: Scenario, opts: EngineOptions):
    """What the engine must be built as to replay ``s``."""
    from servesim.engine.engine import EngineConfig
    from servesim.sim.deployment import plan_replica

    plan = plan_replica(s)
    return EngineConfig(
        model=s.model, weights=opts.weights, weight_format=s.quant, quantizer=opts.quantizer, kv_dtype=s.kv_dtype,
        block_size=s.block_size, gpu_memory_utilization=s.gpu_memory_utilization, max_model_len=plan.max_model_len,
        max_num_batched_tokens=plan.max_num_batched_tokens, max_num_seqs=s.max_num_seqs,
        # planned from memory: a case asking for fewer blocks uses part of the cache (engine_deployment), so cases
        # that differ only in their pool share one engine
        num_gpu_blocks=None if opts.device == "cuda" else s.num_gpu_blocks, device=opts.device,
        # the scenario's setting: the simulation of the same case prices what the engine runs
        cuda_graphs=opts.cuda_graphs, piecewise_graphs=s.piecewise_graphs, seed=s.seed, tp=s.tp,
        **spec_fields(s, opts))


def predict(s: Scenario, w: Workload, num_gpu_blocks: int, iterations, host_norm: bool = False):
    """The simulator's side of a validation: ``w`` simulated with the engine's KV block count (unless the scenario
    sets fewer), the engine's measured ``iterations`` priced by the same cost model, and the case fields that
    name the model. ``host_norm``: priced at the run's measured host speed (:mod:`servesim.validate.hostspeed`,
    instead of the scenario's ``host_speed``), the case field ``host_speed`` saying the factor and how it was
    measured. Returns ``(predicted result, iteration table, case fields, unnormalised)``: the last is
    ``(result, iteration table)`` at the scenario's own host speed where normalising changed it, else None."""
    from servesim.sim.simulator import simulate
    from servesim.validate import hostspeed

    sim_s = s.model_copy(update={"num_gpu_blocks": s.num_gpu_blocks or num_gpu_blocks})
    info = None
    if host_norm:
        info = hostspeed.measure(iterations, build_deployment(sim_s).cost)
    run_s = sim_s if info is None else sim_s.model_copy(update={"host_speed": info["factor"]})

    def priced(sc: Scenario):
        result = simulate(sc, w)
        dep = build_deployment(sc)
        return result, compare.iteration_table(iterations, dep.cost, dep.swap_s_per_block, dep.draft_cost,
                                               dep.scheduler.spec_k)

    predicted, it = priced(run_s)
    raw = priced(sim_s) if run_s.host_speed != sim_s.host_speed else None
    fields = {"profile_id": predicted.meta["profile_id"],
              "cost_extrapolated": ", ".join(predicted.meta.get("cost_extrapolated", [])) or "none",
              "num_gpu_blocks": sim_s.num_gpu_blocks}
    if info is not None:
        fields["host_speed"] = info
    return predicted, it, fields, raw


def unnormalised(raw, measured: dict, host_speed: float) -> dict | None:
    """The report's ``unnormalised`` part: the errors of the prediction at the scenario's own host speed."""
    if raw is None:
        return None
    result, it = raw
    rows = compare.metric_rows(result.summary, measured)
    return {"host_speed": host_speed, "metrics": rows, "summary": compare.summary_errors(rows, it),
            "iteration_modes": compare.by_mode(it).to_dict(orient="records")}


def validate_engine(s: Scenario, opts: EngineOptions, time_scale: float = 1.0, title: str | None = None,
                    on_progress=None, engine=None, host_norm: bool = False) -> tuple[Report, dict]:
    """Engine replay vs simulation of ``s``; returns the report and both runs (for their files). ``engine`` (built
    for ``engine_config(s, opts)``) is reused when given: a replay leaves no state behind but stale KV contents.
    ``host_norm``: priced at the replay's measured host speed (see :func:`predict`), the errors at the scenario's
    own beside."""
    from servesim.engine.engine import build_engine
    from servesim.engine.replay import replay, warm_up
    from servesim.kernels.timing import host_launch_us

    started = time.perf_counter()
    own = engine is None
    engine = engine or build_engine(engine_config(s, opts))
    w = scaled_workload(s, time_scale)
    try:
        warm_s = warm_up(s, engine, w)
        probes = [host_launch_us(opts.device)]  # the host's launch speed beside the run (calibration records it too)
        measured = replay(s, engine, w, on_progress=on_progress)
        probes.append(host_launch_us(opts.device))
    finally:
        if own:
            engine.close()
    predicted, it, named, raw = predict(s, w, engine.num_blocks, measured.iterations, host_norm)
    rows = compare.metric_rows(predicted.summary, measured.result.summary)
    case = {"scenario": s.model_dump(mode="json"), "workload": w.name, "requests": len(w),
            "time_scale": time_scale, "profile_id": named["profile_id"],
            "cost_extrapolated": named["cost_extrapolated"],
            "engine": f"{opts.device}, {engine.model.backend.name} kernels"
                      + (f", TP {engine.config.tp}" if engine.config.tp > 1 else "")
                      + f", {engine.num_blocks:,} KV blocks ({engine.memory.planned_by}), "
                        f"weights {opts.weights or 'random'}"
                      + (", piecewise graphs" if engine.config.piecewise_graphs else ""),
            "piecewise_graphs": s.piecewise_graphs,
            "num_gpu_blocks": named["num_gpu_blocks"], "warm_up_s": round(warm_s, 1),
            "host_launch_us": [round(x, 3) for x in probes],
            **({"host_speed": named["host_speed"]} if "host_speed" in named else {}),
            "wall_s": round(time.perf_counter() - started, 1)}
    report = Report(title=title or f"{s.model} {s.quant} on the engine vs servesim", case=case, metrics=rows,
                    requests=compare.per_request(predicted.requests, measured.result.requests), iterations=it,
                    bins=compare.binned(it), summary=compare.summary_errors(rows, it), modes=compare.by_mode(it),
                    unnormalised=unnormalised(raw, measured.result.summary, s.host_speed))
    return report, {"predicted": predicted, "measured": measured.result, "iterations": measured.iterations}


def validate_files(path: str, tool: str | None, overrides: dict, title: str | None = None,
                   benchmark: int | None = None) -> tuple[Report, dict]:
    """An external engine's results vs a simulation of the same requests (arrivals and lengths from the file)."""
    from servesim.sim.simulator import simulate
    from servesim.validate.external import external_workload, load_external

    run = load_external(path, tool) if benchmark is None else load_external(path, tool, benchmark=benchmark)
    w = external_workload(run)
    s = make_scenario({**overrides, "arrival": "trace"})
    predicted = simulate(s, w)
    from servesim.validate.external import external_summary

    req = run.requests
    measured = external_summary(run)  # vLLM's keys recomputed from the rows, inside the tool's measured window
    rows = compare.metric_rows(predicted.summary, measured)
    case = {"scenario": s.model_dump(mode="json"), "external": f"{run.tool}: {run.source}",
            "requests": len(w), "profile_id": predicted.meta["profile_id"]}
    report = Report(title=title or f"{run.tool} results vs servesim", case=case, metrics=rows,
                    requests=compare.per_request(predicted.requests, req), summary=compare.summary_errors(rows, None),
                    notes=list(run.alignment))
    return report, {"predicted": predicted}


# -- suites ---------------------------------------------------------------------------------------------------
def load_suite(path: str | Path, overrides: dict | None = None) -> tuple[dict, list[dict]]:
    """A suite file: ``base`` (scenario fields shared by every case) and ``cases`` (name, fields, time_scale);
    ``overrides`` (scenario fields) over every case's."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise InputError("no such suite file", file=str(p)) from None
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({exc.__class__.__name__})", file=str(p)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list) or not doc["cases"]:
        raise InputError("a suite is a mapping with a non-empty list of cases", file=str(p), field="cases")
    base = doc.get("base") or {}
    cases = []
    for i, c in enumerate(doc["cases"]):
        if not isinstance(c, dict) or "name" not in c:
            raise InputError("each case needs a name", file=str(p), field=f"cases[{i}]")
        fields = {**base, **(c.get("scenario") or {}), **(overrides or {})}
        try:
            scenario = make_scenario(fields, source=str(p))
        except InputError as exc:
            raise InputError(f"case {c['name']}: {exc}") from None
        gpus = c.get("gpus", 1)
        need = scenario.tp * scenario.pp
        if not isinstance(gpus, int) or gpus < need:
            raise InputError(f"case {c['name']}: gpus must be an integer of at least tp x pp = {need}, got {gpus!r}",
                             file=str(p), field=f"cases[{i}].gpus")
        cases.append({"name": str(c["name"]), "scenario": scenario, "time_scale": float(c.get("time_scale", 1.0)),
                      "why": str(c.get("why", "")), "gpus": gpus})
    return doc, cases


def run_suite(path: str | Path, out_dir: str | Path, opts: EngineOptions, only: list[str] | None = None,
              on_case=None, on_skip=None, overrides: dict | None = None, host_norm: bool = False) -> list[dict]:
    """Run each case not already reported under ``out_dir/<name>/`` and write the suite table. On CUDA a case
    that needs more GPUs (its ``gpus``) than the machine has is skipped (``on_skip(name, why)``), not failed.
    ``overrides``: scenario fields over every case's (``--piecewise-graphs``)."""
    import json

    from servesim.engine.engine import build_engine
    from servesim.validate.suite import suite_row

    _, cases = load_suite(path, overrides)
    out = Path(out_dir)
    rows = []
    engines: dict = {}  # one engine per configuration, reused by the cases that share it
    try:
        for c in cases:
            if only and c["name"] not in only:
                continue
            case_dir = out / c["name"]
            if not (case_dir / "report.json").exists():
                have = _gpus(opts.device)
                if have is not None and c["gpus"] > have:
                    if on_skip:
                        on_skip(c["name"], f"needs {c['gpus']} GPUs; this machine has {have}")
                    continue
                if on_case:
                    on_case(c["name"])
                cfg = engine_config(c["scenario"], opts)
                if cfg not in engines:
                    _close_all(engines)  # one model in GPU memory at a time
                    engines[cfg] = build_engine(cfg)
                report, runs = validate_engine(c["scenario"], opts, c["time_scale"],
                                               title=f"{c['name']}: {c['why']}", engine=engines[cfg],
                                               host_norm=host_norm)
                raw = runs["iterations"]  # the engine's own log: every batch's shape, for re-pricing later
                write_report(report, case_dir, extra={"engine_iterations.parquet": lambda p, raw=raw: raw.to_parquet(
                    p, index=False)})
            rows.append(suite_row(c["name"], c["why"], json.loads((case_dir / "report.json").read_text())))
    finally:
        _close_all(engines)
    return rows


def _close_all(engines: dict) -> None:
    for e in engines.values():
        e.close()
    engines.clear()


def _gpus(device: str) -> int | None:
    """GPUs on this machine when the engine runs on CUDA (None on the CPU backend: no GPU is needed)."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.device_count()


def reprice(case_dir: str | Path, profile: str | None = None, host_norm: bool = False) -> Report:
    """A case's report with the prediction made again on the CPU by today's cost model (or ``profile``): the
    measured side (its metrics, per-request latencies and the engine's own iteration log) is the stored run;
    the simulation, the per-request and iteration views are redone. What a cost-model change does to the
    suite, without a GPU. ``host_norm``: priced at the stored run's host speed, measured from its iteration log
    (:func:`predict`), the errors at the scenario's own host speed beside."""
    import re

    import pandas as pd

    from servesim.validate.report import load_report

    d = Path(case_dir)
    old = load_report(d)
    raw_path = d / "engine_iterations.parquet"
    if not raw_path.exists():
        raise ConfigError(f"{raw_path} is missing: the case was run before suites kept the engine's log",
                          field="reprice")
    fields = dict(old.case["scenario"])
    if profile is not None:
        fields["profile"] = profile
    s = make_scenario(fields)
    blocks = old.case.get("num_gpu_blocks")
    if blocks is None:  # reports before num_gpu_blocks was stored name it in the engine line
        found = re.search(r"([\d,]+) KV blocks", old.case.get("engine", ""))
        if not found:
            raise ConfigError(f"{d / 'report.json'}: no engine KV block count", field="case.num_gpu_blocks")
        blocks = int(found.group(1).replace(",", ""))
    predicted, it, named, raw = predict(s, scaled_workload(s, old.case["time_scale"]), blocks,
                                        pd.read_parquet(raw_path), host_norm)
    measured = {m["key"]: m["measured"] for m in old.metrics}
    rows = compare.metric_rows(predicted.summary, measured)
    meas = old.requests[["request_id"] + [c for c in old.requests.columns if c.endswith("_meas")]]
    pred = compare.latencies(predicted.requests)
    pred.columns = ["request_id"] + [f"{c}_pred" for c in pred.columns[1:]]
    case = {k: v for k, v in old.case.items() if k != "host_speed"}  # the stored run's factor: measured again
    case = {**case, **named, "piecewise_graphs": s.piecewise_graphs,  # stored runs before the field: off
            "repriced_from": old.case.get("repriced_from", old.case["profile_id"])}
    note = (f"prediction re-made on the CPU with {case['profile_id']} (servesim validate --reprice); the measured "
            f"run is the stored one, first predicted with {case['repriced_from']}")
    return Report(title=old.title, case=case, metrics=rows, requests=pred.merge(meas, on="request_id"),
                  iterations=it, bins=compare.binned(it), summary=compare.summary_errors(rows, it),
                  notes=[n for n in old.notes if "re-made on the CPU" not in n] + [note], modes=compare.by_mode(it),
                  unnormalised=unnormalised(raw, measured, s.host_speed))
