"""Sampling pieces of the speculative verification kernels (``spec.py``): the race noise and the exact
two-level race (a span of ``SPAN`` tokens drawn by a Gumbel-max race on its summed weight, then a token within
it). The NumPy reference of every step is in ``ref.py``, which the tests compare bit for bit."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import ref as spec_ref

_BIG = tl.constexpr(2**31 - 1)
_ONE_HI = tl.constexpr(1 << 32)  # Philox counter (c0, c1) = (offset low, offset high word)
_G, _M1, _M2 = tl.constexpr(spec_ref.HASH_G), tl.constexpr(spec_ref.HASH_M1), tl.constexpr(spec_ref.HASH_M2)
_C1, _C2, _C3, _C4, _C5 = (tl.constexpr(c) for c in spec_ref.SERIES)
_SPAN = tl.constexpr(spec_ref.SPAN)


@triton.jit
def _row_keys(seed, j):
    """Hash keys (k1, k2, k3, k4) of position j: the lanes of Philox counter (j, 1) under the seed (scalars)."""
    offs = (tl.arange(0, 1) + j).to(tl.int64) + _ONE_HI
    k1, k2, k3, k4 = tl.randint4x(seed, offs)
    return tl.max(k1, 0), tl.max(k2, 0), tl.max(k3, 0), tl.max(k4, 0)


@triton.jit
def _mix(x, k2):
    """32-bit counter-based hash (ref.mix32): two multiplies, key k2 injected mid-way; a bijection of x."""
    x ^= x >> 16
    x *= _M1
    x ^= (x >> 15) ^ k2
    x *= _M2
    return x ^ (x >> 15)


@triton.jit
def _log2(x, FAST: tl.constexpr):
    """log2 (FAST: the GPU's lg2.approx, error ~1e-7; the interpreter has no libdevice)."""
    if FAST:
        return libdevice.fast_log2f(x)
    else:
        return tl.log2(x)


@triton.jit
def _gumbel_log2(idx, ka, kb, FAST: tl.constexpr):
    """log2 E2 (E2 = E / ln 2, E ~ Exp(1)) of indices idx under keys (ka, kb): h = _mix(ka + idx * G, kb),
    w = (h + 0.5) / 2**32, E2 = -log2(1 - w), by a series below w = 1/32 so that small E keep their relative
    precision. Only the final races use it (a few hundred draws per sequence)."""
    w = _mix(ka + idx.to(tl.uint32) * _G, kb).to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
    poly = w * (_C1 + w * (_C2 + w * (_C3 + w * (_C4 + w * _C5))))
    return _log2(tl.where(w < 0.03125, poly, -_log2(1.0 - w, FAST)), FAST)


@triton.jit
def _argmax(key, idx):
    """Index of the max key, lowest index on ties (all -inf: the lowest index)."""
    return tl.min(tl.where(key == tl.max(key, 0), idx, _BIG), 0)


@triton.jit
def _keep(key, start, best, best_start):
    """Per-lane running winner, as (key, block start): a lane sees increasing tokens, so strict > keeps the
    lowest on ties; the token is best_start + lane, recovered once at the end."""
    upd = key > best
    return tl.where(upd, key, best), tl.where(upd, start, best_start)


@triton.jit
def _residual(y, q, scale, m, inv_s):
    """max(0, p - q) with p = 2^(y * scale - m) / s (a -inf logit: p = 0)."""
    return tl.maximum(tl.exp2(y * scale - m) * inv_s - q, 0.0)


@triton.jit
def _span_race(w_ptr, n_span, k3, k4, LOG_W: tl.constexpr, NSP: tl.constexpr, FAST: tl.constexpr):
    """First level: the span of max log2 W_g - log2 E2_g (W_g: log2 given if LOG_W), and max W_g. ``.cg``: the
    weights of other programs are read from L2 (L1 is not coherent across SMs)."""
    g = tl.arange(0, NSP)
    ok = g < n_span
    w = tl.load(w_ptr + g, mask=ok, other=0.0, cache_modifier=".cg")
    lw = w if LOG_W else _log2(w, FAST)
    key = tl.where(ok, lw - _gumbel_log2(g, k3, k4, FAST), float("-inf"))
    return _argmax(key, g), tl.max(tl.where(ok, w, float("-inf")), 0)


@triton.jit
def _token_race(base, qbase, g, V, m, inv_s, scale, k1, k2, RESID: tl.constexpr, FAST: tl.constexpr):
    """Second level: the token of max log2 w_v - log2 E2_v within span g (w: 2^y, or max(0, p - q) if RESID)."""
    v = g * _SPAN + tl.arange(0, _SPAN)
    ok = v < V
    y = tl.load(base + v, mask=ok, other=float("-inf")).to(tl.float32)
    if RESID:
        lw = _log2(_residual(y, tl.load(qbase + v, mask=ok, other=0.0).to(tl.float32), scale, m, inv_s), FAST)
    else:
        lw = y * scale
    return _argmax(tl.where(ok, lw - _gumbel_log2(v, k1, k2, FAST), float("-inf")), v)


@triton.jit
def _p_race(base, V, m, inv_s, scale, k1, k2, FAST: tl.constexpr):
    """Fallback when max(0, p - q) is all zero (only rounding allows it): a one-level race on p over the whole
    row, in one program (slow, and as good as never taken)."""
    lane = tl.arange(0, _SPAN)
    best = tl.full([_SPAN], float("-inf"), tl.float32)
    best_start = tl.zeros([_SPAN], tl.int32)
    for start in range(0, V, _SPAN):
        v = start + lane
        y = tl.load(base + v, mask=v < V, other=float("-inf")).to(tl.float32)
        key = _log2(tl.exp2(y * scale - m) * inv_s, FAST) - _gumbel_log2(v, k1, k2, FAST)
        best, best_start = _keep(tl.where(v < V, key, float("-inf")), start, best, best_start)
    return _argmax(best, best_start + lane)
