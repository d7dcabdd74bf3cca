"""The launch load of the project's quantized GEMMs over M: where their time steps between grid points.

``quant_matmul`` launches ``cdiv(M, BLOCK_M) x cdiv(N, BLOCK_N)`` tiles, each split over K (``waves``/``fill``
of the M bucket's config), and an SM runs one CTA of these tile shapes at a time, so its time is about the
waves of CTAs times the work of one CTA (its rows times its K blocks). That load is a step function of M whose
steps the grid's points straddle (W4A16 at N 4096, K 14336: M = 257 to 1024 is one wave of 256-row CTAs,
M = 1,254 two): the cost model spreads a segment's rise over the load's steps instead of over M
(``hwmodels.calibrated.staircase``). Calibration stores the load in each such table (``OpTable.launch_load``),
since the cost model reads no kernel tables.
"""

from __future__ import annotations

import math

from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.profile import OpTable

BITS = {"w4a16": 4, "w8a16": 8}  # the formats our own kernels serve (bf16: cuBLAS, no launch model)


def gemm_launch_load(bits: int, m: int, n: int, k: int, device: str, sms: int) -> float:
    """Waves of CTAs x rows x K blocks per CTA of ``quant_matmul`` at ``m`` rows (``device``'s launch tables)."""
    from servesim.kernels.quant.configs import config_for
    from servesim.kernels.quant.gemm import row_block, split_for  # the launcher's own rules

    cfg = config_for(bits, m, n, k, device=device)
    kb = k // 128
    bm = row_block(m, cfg)
    tiles = -(-m // bm) * -(-n // cfg["BLOCK_N"])
    split = split_for(tiles, kb, cfg, sms)
    return math.ceil(tiles * split / sms) * bm * -(-kb // split)


def launch_runs(key: dict, m_max: int, device: str, sms: int) -> tuple[tuple[float, float], ...]:
    """The load of the GEMM table ``key`` over M = 1 .. ``m_max`` as (first M, load) runs (``OpTable.launch_load``)."""
    bits, n, k = BITS[key["format"]], int(key["n"]), int(key["k"])
    runs: list[tuple[float, float]] = []
    for m in range(1, m_max + 1):
        load = float(gemm_launch_load(bits, m, n, k, device, sms))
        if not runs or runs[-1][1] != load:
            runs.append((float(m), load))
    return tuple(runs)


def with_launch_loads(tables, gpu_name: str, sms: int | None = None) -> list[OpTable]:
    """``tables`` with the launch load of each of our quantized GEMMs (those without one) on the GPU named
    ``gpu_name`` (the CUDA device name; a CPU calibration, whose kernels ran interpreted, gets none) with ``sms``
    SMs (default: the catalog's figure for that GPU; calibration passes the device's own count)."""
    if gpu_name == "cpu":
        return list(tables)
    from servesim.kernels.tuned import device_key

    sms = sms or get_gpu(gpu_name.replace("NVIDIA ", "").strip()).sm_count
    device = device_key(gpu_name)
    return [t.model_copy(update={"launch_load": launch_runs(t.key, int(t.grid[0][-1]), device, sms)})
            if t.op == "gemm" and t.key.get("format") in BITS and not t.launch_load else t for t in tables]
