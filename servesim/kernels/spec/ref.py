"""Reference of the speculative-verification kernel (``spec.py``): its random numbers and the rule in torch.

Sampling is two-level, so that the kernel's pass over the vocabulary needs no per-token random numbers:
the vocabulary is cut into fixed spans of ``SPAN`` tokens (``[g * SPAN, (g + 1) * SPAN)``, the last one
padded); a span is drawn with probability proportional to its weight ``W_g`` (sum of the token weights
``w_v`` over the span: ``2^y`` for the bonus token, ``max(0, p - q)`` for the recovered one), then a token
within that span with probability ``w_v / W_g``; so token ``v`` has probability ``w_v / sum(w)`` exactly.
Both draws are Gumbel-max races in log2 units: ``argmax(log2 w - log2 E2)`` with ``E2 = E / ln 2``,
``E ~ Exp(1)``. The kernel's pass only sums weights per span; the two small races run once per sequence.

The kernel's randomness, reproduced bit for bit in NumPy (uint32 arithmetic wraps like the GPU's):

* acceptance uniform of position ``j``: top 24 bits of lane 0 of Philox4x32-10 counter ``(j, 0)`` under the
  sequence's seed (``tl.randint4x``), a few draws per sequence;
* the race noise of position ``j``: a counter-based 32-bit hash. Position ``j`` gets four keys
  ``(k1, k2, k3, k4)`` = the lanes of Philox counter ``(j, 1)``; token ``v`` gets ``mix(k1 + v * G, k2)``
  and span ``g`` gets ``mix(k3 + g * G, k4)``, where ``G = 0x61C88647`` (a Weyl sequence, so consecutive
  indices differ in many bits) and ``mix`` is ``x ^= x >> 16; x *= 0x21F0AAAD; x ^= (x >> 15) ^ key;
  x *= 0x735A2D97; x ^= x >> 15`` (the low-bias 2-multiply finaliser of Wellons' hash-prospector, with the
  key injected mid-way so that two positions' noise is never a shifted copy of the other's). It is a
  bijection of the index for fixed keys, so no two tokens (spans) of a row share a draw. Its uniformity
  and independence are tested in ``tests/test_kernels_spec.py`` (chi-square on bits, pairs of neighbours
  in token, position and seed, and on Gumbel-max outcomes over consecutive seeds).
* the 32 bits become ``w = (h + 1/2) / 2**32`` and ``E2 = -log2(1 - w) = E / ln 2`` with ``E ~ Exp(1)``;
  below ``w = 1/32`` a series, so tiny ``E`` (which decide whether rare tokens win) keep their relative
  precision. The races only compare, so the constant ``1 / ln 2`` changes no outcome.
"""


from __future__ import annotations

import math

import numpy as np
import torch

LOG2E = 1.4426950408889634
HASH_G, HASH_M1, HASH_M2 = 0x61C88647, 0x21F0AAAD, 0x735A2D97
_M32 = np.uint64(0xFFFFFFFF)
_SERIES_W = 0.03125  # below this w, E2 from its series (the log of 1 - w would lose relative precision)
SERIES = tuple(1.0 / (n * math.log(2.0)) for n in range(1, 6))  # E2 = w * (c1 + w * (c2 + ...))
SPAN = 128  # tokens per span of the two-level sampling (part of the recipe: changing it changes samples)


def scale_log2(temperature: float) -> float:
    """log2(e) / T rounded once to float32 (1 for greedy): kernel and reference multiply by this number."""
    return 1.0 if temperature == 0 else float(np.float32(LOG2E / temperature))


def philox4x32(seeds: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> tuple[np.ndarray, ...]:
    """Philox4x32-10 of counters (c0, c1, 0, 0) under key = seed, as ``tl.randint4x``: four uint32 lanes.

    ``seeds`` (int64) broadcasts against ``c0``/``c1``; NumPy's uint64 products are exact for 32-bit inputs.
    """
    key = np.asarray(seeds).astype(np.int64).astype(np.uint64)
    c0, c1, key = np.broadcast_arrays(np.asarray(c0, dtype=np.uint64) & _M32,
                                      np.asarray(c1, dtype=np.uint64) & _M32, key)
    k0, k1 = key & _M32, key >> np.uint64(32)
    c2 = c3 = np.zeros_like(c0)
    for _ in range(10):
        p0, p1 = np.uint64(0xCD9E8D57) * c2, np.uint64(0xD2511F53) * c0
        c0, c1, c2, c3 = (p0 >> np.uint64(32)) ^ c1 ^ k0, p0 & _M32, (p1 >> np.uint64(32)) ^ c3 ^ k1, p1 & _M32
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & _M32, (k1 + np.uint64(0xBB67AE85)) & _M32
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def accept_uniforms(seeds: np.ndarray, k: int) -> np.ndarray:
    """u[b, j] in [0, 1): top 24 bits of lane 0 of counter (j, 0) under seed b; float32 [B, k]."""
    b0 = philox4x32(np.asarray(seeds)[:, None], np.arange(k)[None, :], 0)[0]
    return (b0 >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def mix32(x: np.ndarray, k2: np.ndarray) -> np.ndarray:
    """The kernel's 2-multiply mix of uint32 ``x`` with key ``k2`` injected mid-way (module docstring)."""
    x = np.asarray(x, dtype=np.uint32)
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(HASH_M1)
    x = x ^ (x >> np.uint32(15)) ^ np.asarray(k2, dtype=np.uint32)
    x = x * np.uint32(HASH_M2)
    return x ^ (x >> np.uint32(15))


def noise_bits(seeds: np.ndarray, n_pos: int, n: int, spans: bool = False) -> np.ndarray:
    """The 32 noise bits of every (sequence, position, token), or of every span: uint32 [B, n_pos, n]."""
    k1, k2, k3, k4 = philox4x32(np.asarray(seeds)[:, None], np.arange(n_pos)[None, :], 1)
    if spans:
        k1, k2 = k3, k4
    weyl = np.arange(n, dtype=np.uint32) * np.uint32(HASH_G)
    return mix32(k1[..., None] + weyl, k2[..., None])


def exponentials(seeds: np.ndarray, n_pos: int, n: int, spans: bool = False) -> np.ndarray:
    """The kernel's noise E2 = E / ln 2 (E ~ Exp(1)) of every (sequence, position, token or span), float32."""
    f32 = np.float32
    w = noise_bits(seeds, n_pos, n, spans).astype(f32) * f32(2.0**-32) + f32(2.0**-33)
    c1, c2, c3, c4, c5 = (f32(c) for c in SERIES)
    poly = w * (c1 + w * (c2 + w * (c3 + w * (c4 + w * c5))))
    with np.errstate(divide="ignore"):
        big = -np.log2(f32(1.0) - w)
    return np.where(w < f32(_SERIES_W), poly, big).astype(f32)


def _two_level(lw_span: torch.Tensor, lw_tok: torch.Tensor, lg_span: torch.Tensor,
               lg_tok: torch.Tensor) -> torch.Tensor:
    """Two-level Gumbel-max: span argmax(lw_span - lg_span) [n, S], then token argmax within it [n, S, SPAN]."""
    g = (lw_span - lg_span).argmax(-1)
    n = torch.arange(len(g))
    return g * SPAN + (lw_tok - lg_tok.view(lw_tok.shape))[n, g].argmax(-1)


def _first(mask: torch.Tensor, default: torch.Tensor) -> torch.Tensor:
    """Index of the first True along dim 1, else `default`."""
    if mask.shape[1] == 0:
        return default.clone()
    idx = torch.arange(mask.shape[1]).expand_as(mask)
    return torch.where(mask, idx, mask.shape[1]).amin(1).minimum(default)


def verify_ref(target_logits: torch.Tensor, cu_rows: torch.Tensor, draft_tokens: torch.Tensor,
               draft_probs: torch.Tensor | None, seeds: torch.Tensor, temperature: float,
               k_max: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``spec.verify`` on the CPU (materialises [B, K+1, V] float32; small inputs only)."""
    cu = cu_rows.cpu().long()
    n_seq = cu.numel() - 1
    ks = cu[1:] - cu[:-1] - 1
    if (ks < 0).any():
        raise ValueError("every sequence needs at least its bonus row")
    kk = (int(ks.max()) if n_seq else 0) if k_max is None else k_max
    vocab = target_logits.shape[1]
    jr = torch.arange(kk + 1)
    rows = (cu[:-1, None] + jr).clamp(max=max(target_logits.shape[0] - 1, 0))
    d_ok = jr[None, :kk] < ks[:, None]
    # padded draft index: invalid positions point at an appended dummy row / token
    n_drafts = draft_tokens.numel()
    d_idx = torch.where(d_ok, (cu[:-1] - torch.arange(n_seq))[:, None] + jr[:kk], n_drafts)
    x = torch.cat([draft_tokens.cpu().long(), torch.zeros(1, dtype=torch.long)])[d_idx]
    logits = target_logits.cpu().float()[rows]
    if temperature == 0:
        am = logits.argmax(-1)
        n_acc = _first(d_ok & (x != am[:, :kk]), ks)
        token = am.gather(1, n_acc[:, None])[:, 0]
    else:
        y = logits * scale_log2(temperature)
        m = y.amax(-1, keepdim=True)
        inv_s = 1.0 / torch.exp2(y - m).sum(-1, keepdim=True)
        q = torch.cat([draft_probs.cpu().float(), torch.zeros(1, vocab)])[d_idx]
        px = torch.exp2(y[:, :kk].gather(-1, x[..., None]) - m[:, :kk]) * inv_s[:, :kk]
        u = torch.from_numpy(accept_uniforms(seeds.cpu().numpy(), kk))
        n_acc = _first(d_ok & ~(u * q.gather(-1, x[..., None])[..., 0] < px[..., 0]), ks)
        sd, n_span = seeds.cpu().numpy(), -(-vocab // SPAN)
        e_tok = torch.log2(torch.from_numpy(exponentials(sd, kk + 1, n_span * SPAN)))
        e_span = torch.log2(torch.from_numpy(exponentials(sd, kk + 1, n_span, spans=True)))
        b = torch.arange(n_seq)
        pad = n_span * SPAN - vocab
        # bonus: span weights log2(sum 2^y), as max + log2(sum 2^(y - max)) (max >= -3e38: empty spans -> -inf)
        yb = torch.nn.functional.pad(y[b, ks], (0, pad), value=float("-inf")).view(n_seq, n_span, SPAN)
        mg = yb.amax(-1).clamp(min=-3.0e38)
        lz = mg + torch.log2(torch.exp2(yb - mg[..., None]).sum(-1))
        t_bonus = _two_level(lz, yb, e_span[b, ks], e_tok[b, ks])
        # recovered: weights max(0, p - q) at the first rejected position
        jr_ = n_acc.clamp(max=max(kk - 1, 0))
        p = torch.exp2(y[b, jr_] - m[b, jr_]) * inv_s[b, jr_]
        q_j = q[b, jr_] if kk else torch.zeros_like(p)
        r = torch.nn.functional.pad(torch.clamp(p - q_j, min=0.0), (0, pad)).view(n_seq, n_span, SPAN)
        r_span = r.sum(-1)
        t_res = _two_level(torch.log2(r_span), torch.log2(r), e_span[b, jr_], e_tok[b, jr_])
        t_p = (torch.log2(p) - e_tok[b, jr_, :vocab]).argmax(-1)  # residual all zero (rounding only): p
        t_res = torch.where(r_span.amax(-1) > 0, t_res, t_p)
        token = torch.where(n_acc == ks, t_bonus, t_res)
    emitted = torch.where(jr[None, :kk] < n_acc[:, None], x, -1)
    emitted = torch.cat([emitted, torch.full((n_seq, 1), -1)], 1)
    emitted[torch.arange(n_seq), n_acc] = token
    return n_acc.int(), emitted.int()


def verify_bytes(n_seqs: int, n_drafts: int, vocab: int, logit_bytes: int = 2, prob_bytes: int = 4,
                 n_rejected: int = 0, greedy: bool = False, k_max: int = 0, token_bytes: int = 4) -> int:
    """Fewest bytes one verification moves through device memory.

    Every target row once ((n_seqs + n_drafts) x V logits: all are needed when every draft is accepted),
    one q row per rejected sequence (the residual), the gathered q(x_j), draft tokens, seeds, row offsets,
    and the outputs. Re-reading the rejected target row is the kernel's overhead, not counted here.
    """
    total = (n_seqs + n_drafts) * vocab * logit_bytes + n_drafts * token_bytes
    if not greedy:
        total += n_drafts * prob_bytes + n_rejected * vocab * prob_bytes + n_seqs * 8
    return total + (n_seqs + 1) * 4 + n_seqs * 4 + n_seqs * (k_max + 1) * 4
