"""The engine's elementwise kernels: RMSNorm (with the residual add fused in), rotary embedding, SiLU-and-mul.

Each is one pass over its rows: a token's hidden state is read once and written once, so at decode batch
sizes a kernel costs its launch and at prefill sizes its bytes. Numerics follow HuggingFace's Llama modules
(statistics in float32, results rounded to the activation dtype where HF rounds), so the engine's logits match
``transformers`` within bf16 rounding. Each kernel has a torch reference (``*_ref``) and a bytes helper the
roofline and calibration reuse.

* :func:`rms_norm` -- ``y = x / rms(x) * w``; with ``residual`` given, ``r = x + residual`` is written back
  into ``residual`` first and normalised (vLLM's fused add-norm), so a decoder layer needs two norm launches.
* :func:`rotary` -- rotates q and k in place (the "rotate half" layout of HF Llama: pairs ``(i, i + D/2)``),
  reading cos/sin from a float32 ``[max_positions, D/2]`` table by each token's position.
* :func:`silu_mul` -- ``silu(g) * u`` of a fused ``[T, 2I]`` gate/up projection.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, y_ptr, stride_x, stride_r, stride_y, n, eps,
                     HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RES:
        # HF adds in the activation dtype: round the sum before normalising it, and keep it as the residual.
        x = (x.to(tl.float32) + tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32))
        x = x.to(res_ptr.dtype.element_ty)
        tl.store(res_ptr + row * stride_r + offs, x, mask=mask)
    xf = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / n + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # arithmetic in float32, rounded where HF's bf16 tensors round (exact products round once either way)
    y = w * (xf * inv).to(y_ptr.dtype.element_ty).to(tl.float32)
    tl.store(y_ptr + row * stride_y + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, pos_ptr, cos_ptr, sin_ptr, stride_qt, stride_qh, stride_kt, stride_kh,
                   stride_c, num_q_heads, num_kv_heads, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, HALF)
    cos = tl.load(cos_ptr + pos * stride_c + d)[None, :].to(q_ptr.dtype.element_ty).to(tl.float32)
    sin = tl.load(sin_ptr + pos * stride_c + d)[None, :].to(q_ptr.dtype.element_ty).to(tl.float32)
    h = tl.arange(0, BLOCK_H)[:, None]
    for which in tl.static_range(2):
        if which == 0:
            base, sh, nh = q_ptr + t * stride_qt, stride_qh, num_q_heads
        else:
            base, sh, nh = k_ptr + t * stride_kt, stride_kh, num_kv_heads
        mask = h < nh
        p1 = base + h * sh + d[None, :]
        x1 = tl.load(p1, mask=mask, other=0.0)
        x2 = tl.load(p1 + HALF, mask=mask, other=0.0)
        # HF: q * cos + rotate_half(q) * sin with cos/sin and each product rounded to the activation dtype.
        a1, b1 = (x1.to(tl.float32) * cos).to(x1.dtype), (x2.to(tl.float32) * sin).to(x1.dtype)
        a2, b2 = (x2.to(tl.float32) * cos).to(x1.dtype), (x1.to(tl.float32) * sin).to(x1.dtype)
        y1 = (a1.to(tl.float32) - b1.to(tl.float32)).to(x1.dtype)
        y2 = (a2.to(tl.float32) + b2.to(tl.float32)).to(x1.dtype)
        tl.store(p1, y1, mask=mask)
        tl.store(p1 + HALF, y2, mask=mask)


@triton.jit
def _silu_mul_kernel(gu_ptr, y_ptr, stride_g, stride_y, n, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(gu_ptr + row * stride_g + offs, mask=mask, other=0.0)
    u = tl.load(gu_ptr + row * stride_g + n + offs, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # HF rounds silu(g) before the product
    tl.store(y_ptr + row * stride_y + offs, (act.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=mask)


def _rows(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"{name} must be 2-D [rows, features] with contiguous features, got {tuple(x.shape)} "
                         f"strides {x.stride()}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of ``x [T, H]`` by ``weight [H]``; with ``residual`` (``[T, H]``, updated in place to
    ``x + residual``) the sum is normalised. Returns ``out`` (allocated when None)."""
    _rows(x, "x")
    if weight.shape != (x.shape[1],):
        raise ValueError(f"weight must be [{x.shape[1]}], got {tuple(weight.shape)}")
    if residual is not None:
        _rows(residual, "residual")
        if residual.shape != x.shape:
            raise ValueError(f"residual {tuple(residual.shape)} must match x {tuple(x.shape)}")
    out = torch.empty_like(x) if out is None else out
    if x.shape[0]:
        res = residual if residual is not None else x
        _rms_norm_kernel[(x.shape[0],)](x, res, weight, out, x.stride(0), res.stride(0), out.stride(0),
                                        x.shape[1], eps, HAS_RES=residual is not None,
                                        BLOCK=triton.next_power_of_2(x.shape[1]), num_warps=_warps(x.shape[1]))
    return out


def rms_norm_ref(x, weight, eps: float, residual=None) -> torch.Tensor:
    """HF ``LlamaRMSNorm`` (after HF's residual add, in ``x``'s dtype, written into ``residual``)."""
    if residual is not None:
        residual.copy_(x + residual)
        x = residual
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate ``q [T, Hq, D]`` and ``k [T, Hkv, D]`` in place by the angles of ``positions`` (int ``[T]``);
    ``cos``/``sin`` are float32 ``[max_positions, D/2]`` (:func:`rope_tables`)."""
    for name, x in (("q", q), ("k", k)):
        if x.dim() != 3 or x.stride(2) != 1:
            raise ValueError(f"{name} must be [T, heads, head_dim] with contiguous head_dim, got {tuple(x.shape)}")
    half = q.shape[2] // 2
    if k.shape[2] != q.shape[2] or cos.shape[1] != half or k.shape[0] != q.shape[0] != positions.shape[0]:
        raise ValueError(f"rotary shapes disagree: q {tuple(q.shape)} k {tuple(k.shape)} positions "
                         f"{tuple(positions.shape)} cos {tuple(cos.shape)}")
    if q.shape[0]:
        _rotary_kernel[(q.shape[0],)](q, k, positions, cos, sin, q.stride(0), q.stride(1), k.stride(0),
                                      k.stride(1), cos.stride(0), q.shape[1], k.shape[1], HALF=half,
                                      BLOCK_H=triton.next_power_of_2(max(q.shape[1], k.shape[1])), num_warps=4)


def rotary_ref(q, k, positions, cos, sin) -> None:
    """HF ``apply_rotary_pos_emb`` (rotate half), in place."""
    c = cos[positions.long()].to(q.dtype)
    s = sin[positions.long()].to(q.dtype)
    c, s = torch.cat([c, c], -1)[:, None, :], torch.cat([s, s], -1)[:, None, :]
    for x in (q, k):
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        x.copy_(x * c + rot * s)


def silu_mul(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(gate) * up`` of ``gate_up [T, 2I]`` (gate first); returns ``[T, I]``."""
    _rows(gate_up, "gate_up")
    n = gate_up.shape[1] // 2
    out = torch.empty((gate_up.shape[0], n), dtype=gate_up.dtype, device=gate_up.device) if out is None else out
    if gate_up.shape[0]:
        block = min(4096, triton.next_power_of_2(n))
        _silu_mul_kernel[(gate_up.shape[0], triton.cdiv(n, block))](gate_up, out, gate_up.stride(0), out.stride(0),
                                                                    n, BLOCK=block, num_warps=_warps(block))
    return out


def silu_mul_ref(gate_up) -> torch.Tensor:
    """HF ``act_fn(gate_proj(x)) * up_proj(x)`` from the fused projection."""
    n = gate_up.shape[-1] // 2
    return torch.nn.functional.silu(gate_up[..., :n]) * gate_up[..., n:]


def _warps(n: int) -> int:
    return max(1, min(16, triton.next_power_of_2(n) // 512))


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies ``theta^(-2i/D)``, with Llama-3's long-context scaling when ``scaling`` is
    ``{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}``
    (low frequencies divided by ``factor``, high ones kept, a smooth blend between)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # as HF
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = ((old / wavelen) - low) / (high - low)
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        mid = (wavelen <= old / low) & (wavelen >= old / high)
        inv = torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif kind not in (None, "default"):
        raise ValueError(f"rope scaling {kind!r} is not supported (default and llama3 are)")
    return inv.float()


def rope_tables(head_dim: int, max_positions: int, theta: float, scaling: dict | None = None,
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``cos``/``sin`` tables ``[max_positions, head_dim/2]`` (HF computes the angles in float32)."""
    inv = rope_inv_freq(head_dim, theta, scaling).to(device)
    angles = torch.arange(max_positions, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cos(angles), torch.sin(angles)


def rms_norm_bytes(tokens: int, hidden: int, residual: bool, dtype_bytes: int = 2) -> int:
    """Bytes of :func:`rms_norm`: x read and y written (and the residual read and written)."""
    return tokens * hidden * dtype_bytes * (4 if residual else 2)


def rotary_bytes(tokens: int, num_q_heads: int, num_kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> int:
    """Bytes of :func:`rotary`: q and k read and written once (the table rows are negligible)."""
    return 2 * tokens * (num_q_heads + num_kv_heads) * head_dim * dtype_bytes


def silu_mul_bytes(tokens: int, intermediate: int, dtype_bytes: int = 2) -> int:
    """Bytes of :func:`silu_mul`: gate and up read, the product written."""
    return 3 * tokens * intermediate * dtype_bytes
