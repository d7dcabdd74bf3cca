"""The roofline prior: one kernel's time on a GPU from its FLOPs and bytes, with fitted floors and efficiencies.

For a GPU without a calibrated profile this is all servesim knows, so its shape follows what public
per-operator measurements show (docs/roofline-prior.md has the data, the fit and its errors):

    t = floor + soft(flops / (peak · eff_compute) · wave^β,  max(mem(bytes) + M · block / SMs,  rows(M) · row / row_bw))
    soft(a, m) = a + m − c·a·m / (a + m),   0 ≤ c ≤ 1  (``sharpness``)
    mem(b) = (b − hit) / (bw · eff_memory) + hit / (bw · eff_memory · l2_speedup),   hit = min(b, l2_fraction · L2)

* ``floor`` -- the kernel's fixed cost (launch ramp, tail, a reduction's last wave): 2-7 µs measured, which is
  why small tensor-parallel shards and small batches run slower than their bytes say.
* ``soft`` -- the smooth combination of the compute and memory terms. Measured GEMM times do not switch
  from one roof to the other at the ridge: between M = 128 and 1024 tokens they sit well above both (tile
  and wave quantization, cuBLAS changing kernels). ``c = 0`` is the sum, ``c = 1`` is within 1.5× of the
  max at the crossover and tends to it away from it; the fitted c (0.2-0.8 for GEMMs) is a p-norm's shape
  (p ≈ 1.1-1.5) at the price of one division, and ``soft(0, m) = m`` exactly.
* ``wave^β`` -- a GEMM's tiles run in waves: ``ceil(ceil(M/tm)·ceil(N/tn) / SMs)`` waves of ``SMs`` tiles of
  ``tm × tn`` outputs each, so ``waves · SMs · tm · tn / (M · N) ≥ 1`` is the work the GPU does over the work asked
  for (padding of the last row and column of tiles, the idle SMs of the last wave). It is what makes measured GEMM
  times step-shaped in M. cuBLAS picks its tile per shape, so ``wave`` is the least of that ratio over candidate
  tiles (``tiles``: 64 × 128, 128 × 128, 128 × 256, 256 × 128 as fitted), a smaller tile's times
  ``(largest area / its area)^γ`` (``tile_penalty``: less reuse of each loaded operand); the fitted exponent β
  (0 = no quantization, 1 = all of it) takes the share of the steps this explains. Only where the GEMM's width N
  is known (``OpForm.out_width``; not MoE experts, whose tokens per expert vary, nor MLA's fused query path).
* ``row_bytes / row_bw`` -- kernels that give each token one thread block (RMSNorm, SiLU·mul, RoPE) cannot
  run faster than one block streams one token's row, whatever the batch: a floor that grows with the row.
  ``rows(M) = ceil(M / (blocks_per_sm · SMs))`` -- and the blocks run in waves of ``blocks_per_sm`` resident
  blocks on every SM: RMSNorm on the H100 takes 4 µs up to M = 264 = 2 · 132 tokens, 7 µs up to 528, 9 µs
  beyond, a staircase no bandwidth follows (its p90 error at 128 < M ≤ 1024 was 18%). ``blocks_per_sm`` is
  chosen by the fit (1, 2, 4 or 8; 0 = one row whatever M, where no wave fits better).
* ``M · block / SMs`` -- those one-block-per-token kernels also pay a fixed cost per block (its scheduling, index
  arithmetic, the reduction's barrier) whatever the row's width, spread over the SMs: a kernel whose row shrinks
  with tensor parallelism (SiLU·mul at TP 8: 1,376 elements a token) streams its bytes at a lower rate than the
  same kernel at TP 1, which one bandwidth cannot follow (SiLU·mul was 17-20% fast at TP 8 and 4-8% slow at TP 1
  for M > 1024 without it). Fitted per kind and kept where it lowers the fit's objective.
* ``mem`` -- the elementwise kinds' working set is the activations the kernel before just wrote: the part of it
  that fits in L2 (``l2_fraction`` of the GPU's ``l2_bytes``) streams ``l2_speedup`` times faster than HBM. The
  public tables show it as a step in time per byte where the working set outgrows L2 (RMSNorm on the H100: 26 µs
  at 2048 tokens, 32 MB; 66 µs at 4096). GEMMs, attention and the sampler have no such term (their weights and
  KV cycle through L2 once a step in serving, whatever a one-layer benchmark loop shows): ``l2_speedup = 1``.

Parameters are per operator kind (:data:`KINDS`) and GPU family, in ``catalog/prior.yaml`` with their
provenance; ``bench/fit_prior.py`` refits them. Kinds nobody has measured yet (:data:`BORROWED_KINDS`: the
W8A8 and FP8 GEMMs, per-token activation quantization) borrow a measured kind's parameters, their source
saying so, until a fit writes their own. A GPU names its family in the GPU catalog (``family``);
families without measurements borrow a measured one (``borrow`` in the YAML), and a GPU with no family
gets ``default``, the fit pooled over every measured family.

Collectives: ``latency + bytes / (link · eff)`` per call, in one of two :data:`ALLREDUCE_MODES`, an
assumption the user picks (``Scenario.allreduce``):

* ``custom`` (default) -- vLLM's custom all-reduce inside CUDA graphs, used where it beats NCCL (vLLM
  dispatches by message size): the faster of the custom and NCCL lines. Its small-message latency (~5 µs)
  comes from published H100 figures, not from our measurements.
* ``nccl`` -- NCCL ring all-reduce launched eagerly, as in Vidur's tables (25-50 µs even for a few KiB).

The public API for other cost models (the calibrated profile extrapolates with it): :func:`prior_for`,
:meth:`GPUPrior.kernel_s` (kind, FLOPs, bytes) and :func:`op_time_s` (an ops.py operator, FLOPs, bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np

from servesim.errors import InputError
from servesim.hwmodels.gpus import GPU, read_yaml
from servesim.hwmodels.ops import OpForm

PRIOR_FILE = Path(__file__).parent / "catalog" / "prior.yaml"
KINDS = ("gemm", "gemm_w8a16", "gemm_w4a16", "attn_prefill", "attn_decode", "norm", "act", "rope", "add",
         "elementwise", "sampler")
# Kinds with no measurements yet: each borrows a measured kind of its family unless the file gives it, and says so.
BORROWED_KINDS = {
    "gemm_w8a8": ("gemm", "an int8 tensor-core GEMM priced as the bf16 GEMM's efficiencies at the int8 peak"),
    "gemm_fp8": ("gemm", "an fp8 tensor-core GEMM priced as the bf16 GEMM's efficiencies at the fp8 peak"),
    "act_quant": ("norm", "per-token activation quantization: a row read, reduced (amax) and written scaled, "
                  "the shape of RMSNorm"),
}
ALLREDUCE_MODES = ("custom", "nccl")
DEFAULT_FAMILY = "default"


def soft(a, m, c):
    """``a + m − c·a·m/(a+m)``: the sum at c = 0, near ``max(a, m)`` at c = 1; 0 when both are 0.
    Works on floats and arrays (numpy, pandas) alike."""
    den = a + m
    if np.ndim(den):
        return den - c * a * m / np.where(den > 0, den, 1.0)
    return den - c * a * m / den if den > 0 else 0.0


@dataclass(frozen=True, slots=True)
class KernelPrior:
    """Floor, efficiencies and sharpness of one operator kind on one GPU family."""

    floor_s: float
    eff_compute: float = 1.0
    eff_memory: float = 1.0
    sharpness: float = 1.0
    row_bytes_per_s: float = math.inf  # one thread block's bandwidth over one token's row (elementwise kinds)
    l2_speedup: float = 1.0  # bandwidth over the L2-resident part of the working set, x HBM's (elementwise kinds)
    l2_fraction: float = 0.0  # share of the GPU's L2 that working set can hold
    wave_exponent: float = 0.0  # β: the share of the tile/wave quantization of the compute term (GEMM kinds)
    block_s: float = 0.0  # one thread block's fixed cost on one SM, one block a token (elementwise kinds)
    blocks_per_sm: int = 0  # resident blocks per SM of those kernels: their row term runs in waves (0: one row)
    tiles: tuple[tuple[int, int], ...] = ((128, 128),)  # candidate output tiles (rows, columns) of GEMM kinds
    tile_penalty: float = 0.0  # γ: a tile of area A runs at (A / the largest's)^γ of the largest's efficiency
    source: str = ""

    def tile_terms(self, out_width: float, sms: float) -> tuple[tuple[float, float, float], ...]:
        """Per candidate tile: (rows, column tiles, SMs · tm · tn / N · its penalty), the constants of
        :meth:`wave_factor` for one GEMM width on one GPU."""
        biggest = max(tm * tn for tm, tn in self.tiles)
        return tuple((float(tm), float(math.ceil(out_width / tn)),
                      sms * tm * tn / out_width * (biggest / (tm * tn)) ** self.tile_penalty) for tm, tn in self.tiles)

    def wave_factor(self, tokens, out_width: float, sms: int):
        """``wave^β`` of a GEMM of ``tokens`` rows and ``out_width`` columns on ``sms`` SMs (1 where β = 0 or the
        width or SM count is unknown); floats or numpy arrays of tokens. ``wave`` is the least, over the candidate
        tiles, of the work whole waves of that tile do over the work asked, times the tile's penalty."""
        if not self.wave_exponent:
            return 1.0
        if np.ndim(out_width) == 0 and np.ndim(sms) == 0:
            if not out_width or not sms:
                return 1.0
            terms = self.tile_terms(out_width, sms)
            if isinstance(tokens, (int, float)):  # one shape: floats (the breakdown's path), no numpy scalars
                m = max(float(tokens), 1e-9)
                q = min(math.ceil(math.ceil(m / tm) * ct / sms) * sc for tm, ct, sc in terms) / m
                return q**self.wave_exponent
            m = np.maximum(tokens, 1e-9)
            q = np.min([np.ceil(np.ceil(m / tm) * ct / sms) * sc for tm, ct, sc in terms], axis=0) / m
            return q**self.wave_exponent
        known = (np.asarray(out_width) > 0) & (np.asarray(sms) > 0)  # arrays (a fit over many shapes and GPUs)
        n, s, m = np.where(known, out_width, 1.0), np.where(known, sms, 1.0), np.maximum(tokens, 1e-9)
        biggest = max(tm * tn for tm, tn in self.tiles)
        q = np.min([np.ceil(np.ceil(m / tm) * np.ceil(n / tn) / s) * (s * tm * tn / n)
                    * (biggest / (tm * tn)) ** self.tile_penalty for tm, tn in self.tiles], axis=0) / m
        return np.where(known, q**self.wave_exponent, 1.0)

    def l2_hit_bytes(self, nbytes, l2_bytes: float, fraction: float = 1.0):
        """Bytes of a launch moving ``nbytes`` served from L2: ``min(nbytes, l2_fraction · l2_bytes)``, for an
        operator run in ``fraction`` of the layers (its bytes are the average layer's: that share of one
        launch's)."""
        cap = self.l2_fraction * l2_bytes * fraction
        if isinstance(nbytes, (int, float)) and isinstance(cap, (int, float)):
            return min(nbytes, cap)
        return np.minimum(nbytes, cap)

    def memory_s(self, nbytes, hbm_bytes_per_s: float, l2_bytes: float = 0.0, fraction: float = 1.0):
        """The bytes term: HBM time, less what the L2-resident part of the working set saves."""
        m = nbytes / (hbm_bytes_per_s * self.eff_memory)
        if self.l2_speedup == 1.0 or (np.ndim(l2_bytes) == 0 and not l2_bytes):
            return m
        hit = self.l2_hit_bytes(nbytes, l2_bytes, fraction)
        return m - hit / (hbm_bytes_per_s * self.eff_memory) * (1.0 - 1.0 / self.l2_speedup)

    def row_waves(self, tokens, sms: int):
        """``ceil(tokens / (blocks_per_sm · sms))``: the waves of one-block-per-token kernels (1 where
        ``blocks_per_sm`` or the SM count is unknown); floats or numpy arrays."""
        if not self.blocks_per_sm or (np.ndim(sms) == 0 and not sms):
            return 1.0
        if isinstance(tokens, (int, float)) and isinstance(sms, (int, float)):
            return float(max(math.ceil(tokens / (self.blocks_per_sm * sms) - 1e-9), 1))
        return np.maximum(np.ceil(np.asarray(tokens) / (self.blocks_per_sm * np.asarray(sms)) - 1e-9), 1.0)

    def terms(self, flops, nbytes, peak_flops_per_s: float, hbm_bytes_per_s: float, row_bytes=0.0,
              l2_bytes: float = 0.0, fraction: float = 1.0, tokens=0.0, sms: int = 0):
        """(compute s, memory s, row s): the bytes term (with the per-block cost of ``tokens`` blocks over
        ``sms`` SMs) and the one-block-per-token term (in waves of resident blocks) apart."""
        a = flops / (peak_flops_per_s * self.eff_compute)
        m = self.memory_s(nbytes, hbm_bytes_per_s, l2_bytes, fraction)
        if self.block_s and (np.ndim(sms) or sms):
            m = m + tokens / sms * self.block_s
        return a, m, row_bytes / self.row_bytes_per_s * self.row_waves(tokens, sms)

    def time_s(self, flops, nbytes, peak_flops_per_s: float, hbm_bytes_per_s: float, row_bytes=0.0,
               l2_bytes: float = 0.0, wave=1.0, tokens=0.0, sms: int = 0):
        """Seconds of one launch (floats or numpy arrays) on a GPU with ``l2_bytes`` of L2 and ``sms`` SMs;
        ``wave`` is :meth:`wave_factor` of a GEMM's shape, ``tokens`` an elementwise kernel's blocks."""
        a, m, r = self.terms(flops, nbytes, peak_flops_per_s, hbm_bytes_per_s, row_bytes, l2_bytes, 1.0, tokens, sms)
        return self.floor_s + soft(a * wave, np.maximum(m, r), self.sharpness)


@dataclass(frozen=True, slots=True)
class LinkPrior:
    """One collective call: ``latency_s + bytes / (link · eff)``, ``link`` one direction of the GPU's."""

    latency_s: float
    eff: float
    source: str = ""

    def time_s(self, nbytes, link_bytes_per_s: float):
        return self.latency_s + nbytes / (link_bytes_per_s * self.eff)


@dataclass(frozen=True)
class GPUPrior:
    """Everything the prior knows about one GPU family."""

    family: str
    kernels: dict[str, KernelPrior]
    allreduce: dict[str, LinkPrior]  # ALLREDUCE_MODES -> line
    p2p: LinkPrior  # pipeline send/recv
    measured_on: tuple[str, ...] = ()  # catalog GPUs whose measurements fitted it
    borrowed_for: str = ""  # the unmeasured family this one stands in for
    provenance: dict = field(default_factory=dict, compare=False)

    def kernel(self, kind: str) -> KernelPrior:
        if kind not in self.kernels:
            raise KeyError(f"the prior has no operator kind '{kind}'; known: {', '.join(self.kernels)}")
        return self.kernels[kind]

    def kernel_s(self, kind: str, flops, nbytes, gpu: GPU, dtype: str = "bf16", row_bytes=0.0, tokens=None,
                 out_width: float = 0.0):
        """Seconds of one kernel of ``kind`` doing ``flops`` and moving ``nbytes`` on ``gpu`` (sampler kinds
        compute in fp32); a GEMM given its ``tokens`` (M) and ``out_width`` (N) gets its wave term, an elementwise
        kernel given its ``tokens`` its per-block term."""
        peak = gpu.peak_flops_per_s("fp32" if kind == "sampler" else dtype)
        k = self.kernel(kind)
        wave = 1.0 if tokens is None else k.wave_factor(tokens, out_width, gpu.sm_count)
        if tokens is None:
            return k.time_s(flops, nbytes, peak, gpu.hbm_bytes_per_s, row_bytes, gpu.l2_bytes, wave)
        return k.time_s(flops, nbytes, peak, gpu.hbm_bytes_per_s, row_bytes, gpu.l2_bytes, wave, tokens, gpu.sm_count)

    def collective_s(self, nbytes, gpu: GPU, mode: str = "custom"):
        """Seconds of one collective call moving ``nbytes`` per GPU (ring bytes) in ``mode``."""
        link = gpu.interconnect_bytes_per_s / 2
        nccl = self.allreduce["nccl"].time_s(nbytes, link)
        if mode == "nccl":
            return nccl
        if mode != "custom":
            raise ValueError(f"unknown all-reduce mode '{mode}'; known: {', '.join(ALLREDUCE_MODES)}")
        return np.minimum(self.allreduce["custom"].time_s(nbytes, link), nccl)


def op_time_s(
    op: OpForm, flops: float, nbytes: float, gpu: GPU, prior: GPUPrior | None = None, allreduce: str = "custom"
) -> tuple[float, str]:
    """Seconds and the bound of one call of ops.py operator ``op`` doing ``flops`` and moving ``nbytes`` on
    ``gpu`` (its family's prior unless ``prior`` is given). The bound is "link" for collectives, else the largest
    of "compute", "memory" and "floor" (the fixed costs: floors, and row terms where they exceed the bytes)."""
    prior = prior or prior_for(gpu)
    if op.kind == "comm":
        return op.calls * float(prior.collective_s(nbytes / op.calls, gpu, allreduce)), "link"
    parts = op.parts or ((op.kind, op.bytes.get("new_tokens", 0.0)),)
    total = sum(b for _, b in parts)
    t = fixed = comp = mem = 0.0
    for kind, part_bytes in parts:
        share = part_bytes / total if total else 1.0 / len(parts)
        k = prior.kernel(kind)
        peak = gpu.peak_flops_per_s("fp32" if kind == "sampler" else op.compute_dtype)
        blocks = 0.0  # one block a token: the launch's tokens from its bytes (the average layer's, as the floor's)
        if (k.block_s or k.blocks_per_sm) and part_bytes:
            blocks = round(nbytes * share / part_bytes, 6)
        a, m, r = k.terms(flops * share, nbytes * share, peak, gpu.hbm_bytes_per_s, part_bytes, gpu.l2_bytes,
                          op.fraction, blocks, gpu.sm_count)
        if op.out_width and k.wave_exponent and op.in_width:  # one GEMM of known width: its M (a whole number of
            m_rows = round(flops / (2.0 * op.in_width * op.out_width), 6)  # tokens) from its FLOPs
            a *= float(k.wave_factor(m_rows, op.out_width, gpu.sm_count))
        floor = k.floor_s * op.fraction  # an operator of some of the layers launches in those layers only
        t += floor + soft(a, m if m > r else r, k.sharpness)
        comp += a
        fixed, mem = (fixed + floor + r, mem) if r > m else (fixed + floor, mem + m)
    bound = "floor" if fixed > comp and fixed > mem else "compute" if comp > mem else "memory"
    return float(t), bound


# ---- the catalog file -----------------------------------------------------------------------------------------
_KERNEL_FIELDS = {"floor_us": 1e-6, "eff_compute": 1.0, "eff_memory": 1.0, "sharpness": 1.0, "row_gbps": 1e9,
                  "l2_speedup": 1.0, "l2_fraction": 1.0, "wave_exponent": 1.0, "tile_m": 1.0, "tile_n": 1.0,
                  "tile_penalty": 1.0,
                  "block_us": 1e-6, "blocks_per_sm": 1.0}
# Kinds with a wave term (one tiled GEMM a launch).
WAVE_KINDS = ("gemm", "gemm_w8a16", "gemm_w4a16", "gemm_w8a8", "gemm_fp8")
# Kinds whose working set is the activations just written (the L2 term's premise; the cost model's hot path
# prices the L2 term for these alone), one thread block a token (the per-block term's).
L2_KINDS = ("norm", "act", "rope", "add", "elementwise", "act_quant")


def _num(raw, file: str, where: str, lo: float = 0.0, hi: float = math.inf) -> float:
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise InputError(f"expected a number, got {raw!r}", file=file, field=where) from None
    if not lo <= v <= hi:
        raise InputError(f"must be in [{lo:g}, {hi:g}], got {raw!r}", file=file, field=where)
    return v


def _kernel(raw, file: str, where: str) -> KernelPrior:
    if not isinstance(raw, dict):
        raise InputError("expected a mapping of kernel parameters", file=file, field=where)
    unknown = sorted(set(raw) - set(_KERNEL_FIELDS) - {"source", "tiles"})
    if unknown:
        raise InputError(f"unknown field; expected {', '.join(_KERNEL_FIELDS)}, source", file=file,
                         field=f"{where}.{unknown[0]}")
    if "floor_us" not in raw:
        raise InputError("missing", file=file, field=f"{where}.floor_us")
    kind = where.rsplit(".", 1)[-1]
    if kind not in L2_KINDS and ("l2_speedup" in raw or "l2_fraction" in raw):
        raise InputError(f"an L2 term is for the elementwise kinds only ({', '.join(L2_KINDS)})", file=file,
                         field=f"{where}.{'l2_speedup' if 'l2_speedup' in raw else 'l2_fraction'}")
    for name in ("block_us", "blocks_per_sm"):
        if kind not in L2_KINDS and name in raw:
            raise InputError(f"a per-block term is for the elementwise kinds only ({', '.join(L2_KINDS)})",
                             file=file, field=f"{where}.{name}")
    wave = [f for f in ("wave_exponent", "tile_m", "tile_n", "tiles", "tile_penalty") if f in raw]
    if kind not in WAVE_KINDS and wave:
        raise InputError(f"a wave term is for the GEMM kinds only ({', '.join(WAVE_KINDS)})", file=file,
                         field=f"{where}.{wave[0]}")
    tiles = ((int(_num(raw.get("tile_m", 128), file, f"{where}.tile_m", 1.0)),
              int(_num(raw.get("tile_n", 128), file, f"{where}.tile_n", 1.0))),)
    if "tiles" in raw:  # candidate tiles: a list of [rows, columns]
        if "tile_m" in raw or "tile_n" in raw:
            raise InputError("give tiles or tile_m/tile_n, not both", file=file, field=f"{where}.tiles")
        t = raw["tiles"]
        if not isinstance(t, list) or not t or not all(isinstance(x, list) and len(x) == 2 for x in t):
            raise InputError("expected a list of [rows, columns] pairs", file=file, field=f"{where}.tiles")
        tiles = tuple((int(_num(a, file, f"{where}.tiles", 1.0)), int(_num(b, file, f"{where}.tiles", 1.0)))
                      for a, b in t)
    kw = {}
    for name, scale in _KERNEL_FIELDS.items():
        if name in ("tile_m", "tile_n"):
            continue
        if name in raw:
            lo = 1e-3 if name.startswith(("eff", "row")) else 1.0 if name in ("l2_speedup", "tile_m", "tile_n") else 0.0
            hi = 1.0 if name in ("sharpness", "wave_exponent") else 4.0 if name == "l2_fraction" else math.inf
            kw[name] = _num(raw[name], file, f"{where}.{name}", lo, hi) * scale
    return KernelPrior(
        floor_s=kw["floor_us"], eff_compute=kw.get("eff_compute", 1.0), eff_memory=kw.get("eff_memory", 1.0),
        sharpness=kw.get("sharpness", 1.0), row_bytes_per_s=kw.get("row_gbps", math.inf),
        l2_speedup=kw.get("l2_speedup", 1.0), l2_fraction=kw.get("l2_fraction", 0.0),
        wave_exponent=kw.get("wave_exponent", 0.0), tiles=tiles, tile_penalty=kw.get("tile_penalty", 0.0),
        block_s=kw.get("block_us", 0.0),
        blocks_per_sm=int(kw.get("blocks_per_sm", 0)),
        source=str(raw.get("source", "")),
    )


def _link(raw, file: str, where: str) -> LinkPrior:
    if not isinstance(raw, dict) or set(raw) - {"latency_us", "eff", "source"} or not {"latency_us", "eff"} <= set(raw):
        raise InputError("expected {latency_us, eff, source}", file=file, field=where)
    return LinkPrior(_num(raw["latency_us"], file, f"{where}.latency_us") * 1e-6,
                     _num(raw["eff"], file, f"{where}.eff", 1e-3), str(raw.get("source", "")))


def load_prior(path: str | Path = PRIOR_FILE) -> dict[str, GPUPrior]:
    """Read a prior file (the format of ``catalog/prior.yaml``): family -> :class:`GPUPrior`, the borrowing
    families included; InputError naming the file and field otherwise."""
    file = str(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("families"), dict):
        raise InputError("expected a mapping with 'families'", file=file)
    provenance = raw.get("provenance") or {}
    out: dict[str, GPUPrior] = {}
    for fam, body in raw["families"].items():
        where = f"families.{fam}"
        if not isinstance(body, dict):
            raise InputError("expected a mapping", file=file, field=where)
        for key in ("kernels", "allreduce", "p2p"):
            if key not in body:
                raise InputError("missing", file=file, field=f"{where}.{key}")
        kernels = body["kernels"]
        if not isinstance(kernels, dict) or set(KINDS) - set(kernels):
            missing = sorted(set(KINDS) - set(kernels or {}))
            raise InputError(f"missing operator kinds: {', '.join(missing)}", file=file, field=f"{where}.kernels")
        ar = body["allreduce"]
        if not isinstance(ar, dict) or set(ar) != set(ALLREDUCE_MODES):
            raise InputError(f"expected the modes {', '.join(ALLREDUCE_MODES)}", file=file, field=f"{where}.allreduce")
        fitted = {k: _kernel(kernels[k], file, f"{where}.kernels.{k}") for k in KINDS}
        for kind, (source_kind, why) in BORROWED_KINDS.items():
            if kind in kernels:
                fitted[kind] = _kernel(kernels[kind], file, f"{where}.kernels.{kind}")
            else:
                src = fitted[source_kind]
                fitted[kind] = replace(src, source=f"borrowed from {source_kind} ({src.source}): {why}; no "
                                                    f"measurements of this kernel")
        out[str(fam)] = GPUPrior(
            family=str(fam),
            kernels=fitted,
            allreduce={m: _link(ar[m], file, f"{where}.allreduce.{m}") for m in ALLREDUCE_MODES},
            p2p=_link(body["p2p"], file, f"{where}.p2p"),
            measured_on=tuple(body.get("measured_on") or ()),
            provenance=provenance,
        )
    if DEFAULT_FAMILY not in out:
        raise InputError(f"missing the '{DEFAULT_FAMILY}' family", file=file, field="families")
    for fam, target in (raw.get("borrow") or {}).items():
        if target not in out:
            raise InputError(f"borrows unknown family '{target}'", file=file, field=f"borrow.{fam}")
        p = out[target]
        out[str(fam)] = GPUPrior(str(target), p.kernels, p.allreduce, p.p2p, p.measured_on, str(fam), p.provenance)
    return out


@cache
def priors() -> dict[str, GPUPrior]:
    """The shipped prior (``catalog/prior.yaml``), read once."""
    return load_prior(PRIOR_FILE)


def prior_for(gpu: GPU) -> GPUPrior:
    """The prior of ``gpu``'s family (``default`` when the catalog names none or an unknown one)."""
    table = priors()
    return table.get(gpu.family, table[DEFAULT_FAMILY])
