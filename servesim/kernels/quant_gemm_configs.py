"""Launch configurations for ``quant_gemm`` per weight width and M bucket, fixed in code.

Chosen by the tuning sweep ``bench/quant_gemm.py --tune`` on an H100 (see ``bench/results``); nothing is
autotuned at start-up. ``waves``: split K until the grid has at least waves x SM-count CTAs.
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


CONFIGS: dict[tuple[int, str], dict] = {
    (4, "1"): dict(kernel="gemv", BLOCK_N=256, num_warps=4, num_stages=1, waves=4),
    (4, "16"): dict(kernel="gemm", BLOCK_M=16, BLOCK_N=128, num_warps=4, num_stages=3, waves=4, JOIN=True),
    (4, "64"): dict(kernel="gemm", BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=3, waves=2, JOIN=True),
    (4, "256"): dict(kernel="gemm", BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, waves=1, JOIN=True),
    (4, "large"): dict(kernel="gemm", BLOCK_M=128, BLOCK_N=256, num_warps=8, num_stages=3, waves=0,
                       JOIN=True),
    (8, "1"): dict(kernel="gemv", BLOCK_N=256, num_warps=4, num_stages=1, waves=4),
    (8, "16"): dict(kernel="gemm", BLOCK_M=16, BLOCK_N=128, num_warps=4, num_stages=3, waves=4, JOIN=True),
    (8, "64"): dict(kernel="gemm", BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=3, waves=2, JOIN=True),
    (8, "256"): dict(kernel="gemm", BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, waves=1, JOIN=True),
    (8, "large"): dict(kernel="gemm", BLOCK_M=128, BLOCK_N=256, num_warps=8, num_stages=3, waves=0,
                       JOIN=True),
}


def config_for(bits: int, m: int) -> dict:
    """The tuned configuration for ``bits``-wide weights and ``m`` activation rows."""
    return CONFIGS[(bits, bucket(m))]
