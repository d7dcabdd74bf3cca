"""Sweep grids: a base scenario and axes whose every combination is one scenario.

.. code-block:: yaml

    base:                      # Scenario fields every point shares (or a path to a scenario YAML)
      model: Llama-3.1-70B
      num_requests: 400
    axes:                      # the Cartesian product of these, in this order
      gpu: [H100-SXM, H200]
      tp: [2, 4, 8]
      quant: [bf16, w8a16, w4a16]
      rate: [2, 4, 8]
      limits:                  # a named axis: each value sets several fields together
        - {max_num_seqs: 128, max_num_batched_tokens: 4096}
        - {max_num_seqs: 256, max_num_batched_tokens: 8192}

Any Scenario field is an axis, so a field added to Scenario (a P:D ratio, an expert-parallel degree) is
one more axis with no change here. Errors name the file and the field (``grid.yaml: field 'axes.tp'``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from servesim.errors import ConfigError, InputError
from servesim.hwmodels.gpus import read_yaml
from servesim.sim.config import Scenario, make_scenario

FIELDS = frozenset(Scenario.model_fields)
TOP_KEYS = ("base", "axes")


def _norm(d: Mapping, source: str | None, where: str) -> dict:
    if not isinstance(d, Mapping):
        raise InputError("must be a mapping of field: value", file=source, field=where)
    return {str(k).replace("-", "_"): v for k, v in d.items()}


def _check_fields(d: Mapping, source: str | None, where: str) -> None:
    for k in d:
        if k not in FIELDS:
            raise InputError("not a Scenario field (see `servesim simulate --help`)", file=source, field=f"{where}.{k}")


def _base(raw: object, source: str | None) -> dict:
    if raw is None:
        return {}
    if isinstance(raw, (str, os.PathLike)):
        p = Path(raw)
        if source and not p.is_absolute():
            p = Path(source).parent / p
        if not p.is_file():
            raise InputError(f"no such scenario file '{p}'", file=source, field="base")
        raw = read_yaml(p) or {}
        source = str(p)
    base = _norm(raw, source, "base")
    _check_fields(base, source, "base")
    return base


def _axes(raw: object, source: str | None) -> list[tuple[str, list[dict]]]:
    """Each axis as (name, list of field->value dicts), in the file's order."""
    if raw is None:
        return []
    axes, owner = [], {}
    for name, values in _norm(raw, source, "axes").items():
        where = f"axes.{name}"
        if not isinstance(values, list) or not values:
            raise InputError("an axis is a non-empty list of values", file=source, field=where)
        if name in FIELDS:
            points = [{name: v} for v in values]
        else:
            if not all(isinstance(v, Mapping) for v in values):
                raise InputError("not a Scenario field; a named axis is a list of field: value mappings",
                                 file=source, field=where)
            points = [_norm(v, source, where) for v in values]
            for p in points:
                _check_fields(p, source, where)
        for field in {f for p in points for f in p}:
            if field in owner:
                raise InputError(f"field '{field}' is already set by axis '{owner[field]}'", file=source, field=where)
            owner[field] = name
        axes.append((name, points))
    return axes


class Grid:
    """A base scenario and axes; :meth:`scenarios` expands them (validated, each error naming its field)."""

    def __init__(self, base: Mapping | str | None = None, axes: Mapping | None = None, *,
                 source: str | None = None) -> None:
        self.source = source
        self.base = _base(base, source)
        self.axes = _axes(axes, source)
        self._seen: set = set()  # workloads built (check_workload)

    @classmethod
    def from_dict(cls, raw: object, source: str | None = None) -> Grid:
        if not isinstance(raw, Mapping):
            raise InputError("a grid file is a mapping with 'base' and 'axes'", file=source)
        for k in raw:
            if k not in TOP_KEYS:
                raise InputError(f"unknown key; a grid has {' and '.join(TOP_KEYS)}", file=source, field=str(k))
        return cls(raw.get("base"), raw.get("axes"), source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Grid:
        """Read a grid YAML file."""
        p = Path(path)
        if not p.is_file():
            raise InputError("no such grid file", file=str(p))
        return cls.from_dict(read_yaml(p) or {}, source=str(p))

    def __len__(self) -> int:
        n = 1
        for _, points in self.axes:
            n *= len(points)
        return n

    def _where(self, field: str | None) -> str:
        head = (field or "").split(".")[0]
        for name, points in self.axes:
            if any(head in p for p in points):
                return f"axes.{name}" + ("" if name == head else f".{head}")
        return f"base.{field}" if field else "base"

    def points(self) -> list[dict]:
        """The field values of every point (base merged with one value of each axis)."""
        combos = itertools.product(*(points for _, points in self.axes))
        return [{**self.base, **{k: v for p in combo for k, v in p.items()}} for combo in combos]

    def scenarios(self) -> list[Scenario]:
        """Every point as a validated Scenario, and its workload built once, so a typo stops the sweep before
        anything runs."""
        return [self.validate(values) for values in self.points()]

    def validate(self, values: Mapping, owners: Mapping[str, str] | None = None) -> Scenario:
        """One point as a Scenario (each distinct workload built once); an error names the axis or base field,
        or for a field in ``owners`` the name given there (the planner's option that set it)."""
        try:
            s = make_scenario(dict(values))
            check_workload(s, self._seen)
        except ConfigError as exc:
            head = (exc.field or "").split(".")[0]
            where = owners[head] if owners and head in owners else self._where(exc.field)
            raise InputError(exc.problem, file=self.source, field=where) from None
        return s


def check_workload(s: Scenario, seen: set) -> None:
    """Build the scenario's workload once per distinct one, so a missing trace or a bad row stops the sweep
    before anything runs (Scenario itself checks the names of models, GPUs, formats and policies)."""
    from servesim.plan.run import workload_for, workload_key
    from servesim.sim.workload import BUILTIN_TRACES

    if s.trace not in BUILTIN_TRACES and not Path(s.trace).is_file():
        raise ConfigError(f"no built-in trace or file '{s.trace}'; built-in: {', '.join(BUILTIN_TRACES)}",
                          field="trace")
    key = workload_key(s)
    if key not in seen:
        workload_for(s)
        seen.add(key)


def as_scenarios(grid: Grid | Mapping | str | os.PathLike[str] | Sequence[Scenario | Mapping]) -> list[Scenario]:
    """Scenarios from a grid, a grid mapping, a grid file, or a list of scenarios / field mappings."""
    if isinstance(grid, Grid):
        return grid.scenarios()
    if isinstance(grid, (str, os.PathLike)):
        return Grid.load(grid).scenarios()
    if isinstance(grid, Mapping):
        return Grid.from_dict(grid).scenarios()
    out, seen = [], set()
    for i, item in enumerate(grid):
        s = item if isinstance(item, Scenario) else make_scenario(dict(item), source=f"scenario {i}")
        try:
            check_workload(s, seen)
        except ConfigError as exc:
            raise ConfigError(exc.problem, file=f"scenario {i}", field=exc.field) from None
        out.append(s)
    return out
