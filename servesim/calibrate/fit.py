"""Fits that a profile's measured tables alone determine, and the held-out quality of its interpolation
(torch-free: ``servesim calibrate refit`` and the reports run without a GPU)."""

from __future__ import annotations

import math

import numpy as np

from servesim.hwmodels.calibrated import max_weight_at
from servesim.hwmodels.profile import OpTable, Profile


def held_out_method(tables: list[OpTable] | tuple[OpTable, ...]) -> str:
    """``off-grid`` when the tables carry held-out points (calibrations since they exist; a grid with no integer
    between its values, e.g. a k axis of 1 and 2, has none and keeps the neighbours' estimate), else
    ``leave-one-out``."""
    return "off-grid" if any(t.held_out_points for t in tables) else "leave-one-out"


def interpolated(t: OpTable, point: tuple[float, ...]) -> float:
    """What the calibrated cost model reads off table ``t`` at ``point`` (its interpolation over the grid)."""
    from servesim.hwmodels.calibrated import _extend, _Grid2, _lerp, table_nodes

    if len(t.grid) == 1:
        return _lerp(*_extend(*table_nodes(t)), point[0])
    return _Grid2(t)(*point)


def held_out_errors(tables: list[OpTable]) -> dict[str, dict[str, float]]:
    """The interpolation's error per operator kind: at the off-grid points a table carries (priced from its
    whole grid, as the simulator prices them), or, for a table without them, at each interior point of each
    axis predicted from its two neighbours (a gap twice the grid's, so a pessimistic figure)."""
    errs: dict[str, list[float]] = {}
    for t in tables:
        if t.op in ("step_overhead", "attn_decode_ragged"):
            continue
        if t.held_out_points:
            errs.setdefault(t.op, []).extend(abs(interpolated(t, p) / m - 1)
                                             for p, m in zip(t.held_out_points, t.held_out_s, strict=True))
            continue
        lines = [list(zip(t.grid[0], t.median_s))] if len(t.grid) == 1 else _lines_2d(t)
        for line in lines:
            for (x0, y0), (x1, y1), (x2, y2) in zip(line, line[1:], line[2:]):
                pred = y0 + (y2 - y0) * (x1 - x0) / (x2 - x0)
                errs.setdefault(t.op, []).append(abs(pred / y1 - 1))
    out = {op: _summary(v) for op, v in errs.items()}
    uniform = {tuple(sorted(t.key.items())): t for t in tables if t.op == "attn_decode"}
    for t in (t for t in tables if t.op == "attn_decode_ragged"):
        key = {k: v for k, v in t.key.items() if k != "spread"}
        u = uniform.get(tuple(sorted(key.items())))
        if u is None:
            continue
        from servesim.hwmodels.calibrated import _Grid2

        g = _Grid2(u)
        e = [abs(g(b, c) / m - 1) for (b, c), m in zip(((b, c) for b in t.grid[0] for c in t.grid[1]), t.median_s)]
        out[f"attn_decode_ragged(spread {t.key['spread']}, uniform model)"] = _summary(e)
    return out


def _ragged_points(tables) -> list[tuple]:
    """(uniform grid, batch, mean context, longest context, measured s) of every ragged decode point."""
    from servesim.calibrate.grid import ragged_lengths
    from servesim.hwmodels.calibrated import _Grid2

    uniform = {tuple(sorted(t.key.items())): t for t in tables if t.op == "attn_decode"}
    points = []
    for t in (t for t in tables if t.op == "attn_decode_ragged"):
        u = uniform.get(tuple(sorted((k, v) for k, v in t.key.items() if k != "spread")))
        if u is None:
            continue
        g = _Grid2(u)
        for (b, c), m in zip(((b, c) for b in t.grid[0] for c in t.grid[1]), t.median_s, strict=True):
            lens = ragged_lengths(int(b), int(c), float(t.key["spread"]))
            points.append((g, b, sum(lens) / len(lens), max(lens), m))
    return points


def _best_weight(points) -> float:
    """The w in steps of 0.01 with the least median |error| over ``points``."""
    return float(min((float(np.median([abs(g(b, mean + w * (mx - mean)) / m - 1) for g, b, mean, mx, m in points])),
                      w) for w in np.linspace(0.0, 1.0, 101))[1])


def fit_max_weight(tables: list[OpTable] | tuple[OpTable, ...]) -> tuple[float, dict[str, float] | None]:
    """The weight w that best prices ragged decode batches at context ``mean + w (longest - mean)`` on the
    uniform-context table (the median |error| over the ragged points, w in steps of 0.01), and that error."""
    points = _ragged_points(tables)
    if not points:
        return 0.0, None
    w = _best_weight(points)
    return w, _summary([abs(g(b, mean + w * (mx - mean)) / m - 1) for g, b, mean, mx, m in points])


def fit_max_weights(tables) -> tuple[tuple[tuple[float, float], ...], dict[str, float] | None]:
    """The weight per batch size of the ragged tables (each batch's points alone, as :func:`fit_max_weight`) and
    the error of pricing every ragged point with the weight :func:`max_weight_at` gives its batch."""
    points = _ragged_points(tables)
    if not points:
        return (), None
    pairs = tuple((float(b), _best_weight([p for p in points if p[1] == b])) for b in sorted({p[1] for p in points}))
    return pairs, _summary([abs(g(b, mean + max_weight_at(pairs, b) * (mx - mean)) / m - 1)
                            for g, b, mean, mx, m in points])




def _lines_2d(t: OpTable) -> list[list[tuple[float, float]]]:
    a, b = t.grid
    rows = [list(t.median_s[i * len(b):(i + 1) * len(b)]) for i in range(len(a))]
    return [list(zip(b, r)) for r in rows] + [list(zip(a, col)) for col in zip(*rows)]


def _summary(errors: list[float]) -> dict[str, float]:
    if not errors:
        return {"median_abs": math.nan, "p90_abs": math.nan, "points": 0}
    return {"median_abs": float(np.median(errors)), "p90_abs": float(np.quantile(errors, 0.9)),
            "points": len(errors)}


def refit(profile: Profile) -> Profile:
    """Recompute what a profile's measured tables alone determine (the launch load of our quantized GEMMs, the
    longest-context weight of ragged decode batches and its error) and the held-out errors of the operators as
    the cost model now interpolates them, for a profile measured before those existed."""
    from servesim.calibrate.launch import with_launch_loads

    tables = tuple(with_launch_loads(profile.tables, profile.provenance.gpu_name))
    profile = profile.model_copy(update={"tables": tables})
    w, ragged = fit_max_weight(profile.tables)
    pairs, per_batch = fit_max_weights(profile.tables)
    ops = held_out_errors(list(profile.tables)) if profile.fit.ops else {}
    if ragged:
        ops[f"attn_decode_ragged(longest-context weight {w:.2f})"] = ragged
    if per_batch:
        ops["attn_decode_ragged(longest-context weight by batch " + ", ".join(
            f"{b:g}: {x:.2f}" for b, x in pairs) + ")"] = per_batch
    return profile.model_copy(update={"decode_max_weight": w, "decode_max_weights": pairs,
                                      "fit": profile.fit.model_copy(update={"ops": ops})})
