"""Launch configurations for ``quant_gemm`` per weight width and M bucket, fixed in code.

Chosen by the tuning sweep ``bench/quant_gemm.py --tune`` on an H100 (see ``bench/results``); nothing is
autotuned at start-up. ``waves``: split K (powers of two) until the grid has at least waves x SM-count
CTAs; ``fill`` (takes precedence): the largest split with at most fill x SM-count CTAs, any integer, so
the grid is one resident wave when ``fill`` is the CTAs per SM that registers allow.

``CONFIGS`` holds one configuration per (bits, M bucket); ``LARGE_W`` overrides some of them for weights
of at least ``LARGE_W_ELEMS`` elements (N x K). ``config_for(bits, m, n, k)`` picks between them.
"""

from __future__ import annotations

BUCKETS = ("1", "16", "64", "256", "large")


def bucket(m: int) -> str:
    """M bucket: 1, 2-16, 17-64, 65-256, larger."""
    if m <= 1:
        return "1"
    if m <= 16:
        return "16"
    if m <= 64:
        return "64"
    return "256" if m <= 256 else "large"


# Tuned on an H100 80GB HBM3 (torch 2.11, Triton 3.6), 2026-11-27, by `python3 bench/quant_gemm.py --tune`
# (rounds 3 and 4): fastest geometric mean over N x K in {28672x8192, 4096x14336, 4096x4096} and the bucket's
# M values (1 | 4, 16 | 32, 64 | 128, 256 | 1024), each candidate timed in-step (back to back with a 256 MB read
# in one CUDA graph; servesim/kernels/timing.py). BLOCK_M 0 = 16/32/64 by M (in round 2 BLOCK_M 32 won at M = 32 and 64
# at M = 64). Round 3 changed W4/16 (fill 4 + 4 stages, 24.0 vs 24.2 us), W4/256 (DEQ 3, 72.0 vs 75.0), W8/1
# (BLOCK_N 128 fill 3 + x prefetch, 29.5 vs 30.0), W8/16 (fill 4, tie); round 4 W4/1 (fill 4, 19.4 vs 19.5).
# Results and every candidate's times: bench/results/quant_gemm-h100-80gb-hbm3-2026-11-27-round{3,4}.*.
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


# Large weights: N x K >= 2^27 (134M weights; 67 MB of int4 codes, past the 50 MB L2). The round-3 sweep
# (in-step, H100) timed every candidate on 28672x8192 (235M weights), 4096x14336 (58.7M) and 4096x4096
# (16.8M); the other bench shapes have 58.7M and 67.1M. On 28672x8192 wider tiles win, on the two smaller
# shapes they lose (fewer column tiles, so deeper split-K with short splits and a heavier epilogue), in us:
#   W4 M=1    GEMV BLOCK_N 256 fill 3          48.1 vs 50.6  (18.0 vs 16.7, 9.3 vs 8.9)   3.3x cuBLAS = 48.8
#   W8 M=1    GEMV BLOCK_N 64 waves 8 PF 2     83.6 vs 85.3  (29.6 vs 26.3, 13.6 vs 11.4)
#   W4 M=4,16 BLOCK_N 128 waves 2              60.8, 62.1 vs 63.6, 65.0  (22.4, 25.4 vs 19.8, 20.9)
#   W4 M=128,256 128x128, 8 warps, DEQ 3       134.2, 258.3 vs 151.6, 289.1  (59.3, 81.7 vs 48.5, 77.7)
#   W8 M=128,256 128x128, 8 warps              181.0, 355.3 vs 212.0, 413.7  (71.5, 101.6 vs 60.3, 101.7)
# The threshold lies between 67.1M (where the 58.7M evidence says the bucket's config still wins) and
# 235M; 2^27 is near their geometric mean (125M). Round 4 re-ranked these on 28672x8192 alone (in-step, after
# the paired-word dequantization): W4 M=1 BLOCK_N 256 fill 3 kept (47.9 us), W4 M=2-16 took DEQ 3 (54.6 vs
# 59.6), W8 M=1 took a 1-warp BLOCK_N 32 GEMV at 12 CTAs per SM (80.8 vs 83.5); M=65-256 kept 128x128.
LARGE_W_ELEMS = 1 << 27
LARGE_W: dict[tuple[int, str], dict] = {
    (4, "1"): {**_V, "BLOCK_N": 256, "fill": 3, "PREFETCH": 1, "XPF": True},
    (4, "16"): {**_G, "BLOCK_M": 16, "BLOCK_N": 128, "num_warps": 4, "waves": 2, "SWAP": True, "DEQ": 3},
    (4, "256"): {**_G, "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "waves": 1, "SWAP": True, "DEQ": 3},
    (8, "1"): {**_V, "BLOCK_N": 32, "num_warps": 1, "fill": 12, "PREFETCH": 1, "XPF": True},
    (8, "256"): {**_G, "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "waves": 1},
}


def config_for(bits: int, m: int, n: int | None = None, k: int | None = None) -> dict:
    """The tuned configuration for ``bits``-wide weights, ``m`` activation rows and an ``[n, k]`` weight.

    Without ``n`` and ``k`` (or below ``LARGE_W_ELEMS`` weights) it is the M bucket's ``CONFIGS`` entry;
    at or above, the bucket's ``LARGE_W`` entry where there is one.
    """
    key = (bits, bucket(m))
    if n is not None and k is not None and n * k >= LARGE_W_ELEMS and key in LARGE_W:
        return LARGE_W[key]
    return CONFIGS[key]
