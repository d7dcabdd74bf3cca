"""``sweep``: every scenario of a grid simulated in parallel, one tidy row each, cached so a rerun resumes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from servesim.plan.execute import Runner
from servesim.plan.grid import Grid, as_scenarios
from servesim.plan.outputs import publish
from servesim.sim.config import Scenario


@dataclass
class SweepResult:
    """A sweep's table (one row per scenario, in grid order) and how long it took."""

    table: pd.DataFrame
    wall_s: float  # the whole sweep, this call
    scenario_wall_s: np.ndarray  # each scenario's simulation (0 for cache hits)
    scenario_cpu_s: np.ndarray  # the CPU seconds of each (0 for cache hits)
    cached: int  # rows that came from the cache
    workers: int

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """``results.csv``, ``results.parquet`` and ``run.json`` (timings) into ``out_dir``."""
        from servesim.sim.outputs import dumps_json

        run = {"scenarios": len(self.table), "cached": self.cached, "workers": self.workers,
               "wall_s": self.wall_s, "scenario_wall_s": self.scenario_wall_s.tolist(),
               "scenario_cpu_s": self.scenario_cpu_s.tolist(),
               "status": self.table["status"].value_counts().to_dict()}
        return publish(out_dir, {"results": self.table}, {"run.json": dumps_json(run)})


def sweep(grid: Grid | Mapping | str | os.PathLike[str] | Sequence[Scenario | Mapping], *,
          jobs: int | None = None, dask: object | None = None, cache_dir: str | os.PathLike[str] | None = None,
          on_progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Simulate every scenario of ``grid`` (a grid file, a ``{"base":..., "axes":...}`` mapping, a
    :class:`Grid`, or a list of scenarios) on ``jobs`` local processes or the Dask cluster ``dask``.

    With ``cache_dir``, finished scenarios are stored there as they complete and skipped by the next call.
    ``on_progress(done, total)`` is called as scenarios finish. Bad input raises ``InputError`` before
    anything runs.
    """
    started = time.perf_counter()
    scenarios = as_scenarios(grid)
    with Runner(jobs, dask, cache_dir) as runner:
        total = len(scenarios)
        outcomes = runner.run(scenarios, None if on_progress is None else lambda n: on_progress(n, total))
        workers = runner.workers
    table = pd.DataFrame([o.row for o in outcomes])
    return SweepResult(table, time.perf_counter() - started, np.array([o.wall_s for o in outcomes]),
                       np.array([o.cpu_s for o in outcomes]), sum(o.cached for o in outcomes), workers)
