"""What to time: the operator shapes of the named models at each TP degree, over grids that cover serving.

A :class:`Table` names one operator at one shape key and the grid of its axes; ``build_grid`` collects them for
the models, weight formats and KV dtypes asked for, and ``trim`` drops the least needed ones (TP shapes above 1
first, then every other grid point) until the estimated time fits the budget.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

from servesim.errors import ConfigError
from servesim.hwmodels.models import ModelSpec, check_parallelism, get_model

GEMM_M = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
# The first M of each of the quantized GEMM's launch-config buckets past M = 1 (servesim.kernels.quant.configs.bucket:
# 2-16, 17-64, 65-256, larger): its time jumps there (another tile shape, another split), and linear interpolation
# between 64 and 96 would price M = 65-95 below the larger tile they already pay for. Timed for W8A16/W4A16 only.
QUANT_BUCKET_EDGES = (17, 65, 257)
PREFILL_TOKENS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
PREFILL_CONTEXT = (0, 512, 2048, 8192, 32768)
DECODE_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECODE_CONTEXT = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
# ragged decode batches: contexts spread evenly over mean x [0.1, 1.9]
RAGGED_BATCH, RAGGED_CONTEXT, RAGGED_SPREAD = (8, 32, 128), (512, 2048, 8192), "0.9"
SAMPLING_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
SPEC_BATCH, SPEC_K = (1, 4, 16, 64, 256), (1, 2, 4, 8)
TP_DEGREES = (1, 2, 4, 8)
FORMATS = ("bf16", "w8a16", "w4a16")
KV_DTYPES = ("bf16", "fp8")
# CPU mode: the torch reference path of a tiny model, so CI runs calibrate -> simulate end to end in seconds
CPU_GRID = dict(m=(1, 2, 4, 8, 16, 32, 64), prefill=((8, 16, 32, 64), (0, 32, 128)),
                decode=((1, 2, 4, 8), (16, 64, 128, 256)), rows=(1, 2, 4, 8, 16, 32, 64), spec=((1, 4), (1, 2)))


@dataclass(frozen=True)
class Table:
    op: str
    key: tuple[tuple[str, int | str], ...]  # sorted (name, value) pairs
    axes: tuple[str, ...]
    grid: tuple[tuple[int, ...], ...]
    tp: int = 1  # the smallest TP degree that needs this shape (trimming drops large ones first)

    @property
    def keyd(self) -> dict:
        return dict(self.key)

    @property
    def points(self) -> int:
        return math.prod(len(g) for g in self.grid)

    @property
    def cost_points(self) -> int:
        """Points timed: the grid's and the held-out ones between them."""
        return self.points + len(off_grid_points(self))


def _t(op, axes, grid, tp=1, **key) -> Table:
    return Table(op, tuple(sorted(key.items())), axes, tuple(tuple(g) for g in grid), tp)


def model_tables(m: ModelSpec, formats, kv_dtypes, tps, cpu: bool = False) -> list[Table]:
    """Every table the engine's step of ``m`` needs at each TP degree in ``tps`` that ``m`` allows."""
    if m.is_moe:
        raise ConfigError(f"{m.name} is a mixture-of-experts model; calibration covers dense decoders", field="models")
    g = CPU_GRID if cpu else None
    mgrid = g["m"] if cpu else GEMM_M
    out: list[Table] = []
    for tp in tps:
        try:
            check_parallelism(m, tp, 1)
        except ConfigError:
            continue
        q, kvh, hd = m.num_heads // tp, max(m.num_kv_heads // tp, 1), m.head_dim
        h, i, v = m.hidden_size, m.intermediate_size // tp, -(-m.vocab_size // tp)
        for fmt in formats:
            fgrid = mgrid if cpu or fmt == "bf16" else tuple(sorted(set(mgrid) | set(QUANT_BUCKET_EDGES)))
            for n, k in (((q + 2 * kvh) * hd, h), (h, q * hd), (2 * i, h), (h, i)):
                out.append(_t("gemm", ("m",), (fgrid,), tp, format=fmt, n=n, k=k))
        out.append(_t("gemm", ("m",), (mgrid,), tp, format="bf16", n=v, k=h))  # LM head
        out.append(_t("rms_norm", ("tokens",), (mgrid,), tp, hidden=h))
        out.append(_t("rotary", ("tokens",), (mgrid,), tp, q_heads=q, kv_heads=kvh, head_dim=hd))
        out.append(_t("silu_mul", ("tokens",), (mgrid,), tp, intermediate=i))
        for kv in kv_dtypes:
            attn = dict(kv_dtype=kv, q_heads=q, kv_heads=kvh, head_dim=hd)
            out.append(_t("kv_write", ("tokens",), (mgrid,), tp, kv_dtype=kv, kv_heads=kvh, head_dim=hd))
            out.append(_t("attn_prefill", ("tokens", "context"),
                          g["prefill"] if cpu else (PREFILL_TOKENS, PREFILL_CONTEXT), tp, **attn))
            out.append(_t("attn_decode", ("batch", "context"),
                          g["decode"] if cpu else (DECODE_BATCH, DECODE_CONTEXT), tp, **attn))
        if tp == 1 and not cpu:  # ragged batches: how far the uniform-context table is from them
            kv = kv_dtypes[0]
            out.append(_t("attn_decode_ragged", ("batch", "context"), (RAGGED_BATCH, RAGGED_CONTEXT), tp,
                          kv_dtype=kv, q_heads=q, kv_heads=kvh, head_dim=hd, spread=RAGGED_SPREAD))
        out.append(_t("sampling", ("rows",), (g["rows"] if cpu else SAMPLING_ROWS,), tp, vocab=m.vocab_size))
        if tp == 1:
            out.append(_t("spec_verify", ("batch", "k"), g["spec"] if cpu else (SPEC_BATCH, SPEC_K), tp,
                          vocab=m.vocab_size))
    return out


def build_grid(models: list[str], formats=FORMATS, kv_dtypes=KV_DTYPES, tps=TP_DEGREES, cpu: bool = False,
               specs: dict[str, ModelSpec] | None = None) -> list[Table]:
    """The union of the models' tables, each shape once (kept at the smallest TP degree that needs it)."""
    for f in formats:
        if f not in FORMATS:
            raise ConfigError(f"unknown weight format {f!r}; calibration times {', '.join(FORMATS)}", field="quant")
    for kv in kv_dtypes:
        if kv not in KV_DTYPES:
            raise ConfigError(f"unknown KV dtype {kv!r}; calibration times {', '.join(KV_DTYPES)}", field="kv_dtype")
    seen: dict[tuple, Table] = {}
    for name in models:
        spec = (specs or {}).get(name) or get_model(name, field="models")
        for t in model_tables(spec, formats, kv_dtypes, tps, cpu):
            k = (t.op, t.key)
            if k not in seen or seen[k].tp > t.tp:
                seen[k] = t
    return list(seen.values())


HELD_OUT_OPS = ("gemm", "rms_norm", "rotary", "silu_mul", "kv_write", "attn_prefill", "attn_decode", "sampling",
                "spec_verify")


def _between(a: float, b: float) -> int | None:
    """The integer at the geometric middle of ``a < b`` (the arithmetic one from 0); None when it is an end."""
    m = round(math.sqrt(a * b)) if a > 0 else round(b / 2)
    return m if a < m < b else None


def off_grid_points(t: Table) -> list[tuple[int, ...]]:
    """Points between ``t``'s grid values, timed to judge the interpolation where the simulator uses it: the
    middle of every other interval of a 1-D grid (which ones alternates between tables), the centres of a
    2-D grid's cells in a checkerboard. Half the intervals keep the cost near a third of the grid's."""
    if t.op not in HELD_OUT_OPS:
        return []
    mids = [[_between(a, b) for a, b in zip(g, g[1:])] for g in t.grid]
    if len(t.grid) == 1:
        first = zlib.crc32(repr(t.key).encode()) % 2
        return [(m,) for i, m in enumerate(mids[0]) if i % 2 == first and m is not None]
    return [(a, b) for i, a in enumerate(mids[0]) for j, b in enumerate(mids[1])
            if (i + j) % 2 == 0 and a is not None and b is not None]


def trim(tables: list[Table], budget_s: float, seconds_per_point: float) -> tuple[list[Table], list[str]]:
    """Tables that fit ``budget_s`` at ``seconds_per_point``: TP shapes dropped from the largest degree down,
    then every other grid point of the largest tables. Returns the tables and notes of what was dropped."""
    notes = []
    keep = sorted(tables, key=lambda t: t.tp)

    def cost(ts):
        return sum(t.cost_points for t in ts) * seconds_per_point

    while cost(keep) > budget_s and keep and keep[-1].tp > 1:
        tp = keep[-1].tp
        dropped = [t for t in keep if t.tp == tp]
        keep = [t for t in keep if t.tp != tp]
        notes.append(f"dropped the {len(dropped)} TP{tp} shapes")
    while cost(keep) > budget_s:
        thin = [replace(t, grid=tuple(_thin(g) for g in t.grid)) for t in keep]
        if sum(t.points for t in thin) == sum(t.points for t in keep):
            break
        keep = thin
        notes.append("every other grid point dropped")
    return keep, notes


def _thin(g: tuple[int, ...]) -> tuple[int, ...]:
    """Every other value, keeping both ends (axes of four values or fewer stay)."""
    if len(g) <= 4:
        return g
    out = g[::2]
    return out if out[-1] == g[-1] else out + (g[-1],)


def ragged_lengths(batch: int, context: int, spread: float) -> list[int]:
    """Contexts of a ragged decode batch: spread evenly over ``context x [1 - spread, 1 + spread]`` (mean
    ``context``); what calibration times and what the fit of the longest-context weight prices."""
    return [max(1, round(context * (1 - spread + 2 * spread * (i + 0.5) / batch))) for i in range(batch)]
