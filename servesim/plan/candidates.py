"""The deployments ``plan`` compares: colocated replicas and prefill/decode (P/D) units, with expert parallelism.

A colocated deployment is a GPU, a weight format, a TP degree and, for an MoE model, an expert-parallel
degree ``ep``; a P/D deployment is a unit of ``x`` prefill and ``y`` decode replicas (xPyD), each pool with
its own GPU, TP and EP, joined by a KV link from the catalog (hwmodels.links). A unit is what the planner
counts as one replica: its GPUs are ``x·prefill_tp + y·decode_tp`` (times ``pp``), its price both pools'.

- ``pd``: ``"off"`` (colocated only), a list of ratios ``[(2, 1), (1, 3)]`` (colocated and those units), or
  ``"auto"``: colocated, and for each pool configuration a walk over the ratio (:class:`RatioWalk`).
- ``eps``: the EP degrees, validated on the model with the parallelism check every deployment passes
  (``hwmodels.models.check_parallelism``): a degree that cannot work for any TP degree given is refused,
  naming ``ep``; one that fits some TP degrees pairs with those only (``ep`` splits a stage's ``tp`` GPUs
  into groups, so it divides ``tp``); ``"auto"`` takes every degree that works.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from servesim.errors import ConfigError, InputError
from servesim.hwmodels.models import ModelSpec, check_parallelism, get_model
from servesim.sim.config import Scenario

PD_OFF, PD_AUTO = "off", "auto"
DEFAULT_PD_MAX_GPUS = 8  # one node: the GPUs of a P/D unit that --pd auto may use
Ratio = tuple[int, int]


def _count(text: str) -> bool:
    """A positive count in ASCII digits ('²' is a digit to str.isdigit, not to int)."""
    t = text.strip()
    return t.isascii() and t.isdigit() and int(t) > 0


def parse_pd(value: str | Sequence[Ratio | str] | None) -> str | list[Ratio]:
    """``"off"``, ``"auto"`` or ratios, from ``"2:1,1:3"``, ``["2:1"]`` or ``[(2, 1)]`` (field ``pd``)."""
    if value is None:
        return PD_OFF
    if isinstance(value, str):
        text = value.strip().lower()
        if text in (PD_OFF, PD_AUTO):
            return text
        value = [t for t in text.split(",") if t.strip()]
    ratios = []
    for item in value:
        if isinstance(item, str):
            parts = item.strip().split(":")
            ok = len(parts) == 2 and all(_count(p) for p in parts)
            if not ok:
                raise InputError(f"expected off, auto or P:D ratios such as 2:1,1:3, got {item!r}", field="pd")
            item = (int(parts[0]), int(parts[1]))
        x, y = item
        if not (isinstance(x, int) and isinstance(y, int) and x > 0 and y > 0):
            raise InputError(f"a P:D ratio is two positive counts of replicas, got {item!r}", field="pd")
        ratios.append((x, y))
    if not ratios:
        raise InputError("give off, auto or at least one P:D ratio", field="pd")
    return list(dict.fromkeys(ratios))


def _ep_problem(model: ModelSpec, tp: int, ep: int) -> str | None:
    """Why ``ep`` cannot go with ``tp`` (the parallelism check's words), or None. At ``ep`` = 1 a problem is
    the TP degree's own, the candidate's to report (a ``config`` rejection), not the EP degree's."""
    if ep == 1:
        return None
    try:
        check_parallelism(model, tp, 1, ep)
    except ConfigError as exc:
        return exc.problem
    return None


def ep_degrees(model: ModelSpec, tps: Sequence[int], eps: str | Sequence[int] | None) -> dict[int, list[int]]:
    """For each TP degree, the EP degrees to pair with it. ``None``: 1 only; ``"auto"``: every divisor of
    ``tp`` the model takes (1 for a dense model); a list: its degrees that work with ``tp``, after refusing
    (InputError naming ``ep``) a degree that works with none of ``tps``."""
    tps = list(dict.fromkeys(tps))
    if eps is None:
        return {tp: [1] for tp in tps}
    if isinstance(eps, str):
        if eps.strip().lower() != "auto":
            raise InputError(f"expected auto or EP degrees such as 1,2,4, got {eps!r}", field="ep")
        return {tp: [e for e in range(1, tp + 1) if tp % e == 0 and _ep_problem(model, tp, e) is None]
                for tp in tps}
    eps = list(dict.fromkeys(eps))
    for e in eps:
        if not isinstance(e, int) or e < 1:
            raise InputError(f"an EP degree is a positive integer, got {e!r}", field="ep")
        problems = [_ep_problem(model, tp, e) for tp in tps]
        if all(problems):
            raise InputError(_refusal(model, tps, e, problems), field="ep")
    return {tp: [e for e in eps if _ep_problem(model, tp, e) is None] for tp in tps}


def _refusal(model: ModelSpec, tps: list[int], ep: int, problems: list[str]) -> str:
    if model.is_moe and model.num_experts % ep:  # the same for every tp
        return f"ep={ep} does not divide the {model.num_experts} experts of {model.name}"
    if model.is_moe and all(tp % ep for tp in tps):
        return (f"ep={ep} divides none of the TP degrees {', '.join(map(str, tps))}: expert-parallel groups "
                f"split the tp GPUs of a replica")
    return "; ".join(dict.fromkeys(problems))  # no experts, or each tp's own reason


@dataclass(frozen=True)
class Pool:
    """One pool's GPU, TP and EP."""

    gpu: str
    tp: int
    ep: int = 1


def colocated_points(gpus: Sequence[str], quants: Sequence[str], tps: Sequence[int],
                     eps: dict[int, list[int]], with_ep: bool) -> list[dict]:
    """Scenario fields of every colocated deployment, in the order gpu, quant, tp, ep."""
    return [{"gpu": g, "quant": q, "tp": tp, **({"ep": e} if with_ep else {})}
            for g in gpus for q in quants for tp in tps for e in eps[tp]]


def pool_pairs(gpus: Sequence[str], prefill_gpus: Sequence[str] | None, decode_gpus: Sequence[str] | None,
               tps: Sequence[int], prefill_tps: Sequence[int] | None, decode_tps: Sequence[int] | None,
               eps: Callable[[int], list[int]]) -> list[tuple[Pool, Pool]]:
    """The (prefill, decode) pool configurations: GPUs and TP degrees paired (both pools alike) unless the
    prefill or decode lists are given, then crossed; each pool with every EP degree its TP takes."""
    if prefill_gpus is None and decode_gpus is None:
        gpu_pairs = [(g, g) for g in gpus]
    else:
        gpu_pairs = [(p, d) for p in (prefill_gpus or gpus) for d in (decode_gpus or gpus)]
    if prefill_tps is None and decode_tps is None:
        tp_pairs = [(t, t) for t in tps]
    else:
        tp_pairs = [(p, d) for p in (prefill_tps or tps) for d in (decode_tps or tps)]
    return [(Pool(pg, ptp, pe), Pool(dg, dtp, de)) for pg, dg in gpu_pairs for ptp, dtp in tp_pairs
            for pe in eps(ptp) for de in eps(dtp)]


def pd_point(prefill: Pool, decode: Pool, quant: str, ratio: Ratio, kv_link: str, with_ep: bool) -> dict:
    """Scenario fields of one P/D unit: the decode pool in the shared fields, the prefill pool's own fields
    only where it differs (so one unit has one spelling, and one config hash)."""
    x, y = ratio
    point = {"gpu": decode.gpu, "quant": quant, "tp": decode.tp, "prefill_replicas": x, "decode_replicas": y,
             "kv_link": kv_link}
    if prefill.gpu != decode.gpu:
        point["prefill_gpu"] = prefill.gpu
    if prefill.tp != decode.tp:
        point["prefill_tp"] = prefill.tp
    if with_ep:
        point["ep"] = decode.ep
        if prefill.ep != decode.ep:
            point["prefill_ep"] = prefill.ep
    return point


def unit_gpus(point: dict, pp: int = 1) -> int:
    """GPUs of one P/D unit."""
    return (point["prefill_replicas"] * point.get("prefill_tp", point["tp"])
            + point["decode_replicas"] * point["tp"]) * pp


def label(point: dict, extra: Sequence[str] = ()) -> str:
    """``H200 bf16 tp4`` (colocated, ``ep2`` appended for EP), ``H200 bf16 2P1D tp2/tp4`` (a P/D unit: its
    ratio, prefill/decode TP, and ``H100-SXM/H200`` for pools on two GPUs), then the other varying fields."""
    ep = point.get("ep", 1)
    if point.get("prefill_replicas"):
        pg, ptp, pep = point.get("prefill_gpu", point["gpu"]), point.get("prefill_tp", point["tp"]), \
            point.get("prefill_ep", ep)
        parts = [point["gpu"] if pg == point["gpu"] else f"{pg}/{point['gpu']}", point["quant"],
                 f"{point['prefill_replicas']}P{point['decode_replicas']}D",
                 f"tp{point['tp']}" if ptp == point["tp"] else f"tp{ptp}/tp{point['tp']}"]
        if pep != 1 or ep != 1:
            parts.append(f"ep{ep}" if pep == ep else f"ep{pep}/ep{ep}")
        parts.append(point.get("kv_link", ""))
    else:
        parts = [point["gpu"], point["quant"], f"tp{point['tp']}", *([f"ep{ep}"] if ep != 1 else [])]
    parts += [f"{f}={point[f]}" for f in extra if f in point]
    return " ".join(p for p in parts if p)


@dataclass
class _Group:
    """One pool configuration under ``--pd auto``: the ratios tried, by candidate index."""

    template: dict  # the unit's fields but the ratio
    ladder: list[Ratio]
    tried: dict[Ratio, int] = field(default_factory=dict)
    refined: bool = False


class RatioWalk:
    """``--pd auto``: for each pool configuration, the best P:D ratio by capacity per dollar, found by walking.

    Under a fixed pool configuration the capacity of an xPyD unit is about ``min(x·Cp, y·Cd)`` (the prefill
    and decode pools' capacities), its price ``x·price_p + y·price_d``, so capacity per dollar rises with
    ``x/y`` up to the balance ``Cd/Cp`` and falls past it. The walk starts at 1:1 on the ladder of ratios
    ``1:n … 1:2, 1:1, 2:1 … n:1`` whose unit fits ``max_gpus``, moves to the better neighbour until neither
    neighbour of the best is better, then tries the mediant of the best and its better neighbour once (2:1
    and 3:1 give 5:2), if it fits. Each step is a whole capacity search; probes run with everyone else's.
    """

    def __init__(self, max_gpus: int = DEFAULT_PD_MAX_GPUS) -> None:
        if not (isinstance(max_gpus, int) and max_gpus >= 2):
            raise InputError(f"a P/D unit needs at least 2 GPUs, got {max_gpus!r}", field="pd_max_gpus")
        self.max_gpus = max_gpus
        self.groups: list[_Group] = []

    def add(self, template: dict, pp: int = 1) -> Ratio | None:
        """Register a pool configuration; the first ratio to try (1:1), or None if no unit fits."""
        fits = [r for r in _ladder(self.max_gpus) if unit_gpus(_with(template, r), pp) <= self.max_gpus]
        if (1, 1) not in fits:
            return None
        self.groups.append(_Group(template, fits))
        return 1, 1

    def start(self, group: int, ratio: Ratio, index: int) -> None:
        self.groups[group].tried[ratio] = index

    def next(self, value: Callable[[int], float | None], pp: int = 1) -> list[tuple[int, dict]]:
        """New (group, point) pairs to search, given ``value(candidate index)``: capacity per $/h, -inf for a
        unit that cannot serve, None while its search runs. A group waits until all its ratios are done."""
        out = []
        for gi, g in enumerate(self.groups):
            values = {r: value(i) for r, i in g.tried.items()}
            if any(v is None for v in values.values()):
                continue
            best = max(values, key=lambda r: values[r])
            if values[best] == -math.inf:
                continue  # cannot serve at any ratio tried (memory, parallelism, an SLO broken unloaded)
            if best not in g.ladder:  # the mediant won: nothing further
                continue
            i = g.ladder.index(best)
            near = [g.ladder[j] for j in (i - 1, i + 1) if 0 <= j < len(g.ladder)]
            todo = [r for r in near if r not in g.tried]
            if not todo and not g.refined and near:
                g.refined = True
                other = max(near, key=lambda r: values[r])
                mediant = (best[0] + other[0], best[1] + other[1])
                if values[other] > -math.inf and unit_gpus(_with(g.template, mediant), pp) <= self.max_gpus:
                    todo = [mediant]
            out += [(gi, _with(g.template, r)) for r in todo]
        return out


def _with(template: dict, ratio: Ratio) -> dict:
    return {**template, "prefill_replicas": ratio[0], "decode_replicas": ratio[1]}


def _ladder(max_gpus: int) -> list[Ratio]:
    """1:n … 1:1 … n:1 for units of up to ``max_gpus`` one-GPU replicas."""
    n = max_gpus - 1
    return [(1, k) for k in range(n, 1, -1)] + [(1, 1)] + [(k, 1) for k in range(2, n + 1)]


class Space:
    """The deployments of one plan: colocated points, P/D units (given ratios, or ``auto``'s walk), each
    with the extra axes' points (``extra``, base merged in)."""

    def __init__(self, model: str, gpus: Sequence[str], quants: Sequence[str], tps: Sequence[int],
                 eps: str | Sequence[int] | None = None, pd: str | Sequence | None = None,
                 prefill_tps: Sequence[int] | None = None, decode_tps: Sequence[int] | None = None,
                 prefill_gpus: Sequence[str] | None = None, decode_gpus: Sequence[str] | None = None,
                 kv_links: Sequence[str] | None = None, pd_max_gpus: int = DEFAULT_PD_MAX_GPUS) -> None:
        self.model = get_model(model)
        self.gpus, self.quants, self.tps = list(gpus), list(quants), list(tps)
        self.pd = parse_pd(pd)
        self.prefill_tps, self.decode_tps = prefill_tps, decode_tps
        self.prefill_gpus, self.decode_gpus = prefill_gpus, decode_gpus
        self.kv_links = list(kv_links) if kv_links else None
        all_tps = [*self.tps, *(prefill_tps or ()), *(decode_tps or ())]
        self.eps = ep_degrees(self.model, all_tps, eps)
        self.with_ep = eps is not None and self.model.is_moe
        self._walk = RatioWalk(pd_max_gpus) if self.pd == PD_AUTO else None
        if self.pd == PD_OFF:
            given = {"prefill_tps": prefill_tps, "decode_tps": decode_tps, "prefill_gpus": prefill_gpus,
                     "decode_gpus": decode_gpus, "kv_links": kv_links}
            for name, value in given.items():
                if value:
                    raise InputError("a P/D option: give pd too (ratios such as 2:1, or auto)", field=name)
        # Fields the planner sets from these options (an axis may not set them too), and the option's name.
        self.owned = {"gpu": "gpus", "quant": "quant", "tp": "tp"}
        if self.with_ep:
            self.owned.update(ep="ep", prefill_ep="ep", decode_ep="ep")
        if self.pd != PD_OFF:
            self.owned.update({f: "pd" for f in ("prefill_replicas", "decode_replicas")}, kv_link="kv_link",
                              prefill_gpu="prefill_gpus", decode_gpu="decode_gpus", prefill_tp="prefill_tp",
                              decode_tp="decode_tp")

    def pp(self, base: dict) -> int:
        return int(base.get("pp") or 1)

    def _links(self, extra: dict) -> list[str]:
        return self.kv_links or [extra.get("kv_link", "ib")]

    def _pairs(self) -> list[tuple[Pool, Pool]]:
        return pool_pairs(self.gpus, self.prefill_gpus, self.decode_gpus, self.tps, self.prefill_tps,
                          self.decode_tps, lambda tp: self.eps.get(tp, [1]))

    def points(self, extra: list[dict]) -> list[dict]:
        """Colocated deployments, then the P/D units of the given ratios, each on every extra point."""
        deps = colocated_points(self.gpus, self.quants, self.tps, self.eps, self.with_ep)
        out = [{**e, **d} for d in deps for e in extra]
        if isinstance(self.pd, list):
            out += [{**e, **pd_point(p, d, q, ratio, link, self.with_ep)} for p, d in self._pairs()
                    for q in self.quants for ratio in self.pd for e in extra for link in self._links(e)]
        return out

    def walk(self, extra: list[dict], add: Callable[[dict], int]) -> RatioWalk | None:
        """Under ``auto``, every pool configuration registered and its 1:1 unit added (``add`` returns the
        candidate's index); the walk, to ask for the next ratios."""
        w = self._walk
        if w is None:
            return None
        for p, d in self._pairs():
            for q in self.quants:
                for e in extra:
                    for link in self._links(e):
                        template = {**e, **pd_point(p, d, q, (1, 1), link, self.with_ep)}
                        first = w.add(template, self.pp(e))
                        if first is not None:
                            w.start(len(w.groups) - 1, first, add(_with(template, first)))
        return w

    def columns(self, s: Scenario, any_pd: bool) -> dict:
        """The deployment's columns of a configuration row: each pool's GPU, TP and EP resolved under P/D."""
        out = {"gpu": s.gpu, "quant": s.quant, "tp": s.tp, "pp": s.pp, "kv_dtype": s.kv_dtype}
        if self.with_ep or s.ep != 1:
            out["ep"] = s.ep
        if any_pd:
            dis = s.disaggregated
            out["pd"] = f"{s.prefill_replicas}:{s.decode_replicas}" if dis else ""
            for pool in ("prefill", "decode"):
                for f in ("gpu", "tp", "ep"):
                    own = getattr(s, f"{pool}_{f}")
                    out[f"{pool}_{f}"] = (own if own is not None else getattr(s, f)) if dis else None
            out["kv_link"] = s.kv_link if dis else None
        return out
