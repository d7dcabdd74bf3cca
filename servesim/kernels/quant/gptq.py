"""GPTQ (Frantar et al., 2022, arXiv:2210.17323): quantize a linear layer's weight one input column at a time,
feeding each column's rounding error back into the columns not yet quantized.

For ``y = x W^T`` and calibration inputs ``X [n, K]``, a weight change ``dW`` changes the output by
``||X dW^T||^2 = sum_rows dW_r H dW_r^T`` with ``H = X^T X``: every output row sees the same quadratic form. After
column j is rounded (error ``e = w_j - q_j``), the change to the columns still free that minimises that form is
``-e / [H^-1]_jj * [H^-1]_{j, j+1:}`` (optimal brain surgeon); with the rows of the upper Cholesky factor of
``H^-1`` in place of ``H^-1`` the update of each step needs no re-inversion. Columns go in blocks of ``block_size``,
updates to later blocks applied once per block (one matmul), as in the reference implementation.

Grids, in the formats the kernels load: int4 asymmetric per group of ``group_size`` inputs (scale and zero from
the group's weights *after* the errors of earlier columns were fed in, taken when its first column is reached;
the scale rounded up to bf16 as RTN's), or int8 symmetric per output channel (scale fixed from the row). With
``act_order`` the columns go in order of decreasing ``H_jj`` (inputs with most energy first, while most columns
can still absorb their error); groups then stay contiguous ranges of k (their scales and zeros from the original
weights, "static groups"), so the packed format is unchanged. ``damp`` adds ``damp * mean(diag H)`` to the
diagonal; inputs never active (``H_jj = 0``) get weight 0 (they never change the output).
"""

from __future__ import annotations

import torch

from .quantize import _check_weight, int4_group_params, quantize_int4_with


def hessian(x: torch.Tensor) -> torch.Tensor:
    """``2/n X^T X`` (fp32 ``[K, K]``) of calibration inputs ``x [..., K]``."""
    xf = x.reshape(-1, x.shape[-1]).float()
    return 2.0 / xf.shape[0] * (xf.t() @ xf)


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int = 4, group_size: int = 128, act_order: bool = False,
                  damp: float = 0.01, block_size: int = 128, scale_dtype: torch.dtype = torch.bfloat16):
    """Quantize ``w [N, K]`` against the Hessian ``h [K, K]`` (:func:`hessian`).

    Returns what the RTN quantizer of the same grid returns: ``(q uint8 [N, K], scales [N, G], zeros [N, G])`` as
    :func:`~servesim.kernels.quant.quantize.quantize_int4_groupwise` for ``bits=4``, ``(q int8 [N, K], scale fp32
    [N])`` as :func:`~servesim.kernels.quant.quantize.quantize_int8_per_channel` for ``bits=8``.
    """
    _check_weight(w)
    n, k = w.shape
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if tuple(h.shape) != (k, k):
        raise ValueError(f"Hessian has shape {tuple(h.shape)}, expected ({k}, {k}) for in_features {k}")
    if bits == 4 and k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of group_size {group_size}")
    if bits == 4 and block_size % group_size:
        raise ValueError(f"block_size {block_size} is not a multiple of group_size {group_size}")
    W = w.float().clone()
    H = h.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if bits == 8:
        scale = W.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    else:
        g = k // group_size
        scales = torch.empty((n, g), dtype=scale_dtype, device=w.device)
        zeros = torch.empty((n, g), dtype=torch.float32, device=w.device)
        if act_order:  # static groups: contiguous k ranges, params from the original weights
            scales, zeros = int4_group_params(W.reshape(n, g, group_size), scale_dtype)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k, device=w.device)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.diag(H).mean() * torch.eye(k, device=H.device, dtype=H.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1, E1 = W[:, i1:i2].clone(), torch.zeros((n, i2 - i1), device=W.device)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            wc = W1[:, i]
            if bits == 8:
                qc = torch.round(wc / scale).clamp_(-127, 127)
                deq = qc * scale
            else:
                gi = col // group_size
                if not act_order and col % group_size == 0:  # the group's grid from its updated weights
                    scales[:, gi], zeros[:, gi] = int4_group_params(W1[:, i:i + group_size], scale_dtype)
                s, z = scales[:, gi].float(), zeros[:, gi]
                qc = quantize_int4_with(wc, s, z)
                deq = (qc - z) * s
            Q[:, i1 + i] = qc
            d = hinv[i1 + i, i1 + i]
            err = (wc - deq) / d
            W1[:, i:] -= err[:, None] * hinv[i1 + i, i1 + i:i2][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ hinv[i1:i2, i2:]
    Q = Q[:, torch.argsort(perm)]
    if bits == 8:
        return Q.to(torch.int8), scale
    return Q.to(torch.uint8), scales, zeros.to(scale_dtype)
