"""W8A8: dynamic per-token int8 activation quantization and an int8 x int8 GEMM with per-channel weight scales and
per-token activation scales, 16-bit out.

Two kernels, as vLLM runs them (``scaled_int8_quant`` then ``cutlass_scaled_mm``) and as the cost model prices them
(``act_quant_<linear>`` then ``gemm_w8a8``):

* ``_act_quant_kernel``: one program per row: ``amax = max |x|``, ``scale = amax / 127``, ``q = rint(x * 127 /
  amax)`` in [-127, 127] (symmetric; an all-zero row gets scale 0 and codes 0). IEEE division (``div_rn``) and
  round-half-even (the 1.5 * 2^23 trick: adding it leaves the integer part in the mantissa, exact for |v| < 2^22)
  so the codes are those of :func:`act_quant_ref` but where the GPU contracts ``x * inv + C`` into one FMA
  (rounding the exact product instead of the rounded one, a difference of one code at a rounding tie).
* ``_w8a8_gemm_kernel``: ``y = (q_x @ q_w^T) * s_x[:, None] * s_w[None, :] (+ bias)``: int32 accumulation of int8
  products on tensor cores (exact), the two scales and the bias in an fp32 epilogue. Both operands are K-major
  (activations ``[M, K]``, weights ``[N, K]``: int8 MMAs on Hopper take no transposed operand). SWAP computes
  ``y^T = W x^T`` so a small M sits in the MMA's N slot; split K over a second grid axis (the last split sums
  the scaled fp32 partials in a fixed order: ``gemm_common._finish``) fills the GPU at small M.

Weights: int8 ``[N, K]`` codes in [-127, 127] and fp32 ``[N]`` scales, as :func:`quantize.quantize_int8_per_channel`
gives them. Launch configs by M bucket: :data:`CONFIGS` (see there: not tuned on a GPU yet).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import tuned
from ..counters import counters_for, sm_count
from ..tuned import ACTIVE as _ACTIVE
from .configs import bucket
from .gemm import split_for
from .gemm_common import _finish, _tile

ROUND = tl.constexpr(12582912.0)  # 1.5 * 2^23: v + ROUND - ROUND rounds v half to even (|v| < 2^22)
QMAX = 127.0
_QMAX = tl.constexpr(QMAX)  # Triton kernels read only constexpr globals


# ------------------------------------------------------------------------------------------- kernels
@triton.jit
def _act_quant_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, BLOCK_K: tl.constexpr):
    """Row ``pid`` of x -> int8 codes and one fp32 scale; two passes over the row when it is wider than BLOCK_K."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row * stride_xm
    amax = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    m = tl.max(amax, axis=0)
    qmax = m * 0.0 + _QMAX  # a tensor operand: div_rn of older Triton versions takes no constexpr
    inv = tl.where(m > 0, tl.math.div_rn(qmax, tl.maximum(m, 1e-30)), 0.0)
    tl.store(s_ptr + row, tl.math.div_rn(m, qmax))
    for k0 in range(0, K, BLOCK_K):
        mask = k0 + offs < K
        x = tl.load(x_row + k0 + offs, mask=mask, other=0.0).to(tl.float32)
        v = (x * inv + ROUND) - ROUND
        v = tl.minimum(tl.maximum(v, -_QMAX), _QMAX)
        tl.store(q_ptr + row * stride_qm + k0 + offs, v.to(tl.int8), mask=mask)


@triton.jit(do_not_specialize=["M", "SPLIT_K"])
def _w8a8_gemm_kernel(
    a_ptr, sa_ptr, w_ptr, sw_ptr, bias_ptr, y_ptr, ws_ptr, lock_ptr,
    M, N, K, SPLIT_K, stride_am, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SWAP: tl.constexpr,
):
    """One CTA = a [BLOCK_M, BLOCK_N] tile x one K split; int32 accumulator, fp32 scaled epilogue."""
    pid_m, pid_n, grid_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)  # grouped order
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    kb = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(kb, SPLIT_K)
    b0 = pid_k * per_split
    b1 = tl.minimum(b0 + per_split, kb)
    a_rows = a_ptr + offs_m[:, None].to(tl.int64) * stride_am
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn
    if SWAP:  # noqa: SIM108
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for b in range(b0, b1):
        k = b * BLOCK_K + offs_k
        k_ok = (k < K)[None, :]
        a = tl.load(a_rows + k[None, :], mask=m_mask[:, None] & k_ok, other=0)
        w = tl.load(w_rows + k[None, :], mask=n_mask[:, None] & k_ok, other=0)
        # out_dtype int32: tl.dot's default (float32) must match the accumulator, or Triton 3.6 refuses to
        # compile on a GPU (seen on the H200; the interpreter accepts it)
        if SWAP:  # noqa: SIM108 (Triton's JIT resolves this at compile time)
            acc = tl.dot(w, tl.trans(a), acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
    if SWAP:
        acc = tl.trans(acc)
    sa = tl.load(sa_ptr + offs_m, mask=m_mask, other=0.0)
    sw = tl.load(sw_ptr + offs_n, mask=n_mask, other=0.0)
    out = acc.to(tl.float32) * sa[:, None] * sw[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        out += tl.where(pid_k == 0, 1.0, 0.0) * bias[None, :]  # once over the splits
    _finish(out, y_ptr, ws_ptr, lock_ptr, offs_m, offs_n, M, N, stride_ym, pid_m * grid_n + pid_n, pid_k, SPLIT_K)


# ------------------------------------------------------------------------------------------- configs
# Not tuned on a GPU yet (no device this session): shapes from the W8A16 sweep's winners on an H100
# (configs.py) with int8's 128-wide K step. SWAP and split K for decode-sized M, big tiles when compute-bound.
# ``bench/quant_gemm.py --w8a8 --tune`` ranks candidates (w8a8_candidates there) and writes the winners as a configs
# file (tuned.py); another GPU launches with the `w8a8_gemm` section of its configs file where it has one.
_T = {"GROUP_M": 8, "BLOCK_K": 128}
CONFIGS: dict[str, dict] = {
    "1": {**_T, "BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 4, "SWAP": True, "waves": 2},
    "16": {**_T, "BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 4, "SWAP": True, "waves": 2},
    "64": {**_T, "BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 4, "waves": 1},
    "256": {**_T, "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3, "waves": 1},
    "large": {**_T, "BLOCK_M": 128, "BLOCK_N": 256, "num_warps": 8, "num_stages": 3, "waves": 0},
}


def _build(found: dict | None) -> dict[str, dict]:
    return CONFIGS if found is None else {**CONFIGS, **found.get("configs", {})}


def tables(device: str | None = None) -> dict[str, dict]:
    """The launch configs by M bucket of ``device`` (a ``tuned.py`` key; default: this process's GPU): ``CONFIGS``
    on the H100 and on a GPU without a ``w8a8_gemm`` section in its configs file."""
    return tuned.tables("w8a8_gemm", _build, device)


def section(configs: dict[str, dict]) -> dict:
    """``configs`` as the ``w8a8_gemm`` section of a configs file."""
    return {"configs": dict(configs)}


def config_for(m: int, device: str | None = None) -> dict:
    """The launch configuration for ``m`` activation rows on ``device`` (default: this process's GPU)."""
    t = None if device else _ACTIVE.get("w8a8_gemm")
    if t is None:
        t = tables(device)
    return t[bucket(m)]


# ------------------------------------------------------------------------------------------ launchers
def act_quant(x: torch.Tensor, block_k: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 quantization of ``x [..., K]`` (fp16/bf16/fp32): ``(codes int8 [M, K], scales fp32 [M])``
    with M the number of rows of ``x`` flattened."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    s = torch.empty(m, dtype=torch.float32, device=x.device)
    if m:
        bk = min(block_k, triton.next_power_of_2(k))
        _act_quant_kernel[(m,)](x2, q, s, k, x2.stride(0), q.stride(0), BLOCK_K=bk, num_warps=max(1, min(8, bk // 256)))
    return q, s


def int8_scaled_mm(q_x: torch.Tensor, s_x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor,
                   out_dtype: torch.dtype = torch.bfloat16, bias: torch.Tensor | None = None,
                   config: dict | None = None, counters=None) -> torch.Tensor:
    """``(q_x @ q_w^T) * s_x[:, None] * s_w[None, :] (+ bias)`` in ``out_dtype``.

    q_x: int8 ``[M, K]``; s_x: fp32 ``[M]``; q_w: int8 ``[N, K]`` (K contiguous); s_w: fp32 ``[N]``; bias ``[N]``.
    ``config`` defaults to :func:`config_for` (M); ``counters`` (:class:`~servesim.kernels.counters.SplitCounters`)
    saves zeroing fresh split-K counters.
    """
    m, k = q_x.shape
    n, kw = q_w.shape
    if q_x.dtype != torch.int8 or q_w.dtype != torch.int8:
        raise ValueError(f"int8_scaled_mm takes int8 codes, got {q_x.dtype} and {q_w.dtype}")
    if kw != k:
        raise ValueError(f"activations have {k} features, the weight {kw}")
    if q_x.stride(-1) != 1 or q_w.stride(-1) != 1:
        raise ValueError("activation and weight codes must be K-contiguous")
    if tuple(s_x.shape) != (m,) or tuple(s_w.shape) != (n,):
        raise ValueError(f"scales must be [{m}] and [{n}], got {tuple(s_x.shape)} and {tuple(s_w.shape)}")
    cfg = config or config_for(m)
    y = torch.empty((m, n), dtype=out_dtype, device=q_x.device)
    if m == 0:
        return y
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    kb = triton.cdiv(k, bk)
    split = split_for(tiles, kb, cfg, sm_count(q_x.device))
    ws = torch.empty((split, m, n), dtype=torch.float32, device=q_x.device) if split > 1 else y
    locks = counters_for(counters, q_x.device, tiles) if split > 1 else torch.empty(1, dtype=torch.int32,
                                                                                     device=q_x.device)
    _w8a8_gemm_kernel[(tiles, split)](
        q_x, s_x, q_w, s_w, bias if bias is not None else s_w, y, ws, locks, m, n, k, split, q_x.stride(0),
        q_w.stride(0), y.stride(0), HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        GROUP_M=cfg.get("GROUP_M", 8), SWAP=cfg.get("SWAP", False), num_warps=cfg["num_warps"],
        num_stages=cfg.get("num_stages", 3))
    return y


def w8a8_matmul(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None,
                config: dict | None = None, counters=None) -> torch.Tensor:
    """``x [..., K]`` (fp16/bf16) through a W8A8 linear: per-token quantization, then :func:`int8_scaled_mm`;
    ``[..., N]`` in ``x.dtype``."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"w8a8_matmul takes float16 or bfloat16 activations, got {x.dtype}")
    q_x, s_x = act_quant(x)
    y = int8_scaled_mm(q_x, s_x, q_w, s_w, x.dtype, bias, config, counters)
    return y.reshape(*x.shape[:-1], q_w.shape[0])


# ----------------------------------------------------------------------------------------- references
def act_quant_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`act_quant`: symmetric per-row int8 codes (round half to even) and fp32 scales."""
    xf = x.reshape(-1, x.shape[-1]).float()
    amax = xf.abs().amax(dim=1)
    inv = torch.where(amax > 0, QMAX / amax.clamp_min(1e-30), torch.zeros_like(amax))
    q = torch.round(xf * inv[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, amax / QMAX


def int8_scaled_mm_ref(q_x, s_x, q_w, s_w, out_dtype=torch.bfloat16, bias=None) -> torch.Tensor:
    """Reference for :func:`int8_scaled_mm`: the exact integer product (in float64, exact below 2^53), scaled in
    fp32."""
    acc = q_x.double() @ q_w.double().t()
    y = acc.float() * s_x[:, None] * s_w[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def w8a8_ref(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference for :func:`w8a8_matmul`: quantize per token, multiply, scale; ``x.dtype`` out."""
    q_x, s_x = act_quant_ref(x)
    y = int8_scaled_mm_ref(q_x, s_x, q_w, s_w, x.dtype, bias)
    return y.reshape(*x.shape[:-1], q_w.shape[0])


def fake_quant_per_token(x: torch.Tensor) -> torch.Tensor:
    """``x`` quantized per token and dequantized (fp32): what a W8A8 GEMM sees of its input, for the CPU engine."""
    q, s = act_quant_ref(x)
    return (q.float() * s[:, None]).reshape(x.shape)


# ----------------------------------------------------------------------------------------- flops/bytes
def act_quant_bytes(m: int, k: int, act_bytes: int = 2) -> int:
    """DRAM bytes of :func:`act_quant`: the row read once, int8 codes and one fp32 scale per row written."""
    return m * k * act_bytes + m * k + 4 * m


def w8a8_gemm_bytes(m: int, n: int, k: int, out_bytes: int = 2) -> int:
    """Fewest DRAM bytes of :func:`int8_scaled_mm`: int8 codes in, both scale vectors, the output."""
    return n * k + m * k + 4 * (m + n) + m * n * out_bytes
