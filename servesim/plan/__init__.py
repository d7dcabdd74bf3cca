"""Capacity planning: sweeps of scenarios and the search for the cheapest configuration that meets the SLOs.

    from servesim.plan import plan, sweep

    result = plan("Llama-3.1-70B", rate=20, slo="ttft_p99_ms=2000,tpot_p99_ms=80")
    result.cheapest(3)            # DataFrame: configuration, replicas, $/h, capacity, margins, profile_id
    result.write("plan-out/")     # configs/probes CSV+Parquet, pareto.html, plan.json

    table = sweep("grid.yaml", jobs=2, cache_dir="sweep-cache").table   # one row per scenario

``sweep`` and ``plan`` run on local processes (joblib) by default, or on a Dask cluster with
``dask="tcp://host:8786"`` (the ``dist`` extra), with the same results. ``import servesim`` stays light: this
package loads only when used (``from servesim import plan, sweep`` works too: the module is callable as
:func:`plan`).
"""

from __future__ import annotations

import sys
import types

from servesim.plan.capacity import DEFAULT_GPUS, DEFAULT_QUANTS, DEFAULT_TPS, PlanResult, plan
from servesim.plan.grid import Grid
from servesim.plan.search import Limits, RateSearch
from servesim.plan.sweep import SweepResult, sweep

__all__ = ["DEFAULT_GPUS", "DEFAULT_QUANTS", "DEFAULT_TPS", "Grid", "Limits", "PlanResult", "RateSearch",
           "SweepResult", "plan", "sweep"]


class _CallableModule(types.ModuleType):
    """``from servesim import plan`` finds this subpackage (a submodule wins over any attribute), so the
    module itself answers calls as :func:`plan` does."""

    def __call__(self, *args, **kwargs) -> PlanResult:
        return plan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
