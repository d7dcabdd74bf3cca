"""Workloads: the requests a simulation serves. The public API, in one import:

    from servesim.sim.workload import load_trace, synthesize, Poisson, Lengths, LogNormal, scale_rate

- `load_trace("azure-conv")` or `load_trace("my.csv", fmt="generic")`: built-in or file traces
  (formats in `FORMATS`, built-ins in `BUILTIN_TRACES`; `traces/`);
- `synthesize(n, arrival, lengths, rng)`: seeded synthetic workloads (`synthetic.py`);
- transforms that return a new `Workload` (`transforms.py`): `scale_rate`, `window`, `cap_lengths`, `head`, `repeat`,
  and `with_arrivals` (give a length-only trace arrival times).

The `Workload` table and its three kinds (open loop, length-only, closed loop) are described in `core.py`;
file formats and their errors in `loaders.py`.
"""

from servesim.sim.workload.core import ClosedLoop, Workload, workload_stats
from servesim.sim.workload.loaders import FORMATS, TraceFormat, detect_format, file_format, load_file
from servesim.sim.workload.synthetic import (
    ARRIVALS,
    LENGTHS,
    ArrivalProcess,
    Constant,
    Empirical,
    Fixed,
    Gamma,
    LengthDistribution,
    Lengths,
    LogNormal,
    Poisson,
    TokenDistribution,
    Uniform,
    Zipf,
    synthesize,
    with_arrivals,
)
from servesim.sim.workload.traces import BUILTIN_TRACES, BuiltinTrace, builtin_path, load_trace
from servesim.sim.workload.transforms import cap_lengths, head, repeat, scale_rate, window

__all__ = [
    "ARRIVALS", "BUILTIN_TRACES", "FORMATS", "LENGTHS", "ArrivalProcess", "BuiltinTrace", "ClosedLoop",
    "Constant", "Empirical", "Fixed", "Gamma", "LengthDistribution", "Lengths", "LogNormal", "Poisson",
    "TokenDistribution", "TraceFormat", "Uniform", "Workload", "Zipf", "builtin_path", "cap_lengths",
    "detect_format", "file_format", "head", "load_file", "load_trace", "repeat", "scale_rate", "synthesize", "window",
    "with_arrivals", "workload_stats",
]
