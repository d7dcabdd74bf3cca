"""Benchmark (and tuning sweep) of the W4A16 / W8A16 Triton GEMMs against cuBLAS bf16 and tinygemm.

    python3 bench/quant_gemm.py --out bench/results            # the GPU's configs (servesim/kernels/tuned.py)
    python3 bench/quant_gemm.py --tune --out bench/results     # sweep candidates per M bucket first
    python3 bench/quant_gemm.py --tune --write-package         # ... and install the winners for this GPU
    python3 bench/quant_gemm.py --w8a8 --tune --out bench/results   # W8A8 (bench/quant_gemm_w8a8.py) instead

One process, one GPU. Every operation is timed twice (``servesim/kernels/timing.py``): by the issues' reference method
(one CUDA-graph replay after zeroing 256 MB: dirty L2 plus the isolated-launch floor, as
``triton.testing.do_bench``) and in-step (back to back with a 256 MB read in one graph: cold, clean L2, as
inside a CUDA-graphed decode step). ``--tune`` ranks candidates in-step. Baselines in the same run: cuBLAS
bf16 ``x @ W.t()``, ``torch._weight_int4pack_mm`` (tinygemm, int4 g128) and a 1 GiB device-to-device copy
for the bandwidth ceiling.

``--tune`` writes the winners to ``<out>/quant_gemm_configs-<card>-<date>.json``, a configs file of
``servesim/kernels/tuned.py``; ``--write-package`` (or ``python3 -m servesim.kernels.tuned install FILE`` later)
merges it into ``servesim/kernels/configs/<card>.json``, which the kernels read on that GPU from then on (the H100's
tables are code: copy an H100 sweep's winners into ``servesim/kernels/quant/configs.py``).

Shapes (``--shapes``): ``classic`` is the (N, K) grid of the H100 tables; ``engine`` the per-GPU GEMMs the engine
runs (QKV, O, gate+up, down of Llama-3.1-8B, and of Llama-3.1-70B at TP 2 and 4, from ``servesim.hwmodels``), each
also timed as one decoder layer's four GEMMs back to back in one CUDA graph, as the engine launches them.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import multiprocessing as mp
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from servesim.hwmodels.models import get_model  # noqa: E402
from servesim.hwmodels.ops import layer_ops  # noqa: E402
from servesim.kernels import timing, tuned  # noqa: E402
from servesim.kernels.counters import SplitCounters  # noqa: E402
from servesim.kernels.quant import configs as QC  # noqa: E402
from servesim.kernels.quant import gemm as QG  # noqa: E402
from servesim.kernels.quant import quantize as Q  # noqa: E402

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192), (8192, 8192)]  # (N, K): the classic grid
ENGINE_MODELS = [("Llama-3.1-8B", 1), ("Llama-3.1-70B", 2), ("Llama-3.1-70B", 4)]  # (model, tensor parallel)
LAYER_GEMMS = ("qkv", "o", "gate_up", "down")  # a decoder layer's GEMMs in launch order
MS = [1, 4, 16, 32, 64, 128, 256, 1024]
TUNE_SHAPES = [(28672, 8192), (4096, 14336), (4096, 4096)]
TUNE_MS = {"1": [1], "16": [4, 16], "64": [32, 64], "256": [128, 256], "large": [1024]}
GS = 128


def engine_gemms(model: str, tp: int) -> list[tuple[str, int, int]]:
    """(op, N, K) per GPU of a decoder layer's GEMMs, as the cost model counts them (column-parallel QKV and
    gate+up split N, row-parallel O and down split K; one fused GEMM each for QKV and gate+up, as the engine)."""
    ops = {op.name: op for op in layer_ops(get_model(model), tp)}
    return [(name, int(ops[name].out_width), int(ops[name].in_width)) for name in LAYER_GEMMS]


def engine_shapes() -> dict[tuple[int, int], list[str]]:
    """(N, K) -> the engine GEMMs of that shape, e.g. ``["Llama-3.1-8B TP1 qkv"]``."""
    out: dict[tuple[int, int], list[str]] = {}
    for model, tp in ENGINE_MODELS:
        for name, n, k in engine_gemms(model, tp):
            out.setdefault((n, k), []).append(f"{model} TP{tp} {name}")
    return out


TUNE_SETS = {"classic": TUNE_SHAPES, "engine": [(n, k) for _, n, k in engine_gemms(*ENGINE_MODELS[0])]}


def _gemm(**kw) -> dict:
    """A tensor-core config: the common defaults, then ``kw``."""
    return {"kernel": "gemm", "GROUP_M": 8, "JOIN": True, "num_stages": 3, **kw}


def _gemv(**kw) -> dict:
    """An M = 1 GEMV config: the common defaults, then ``kw``."""
    return {"kernel": "gemv", "num_warps": 4, "num_stages": 1, "PREFETCH": 1, "XPF": True, **kw}


def candidates(bits: int, bkt: str) -> list[dict]:
    """Configurations tried per (weight width, M bucket): the one in code first, then round-3 variants.

    GEMV knobs: XPF prefetches x with the weights; ``waves`` / ``fill`` set the split-K grid (see
    ``quant_gemm_configs``). Tensor-core knobs: SWAP puts the dequantized W in the A operand; DEQ 0 scales
    every weight, 1/2 apply the group scale after the dot (2: inline PTX), 3 scales in packed bf16x2 PTX.
    """
    g, v = _gemm, _gemv
    table = {
        (4, "1"): [v(BLOCK_N=256, fill=3), v(BLOCK_N=256, waves=1), v(BLOCK_N=128, num_warps=2, fill=6),
                   v(BLOCK_N=128, fill=4), v(BLOCK_N=128, fill=4, PREFETCH=2), v(BLOCK_N=64, num_warps=2, fill=8)],
        (4, "16"): [g(BLOCK_M=16, BLOCK_N=64, num_warps=4, fill=4, SWAP=True, DEQ=3, num_stages=4),
                    g(BLOCK_M=16, BLOCK_N=128, num_warps=8, fill=3, SWAP=True, DEQ=2, num_stages=4),
                    g(BLOCK_M=16, BLOCK_N=64, num_warps=4, fill=5, SWAP=True, DEQ=2, num_stages=4)],
        (4, "64"): [g(BLOCK_M=0, BLOCK_N=64, num_warps=4, waves=2, SWAP=True, DEQ=2),
                    g(BLOCK_M=64, BLOCK_N=128, num_warps=4, waves=1, SWAP=True, DEQ=3)],
        (4, "256"): [g(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, waves=wv, SWAP=True, DEQ=3)
                     for bm, bn, w, wv in ((128, 64, 4, 1), (128, 128, 8, 1), (64, 128, 4, 1), (256, 64, 8, 0))],
        (4, "large"): [g(BLOCK_M=bm, BLOCK_N=bn, num_warps=8, waves=0, SWAP=True, DEQ=3, num_stages=st)
                       for bm, bn, st in ((256, 128, 3), (128, 128, 3), (128, 256, 4))],
        (8, "1"): [v(BLOCK_N=64, waves=4, PREFETCH=2, XPF=False, EVEN=False),
                   v(BLOCK_N=64, waves=8, PREFETCH=2, XPF=False, EVEN=False), v(BLOCK_N=64, fill=5, PREFETCH=2),
                   v(BLOCK_N=128, fill=3), v(BLOCK_N=128, fill=4, PREFETCH=0, XPF=False, num_stages=4)],
        (8, "16"): [g(BLOCK_M=16, BLOCK_N=64, num_warps=4, waves=2, SWAP=True, DEQ=1),
                    g(BLOCK_M=16, BLOCK_N=64, num_warps=4, fill=4, SWAP=True)],
        (8, "64"): [g(BLOCK_M=0, BLOCK_N=128, num_warps=4, waves=1, SWAP=True, DEQ=1)],
        (8, "256"): [g(BLOCK_M=128, BLOCK_N=128, num_warps=8, waves=1)],
        (8, "large"): [g(BLOCK_M=128, BLOCK_N=128, num_warps=8, waves=0)],
    }
    return _with_current(QC.tables().configs[(bits, bkt)], table[(bits, bkt)] + H200_ROUND[(bits, bkt)])


# Round 2 (for the next H200 sweep): the M = 1 GEMV without split-K, or with a short one, its K loop pipelined by
# Triton (num_stages, PREFETCH 0) instead of split across CTAs. Round 1's winners split K 16 ways into CTAs of two
# K blocks each: at 4096x4096 the in-step 8.5 us (23% of copy) is mostly one DRAM round trip per CTA and the
# serial last-arriver reduction, not streaming. Here each CTA streams its rows' whole K with 8-12 blocks in flight.
NO_SPLIT_GEMV = [_gemv(BLOCK_N=bn, num_warps=1, PREFETCH=0, XPF=False, num_stages=st, split_k=sk)
                 for bn, st, sk in ((8, 8, 1), (16, 8, 1), (16, 12, 1), (32, 8, 1), (16, 8, 2), (32, 8, 2))]


# Round 1 on the H200 (2026-12-04): its copy rate is 1.4x the H100's, so fixed costs weigh more at M = 1-16 (a
# shorter split, more CTAs in flight, fewer warps each) and the large-M tiles meet a faster cuBLAS (wider tiles,
# deeper pipelines). Tried beside the H100 round-3 variants above.
H200_ROUND = {
    (4, "1"): [_gemv(BLOCK_N=64, num_warps=2, fill=8, PREFETCH=2), _gemv(BLOCK_N=128, fill=6),
               _gemv(BLOCK_N=128, num_warps=2, fill=8, PREFETCH=2), _gemv(BLOCK_N=32, num_warps=1, fill=16),
               _gemv(BLOCK_N=256, num_warps=8, fill=2, PREFETCH=2), _gemv(BLOCK_N=64, num_warps=1, fill=12),
               *NO_SPLIT_GEMV],
    (4, "16"): [_gemm(BLOCK_M=16, BLOCK_N=64, num_warps=4, fill=6, SWAP=True, DEQ=3, num_stages=4),
                _gemm(BLOCK_M=16, BLOCK_N=32, num_warps=2, fill=8, SWAP=True, DEQ=3, num_stages=4),
                _gemm(BLOCK_M=16, BLOCK_N=64, num_warps=4, fill=4, SWAP=True, DEQ=3, num_stages=6),
                _gemm(BLOCK_M=16, BLOCK_N=128, num_warps=4, waves=2, SWAP=True, DEQ=3)],
    (4, "64"): [_gemm(BLOCK_M=0, BLOCK_N=64, num_warps=4, fill=4, SWAP=True, DEQ=3, num_stages=4),
                _gemm(BLOCK_M=0, BLOCK_N=128, num_warps=4, waves=2, SWAP=True, DEQ=3, num_stages=4)],
    (4, "256"): [_gemm(BLOCK_M=128, BLOCK_N=128, num_warps=8, waves=1, SWAP=True, DEQ=3, num_stages=4),
                 _gemm(BLOCK_M=128, BLOCK_N=64, num_warps=4, waves=2, SWAP=True, DEQ=3, num_stages=4),
                 _gemm(BLOCK_M=64, BLOCK_N=64, num_warps=4, waves=1, SWAP=True, DEQ=3, num_stages=5)],
    (4, "large"): [_gemm(BLOCK_M=256, BLOCK_N=128, num_warps=8, waves=0, SWAP=True, DEQ=3, num_stages=4),
                   _gemm(BLOCK_M=128, BLOCK_N=256, num_warps=8, waves=0, SWAP=True, DEQ=3, num_stages=3),
                   _gemm(BLOCK_M=256, BLOCK_N=128, num_warps=8, waves=0, SWAP=True, DEQ=3, GROUP_M=16)],
    (8, "1"): [_gemv(BLOCK_N=32, num_warps=1, fill=12), _gemv(BLOCK_N=32, num_warps=1, fill=16),
               _gemv(BLOCK_N=64, num_warps=2, fill=8, PREFETCH=2), _gemv(BLOCK_N=128, fill=4, PREFETCH=2),
               _gemv(BLOCK_N=64, num_warps=2, fill=6), *NO_SPLIT_GEMV],
    (8, "16"): [_gemm(BLOCK_M=16, BLOCK_N=64, num_warps=4, fill=6, SWAP=True, num_stages=4),
                _gemm(BLOCK_M=16, BLOCK_N=32, num_warps=2, fill=8, SWAP=True, num_stages=4),
                _gemm(BLOCK_M=16, BLOCK_N=128, num_warps=4, waves=2, SWAP=True, DEQ=1, num_stages=4)],
    (8, "64"): [_gemm(BLOCK_M=0, BLOCK_N=64, num_warps=4, fill=4, SWAP=True, DEQ=1, num_stages=4),
                _gemm(BLOCK_M=64, BLOCK_N=128, num_warps=4, waves=2, num_stages=4)],
    (8, "256"): [_gemm(BLOCK_M=128, BLOCK_N=128, num_warps=8, waves=1, num_stages=4),
                 _gemm(BLOCK_M=128, BLOCK_N=64, num_warps=4, waves=2, num_stages=4)],
    (8, "large"): [_gemm(BLOCK_M=128, BLOCK_N=256, num_warps=8, waves=0, num_stages=3),
                   _gemm(BLOCK_M=128, BLOCK_N=256, num_warps=8, waves=0, num_stages=4),
                   _gemm(BLOCK_M=256, BLOCK_N=128, num_warps=8, waves=0, num_stages=3)],
}


LARGE_SHAPE = (28672, 8192)  # the large-weight overrides (N*K >= LARGE_W_ELEMS) are ranked on this shape


def large_candidates(bits: int, bkt: str) -> list[dict]:
    """Candidates for the large-weight override of (bits, bucket): the one in code first."""
    g, v = _gemm, _gemv
    table = {
        (4, "1"): [v(BLOCK_N=256, fill=3), v(BLOCK_N=64, num_warps=1, fill=12), v(BLOCK_N=32, num_warps=1, fill=16),
                   v(BLOCK_N=128, num_warps=2, fill=6), v(BLOCK_N=256, fill=2), *NO_SPLIT_GEMV],
        (8, "1"): [v(BLOCK_N=64, waves=8, PREFETCH=2, XPF=False, EVEN=False), v(BLOCK_N=64, fill=5, PREFETCH=2),
                   v(BLOCK_N=128, fill=3), v(BLOCK_N=32, num_warps=1, fill=12), *NO_SPLIT_GEMV],
        (4, "16"): [g(BLOCK_M=16, BLOCK_N=128, num_warps=4, waves=2, SWAP=True, DEQ=2),
                    g(BLOCK_M=16, BLOCK_N=128, num_warps=4, waves=2, SWAP=True, DEQ=2, num_stages=4),
                    g(BLOCK_M=16, BLOCK_N=128, num_warps=8, fill=3, SWAP=True, DEQ=2, num_stages=4),
                    g(BLOCK_M=16, BLOCK_N=128, num_warps=4, waves=2, SWAP=True, DEQ=3)],
        (4, "256"): [g(BLOCK_M=128, BLOCK_N=128, num_warps=8, waves=1, SWAP=True, DEQ=3)],
        (8, "256"): [g(BLOCK_M=128, BLOCK_N=128, num_warps=8, waves=1)],
    }
    return _with_current(QC.tables().large_w[(bits, bkt)], table.get((bits, bkt), []))


def _with_current(current: dict, variants: list[dict]) -> list[dict]:
    out = [dict(current)]
    for cfg in variants:
        if _key(cfg) not in {_key(c) for c in out}:
            out.append(cfg)
    return out


def _key(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def quantize(w: torch.Tensor):
    """int4 g128 and int8 packs of a bf16 weight, plus tinygemm's pack (None if unavailable)."""
    q, s, z = Q.quantize_int4_groupwise(w, GS)
    w4 = (Q.pack_int4(q), Q.pack_scales_zeros(s, z))
    q8, s8 = Q.quantize_int8_per_channel(w)
    w8 = (Q.pack_int8(q8), s8)
    return w4, w8, tinygemm_pack(q, s, z)


def tinygemm_pack(q, s, z, inner_k_tiles: int = 8):
    """tinygemm layout: its dequant is (q - 8) * scale + zero, so zero = (8 - z) * scale."""
    if not q.is_cuda:
        return None
    sz = torch.stack([s.float(), (8 - z.float()) * s.float()], dim=-1).transpose(0, 1).contiguous()
    try:  # torch >= 2.5: uint8 [N, K/2], two codes per byte, first code in the high nibble
        packed = torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), inner_k_tiles)
    except (RuntimeError, TypeError):  # older torch: int32 [N, K]
        packed = torch._convert_weight_to_int4pack(q.to(torch.int32), inner_k_tiles)
    return packed, sz.to(torch.bfloat16)


METHODS = {"": timing.cold_ms, "_stream": timing.stream_ms}  # row-key suffix -> timer


def _precompile(jobs):
    """Compile (into Triton's disk cache) by launching each config once on a small problem."""
    torch.manual_seed(0)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    w4, w8, _ = quantize(w)
    for bits, cfg, dtype in jobs:
        m = 1 if cfg["kernel"] == "gemv" else 16
        x = torch.randn(m, 4096, device="cuda", dtype=dtype)
        packed, sz = w4 if bits == 4 else w8
        try:
            QG.quant_matmul(x, packed, sz, bits, GS if bits == 4 else None, cfg)
        except Exception as e:  # reported again (and skipped) by the timing pass
            print(f"precompile failed {bits} {cfg}: {type(e).__name__}: {e}", flush=True)
    torch.cuda.synchronize()


def precompile(jobs, workers: int) -> None:
    chunks = [jobs[i::workers] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_precompile, [c for c in chunks if c])


@functools.cache
def _counters(device) -> SplitCounters:
    return SplitCounters(device)  # split-K counters of every timed launch (one stream), as QuantLinear keeps its own


def run_ours(x, wq, bits, cfg):
    packed, sz = wq
    return QG.quant_matmul(x, packed, sz, bits, GS if bits == 4 else None, cfg, _counters(x.device))


def tune(weights, log, keys, shapes=TUNE_SHAPES, cands=None) -> dict:
    """Time every candidate of each (bits, bucket) key on ``shapes``; keep the best geometric mean (correct
    ones only). ``cands(bits, bucket)`` lists the candidates (default :func:`candidates`)."""
    cands = cands or candidates
    best = {}
    refs = {}
    for shape in shapes:
        _, w4, w8, _ = weights[shape]
        refs[(4, shape)] = Q.dequantize_w4_packed(*w4, GS, shape[1])
        refs[(8, shape)] = Q.dequantize_w8_packed(*w8, shape[1])
    for bits, bkt in keys:
        ms = TUNE_MS[bkt]
        scores = []
        for cfg in cands(bits, bkt):
            ts, ok = [], True
            for shape in shapes:
                _, w4, w8, _ = weights[shape]
                wq = w4 if bits == 4 else w8
                ref_w = refs[(bits, shape)]
                for m in ms:
                    if cfg["kernel"] == "gemv" and m != 1:
                        continue
                    x = torch.randn(m, shape[1], device="cuda", dtype=torch.bfloat16)
                    try:
                        y = run_ours(x, wq, bits, cfg)
                        ref = x.float() @ ref_w.t()
                        err = ((y.float() - ref).norm() / ref.norm()).item()
                        if not err < 1e-2:
                            raise ValueError(f"relative error {err:.2e}")
                        ts.append(timing.stream_ms(lambda x=x, wq=wq, b=bits, cfg=cfg: run_ours(x, wq, b, cfg)))
                    except Exception as e:
                        log.append(dict(bits=bits, bucket=bkt, shapes=shapes, config=cfg,
                                        error=f"{type(e).__name__}: {e}"))
                        ok = False
                        break
                if not ok:
                    break
            if ok:
                gm = math.exp(sum(math.log(t) for t in ts) / len(ts))
                scores.append((gm, cfg))
                log.append(dict(bits=bits, bucket=bkt, shapes=shapes, config=cfg, geomean_ms=gm, times_ms=ts))
        scores.sort(key=lambda t: t[0])
        best[(bits, bkt)] = scores[0][1]
        print(f"tuned W{bits} bucket {bkt} on {shapes}: {scores[0][0] * 1e3:.1f} us  {scores[0][1]}", flush=True)
        for gm, cfg in scores[1:4]:
            print(f"      runner-up {gm * 1e3:.1f} us  {cfg}", flush=True)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tune", action="store_true", help="sweep candidate configs per M bucket first")
    ap.add_argument("--write-package", action="store_true", help="with --tune: install the winners as this GPU's "
                    "configs (servesim/kernels/configs/<card>.json)")
    ap.add_argument("--shapes", choices=("all", "engine", "classic"), default="all",
                    help="engine: the engine's GEMMs (Llama-3.1-8B, 70B at TP 2/4); classic: the H100 tables' grid")
    ap.add_argument("--tune-shapes", choices=tuple(TUNE_SETS), default="classic",
                    help="the shapes --tune ranks on (engine: Llama-3.1-8B's four GEMMs)")
    ap.add_argument("--workers", type=int, default=12, help="processes compiling candidates in parallel")
    ap.add_argument("--quick", action="store_true", help="one shape (28672x8192), M in 1, 16, 256: a smoke run")
    ap.add_argument("--buckets", default=",".join(TUNE_MS), help="M buckets --tune sweeps (comma-separated)")
    ap.add_argument("--ms", default=None, help="M values of the timed rows (comma-separated; default: all)")
    ap.add_argument("--w8a8", action="store_true", help="benchmark W8A8 against torch._int_mm, cuBLAS bf16 and FP8 "
                    "torch._scaled_mm instead (bench/quant_gemm_w8a8.py)")
    ap.add_argument("--smoke", action="store_true", help="with --w8a8: tiny shapes on the CPU interpreter, no files")
    args = ap.parse_args()
    global MS
    if args.write_package and not args.tune:
        ap.error("--write-package installs what --tune chose: pass --tune too")
    if args.w8a8:
        from bench.quant_gemm_w8a8 import main_w8a8

        quick = args.quick
        main_w8a8(args, [(28672, 8192)] if quick else SHAPES, [1, 16, 256] if quick else MS, TUNE_SHAPES)
        return
    shapes = bench_shapes(args.shapes)
    if args.ms:
        MS = [int(m) for m in args.ms.split(",")]
    if args.quick:
        shapes, MS = {LARGE_SHAPE: shapes.get(LARGE_SHAPE, ["classic"])}, [1, 16, 256]
    torch.manual_seed(0)
    card = timing.card()
    copy_bw = timing.copy_bandwidth()
    print(f"{card}: device-to-device copy {copy_bw / 1e12:.2f} TB/s (read + write); launch configs of "
          f"{tuned.current_key()}", flush=True)
    floor = timing.floor_us()
    print(f"floor (1-element kernel): {floor}", flush=True)

    prov = dict(card=card, date=datetime.date.today().isoformat(), torch=torch.__version__,
                triton=triton.__version__, command="python3 bench/quant_gemm.py " + " ".join(sys.argv[1:]))
    tune_shapes = TUNE_SETS[args.tune_shapes]
    weights = {}
    for n, k in dict.fromkeys([*shapes, *(tune_shapes + [LARGE_SHAPE] if args.tune else [])]):
        wb = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        weights[(n, k)] = (wb, *quantize(wb))

    tune_log, winners = [], None
    table = QC.tables()  # this GPU's; --tune updates it in place, so the timed rows launch with the winners
    if args.tune:
        bkts = args.buckets.split(",")
        jobs = [(bits, cfg, torch.bfloat16) for bits in (4, 8) for bkt in bkts for cfg in candidates(bits, bkt)]
        jobs += [(bits, cfg, torch.bfloat16) for bits, bkt in table.large_w if bkt in bkts
                 for cfg in large_candidates(bits, bkt)]
        precompile(jobs, args.workers)
        winners = tune(weights, tune_log, [(bits, b) for bits in (4, 8) for b in bkts], shapes=tune_shapes)
        table.configs.update(winners)
        lw_keys = [key for key in table.large_w if key[1] in bkts]
        table.large_w.update(tune(weights, tune_log, lw_keys, shapes=[LARGE_SHAPE], cands=large_candidates))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "quant_gemm-tune-partial.json"), "w") as f:  # kept if the rest fails
            json.dump(dict(tune_log=tune_log, configs={str(k): v for k, v in table.configs.items()},
                           large_w={str(k): v for k, v in table.large_w.items()}), f, indent=1)
        # the configs file before the timed rows, so that a failure there loses no tuning
        tuned.report_written(write_configs(args.out, dict(prov, tune_shapes=tune_shapes), table), args.write_package)

    rows = shape_rows(weights, shapes, MS, copy_bw)
    layers = [] if args.quick or args.shapes == "classic" else layer_rows(weights, MS, copy_bw)

    slug = timing.card_slug(card)
    meta = dict(**prov, copy_bytes_per_s=copy_bw,
                floor_us=floor, device_key=tuned.current_key(), tune_shapes=tune_shapes if args.tune else None,
                configs={**{f"W{b}/{bk}": c for (b, bk), c in table.configs.items()},
                         **{f"W{b}/{bk} N*K >= {table.large_w_elems}": c for (b, bk), c in table.large_w.items()}})
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"quant_gemm-{slug}-{prov['date']}")
    with open(base + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows, layers=layers, tune_log=tune_log), f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(report_md(meta, rows, layers, copy_bw, winners))
    print(report_md(meta, rows, layers, copy_bw, winners))


def bench_shapes(which: str) -> dict[tuple[int, int], list[str]]:
    """(N, K) -> labels of the ``--shapes`` choice, classic grid first."""
    shapes: dict[tuple[int, int], list[str]] = {}
    if which in ("all", "classic"):
        shapes.update({s: ["classic"] for s in SHAPES})
    if which in ("all", "engine"):
        for s, labels in engine_shapes().items():
            shapes.setdefault(s, []).extend(labels)
    return shapes


def write_configs(out: str, meta: dict, table) -> str:
    """The tuned tables as a configs file of ``servesim/kernels/tuned.py``: ``quant_gemm_configs-<card>-<date>.json``
    in ``out`` (the file name fits bench/results' ``<bench>-<gpu>-<date>`` rule)."""
    provenance = {k: meta[k] for k in ("card", "date", "command", "torch", "triton", "tune_shapes")}
    doc = tuned.configs_document(meta["card"], "quant_gemm", QC.section(table), provenance)
    path = os.path.join(out, f"quant_gemm_configs-{timing.card_slug(meta['card'])}-{meta['date']}.json")
    return str(tuned.write_document(path, doc))


def shape_rows(weights, shapes, ms, copy_bw, device="cuda") -> list[dict]:
    """One row per (shape, M): cuBLAS bf16, W4A16, W8A16 (and tinygemm where there is one) by both methods, and
    the relative errors. ``weights[(n, k)]`` = (bf16, w4, w8, tinygemm) as :func:`quantize` gives them."""
    rows = []
    for (n, k), labels in shapes.items():
        wb, w4, w8, tg = weights[(n, k)]
        w4_ref = Q.dequantize_w4_packed(*w4, GS, k)
        for m in ms:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            r = dict(N=n, K=k, M=m, ops="; ".join(labels))
            c4, c8 = QC.config_for(4, m, n, k), QC.config_for(8, m, n, k)
            ops = {"cublas": lambda x=x, wb=wb: x @ wb.t(),
                   "w4": lambda x=x, w4=w4, c4=c4: run_ours(x, w4, 4, c4),
                   "w8": lambda x=x, w8=w8, c8=c8: run_ours(x, w8, 8, c8)}
            if tg is not None:
                ops["tinygemm"] = lambda x=x, tg=tg: torch._weight_int4pack_mm(x, tg[0], GS, tg[1])
            for suffix, timer in METHODS.items():
                for name, fn in ops.items():
                    r[f"{name}{suffix}_ms"] = timer(fn)
            ref4 = x.float() @ w4_ref.t()
            r["w4_rel_err"] = ((run_ours(x, w4, 4, c4).float() - ref4).norm() / ref4.norm()).item()
            if tg is not None:
                y_tg = torch._weight_int4pack_mm(x, tg[0], GS, tg[1]).float()
                r["tinygemm_rel_err"] = ((y_tg - ref4).norm() / ref4.norm()).item()
            rows.append(r)
            print(_row_text(r, copy_bw), flush=True)
    return rows


def layer_rows(weights, ms, copy_bw, layers=None, device="cuda") -> list[dict]:
    """Each engine model's decoder-layer GEMMs (QKV, O, gate+up, down) back to back in one CUDA graph, per M and
    kernel (cuBLAS bf16, W4A16, W8A16): the launch sequence of an engine step, timed by both methods. ``layers``:
    {(model, tp): [(op, N, K), ...]}, by default :func:`engine_gemms` of :data:`ENGINE_MODELS`."""
    rows = []
    layers = layers or {(model, tp): engine_gemms(model, tp) for model, tp in ENGINE_MODELS}
    for (model, tp), gemms in layers.items():
        w4_bytes = sum(n * k // 2 for _, n, k in gemms)
        for m in ms:
            xs = {k: torch.randn(m, k, device=device, dtype=torch.bfloat16) for _, _, k in gemms}
            calls = {"cublas": [(lambda x=xs[k], wb=weights[(n, k)][0]: x @ wb.t()) for _, n, k in gemms]}
            for bits, idx in ((4, 1), (8, 2)):  # weights[(n, k)] = (bf16, w4, w8, tinygemm)
                launches = [(xs[k], weights[(n, k)][idx], QC.config_for(bits, m, n, k)) for _, n, k in gemms]
                calls[f"w{bits}"] = [(lambda x=x, wq=wq, b=bits, c=c: run_ours(x, wq, b, c)) for x, wq, c in launches]
            r = dict(model=model, tp=tp, M=m)
            for suffix, timer in METHODS.items():
                for name, fns in calls.items():
                    r[f"{name}{suffix}_ms"] = timer(lambda fns=fns: [fn() for fn in fns])
            r["w4_stream_copy_frac"] = w4_bytes / (r["w4_stream_ms"] * 1e-3) / copy_bw
            rows.append(r)
            print(f"layer {model} TP{tp} M={m}: " + "  ".join(f"{name} {r[f'{name}_stream_ms'] * 1e3:.1f} us"
                                                          for name in calls) + " in-step", flush=True)
    return rows


METHOD_TITLES = {"": "reference method (dirty L2, isolated launch)", "_stream": "in-step (cold clean L2, back to back)"}


def _row_text(r, copy_bw) -> str:
    parts = [f"{r['N']:>6}x{r['K']:<6} M={r['M']:<5}"]
    for sfx in METHODS:
        times = "  ".join(f"{op} {r[f'{op}{sfx}_ms'] * 1e3:7.1f}" for op in ("cublas", "w4", "tinygemm", "w8")
                          if f"{op}{sfx}_ms" in r)
        bw = r["N"] * r["K"] / 2 / (r[f"w4{sfx}_ms"] * 1e-3)
        parts.append(f"[{sfx or 'ref'}] {times} us, w4 {bw / 1e12:.2f} TB/s ({bw / copy_bw:.0%})")
    return "  ".join(parts)


def report_md(meta, rows, layers, copy_bw, tuned_here) -> str:
    """Markdown: setup, per method one table per shape (and per engine layer), the issues' targets under both
    methods."""
    floor = meta["floor_us"]
    out = [f"# quant_gemm on {meta['card']} ({meta['date']})", "",
           f"torch {meta['torch']}, triton {meta['triton']}; command: `{meta['command']}`; launch configs of "
           f"`{meta['device_key']}` (`servesim/kernels/tuned.py`). bf16 activations, int4 group 128, int8 per channel. "
           + __doc__.split("\n\n")[2].replace("\n", " "), "",
           f"Device-to-device copy (1 GiB, read + write counted): **{copy_bw / 1e12:.2f} TB/s**. "
           "`w4 TB/s` counts packed int4 weight bytes only (N*K/2); `% copy` is that over the copy rate. "
           f"A 1-element kernel takes {floor['cold_us']:.1f} us by the reference method and "
           f"{floor['stream_us']:.1f} us in-step.", ""]
    shapes = list(dict.fromkeys((r["N"], r["K"]) for r in rows))
    for sfx, title in METHOD_TITLES.items():
        out += [f"## Times, {title}", ""]
        for (n, k) in shapes:
            mine = [r for r in rows if (r["N"], r["K"]) == (n, k)]
            out += [f"### N x K = {n} x {k} ({mine[0]['ops']})", "",
                    "| M | cuBLAS bf16 us | W4A16 us | tinygemm us | W8A16 us | W4 vs cuBLAS | W4 vs tinygemm "
                    "| W8 vs cuBLAS | W4 TB/s | % copy | W4 rel err |",
                    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in mine:
                cb, w4, w8 = r[f"cublas{sfx}_ms"], r[f"w4{sfx}_ms"], r[f"w8{sfx}_ms"]
                tg = r.get(f"tinygemm{sfx}_ms", float("nan"))
                bw = n * k / 2 / (w4 * 1e-3)
                out.append(f"| {r['M']} | {cb * 1e3:.1f} | {w4 * 1e3:.1f} | {tg * 1e3:.1f} | {w8 * 1e3:.1f} | "
                           f"{cb / w4:.2f}x | {tg / w4:.2f}x | {cb / w8:.2f}x | {bw / 1e12:.2f} | "
                           f"{bw / copy_bw:.0%} | {r['w4_rel_err']:.1e} |")
            out.append("")
    if layers:
        out += ["## One decoder layer's GEMMs in one CUDA graph (QKV, O, gate+up, down back to back)", "",
                "| model | TP | M | cuBLAS us | W4A16 us | W8A16 us | W4 vs cuBLAS | W8 vs cuBLAS | in-step cuBLAS us "
                "| in-step W4A16 us | in-step W8A16 us | in-step W4 vs cuBLAS | in-step W8 vs cuBLAS "
                "| in-step W4 % copy |", "|---|---:|---:|" + "---:|" * 11]
        for r in layers:
            cells = []
            for sfx in METHODS:
                cb, w4, w8 = (r[f"{op}{sfx}_ms"] for op in ("cublas", "w4", "w8"))
                cells.append(f"{cb * 1e3:.1f} | {w4 * 1e3:.1f} | {w8 * 1e3:.1f} | {cb / w4:.2f}x | {cb / w8:.2f}x")
            out.append(f"| {r['model']} | {r['tp']} | {r['M']} | {' | '.join(cells)} | "
                       f"{r['w4_stream_copy_frac']:.0%} |")
        out.append("")
    out += ["## Targets (issue 6)", "", "| target | reference method | met | in-step | met |", "|---|---|---|---|---|"]
    out += target_lines(rows, copy_bw, targets6(shapes))
    if any(r["ops"] != "classic" for r in rows):
        out += ["", "## Targets (issue 17: the in-step column counts)", "",
                "| target | reference method | met | in-step | met |", "|---|---|---|---|---|"]
        out += target_lines(rows, copy_bw, targets17(rows))
    out += ["", "## Configurations used", "", "```python"]
    out += [f"{k}: {v}" for k, v in meta["configs"].items()]
    out += ["```", ""]
    if tuned_here:
        out += [f"(chosen by `--tune` in this run on {meta['tune_shapes']}, ranked in-step)", ""]
    return "\n".join(out)


def targets6(shapes) -> list[tuple]:
    """Issue 6's targets (the H100 round) on the classic shapes present."""
    checks = [("W4A16 M=1 28672x8192 >= 3.3x cuBLAS", 28672, 8192, 1, "cublas", "w4", 3.3),
              ("W4A16 M=1 28672x8192 >= 2.2 TB/s int4 weight bytes", 28672, 8192, 1, None, "w4", 2.2),
              ("W4A16 M=1 28672x8192 >= 1.3x tinygemm", 28672, 8192, 1, "tinygemm", "w4", 1.3)]
    for n, k in (s for s in SHAPES if s in shapes):
        for m, goal in ((16, 3.0), (32, 2.0), (128, 0.9), (256, 0.9), (1024, 0.9)):
            checks.append((f"W4A16 M={m} {n}x{k} >= {goal}x cuBLAS", n, k, m, "cublas", "w4", goal))
        checks.append((f"W8A16 M=1 {n}x{k} >= 1.8x cuBLAS", n, k, 1, "cublas", "w8", 1.8))
    return checks


def targets17(rows) -> list[tuple]:
    """Issue 17's GEMM targets on the engine's shapes: M = 1 on Llama-3.1-8B's (W4A16 >= 70% of copy at N*K >=
    4096x14336, >= 45% on 4096x4096; W8A16 >= 1.8x cuBLAS), M = 16 and M >= 256 on every engine shape."""
    big = 4096 * 14336
    engine = list(dict.fromkeys((r["N"], r["K"], r["ops"]) for r in rows if r["ops"] != "classic"))
    checks = []
    for n, k, ops in engine:
        if "Llama-3.1-8B" in ops:
            if n * k >= big or (n, k) == (4096, 4096):
                goal = 0.70 if n * k >= big else 0.45
                checks.append((f"W4A16 M=1 {n}x{k} >= {goal:.0%} of copy", n, k, 1, "copy", "w4", goal))
            checks.append((f"W8A16 M=1 {n}x{k} >= 1.8x cuBLAS", n, k, 1, "cublas", "w8", 1.8))
        if n * k >= big:
            checks.append((f"W4A16 M=16 {n}x{k} >= 2.5x cuBLAS", n, k, 16, "cublas", "w4", 2.5))
        checks += [(f"W4A16 M={m} {n}x{k} >= 0.9x cuBLAS", n, k, m, "cublas", "w4", 0.9) for m in (256, 1024)]
    return checks


def target_lines(rows, copy_bw, checks) -> list[str]:
    """One line per target: its value and pass/fail under each timing method (rows a --quick run lacks: none).

    ``base``: a baseline op (ratio of its time to ours), ``None`` (int4 weight TB/s) or ``"copy"`` (that over
    the copy rate)."""
    lines = []
    for name, n, k, m, base, ours, goal in checks:
        cells, r = [], next((r for r in rows if (r["N"], r["K"], r["M"]) == (n, k, m)), None)
        if r is None or (base not in (None, "copy") and f"{base}_ms" not in r):
            continue
        for sfx in METHODS:
            t = r[f"{ours}{sfx}_ms"]
            bw = n * k / 2 / (t * 1e-3)
            val = bw / 1e12 if base is None else bw / copy_bw if base == "copy" else r[f"{base}{sfx}_ms"] / t
            cells += [f"{val:.2f}", "yes" if val >= goal else "**no**"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
