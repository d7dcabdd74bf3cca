"""Where scenarios run: local processes through joblib (the default), or a Dask distributed cluster.

Both paths run the same function (:func:`servesim.plan.run.evaluate`) on the same scenarios, and results
come back in completion order to the calling process, which writes the cache and reports progress; the
rows handed back are in input order either way, so the tables are identical.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from servesim.errors import InputError
from servesim.plan.cache import ResultCache, scenario_key
from servesim.plan.run import evaluate, evaluate_indexed
from servesim.sim.config import Scenario

CONNECT_TIMEOUT = "10s"  # to reach a Dask scheduler


@dataclass(frozen=True)
class Outcome:
    """One scenario's row, the wall and CPU seconds its simulation took, and whether it came from the cache."""

    row: dict
    wall_s: float
    cpu_s: float
    cached: bool


class Runner:
    """Runs batches of scenarios on joblib (``jobs`` processes; 1 runs in this process) or on the Dask
    cluster at ``dask`` (an address such as ``tcp://host:8786``, or a ``distributed.Client``).

    Use it as a context manager: the worker pool (or the cluster connection) lives across batches.
    """

    def __init__(self, jobs: int | None = None, dask: object | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        if jobs is not None and jobs < 1:
            raise InputError(f"must be >= 1, got {jobs}", field="jobs")
        self.jobs = jobs or os.cpu_count() or 1
        self.dask = dask
        self.cache = ResultCache(cache_dir) if cache_dir is not None else None
        self._client = self._owned_client = self._parallel = None

    def __enter__(self) -> Runner:
        if self.dask is not None:
            self._client = self._connect(self.dask)
        else:
            from joblib import Parallel

            self._parallel = Parallel(n_jobs=self.jobs, return_as="generator_unordered")
            self._parallel.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._parallel is not None:
            self._parallel.__exit__(*exc)
            self._parallel = None
        if self._owned_client is not None:
            self._owned_client.close()
            self._owned_client = None
        self._client = None

    def _connect(self, dask: object):
        try:
            from distributed import Client
        except ImportError:
            raise InputError("needs dask distributed: pip install 'servesim[dist]'", field="dask") from None
        if isinstance(dask, Client):
            return dask
        try:
            self._owned_client = Client(str(dask), timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach a Dask scheduler at {dask}: {exc}", field="dask") from None
        return self._owned_client

    @property
    def workers(self) -> int:
        """How many scenarios run at once."""
        if self._client is not None:
            return max(1, sum(self._client.nthreads().values()))
        return self.jobs

    def run(self, scenarios: Sequence[Scenario], on_done: Callable[[int], None] | None = None) -> list[Outcome]:
        """Outcomes of ``scenarios`` in their order; ``on_done(n)`` after each one finishes (cached ones first)."""
        if self._client is None and self._parallel is None:
            with self:
                return self.run(scenarios, on_done)
        keys = [scenario_key(s) for s in scenarios]
        found: dict[str, Outcome] = {}
        if self.cache is not None:
            for k in dict.fromkeys(keys):
                row = self.cache.get(k)
                if row is not None:
                    found[k] = Outcome(row, 0.0, 0.0, True)
        todo = {k: s for k, s in zip(keys, scenarios) if k not in found}  # one run per distinct scenario
        done = sum(1 for k in keys if k in found)
        if on_done is not None and done:
            on_done(done)
        order = list(todo)
        for i, row, wall, cpu in self._results([todo[k] for k in order]):
            k = order[i]
            found[k] = Outcome(row, wall, cpu, False)
            if self.cache is not None and row["status"] != "error":
                self.cache.put(k, row, wall)
            done += keys.count(k)
            if on_done is not None:
                on_done(done)
        return [found[k] for k in keys]

    def _results(self, scenarios: list[Scenario]):
        """(index, row, wall_s, cpu_s) for each scenario, in completion order."""
        if not scenarios:
            return
        if self._client is not None:
            from distributed import as_completed

            futures = self._client.map(evaluate, scenarios, pure=False)
            index = {f.key: i for i, f in enumerate(futures)}
            for future, result in as_completed(futures, with_results=True):
                yield index[future.key], *result
            return
        from joblib import delayed

        yield from self._parallel(delayed(evaluate_indexed)(i, s) for i, s in enumerate(scenarios))
