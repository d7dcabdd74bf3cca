"""The launch the engine makes for each operator at one grid point, as a zero-argument callable to time.

Each builder allocates its inputs once (random data: never time on zeros) and returns ``fn`` that runs exactly
what :class:`servesim.engine.model.LlamaModel` runs for that operator: ``F.linear`` (cuBLAS) or ``QuantLinear``
for GEMMs, the fused elementwise kernels, the paged attention kernels with the engine's launch arguments (decode:
``max_kv_len`` of the CUDA-graph context bucket and the split count chosen from it), greedy sampling, and the
speculative verification kernel. On a CPU the torch references of the same operators run instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from servesim.calibrate.grid import ragged_lengths
from servesim.engine.kernels import BACKENDS
from servesim.engine.runner import graph_ctx_buckets
from servesim.kernels import elementwise as ew
from servesim.kernels.attention.decode import choose_num_splits
from servesim.kernels.counters import SplitCounters, sm_count

KV_TORCH = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
BLOCK = 16


class OpBuilder:
    """Builds timed callables on ``device``; big KV caches are allocated once and shared by grid points."""

    def __init__(self, device: str = "cuda", seed: int = 0) -> None:
        self.dev = torch.device(device)
        self.cuda = self.dev.type == "cuda"
        self.counters = SplitCounters(self.dev)  # decode's split-merge counters, as the engine's runner keeps them
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.be = BACKENDS["triton" if self.cuda else "torch"]
        self.gen = torch.Generator(device=self.dev).manual_seed(seed)
        self._caches: dict[tuple, tuple] = {}
        self._linears: dict[tuple, object] = {}

    def _randn(self, *shape, dtype=None) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, device=self.dev, dtype=torch.float32).to(dtype or self.dtype)

    # -- GEMMs -------------------------------------------------------------------------------------------
    def _linear(self, fmt: str, n: int, k: int):
        key = (fmt, n, k)
        if key not in self._linears:
            w = 0.02 * self._randn(n, k)
            if fmt == "bf16":
                self._linears[key] = lambda x, w=w: F.linear(x, w)
            else:
                from servesim.engine.weights import _quantized

                self._linears[key] = _quantized(w, None, fmt)
            if len(self._linears) > 8:  # keep the last few weights alive, not every shape's
                self._linears.pop(next(iter(self._linears)))
        return self._linears[key]

    def gemm(self, key: dict, m: int) -> Callable[[], None]:
        lin = self._linear(key["format"], key["n"], key["k"])
        x = self._randn(m, key["k"])
        return lambda: lin(x)

    # -- elementwise -----------------------------------------------------------------------------------------
    def rms_norm(self, key: dict, tokens: int) -> Callable[[], None]:
        h = key["hidden"]
        x, res, out = self._randn(tokens, h), self._randn(tokens, h), self._randn(tokens, h)
        w = 1 + 0.1 * self._randn(h)
        return lambda: self.be.rms_norm(x, w, 1e-5, residual=res, out=out)

    def rotary(self, key: dict, tokens: int) -> Callable[[], None]:
        q, kv, d = key["q_heads"], key["kv_heads"], key["head_dim"]
        qkv = self._randn(tokens, (q + 2 * kv) * d)
        qv = qkv[:, : q * d].view(tokens, q, d)
        kview = qkv[:, q * d: (q + kv) * d].view(tokens, kv, d)
        cos, sin = ew.rope_tables(d, 65536, 500000.0, device=self.dev)
        pos = torch.randint(0, 65536, (tokens,), generator=self.gen, device=self.dev, dtype=torch.int32)
        return lambda: self.be.rotary(qv, kview, pos, cos, sin)

    def silu_mul(self, key: dict, tokens: int) -> Callable[[], None]:
        gu = self._randn(tokens, 2 * key["intermediate"])
        out = self._randn(tokens, key["intermediate"])
        return lambda: self.be.silu_mul(gu, out=out)

    def kv_write(self, key: dict, tokens: int) -> Callable[[], None]:
        kvh, d = key["kv_heads"], key["head_dim"]
        kc, vc, scales = self._cache(key["kv_dtype"], kvh, d, tokens + BLOCK)
        k, v = self._randn(tokens, kvh, d), self._randn(tokens, kvh, d)
        slots = torch.randperm(kc.shape[0] * BLOCK, generator=self.gen, device=self.dev)[:tokens]
        return lambda: self.be.write_kv(k, v, kc, vc, slots, **scales)

    # -- attention --------------------------------------------------------------------------------------------
    def _cache(self, kv_dtype: str, kv_heads: int, head_dim: int, tokens: int):
        """A K/V cache pair of at least ``tokens`` slots (grown as needed, random contents)."""
        blocks = -(-tokens // BLOCK)
        key = (kv_dtype, kv_heads, head_dim)
        have = self._caches.get(key)
        if have is None or have[0].shape[0] < blocks:
            self._caches.clear()
            if self.cuda:
                torch.cuda.empty_cache()
            dt = KV_TORCH[kv_dtype] if self.cuda else (torch.float8_e4m3fn if kv_dtype == "fp8" else torch.float32)
            kc = torch.empty(blocks, BLOCK, kv_heads, head_dim, dtype=dt, device=self.dev)
            vc = torch.empty_like(kc)
            for c in (kc, vc):  # random contents, drawn in slices to bound the float32 temporary
                for s in range(0, blocks, 65536):
                    c[s:s + 65536] = self._randn(min(65536, blocks - s), BLOCK, kv_heads, head_dim).to(dt)
            scales = {}
            if kv_dtype == "fp8":
                scales = {n: torch.ones(kv_heads, dtype=torch.float32, device=self.dev) for n in ("k_scale", "v_scale")}
            self._caches[key] = (kc, vc, scales)
        return self._caches[key]

    def attn_prefill(self, key: dict, tokens: int, context: int) -> Callable[[], None]:
        q, kvh, d = key["q_heads"], key["kv_heads"], key["head_dim"]
        total = context + tokens
        kc, vc, scales = self._cache(key["kv_dtype"], kvh, d, total)
        nb = -(-total // BLOCK)
        bt = torch.randperm(kc.shape[0], generator=self.gen, device=self.dev)[:nb].to(torch.int32)[None, :]
        qt, out = self._randn(tokens, q, d), self._randn(tokens, q, d)
        cu = torch.tensor([0, tokens], dtype=torch.int32, device=self.dev)
        kvl = torch.tensor([total], dtype=torch.int32, device=self.dev)
        return lambda: self.be.prefill_attention(qt, kc, vc, bt, cu, kvl, max_q_len=tokens, out=out, **scales)

    def attn_decode(self, key: dict, batch: int, context: int, spread: float = 0.0) -> Callable[[], None]:
        """``batch`` sequences of ``context`` keys (or, with ``spread`` s, contexts spread evenly over
        ``[context (1 - s), context (1 + s)]``: a ragged batch of the same mean), launched as a CUDA-graph decode
        step launches them."""
        q, kvh, d = key["q_heads"], key["kv_heads"], key["head_dim"]
        lens = ragged_lengths(batch, context, spread)
        longest = max(lens)
        per = -(-longest // BLOCK)
        kc, vc, scales = self._cache(key["kv_dtype"], kvh, d, batch * per * BLOCK)
        bt = torch.randperm(kc.shape[0], generator=self.gen, device=self.dev)[: batch * per].to(torch.int32)
        bt = bt.view(batch, per)
        kvl = torch.tensor(lens, dtype=torch.int32, device=self.dev)
        qt, out = self._randn(batch, q, d), self._randn(batch, q, d)
        bucket = next(c for c in graph_ctx_buckets(max(longest, 512) * 2) if c >= longest)
        splits = None
        if self.cuda:
            splits = choose_num_splits(batch, kvh, bucket, sm_count(self.dev))
            self.counters.take(batch * kvh)  # allocated before any graph capture
        return lambda: self.be.decode_attention(qt, kc, vc, bt, kvl, max_kv_len=bucket, out=out,
                                                num_splits=splits, counters=self.counters,
                                                split_per_seq=True, **scales)

    def attn_decode_ragged(self, key: dict, batch: int, context: int) -> Callable[[], None]:
        return self.attn_decode(key, batch, context, spread=float(key["spread"]))

    # -- head ------------------------------------------------------------------------------------------------
    def sampling(self, key: dict, rows: int) -> Callable[[], None]:
        logits = self._randn(rows, key["vocab"])
        return lambda: torch.argmax(logits, dim=-1)

    def spec_verify(self, key: dict, batch: int, k: int) -> Callable[[], None]:
        from servesim.kernels.spec import verify, verify_ref

        v = key["vocab"]
        logits = self._randn(batch * (k + 1), v)
        cu = torch.arange(0, batch * (k + 1) + 1, k + 1, dtype=torch.int32, device=self.dev)
        drafts = torch.randint(0, v, (batch * k,), generator=self.gen, device=self.dev)
        probs = torch.softmax(self._randn(batch * k, v, dtype=torch.float32), dim=-1)
        seeds = torch.arange(batch, dtype=torch.int64, device=self.dev)
        fn = verify if self.cuda else verify_ref
        return lambda: fn(logits, cu, drafts, probs, seeds, 1.0, k)

    def reserve(self, op: str, key: dict, grid: tuple[tuple[int, ...], ...]) -> None:
        """Allocate once the largest KV cache a table's points need (instead of growing it point by point)."""
        if op == "attn_prefill":
            tokens = max(grid[0]) + max(grid[1])
        elif op in ("attn_decode", "attn_decode_ragged"):
            tokens = max(grid[0]) * (-(-round(max(grid[1]) * 1.5) // BLOCK) + 1) * BLOCK  # ragged batches too
        elif op == "kv_write":
            tokens = max(grid[0]) + BLOCK
        else:
            return
        self._cache(key["kv_dtype"], key["kv_heads"], key["head_dim"], tokens)

    def build(self, op: str, key: dict, point: tuple[int, ...]) -> Callable[[], None]:
        return getattr(self, op)(key, *point)
