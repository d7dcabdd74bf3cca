"""Measure the achieved fraction of datasheet peaks on a CUDA GPU (needs torch; not part of the simulator).

The roofline cost model's default efficiencies (servesim/hwmodels/cost.py) come from this script's output:
large bf16 GEMM compute efficiency, skinny (decode-shaped) GEMM bandwidth efficiency, copy bandwidth,
flash-attention (SDPA) prefill throughput, and the memory CUDA reports. Run: ``python3 bench/roofline_probe.py
--peak-tflops 989 --peak-tbps 3.35`` (H100 SXM datasheet values).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def _time_s(fn, reps: int = 50) -> float:
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peak-tflops", type=float, required=True)
    ap.add_argument("--peak-tbps", type=float, required=True)
    args = ap.parse_args()
    peak_f, peak_b = args.peak_tflops * 1e12, args.peak_tbps * 1e12
    dev = torch.device("cuda")
    free_b, total_b = torch.cuda.mem_get_info()
    out: dict = {"name": torch.cuda.get_device_name(), "total_memory_bytes": total_b, "free_bytes": free_b,
                 "sm_count": torch.cuda.get_device_properties(0).multi_processor_count}
    bf = torch.bfloat16
    # Copy bandwidth (read + write).
    x = torch.empty(2**30, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    t = _time_s(lambda: y.copy_(x))
    out["copy_eff"] = 2 * x.numel() / t / peak_b
    x = y = None  # free 2 GiB before the GEMMs
    # GEMMs shaped like Llama-3.1-8B's MLP (K=4096, N=14336) for several token counts M.
    w = torch.randn(14336, 4096, dtype=bf, device=dev)
    gemm = {}
    for m in (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192):
        a = torch.randn(m, 4096, dtype=bf, device=dev)
        t = _time_s(lambda a=a: a @ w.T)
        flops, nbytes = 2 * m * 4096 * 14336, 2 * (m * 4096 + 4096 * 14336 + m * 14336)
        gemm[m] = {"us": t * 1e6, "compute_eff": flops / t / peak_f, "mem_eff": nbytes / t / peak_b,
                   "roofline_eff": max(flops / peak_f, nbytes / peak_b) / t}
    out["gemm_mlp_k4096_n14336"] = gemm
    # Causal prefill attention through SDPA (flash backend), 32 heads x 128, one sequence.
    att = {}
    for s in (512, 2048, 8192):
        q = torch.randn(1, 32, s, 128, dtype=bf, device=dev)
        t = _time_s(lambda q=q: F.scaled_dot_product_attention(q, q, q, is_causal=True))
        flops = 4 * 32 * 128 * s * (s + 1) / 2
        att[s] = {"us": t * 1e6, "compute_eff": flops / t / peak_f}
    out["sdpa_causal_prefill"] = att
    # Decode attention: batch of 64 queries of length 1 over 2048 keys, GQA 32/8 expanded to 32 heads.
    dec = {}
    for b, ctx in ((64, 2048), (256, 2048), (32, 8192)):
        q = torch.randn(b, 8, 4, 128, dtype=bf, device=dev).reshape(b, 32, 1, 128)
        k, v = (torch.randn(b, 8, ctx, 128, dtype=bf, device=dev) for _ in range(2))
        t = _time_s(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        dec[f"{b}x{ctx}"] = {"us": t * 1e6, "mem_eff": 2 * k.numel() * 2 / t / peak_b}
    out["sdpa_decode_gqa"] = dec
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
