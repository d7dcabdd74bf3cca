"""Interpolation alternatives judged on a profile's held-out operator points (CPU; reads the shipped profile).

Every table of a profile carries ``held_out_points`` timed on the GPU between the grid's and never used by the
interpolation. This prices them with the cost model's interpolation (piecewise linear, bilinear over two axes)
and with alternatives, and prints median / p90 |error| per operator family and per table:

- ``loglog``: linear in (log x, log y) (1-D; 2-D: both axes and the value in logs);
- ``pchip``: scipy's monotone piecewise-cubic ``PchipInterpolator`` over x (and over log x, log y);
- ``launch`` (quantized GEMMs): what the cost model does with a table's ``launch_load`` (``servesim.calibrate.launch``:
  waves of CTAs x rows x K blocks per CTA from the H200's launch configs): a segment's rise follows the load's
  steps where the load rises inside it, linear in M where it does not;
- ``log2-batch`` (decode attention): the batch axis weighted in log2(batch);
- ``split-waves`` (decode attention): the batch axis weighted by the waves of programs the split rule
  (``choose_num_splits``) launches, times the keys per program.

    PYTHONPATH=. python bench/interp_study.py [--profile PATH] [--out bench/results/interp_study-h200-<date>.md]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator

from servesim.calibrate.fit import interpolated
from servesim.calibrate.launch import BITS, with_launch_loads
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.profile import OpTable, load_profile

SHIPPED = Path(__file__).resolve().parents[1] / "servesim/hwmodels/profiles/h200.json"
FAMILIES = ("gemm", "kv_write", "rms_norm", "rotary", "silu_mul", "sampling", "attn_prefill", "attn_decode",
            "spec_verify")


def _rows(t: OpTable) -> np.ndarray:
    return np.asarray(t.median_s).reshape([len(g) for g in t.grid])


def linear(t: OpTable, pt) -> float:
    return interpolated(t, tuple(pt))


def loglog(t: OpTable, pt) -> float:
    if len(t.grid) == 1:
        xs = np.log(np.asarray(t.grid[0]))
        return float(np.exp(np.interp(math.log(pt[0]), xs, np.log(t.median_s))))
    a, b = (np.log(np.maximum(np.asarray(g), 1.0)) for g in t.grid)  # a context axis may start at 0
    from scipy.interpolate import RegularGridInterpolator

    f = RegularGridInterpolator((a, b), np.log(_rows(t)))
    return float(np.exp(f([[math.log(max(pt[0], 1.0)), math.log(max(pt[1], 1.0))]])[0]))


def pchip(t: OpTable, pt) -> float:
    if len(t.grid) != 1:
        return math.nan
    return float(PchipInterpolator(np.asarray(t.grid[0]), np.asarray(t.median_s))(pt[0]))


def pchip_loglog(t: OpTable, pt) -> float:
    if len(t.grid) != 1:
        return math.nan
    f = PchipInterpolator(np.log(np.asarray(t.grid[0])), np.log(np.asarray(t.median_s)))
    return float(np.exp(f(math.log(pt[0]))))


def launch(t: OpTable, pt) -> float:
    """Quantized GEMMs: the cost model's interpolation with the table's launch load (computed here where the
    profile has none): a segment's rise spread over the load's steps."""
    if t.op == "gemm" and t.key["format"] in BITS and not t.launch_load:
        t = _LAUNCH.setdefault(t.key_str(), with_launch_loads([t], GPU_NAME)[0])
    return interpolated(t, tuple(pt))


_LAUNCH: dict[str, OpTable] = {}


def _batch_weighted(t: OpTable, pt, weight) -> float:
    """Decode: the two batch rows around ``pt`` mixed by ``weight(a, a0, a1)``, each row linear over context."""
    if t.op != "attn_decode":
        return linear(t, pt)
    a, b = np.asarray(t.grid[0]), np.asarray(t.grid[1])
    rows = _rows(t)
    i = max(0, min(int(np.searchsorted(a, pt[0], side="right")) - 1, len(a) - 2))
    w = weight(pt[0], a[i], a[i + 1], t.key)
    r0, r1 = np.interp(pt[1], b, rows[i]), np.interp(pt[1], b, rows[i + 1])
    return float(r0 + (r1 - r0) * w)


def log2_batch(t: OpTable, pt) -> float:
    return _batch_weighted(t, pt, lambda x, a0, a1, key: math.log2(x / a0) / math.log2(a1 / a0))


def decode_load(batch: float, kv_heads: int, occupancy: int) -> float:
    """Waves of programs x keys per program (per key of context) of the split rule at a long context."""
    from servesim.kernels.attention.decode import MAX_SPLITS

    programs = int(batch) * kv_heads
    splits = max(1, min(2 * SMS // programs, MAX_SPLITS))  # SPLIT_WAVES 2 (the H200's tables)
    return math.ceil(programs * splits / (SMS * occupancy)) / splits


def split_waves(occupancy: int):
    def weight(x, a0, a1, key):
        l0, l1 = (decode_load(v, key["kv_heads"], occupancy) for v in (a0, a1))
        lx = min(max(decode_load(x, key["kv_heads"], occupancy), l0), l1)
        return (x - a0) / (a1 - a0) if l1 == l0 else (lx - l0) / (l1 - l0)
    return lambda t, pt: _batch_weighted(t, pt, weight)


METHODS = {"linear": linear, "loglog": loglog, "pchip": pchip, "pchip-loglog": pchip_loglog, "launch": launch,
           "log2-batch": log2_batch,
           **{f"split-waves(occ {o})": split_waves(o) for o in (1, 2, 4)}}
GPU_NAME, SMS = "NVIDIA H200", get_gpu("H200").sm_count


def errors(t: OpTable, method) -> np.ndarray:
    return np.array([abs(method(t, p) / m - 1) for p, m in zip(t.held_out_points, t.held_out_s, strict=True)])


def family(t: OpTable) -> str:
    return f"gemm {t.key['format']}" if t.op == "gemm" else t.op


def _fmt(e: np.ndarray) -> str:
    e = e[~np.isnan(e)]
    return "—" if not len(e) else f"{np.median(e):.2%} / {np.quantile(e, 0.9):.2%}"


def study(profile_path: Path) -> str:
    p = load_profile(profile_path)
    tables = [t for t in p.tables if t.held_out_points and t.op in FAMILIES]
    names = list(METHODS)
    lines = [f"# Interpolation alternatives on the held-out points of {p.profile_id}", "",
             f"`PYTHONPATH=. python bench/interp_study.py --profile {profile_path.name}`: median / p90 |error| of "
             "each method at the held-out points (timed on the GPU, never interpolated from).", "",
             "## Per family", "", "| family | points | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    fams: dict[str, list[OpTable]] = {}
    for t in tables:
        fams.setdefault(family(t), []).append(t)
    fams["gemm (all)"] = [t for t in tables if t.op == "gemm"]
    for f, ts in fams.items():
        cells = [_fmt(np.concatenate([errors(t, METHODS[n]) for t in ts])) for n in names]
        lines.append(f"| {f} | {sum(len(t.held_out_s) for t in ts)} | " + " | ".join(cells) + " |")
    lines += ["", "## Per table", "", "| table | points | " + " | ".join(names) + " |",
              "|---|---:|" + "---:|" * len(names)]
    for t in tables:
        if t.op in ("rms_norm", "rotary", "silu_mul", "sampling"):
            continue
        cells = [_fmt(errors(t, METHODS[n])) for n in names]
        lines.append(f"| {t.key_str()} | {len(t.held_out_s)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", type=Path, default=SHIPPED)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    text = study(args.profile)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
