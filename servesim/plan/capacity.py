"""``plan``: the cheapest configurations that serve a target rate under percentile SLOs.

For each candidate configuration (GPU × weight format × TP × any other axes) the planner

1. refuses what cannot run, with the memory planner's reason (weights do not fit, no room for KV) or the
   parallelism check's, and what one replica's GPUs already price over the budget;
2. searches the highest rate one replica sustains with every SLO percentile met (:class:`RateSearch`: doubling,
   then geometric bisection; probes of all candidates run in parallel, each probe cached by scenario);
3. takes ``replicas = ceil(target / capacity)`` and the cost per hour of their GPUs;
4. verifies the cheapest few by simulating the whole deployment (``replicas`` behind the router at the target
   rate, ``replicas`` times the requests), adding a replica while the SLOs fail, and reports each SLO's margin.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pandas import DataFrame

from servesim.errors import ConfigError, InputError
from servesim.plan.candidates import DEFAULT_PD_MAX_GPUS, PD_OFF, Space, label
from servesim.plan.execute import Runner
from servesim.plan.grid import Grid
from servesim.plan.run import POOL_COLUMNS
from servesim.plan.search import Limits, RateSearch
from servesim.sim.config import Scenario
from servesim.sim.deployment import trace_rows

DEFAULT_GPUS = ("H100-SXM", "H200", "A100-80GB-SXM")
DEFAULT_QUANTS = ("bf16", "w8a16", "w4a16")
DEFAULT_TPS = (1, 2, 4, 8)
DEFAULT_REQUESTS = 1000
SEARCH_OWNS = ("rate", "replicas")
MAX_EXTRA_REPLICAS = 3


@dataclass
class Candidate:
    """One configuration's search and its outcome."""

    index: int
    scenario: Scenario  # one replica; probes set the rate
    label: str
    search: RateSearch | None = None
    status: str = "searching"  # then "ok" or "rejected"
    reject_kind: str = ""  # memory | config | budget | slo | error
    reason: str = ""
    probes: list[dict] = field(default_factory=list)
    result: dict = field(default_factory=dict)
    point: dict = field(default_factory=dict)  # the Scenario fields it was built from

    def reject(self, kind: str, reason: str) -> None:
        self.status, self.reject_kind, self.reason = "rejected", kind, reason


def _precheck(c: Candidate, budget: float | None) -> None:
    """Refuse what cannot run (memory, parallelism) or what one replica already prices over the budget."""
    from servesim.sim.disagg import deployment_of

    try:
        dep = deployment_of(c.scenario)
    except ConfigError as exc:
        # The memory planner's refusals name no field; the parallelism and batching checks name theirs.
        c.reject("memory" if exc.field is None else "config", exc.problem)
        return
    gpus = dep.gpus_total // c.scenario.replicas  # one replica, or one prefill:decode unit under P/D
    c.result.update(usd_per_hour_per_gpu=dep.usd_per_gpu_hour, gpus_per_replica=gpus,
                    kv_blocks_per_replica=dep.num_blocks, profile_id=dep.cost.profile_id)
    one = dep.usd_per_gpu_hour * gpus
    if budget is not None and one > budget:
        c.reject("budget", f"one replica costs ${one:.2f}/h, over the budget ${budget:.2f}/h")


def _default_requests(trace: str, fmt: str | None) -> int:
    """``DEFAULT_REQUESTS``, or every request of a shorter trace."""
    try:
        return min(DEFAULT_REQUESTS, trace_rows(str(trace), fmt))
    except (InputError, ConfigError):  # the scenario's own validation reports it, naming the field
        return DEFAULT_REQUESTS


def _verify_scenario(s: Scenario, replicas: int, target: float) -> Scenario:
    """The whole deployment at the target rate, with ``replicas`` times the requests of one probe."""
    update: dict = {"replicas": replicas, "rate": target}
    if s.num_requests is not None:  # as many as the trace holds, never more unless it repeats
        update["num_requests"] = s.num_requests * replicas
        if not s.repeat:
            update["num_requests"] = min(update["num_requests"],
                                         trace_rows(s.trace, s.trace_format, s.start_s, s.duration_s))
    if s.duration_s is not None:
        update["duration_s"] = s.duration_s * replicas
    return s.model_copy(update=update)


@dataclass
class PlanResult:
    """What :func:`plan` found: one row per candidate (cheapest first), every probe, every verification."""

    target_rps: float
    limits: Limits
    configs: pd.DataFrame
    probes: pd.DataFrame
    verifications: pd.DataFrame
    wall_s: float
    workers: int

    def cheapest(self, n: int = 5) -> pd.DataFrame:
        """The ``n`` cheapest configurations that meet the SLOs at the target rate."""
        return self.configs[self.configs["status"] == "ok"].head(n)

    def rejected(self) -> pd.DataFrame:
        """Configurations that cannot serve the target, with why (``reject_kind``, ``reason``)."""
        return self.configs[self.configs["status"] != "ok"]

    def html(self) -> str:
        """A self-contained HTML page: the answer and the two Pareto frontiers."""
        from servesim.plan.pareto import plan_html

        return plan_html(self)

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """``configs``/``probes``/``verifications`` as CSV and Parquet, ``pareto.html``, ``plan.json``."""
        from servesim.plan.outputs import publish
        from servesim.sim.outputs import dumps_json

        doc = {"target_rps": self.target_rps, "slo": dict(self.limits.limits_ms), "wall_s": self.wall_s,
               "workers": self.workers, "probes": len(self.probes),
               "cheapest": self.cheapest(5).to_dict(orient="records")}
        return publish(out_dir, {"configs": self.configs, "probes": self.probes,
                                 "verifications": self.verifications},
                       {"pareto.html": self.html(), "plan.json": dumps_json(doc)})


def plan(model: str, rate: float, slo: str | Mapping[str, float] | Limits, *, workload: str = "azure-conv",
         gpus: Sequence[str] = DEFAULT_GPUS, quants: Sequence[str] = DEFAULT_QUANTS,
         tps: Sequence[int] = DEFAULT_TPS, eps: str | Sequence[int] | None = None,
         pd: str | Sequence | None = None, prefill_tps: Sequence[int] | None = None,
         decode_tps: Sequence[int] | None = None, prefill_gpus: Sequence[str] | None = None,
         decode_gpus: Sequence[str] | None = None, kv_links: Sequence[str] | None = None,
         pd_max_gpus: int = DEFAULT_PD_MAX_GPUS, axes: Mapping[str, list] | None = None,
         base: Mapping | str | None = None, budget_usd_per_hour: float | None = None,
         rel_tol: float = 0.02, start_rps: float = 1.0, verify: int = 3, jobs: int | None = None,
         dask: object | None = None, cache_dir: str | os.PathLike[str] | None = None,
         on_progress: Callable[[int, int], None] | None = None) -> PlanResult:
    """Find the cheapest configurations serving ``rate`` requests/s of ``workload`` with ``model`` under ``slo``.

    ``slo``: ``"ttft_p99_ms=500,tpot_p99_ms=50"``, a mapping of such keys, or :class:`Limits`. Candidates are
    every combination of ``gpus`` × ``quants`` × ``tps`` (× ``eps``, the expert-parallel degrees of an MoE
    model: a list or ``"auto"``) × ``axes`` (more Scenario fields, as in a grid) on ``base`` (Scenario fields
    or a scenario YAML; without a window, the first ``DEFAULT_REQUESTS`` requests). ``pd``: ``"off"``,
    P:D ratios (``"2:1,1:3"``) or ``"auto"`` adds prefill/decode units (servesim.plan.candidates), their pools
    on ``prefill_gpus``/``decode_gpus`` at ``prefill_tps``/``decode_tps`` (default: the colocated ones,
    paired), over each of ``kv_links``; ``"auto"`` walks the ratio within ``pd_max_gpus`` GPUs per unit.
    ``verify``: how many of the cheapest to check as whole deployments. Runs on ``jobs`` local processes or
    the Dask cluster ``dask``; probes are cached in ``cache_dir``, so an interrupted plan resumes.
    """
    started = time.perf_counter()
    if not (isinstance(rate, (int, float)) and 0 < rate < math.inf):
        raise InputError(f"must be a positive number of requests/s, got {rate!r}", field="rate")
    limits = slo if isinstance(slo, Limits) else Limits.parse(slo)
    space = Space(model, gpus, quants, tps, eps, pd, prefill_tps, decode_tps, prefill_gpus, decode_gpus,
                  kv_links, pd_max_gpus)
    axes = dict(axes or {})
    for f in axes:
        if f in SEARCH_OWNS:
            raise InputError("the planner chooses this itself; it cannot be an axis", field=f"axes.{f}")
        if f in space.owned:
            raise InputError(f"set by the planner's {space.owned[f]}; it cannot be an axis too", field=f"axes.{f}")
    grid = Grid(base, axes)
    grid.base.update(model=model, trace=workload, rate=float(rate))  # probes change the rate
    if grid.base.get("replicas", 1) != 1:
        raise InputError("the planner chooses the replicas itself", field="base.replicas")
    if space.pd != PD_OFF:
        for f in ("prefill_replicas", "decode_replicas"):
            if grid.base.get(f):
                raise InputError("the planner's pd option chooses the P:D ratios itself", field=f"base.{f}")
    if grid.base.get("num_requests") is None and grid.base.get("duration_s") is None:
        grid.base["num_requests"] = _default_requests(workload, grid.base.get("trace_format"))
    if (space.pd != PD_OFF or grid.base.get("prefill_replicas")) and not any(
            m in k for k in limits.limits_ms for m in ("tpot", "itl", "e2el")):
        raise InputError("under P/D a request waiting for a decode replica has its first token already, so "
                         "TTFT does not see the decode pool's backlog: add a tpot, itl or e2el limit", field="slo")
    extra = grid.points()
    varying = [f for f in dict.fromkeys(k for p in extra for k in p) if len({repr(p.get(f)) for p in extra}) > 1]
    cands: list[Candidate] = []

    def add(point: dict) -> Candidate:
        c = Candidate(len(cands), grid.validate(point, space.owned), label(point, varying), point=point)
        cands.append(c)
        _precheck(c, budget_usd_per_hour)
        if c.status == "searching":
            c.search = RateSearch(start_rps=start_rps, rel_tol=rel_tol)
        return c

    for point in space.points(extra):
        add(point)
    walk = space.walk(extra, lambda point: add(point).index)

    def conclude(c: Candidate) -> None:
        _conclude(c, rate, limits, budget_usd_per_hour)

    def grow() -> None:
        if walk is not None:
            for group, point in walk.next(lambda i: _value(cands[i]), space.pp(grid.base)):
                walk.start(group, (point["prefill_replicas"], point["decode_replicas"]), add(point).index)

    with Runner(jobs, dask, cache_dir) as runner:
        _search_all(cands, limits, runner, on_progress, conclude, grow)
        verifications = _verify_cheapest(cands, rate, limits, verify, runner, budget_usd_per_hour)
        workers = runner.workers
    configs = _configs_table(cands, varying, space)
    probes = DataFrame([p for c in cands for p in c.probes])  # (``pd`` is the P:D option here)
    return PlanResult(float(rate), limits, configs, probes, DataFrame(verifications),
                      time.perf_counter() - started, workers)


def _value(c: Candidate) -> float | None:
    """Capacity per $/h of one replica (one P/D unit): what ``--pd auto`` walks up; None while searching."""
    if c.status == "searching":
        return None
    if "capacity_rps" not in c.result:
        return -math.inf
    return c.result["capacity_rps"] / (c.result["gpus_per_replica"] * c.result["usd_per_hour_per_gpu"])


def _search_all(cands: list[Candidate], limits: Limits, runner: Runner,
                on_progress: Callable[[int, int], None] | None, conclude: Callable[[Candidate], None],
                grow: Callable[[], None]) -> None:
    """Rounds of probes: every searching candidate proposes its next rates, all run at once; a candidate
    whose search ended is concluded, and ``grow`` may add candidates (``--pd auto``'s next ratios)."""
    done = 0
    while True:
        for c in cands:
            if c.status == "searching" and c.search.done:
                conclude(c)
        grow()
        active = [c for c in cands if c.status == "searching" and not c.search.done]
        if not active:
            break
        m = max(1, min(4, runner.workers // len(active)))
        batch = [(c, r) for c in active for r in c.search.next_rates(m)]
        remaining = sum(c.search.estimate_remaining(m) for c in active)

        def tick(n: int, base: int = done, remaining: int = remaining) -> None:
            if on_progress is not None:
                on_progress(base + n, base + max(remaining, n))

        outcomes = runner.run([c.scenario.model_copy(update={"rate": r}) for c, r in batch], tick)
        done += len(batch)
        for (c, r), o in zip(batch, outcomes):
            row = o.row
            if row["status"] != "ok":
                if c.status == "searching":
                    c.reject("error" if row["status"] == "error" else "config", row["reason"])
                continue
            fails = limits.failures(row)
            c.search.record(r, not fails)
            c.probes.append({"candidate": c.index, "label": c.label, "passed": not fails,
                             "fail_reason": "; ".join(fails), **row})
    if on_progress is not None:
        on_progress(done, done)


def _probe_at(c: Candidate, rate: float | None) -> dict:
    return next((p for p in c.probes if p["rate"] == rate), {})


def _conclude(c: Candidate, target: float, limits: Limits, budget: float | None) -> None:
    s = c.search
    lo, hi = s.lo, s.hi
    at_hi = _probe_at(c, hi)
    if lo is None:
        c.reject("slo", f"fails even at {hi:.3g} req/s, the lowest rate tried: {at_hi.get('fail_reason', '')}")
        return
    at_lo = _probe_at(c, lo)
    replicas = math.ceil(target / lo * (1 - 1e-12))
    gpus = c.result["gpus_per_replica"] * replicas
    usd = gpus * c.result["usd_per_hour_per_gpu"]
    out_per_req = at_lo["total_output_tokens"] / max(at_lo["completed"], 1)
    c.result.update(
        capacity_rps=lo, capacity_upper_rps=hi, limited_by=at_hi.get("fail_reason", "") if hi else
        f"passes at {lo:.4g} req/s, the highest rate tried", replicas=replicas, gpus_total=gpus,
        usd_per_hour=usd, usd_per_million_output_tokens=usd / (target * out_per_req * 3600) * 1e6,
        headroom=replicas * lo / target - 1, profile_id=at_lo["profile_id"],
        cost_extrapolated=at_lo["cost_extrapolated"], warnings=at_lo["warnings"],
        output_tokens_per_s_per_gpu=at_lo["output_tokens_per_s_per_gpu"],
        output_tokens_per_s_per_user=at_lo["output_tokens_per_s_per_user"],
        **{f"{k}_at_capacity": at_lo[k] for k in (*limits.limits_ms, *POOL_COLUMNS) if k in at_lo},
    )
    c.status = "ok"
    window = _burst_warning(c.scenario)
    if window:
        c.result["warnings"] = "; ".join(filter(None, (c.result["warnings"], window)))
    if budget is not None and usd > budget:
        c.reject("budget", f"{replicas} replicas cost ${usd:.2f}/h, over the budget ${budget:.2f}/h")


def _burst_warning(s: Scenario) -> str:
    """Under P/D, a probe window the decode pool can seat at once measures a burst, not a steady state."""
    if not s.disaggregated or s.num_requests is None:
        return ""
    seats = (s.decode_max_num_seqs or s.max_num_seqs) * s.decode_replicas
    if s.num_requests >= 2 * seats:
        return ""
    return (f"{s.num_requests} requests per probe against {seats} decode seats per unit: the capacity may be a "
            f"burst's; probe with at least {2 * seats} requests")


def _cost(c: Candidate) -> tuple[float, float]:
    return c.result["usd_per_hour"], -c.result["capacity_rps"]


def _verify_cheapest(cands: list[Candidate], target: float, limits: Limits, n: int, runner: Runner,
                     budget: float | None) -> list[dict]:
    """Simulate the cheapest ``n`` as whole deployments; add replicas while the SLOs fail."""
    rows: list[dict] = []
    tries: dict[int, int] = {}
    while True:
        ok = sorted((c for c in cands if c.status == "ok"), key=_cost)[:n]
        todo = [c for c in ok if "verified" not in c.result]
        if not todo:
            return rows
        scenarios = [_verify_scenario(c.scenario, c.result["replicas"], target) for c in todo]
        for c, o in zip(todo, runner.run(scenarios)):
            row = o.row
            fails = limits.failures(row) if row["status"] == "ok" else [row["reason"]]
            rows.append({"candidate": c.index, "label": c.label, "passed": not fails,
                         "fail_reason": "; ".join(fails), **row})
            if not fails:
                c.result["verified"] = True
                c.result.update({f"margin_{k}": 1 - row[k] / v for k, v in limits.limits_ms.items()})
                continue
            tries[c.index] = tries.get(c.index, 0) + 1
            if tries[c.index] > MAX_EXTRA_REPLICAS:
                c.reject("slo", f"{c.result['replicas']} replicas at {target:g} req/s still fail: {'; '.join(fails)}")
                continue
            r = c.result["replicas"] + 1
            usd = r * c.result["gpus_per_replica"] * c.result["usd_per_hour_per_gpu"]
            scale = usd / c.result["usd_per_hour"]
            c.result.update(replicas=r, gpus_total=r * c.result["gpus_per_replica"], usd_per_hour=usd,
                            usd_per_million_output_tokens=c.result["usd_per_million_output_tokens"] * scale,
                            headroom=r * c.result["capacity_rps"] / target - 1)
            if budget is not None and usd > budget:
                c.reject("budget", f"{r} replicas (one more after the whole deployment failed the SLOs: "
                                   f"{'; '.join(fails)}) cost ${usd:.2f}/h, over the budget ${budget:.2f}/h")


def _configs_table(cands: list[Candidate], varying: Sequence[str], space: Space) -> pd.DataFrame:
    rows = []
    any_pd = any(c.scenario.disaggregated for c in cands)
    for c in cands:
        if c.status == "ok":
            c.result.setdefault("verified", False)
        s = c.scenario
        rows.append({"label": c.label, **space.columns(s, any_pd), **{f: getattr(s, f) for f in varying},
                     "status": c.status, "reject_kind": c.reject_kind, "reason": c.reason, "probes": len(c.probes),
                     **c.result, "config_hash": s.config_hash()})
    df = pd.DataFrame(rows)
    for col in ("usd_per_hour", "capacity_rps", "verified"):
        if col not in df:
            df[col] = pd.NA
    for col in ("replicas", "gpus_total", "gpus_per_replica", "kv_blocks_per_replica", "ep", "prefill_tp",
                "decode_tp", "prefill_ep", "decode_ep"):
        if col in df:
            df[col] = df[col].astype("Int64")  # counts stay integers beside the rejected rows' blanks
    order = df.assign(_ok=df["status"] != "ok").sort_values(["_ok", "usd_per_hour", "capacity_rps"],
                                                             ascending=[True, True, False], kind="stable")
    return order.drop(columns="_ok").reset_index(drop=True)
