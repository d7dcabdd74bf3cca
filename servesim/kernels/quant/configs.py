"""Launch configurations for ``quant_gemm`` per weight width and M bucket, per GPU.

The tables here were chosen by the tuning sweep ``bench/quant_gemm.py --tune`` on an H100 (see ``bench/results``);
another GPU's from the ``quant_gemm`` section of ``servesim/kernels/configs/<key>.json`` (``tuned.py``), and a GPU
without one launches with these. Nothing is autotuned at start-up. ``waves``: split K (powers of two) until the
grid has at least waves x SM-count CTAs; ``fill`` (takes precedence): the largest split with at most fill x
SM-count CTAs, any integer, so the grid is one resident wave when ``fill`` is the CTAs per SM that registers allow.

``CONFIGS`` holds one configuration per (bits, M bucket); ``LARGE_W`` overrides some of them for weights
of at least ``LARGE_W_ELEMS`` elements (N x K). ``config_for(bits, m, n, k)`` picks between them, from the
tables of the process's GPU (``tables()``).
"""

from __future__ import annotations

from typing import NamedTuple

from .. import tuned
from ..tuned import ACTIVE as _ACTIVE


def bucket(m: int) -> str:
    """M bucket: 1, 2-16, 17-64, 65-256, larger."""
    if m <= 1:
        return "1"
    if m <= 16:
        return "16"
    if m <= 64:
        return "64"
    return "256" if m <= 256 else "large"


# The fastest configuration per (bits, M bucket) of `bench/quant_gemm.py --tune` on an H100 SXM: geometric mean
# over N x K in {28672x8192, 4096x14336, 4096x4096} and the bucket's M values, each candidate timed in-step
# (servesim/kernels/timing.py); bench/results/quant_gemm-h100-*.md has every candidate's time. Why the shapes
# differ: at M = 1 the GEMV streams the weights with CUDA-core FMAs, split so that ``fill`` keeps one resident
# wave; small M splits K to fill the GPU, and SWAP (computing y^T) makes the dequantized tile the wgmma operand
# held in registers; large M is compute-bound and takes big tiles with no split. BLOCK_M 0 = 16/32/64 by M.
_G = {"kernel": "gemm", "GROUP_M": 8, "JOIN": True, "num_stages": 3}
_V = {"kernel": "gemv", "num_warps": 4, "num_stages": 1}
CONFIGS: dict[tuple[int, str], dict] = {
    (4, "1"): {**_V, "BLOCK_N": 128, "fill": 4, "PREFETCH": 1, "XPF": True},
    (4, "16"): {**_G, "BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 4, "fill": 4, "SWAP": True,
                "DEQ": 2},
    (4, "64"): {**_G, "BLOCK_M": 0, "BLOCK_N": 128, "num_warps": 4, "waves": 1, "SWAP": True, "DEQ": 2},
    (4, "256"): {**_G, "BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "waves": 1, "SWAP": True, "DEQ": 3},
    (4, "large"): {**_G, "BLOCK_M": 256, "BLOCK_N": 128, "num_warps": 8, "waves": 0, "SWAP": True},
    (8, "1"): {**_V, "BLOCK_N": 128, "fill": 3, "PREFETCH": 1, "XPF": True},
    (8, "16"): {**_G, "BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "fill": 4, "SWAP": True},
    (8, "64"): {**_G, "BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "waves": 1},
    (8, "256"): {**_G, "BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "waves": 1},
    (8, "large"): {**_G, "BLOCK_M": 128, "BLOCK_N": 256, "num_warps": 8, "waves": 0},
}


# Large weights: N x K >= 2^27 (134M weights; 67 MB of int4 codes, past the 50 MB L2). There wider tiles win:
# the grid has column tiles to spare, so each CTA can stream more of the weight. On the smaller shapes (58.7M and
# 67.1M weights) the same tiles lose, since fewer column tiles force deeper split-K with short splits and a
# heavier epilogue. The threshold lies between the largest shape where the bucket's config still wins (67.1M)
# and 28672x8192 (235M); 2^27 is near their geometric mean. Times: bench/results/quant_gemm-h100-*.md.
LARGE_W_ELEMS = 1 << 27
LARGE_W: dict[tuple[int, str], dict] = {
    (4, "1"): {**_V, "BLOCK_N": 256, "fill": 3, "PREFETCH": 1, "XPF": True},
    (4, "16"): {**_G, "BLOCK_M": 16, "BLOCK_N": 128, "num_warps": 4, "waves": 2, "SWAP": True, "DEQ": 3},
    (4, "256"): {**_G, "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "waves": 1, "SWAP": True, "DEQ": 3},
    (8, "1"): {**_V, "BLOCK_N": 32, "num_warps": 1, "fill": 12, "PREFETCH": 1, "XPF": True},
    (8, "256"): {**_G, "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "waves": 1},
}


class Tables(NamedTuple):
    """One GPU's launch tables."""

    configs: dict[tuple[int, str], dict]
    large_w: dict[tuple[int, str], dict]
    large_w_elems: int


def _decode(table: dict[str, dict]) -> dict[tuple[int, str], dict]:
    """``{"W4/1": cfg}`` (JSON) -> ``{(4, "1"): cfg}``."""
    out = {}
    for name, cfg in table.items():
        bits, bkt = name.removeprefix("W").split("/")
        out[(int(bits), bkt)] = cfg
    return out


def _encode(table: dict[tuple[int, str], dict]) -> dict[str, dict]:
    return {f"W{bits}/{bkt}": cfg for (bits, bkt), cfg in table.items()}


def _build(found: dict | None) -> Tables:
    """The code's tables where the GPU has no section; else the section's entries over them (a sweep of some
    buckets leaves the others as tuned on the H100)."""
    if found is None:
        return Tables(CONFIGS, LARGE_W, LARGE_W_ELEMS)
    return Tables({**CONFIGS, **_decode(found["configs"])}, {**LARGE_W, **_decode(found.get("large_w", {}))},
                  int(found.get("large_w_elems", LARGE_W_ELEMS)))


def tables(device: str | None = None) -> Tables:
    """The launch tables of ``device`` (a key of ``tuned.py``, e.g. ``"h200"``; default: this process's GPU)."""
    return tuned.tables("quant_gemm", _build, device)


def section(t: Tables) -> dict:
    """``t`` as the ``quant_gemm`` section of a configs file (what :func:`tables` reads back)."""
    return {"configs": _encode(t.configs), "large_w": _encode(t.large_w), "large_w_elems": t.large_w_elems}


def config_for(bits: int, m: int, n: int | None = None, k: int | None = None, device: str | None = None) -> dict:
    """The tuned configuration for ``bits``-wide weights, ``m`` activation rows and an ``[n, k]`` weight on
    ``device`` (a ``tuned.py`` key; default: this process's GPU, the H100 tables off CUDA).

    Without ``n`` and ``k`` (or below the large-weight threshold) it is the M bucket's ``configs`` entry;
    at or above, the bucket's ``large_w`` entry where there is one.
    """
    t = None if device else _ACTIVE.get("quant_gemm")
    if t is None:
        t = tuned.tables("quant_gemm", _build, device)
    key = (bits, bucket(m))
    if n is not None and k is not None and n * k >= t.large_w_elems and key in t.large_w:
        return t.large_w[key]
    return t.configs[key]
