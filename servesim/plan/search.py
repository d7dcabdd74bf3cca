"""The capacity search: the highest arrival rate one replica sustains with the SLO percentiles met.

``Limits`` are percentile SLOs on a run's summary (``p99_ttft_ms <= 500``); a probe at rate ``r`` passes when
every limit holds, no request was rejected and the replica kept up (the summary's ``saturated``: served under
95% of the offered rate while its queue grew; a finite window may hide a backlog inside the percentiles).

``RateSearch`` finds the pass/fail boundary of that predicate over ``r`` assuming it is monotone (more load,
more latency): it grows the rate by doubling from a start until a probe fails (shrinking by 4 when the first
one fails), then cuts the bracket ``[highest pass, lowest fail]`` at geometric points until it is narrower
than ``rel_tol``. It proposes ``m`` probes a round (``m``-section search), so a cluster with more workers
than configurations narrows each bracket faster; with ``m = 1`` it is bisection. It is pure: the caller runs
the probes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from servesim.errors import ConfigError

STATS = ("mean", "median", "p50", "p90", "p95", "p99")
METRICS = ("ttft", "tpot", "itl", "e2el")
QUEUEING = {"mean": "mean_queueing_delay_ms", "p99": "p99_queueing_delay_ms"}
# Limits that grow without bound when a replica is overloaded; a search needs one of them to see overload.
_LOAD_SENSITIVE = ("ttft", "e2el", "queueing")


def _summary_key(name: str) -> str:
    """``ttft_p99_ms``, ``p99_ttft_ms``, ``p99_ttft`` -> ``p99_ttft_ms`` (the summary's vLLM key)."""
    name = name.strip().lower()
    if name in QUEUEING.values():
        return name
    parts = name.removesuffix("_ms").split("_")
    if len(parts) == 2:
        a, b = parts
        stat, metric = (a, b) if a in STATS else (b, a)
        if metric in METRICS and stat in STATS:
            return f"{stat}_{metric}_ms"
        if metric == "queueing" and stat in QUEUEING:
            return QUEUEING[stat]
    known = ", ".join(f"{m}_{s}_ms" for m in METRICS for s in ("p50", "p90", "p99")) + ", queueing_p99_ms"
    raise ConfigError(f"unknown SLO '{name}'; use <metric>_<stat>_ms, e.g. {known}", field="slo")


@dataclass(frozen=True)
class Limits:
    """SLO limits on summary keys (``{"p99_ttft_ms": 500.0}``) and the rejected requests a probe may have."""

    limits_ms: Mapping[str, float]
    max_rejected: int = 0

    def __post_init__(self) -> None:
        if not self.limits_ms:
            raise ConfigError("give at least one limit, e.g. ttft_p99_ms=500", field="slo")
        for key, value in self.limits_ms.items():
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ConfigError(f"limit {key} must be a positive number of ms, got {value!r}", field="slo")
        if not any(m in key for key in self.limits_ms for m in _LOAD_SENSITIVE):
            raise ConfigError(
                "a capacity search needs a TTFT, E2E or queueing limit: TPOT and ITL alone do not grow "
                "when requests queue, so overload would pass", field="slo",
            )

    @classmethod
    def parse(cls, text: str | Mapping[str, float], max_rejected: int = 0) -> Limits:
        """From ``"ttft_p99_ms=500,tpot_p99_ms=50"`` or a mapping with such keys."""
        if isinstance(text, str):
            pairs = {}
            for item in filter(None, (p.strip() for p in text.split(","))):
                name, eq, value = item.partition("=")
                try:
                    pairs[name] = float(value)
                except ValueError:
                    raise ConfigError(f"'{item}' is not NAME=MILLISECONDS", field="slo") from None
                if not eq:
                    raise ConfigError(f"'{item}' is not NAME=MILLISECONDS", field="slo")
        else:
            pairs = dict(text)
        return cls({_summary_key(k): float(v) for k, v in pairs.items()}, max_rejected)

    def failures(self, summary: Mapping[str, object]) -> list[str]:
        """What a run's summary breaks, one phrase each (``p99_ttft_ms 812.3 > 500``); empty when it passes."""
        out = []
        rejected = int(summary.get("rejected", 0))
        if rejected > self.max_rejected:
            out.append(f"{rejected} requests rejected")
        if summary.get("saturated"):
            out.append(f"saturated: served {float(summary['served_rate']):.4g} of {float(summary['offered_rate']):.4g}"
                       " req/s offered")
        for key, limit in self.limits_ms.items():
            value = float(summary[key])
            if not value <= limit:  # NaN fails
                out.append(f"{key} {value:.4g} > {limit:g}")
        return out

    def label(self) -> str:
        return ", ".join(f"{k} <= {v:g}" for k, v in self.limits_ms.items())


@dataclass
class RateSearch:
    """Search state of one configuration: feed it probe outcomes, ask it for the next rates."""

    start_rps: float = 1.0
    rel_tol: float = 0.02
    min_rps: float = 1e-3
    max_rps: float = 1e4
    max_probes: int = 40
    passed: dict[float, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.min_rps <= self.start_rps <= self.max_rps:
            raise ConfigError(f"need 0 < min <= start <= max rate, got {self.min_rps}, {self.start_rps}, "
                              f"{self.max_rps}", field="rate")
        if not 0 < self.rel_tol < 1:
            raise ConfigError(f"must be in (0, 1), got {self.rel_tol}", field="rel_tol")

    @property
    def lo(self) -> float | None:
        """Highest rate that passed (below every failure)."""
        hi = self.hi
        ok = [r for r, p in self.passed.items() if p and (hi is None or r < hi)]
        return max(ok) if ok else None

    @property
    def hi(self) -> float | None:
        """Lowest rate that failed."""
        bad = [r for r, p in self.passed.items() if not p]
        return min(bad) if bad else None

    @property
    def done(self) -> bool:
        lo, hi = self.lo, self.hi
        if len(self.passed) >= self.max_probes:
            return True
        if lo is None:  # nothing passed yet: done once the floor failed
            return hi is not None and hi <= self.min_rps
        if hi is None:
            return lo >= self.max_rps
        return hi / lo - 1 <= self.rel_tol

    def estimate_remaining(self, m: int = 1) -> int:
        """About how many probes are left (for a progress bar's time left)."""
        if self.done:
            return 0
        lo, hi = self.lo, self.hi
        ratio, extra = (hi / lo, 0) if lo is not None and hi is not None else (4.0 if lo is None else 2.0, 2)
        steps = math.log(max(math.log(ratio) / math.log1p(self.rel_tol), 1.0)) / math.log(m + 1)
        return min(math.ceil(steps) * m + extra, self.max_probes - len(self.passed))

    def record(self, rate: float, passed: bool) -> None:
        self.passed[rate] = passed

    def next_rates(self, m: int = 1) -> list[float]:
        """Up to ``m`` rates to probe next (empty when done)."""
        if self.done:
            return []
        m = max(1, min(m, self.max_probes - len(self.passed)))
        lo, hi = self.lo, self.hi
        if not self.passed:
            rates = [self.start_rps * 2.0**i for i in range(m)]
        elif lo is None:  # shrink toward the floor
            rates = [max(self.min_rps, hi / 4.0 ** (i + 1)) for i in range(m)]
        elif hi is None:  # grow toward the ceiling
            rates = [min(self.max_rps, lo * 2.0 ** (i + 1)) for i in range(m)]
        else:  # m points cutting [lo, hi] into m + 1 equal ratios
            ratio = hi / lo
            rates = [lo * ratio ** ((i + 1) / (m + 1)) for i in range(m)]
        return sorted({r for r in rates if r not in self.passed})
