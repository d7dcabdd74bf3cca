"""Synthetic workloads: arrival processes x length distributions, all drawn from a caller's seeded rng.

Arrivals: `Poisson`, `Gamma` (burstiness), `Constant`, and `ClosedLoop` (no times: the simulator makes
them, see `core.py`). Open-loop processes put the first arrival at t = 0.

Lengths: one-sided distributions (`Fixed`, `Uniform`, `LogNormal`, `Zipf`) draw token counts; `Lengths`
pairs one for the prompt with one for the output; `Empirical` resamples joint (input, output) pairs from
a trace. `synthesize` takes a `Lengths` or an `Empirical`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servesim.errors import ConfigError
from servesim.sim.table import Table
from servesim.sim.workload.core import ClosedLoop, Workload
from servesim.sim.workload.traces import load_trace

# ---- arrival processes -------------------------------------------------------------------------


def _check_rate(rate_per_s: float) -> None:
    if not (rate_per_s > 0 and np.isfinite(rate_per_s)):
        raise ConfigError(f"rate_per_s must be a positive number, got {rate_per_s}")


def _times(gaps: np.ndarray) -> np.ndarray:
    """Arrival times from inter-arrival gaps, the first arrival at 0."""
    return np.concatenate(([0.0], np.cumsum(gaps[:-1]))) if len(gaps) else np.zeros(0)


@dataclass(frozen=True)
class Poisson:
    """Exponential inter-arrival times with mean 1/rate (CV 1)."""

    rate_per_s: float

    def __post_init__(self) -> None:
        _check_rate(self.rate_per_s)

    def arrivals(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` sorted arrival times in seconds, the first at 0."""
        return _times(rng.exponential(1.0 / self.rate_per_s, size=n))


@dataclass(frozen=True)
class Gamma:
    """Gamma inter-arrival times with mean 1/rate. Give `cv` (coefficient of variation) or
    `burstiness` (vLLM's factor, the gamma shape: 1 is Poisson, < 1 burstier); cv = 1/sqrt(burstiness)."""

    rate_per_s: float
    cv: float | None = None
    burstiness: float | None = None

    def __post_init__(self) -> None:
        _check_rate(self.rate_per_s)
        if (self.cv is None) == (self.burstiness is None):
            raise ConfigError("Gamma needs exactly one of cv or burstiness")
        value = self.cv if self.cv is not None else self.burstiness
        if not (value > 0 and np.isfinite(value)):
            raise ConfigError(f"Gamma cv/burstiness must be a positive number, got {value}")

    @property
    def shape(self) -> float:
        return 1.0 / self.cv**2 if self.cv is not None else float(self.burstiness)

    def arrivals(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` sorted arrival times in seconds, the first at 0."""
        k = self.shape
        return _times(rng.gamma(k, 1.0 / (self.rate_per_s * k), size=n))


@dataclass(frozen=True)
class Constant:
    """Evenly spaced arrivals, 1/rate apart (CV 0)."""

    rate_per_s: float

    def __post_init__(self) -> None:
        _check_rate(self.rate_per_s)

    def arrivals(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` arrival times i/rate (rng unused; kept for a uniform interface)."""
        return np.arange(n, dtype=np.float64) / self.rate_per_s


ArrivalProcess = Poisson | Gamma | Constant | ClosedLoop
ARRIVALS: dict[str, type] = {"poisson": Poisson, "gamma": Gamma, "constant": Constant, "closed": ClosedLoop}

# ---- length distributions ----------------------------------------------------------------------


def _positive_int(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ConfigError(f"{name} must be a positive whole number of tokens, got {value}")


@dataclass(frozen=True)
class Fixed:
    """Always `tokens`."""

    tokens: int

    def __post_init__(self) -> None:
        _positive_int("Fixed tokens", self.tokens)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.tokens, dtype=np.int64)


@dataclass(frozen=True)
class Uniform:
    """Uniform whole numbers in [lo, hi], both included."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        _positive_int("Uniform lo", self.lo)
        _positive_int("Uniform hi", self.hi)
        if self.hi < self.lo:
            raise ConfigError(f"Uniform needs lo <= hi, got {self.lo} > {self.hi}")

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.lo, self.hi, size=n, endpoint=True, dtype=np.int64)


@dataclass(frozen=True)
class LogNormal:
    """exp(N(log median, sigma)) rounded to whole tokens, clipped to [1, max_tokens].
    Its mean (before rounding and clipping) is median * exp(sigma**2 / 2)."""

    median: float
    sigma: float
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.median >= 1 or not self.sigma >= 0:
            raise ConfigError(f"LogNormal needs median >= 1 and sigma >= 0, got {self.median}, {self.sigma}")
        if self.max_tokens is not None:
            _positive_int("LogNormal max_tokens", self.max_tokens)

    @classmethod
    def from_mean(cls, mean: float, sigma: float, max_tokens: int | None = None) -> LogNormal:
        """The lognormal with this mean (before rounding and clipping) and sigma."""
        return cls(mean * np.exp(-(sigma**2) / 2), sigma, max_tokens)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = np.rint(rng.lognormal(np.log(self.median), self.sigma, size=n))
        return np.clip(x, 1, self.max_tokens or np.inf).astype(np.int64)


@dataclass(frozen=True)
class Zipf:
    """Whole numbers k in [1, max_tokens] with P(k) proportional to k**-a (a truncated Zipf law:
    many short requests, a heavy tail of long ones). Any a > 0 works, truncation keeps it finite."""

    a: float
    max_tokens: int

    def __post_init__(self) -> None:
        if not self.a > 0:
            raise ConfigError(f"Zipf needs a > 0, got {self.a}")
        _positive_int("Zipf max_tokens", self.max_tokens)

    def probabilities(self) -> np.ndarray:
        """P(k) for k = 1..max_tokens."""
        w = np.arange(1, self.max_tokens + 1, dtype=np.float64) ** -self.a
        return w / w.sum()

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        cdf = np.cumsum(self.probabilities())
        k = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right") + 1
        return np.minimum(k, self.max_tokens).astype(np.int64)


TokenDistribution = Fixed | Uniform | LogNormal | Zipf
LENGTHS: dict[str, type] = {"fixed": Fixed, "uniform": Uniform, "lognormal": LogNormal, "zipf": Zipf}


@dataclass(frozen=True)
class Lengths:
    """Independent prompt and output lengths: e.g. `Lengths(LogNormal(1000, 0.8), Fixed(128))`."""

    input: TokenDistribution
    output: TokenDistribution

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`n` (input_tokens, output_tokens) pairs; the prompt drawn first."""
        return self.input.draw(n, rng), self.output.draw(n, rng)


@dataclass(frozen=True)
class Empirical:
    """(input, output) pairs resampled with replacement from a trace: a `Workload` or a built-in name
    (loaded when sampled). Keeps the trace's joint distribution, correlation included."""

    source: Workload | str

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`n` (input_tokens, output_tokens) pairs drawn uniformly from the source's rows."""
        w = self.source
        if isinstance(w, str):
            w = load_trace(w)
        pick = rng.integers(0, len(w), size=n)
        t = w.table
        return np.asarray(t["input_tokens"])[pick], np.asarray(t["output_tokens"])[pick]


LengthDistribution = Lengths | Empirical


def _label(obj: object) -> str:
    return repr(obj) if not isinstance(obj, Empirical) or isinstance(obj.source, str) else \
        f"Empirical({obj.source.name})"


def synthesize(n: int, arrival: ArrivalProcess, lengths: LengthDistribution, rng: np.random.Generator,
               name: str = "synthetic") -> Workload:
    """`n` requests: arrival times from `arrival` (drawn first), then lengths from `lengths`, all from
    `rng`, so a seed fixes the workload. A `ClosedLoop` arrival gives NaN arrival times and sets
    `Workload.closed_loop`."""
    if n < 1:
        raise ConfigError(f"synthesize needs n >= 1, got {n}")
    closed = arrival if isinstance(arrival, ClosedLoop) else None
    times = np.full(n, np.nan) if closed else arrival.arrivals(n, rng)
    inp, out = lengths.sample(n, rng)
    table = Table({"arrival_s": times, "input_tokens": inp, "output_tokens": out})
    return Workload(name=name, table=table, source=f"synthetic:{arrival!r} x {_label(lengths)}",
                    closed_loop=closed)


def with_arrivals(w: Workload, arrival: ArrivalProcess, rng: np.random.Generator) -> Workload:
    """`w` (length-only or not) with new arrival times from `arrival`; rows keep their order. A
    `ClosedLoop` makes it a closed-loop workload."""
    closed = arrival if isinstance(arrival, ClosedLoop) else None
    table = w.table.copy()
    table["arrival_s"] = np.full(len(table), np.nan) if closed else arrival.arrivals(len(table), rng)
    return Workload(name=w.name, table=table, block_tokens=w.block_tokens,
                    source=f"{w.source} + {arrival!r}", notes=w.notes, closed_loop=closed)
