"""W8A8 part of ``bench/quant_gemm.py --w8a8``: servesim's per-token activation quantization and int8 GEMM against
``torch._int_mm`` with a scale epilogue, cuBLAS bf16 and FP8 ``torch._scaled_mm`` (row-wise scales).

    python3 bench/quant_gemm.py --w8a8 --tune --out bench/results    # rank candidates per M bucket, then the table
    python3 bench/quant_gemm.py --w8a8 --tune --write-package        # ... and install the winners for this GPU
    TRITON_INTERPRET=1 python3 bench/quant_gemm.py --w8a8 --smoke    # CPU interpreter, tiny shapes: a script check

Rows per (N, K, M), every operation timed in-step and by the reference method (``servesim/kernels/timing.py``):
``cublas`` bf16 ``x @ W^T``; ``w8a8`` = ours end to end (``act_quant`` + ``int8_scaled_mm``); ``gemm`` = ours on
quantized inputs; ``act_quant`` alone; ``int_mm`` = ``torch._int_mm(q_x, q_w^T)`` then ``acc * s_x * s_w`` to bf16
on the same quantized inputs (``_int_mm`` needs M > 16: smaller M is padded to 32 rows, said in the row);
``fp8`` = per-token e4m3 activations and per-channel e4m3 weights through ``torch._scaled_mm`` (quantization of
x included, as the engine's FP8 linear runs it). Relative errors are against x @ dequant(W)^T in fp32.
"""

from __future__ import annotations

import datetime
import json
import math
import os

import torch
import triton

from servesim.kernels import timing, tuned
from servesim.kernels.counters import SplitCounters
from servesim.kernels.quant import fp8 as F8
from servesim.kernels.quant import quantize as Q
from servesim.kernels.quant import w8a8 as W
from servesim.kernels.quant.configs import bucket

METHODS = {"": timing.cold_ms, "_stream": timing.stream_ms}
TUNE_MS = {"1": [1], "16": [4, 16], "64": [32, 64], "256": [128, 256], "large": [1024]}
INT_MM_MIN_M = 17


def w8a8_candidates(bkt: str) -> list[dict]:
    """Configurations ranked per M bucket: the one in code first."""
    t = {"GROUP_M": 8, "BLOCK_K": 128}
    small = [{**t, "BLOCK_M": 16, "BLOCK_N": bn, "num_warps": 4, "num_stages": st, "SWAP": True, **split}
             for bn in (64, 128) for st in (3, 4) for split in ({"waves": 2}, {"fill": 4})]
    mid = [{**t, "BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": st, "waves": 1}
           for bm, bn, w in ((64, 128, 4), (64, 64, 4), (128, 128, 8)) for st in (3, 4)]
    mid += [{**t, "BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 4, "num_stages": 4, "SWAP": True, "waves": 2}]
    large = [{**t, "BLOCK_M": bm, "BLOCK_N": bn, "num_warps": 8, "num_stages": st, "waves": 0}
             for bm, bn in ((128, 256), (128, 128), (256, 128)) for st in (3, 4)]
    table = {"1": small, "16": small, "64": mid, "256": mid + large[:2], "large": large}
    out = [dict(W.tables()[bkt])]  # this GPU's
    for cfg in table[bkt]:
        if json.dumps(cfg, sort_keys=True) not in {json.dumps(c, sort_keys=True) for c in out}:
            out.append(cfg)
    return out


def quantize_weight(w: torch.Tensor):
    """(int8 codes [N, K], fp32 scales [N]) and the FP8 pair (e4m3 [N, K], fp32 scales [N])."""
    return Q.quantize_int8_per_channel(w), F8.quantize_fp8_per_channel(w)


def int_mm_scaled(q_x, s_x, q_w, s_w):
    """``torch._int_mm`` (M > 16) and the scale epilogue in torch; padded rows are dropped."""
    m = q_x.shape[0]
    if m < INT_MM_MIN_M:
        q_x = torch.cat([q_x, q_x.new_zeros(32 - m, q_x.shape[1])])
    acc = torch._int_mm(q_x, q_w.t())[:m]
    return (acc.float() * s_x[:, None] * s_w[None, :]).to(torch.bfloat16)


def _counters(device, _cache={}):  # noqa: B006 (one set of split-K counters per device, as a W8A8 linear keeps)
    return _cache.setdefault(str(device), SplitCounters(device))


def tune(weights, ms_by_bucket, device, log, limit: int | None = None) -> dict:
    """In-step geometric mean over the tuning shapes and the bucket's M values; correct candidates only
    (``limit``: the first few candidates per bucket)."""
    best = {}
    for bkt, ms in ms_by_bucket.items():
        scores = []
        for cfg in w8a8_candidates(bkt)[:limit]:
            ts = []
            try:
                for (_n, k), (_, (q8, s8), _) in weights.items():
                    for m in ms:
                        q, s = W.act_quant(torch.randn(m, k, device=device, dtype=torch.bfloat16))
                        y = W.int8_scaled_mm(q, s, q8, s8, torch.float32, None, cfg, _counters(device))
                        ref = W.int8_scaled_mm_ref(q, s, q8, s8, torch.float32)
                        if not ((y - ref).norm() / ref.norm()).item() < 1e-5:
                            raise ValueError("wrong result")
                        ts.append(timing.stream_ms(lambda q=q, s=s, q8=q8, s8=s8, cfg=cfg: W.int8_scaled_mm(
                            q, s, q8, s8, torch.bfloat16, None, cfg, _counters(device))))
            except Exception as e:  # a config that does not compile or run is logged and skipped
                log.append(dict(bucket=bkt, config=cfg, error=f"{type(e).__name__}: {e}"))
                continue
            gm = math.exp(sum(math.log(t) for t in ts) / len(ts))
            scores.append((gm, cfg))
            log.append(dict(bucket=bkt, config=cfg, geomean_ms=gm, times_ms=ts))
        if not scores:
            errors = [e["error"] for e in log if e["bucket"] == bkt and "error" in e]
            print(f"W8A8 bucket {bkt}: no candidate ran ({errors[0]}); keeping the config in code", flush=True)
            continue
        scores.sort(key=lambda t: t[0])
        best[bkt] = scores[0][1]
        print(f"tuned W8A8 bucket {bkt}: {scores[0][0] * 1e3:.1f} us  {scores[0][1]}", flush=True)
    return best


def rows_for(weights, ms, device) -> list[dict]:
    rows = []
    for (n, k), (wb, (q8, s8), (f8, sf8)) in weights.items():
        w_ref = Q.dequantize_int8_per_channel(q8, s8)
        for m in ms:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            q, s = W.act_quant(x)
            cfg = W.config_for(m)
            c = _counters(device)
            ops = {"cublas": lambda x=x, wb=wb: x @ wb.t(),
                   "w8a8": lambda x=x, w=q8, sw=s8, cfg=cfg, c=c: W.w8a8_matmul(x, w, sw, None, cfg, c),
                   "gemm": lambda q=q, s=s, w=q8, sw=s8, cfg=cfg, c=c: W.int8_scaled_mm(q, s, w, sw, torch.bfloat16,
                                                                                          None, cfg, c),
                   "act_quant": lambda x=x: W.act_quant(x),
                   "int_mm": lambda q=q, s=s, w=q8, sw=s8: int_mm_scaled(q, s, w, sw),
                   "fp8": lambda x=x, w=f8, sw=sf8: F8.fp8_linear(x, w, sw)}
            r = dict(N=n, K=k, M=m, config=json.dumps(cfg), int_mm_padded=m < INT_MM_MIN_M)
            for name, fn in ops.items():
                for sfx, timer in METHODS.items():
                    try:
                        r[f"{name}{sfx}_ms"] = timer(fn)
                    except Exception as e:  # e.g. _scaled_mm on a GPU without FP8: recorded, not fatal
                        r[f"{name}{sfx}_ms"] = float("nan")
                        r[f"{name}_error"] = f"{type(e).__name__}: {e}"
            ref = x.float() @ w_ref.t()
            for name in ("w8a8", "int_mm", "fp8"):
                if f"{name}_error" not in r:
                    y = ops[name]().float()
                    r[f"{name}_rel_err"] = ((y - ref).norm() / ref.norm()).item()
            rows.append(r)
            print(" ".join(f"{key}={v * 1e3:.1f}us" if key.endswith("_stream_ms") else "" for key, v in r.items()
                           if key.endswith("_stream_ms")) + f"  N={n} K={k} M={m}", flush=True)
    return rows


def report_md(meta, rows, shapes) -> str:
    out = [f"# W8A8 GEMM on {meta['card']} ({meta['date']})", "",
           f"torch {meta['torch']}, triton {meta['triton']}; command: `{meta['command']}`. "
           + __doc__.split("\n\n")[2].replace("\n", " "), "",
           f"A 1-element kernel takes {meta['floor_us']['cold_us']:.1f} us by the reference method and "
           f"{meta['floor_us']['stream_us']:.1f} us in-step.", ""]
    titles = {"": "reference method (dirty L2, isolated launch)", "_stream": "in-step (cold clean L2, back to back)"}
    for sfx, title in titles.items():
        out += [f"## Times, {title}", ""]
        for n, k in shapes:
            out += [f"### N x K = {n} x {k}", "",
                    "| M | cuBLAS bf16 us | W8A8 us | GEMM us | act quant us | _int_mm+epi us | FP8 _scaled_mm us "
                    "| W8A8 vs cuBLAS | GEMM vs _int_mm | W8A8 rel err |",
                    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in (r for r in rows if (r["N"], r["K"]) == (n, k)):
                t = {op: r[f"{op}{sfx}_ms"] * 1e3 for op in ("cublas", "w8a8", "gemm", "act_quant", "int_mm", "fp8")}
                pad = "*" if r["int_mm_padded"] else ""
                out.append(f"| {r['M']} | {t['cublas']:.1f} | {t['w8a8']:.1f} | {t['gemm']:.1f} | "
                           f"{t['act_quant']:.1f} | {t['int_mm']:.1f}{pad} | {t['fp8']:.1f} | "
                           f"{t['cublas'] / t['w8a8']:.2f}x | {t['int_mm'] / t['gemm']:.2f}x | "
                           f"{r.get('w8a8_rel_err', float('nan')):.1e} |")
            out.append("")
    out += ["\\* `_int_mm` takes M > 16: these rows ran it on 32 rows.", "", "## Configurations used", "", "```python"]
    out += [f"{k}: {v}" for k, v in meta["configs"].items()]
    errors = sorted({r[key] for r in rows for key in r if key.endswith("_error")})
    out += ["```", ""] + ([f"Errors: {'; '.join(errors)}", ""] if errors else [])
    return "\n".join(out)


def main_w8a8(args, shapes, ms, tune_shapes) -> None:
    """Run the W8A8 benchmark (``--tune`` first ranks candidates) and write ``w8a8_gemm-<card>-<date>.{md,json}``."""
    import sys

    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--smoke runs the kernels on the CPU interpreter: set TRITON_INTERPRET=1")
        shapes, ms, tune_shapes = [(96, 256)], [1, 20], [(96, 256)]
    torch.manual_seed(0)
    card = timing.card()
    floor = timing.floor_us() if device == "cuda" else {"cold_us": float("nan"), "stream_us": float("nan")}
    weights = {}
    for n, k in dict.fromkeys([*shapes, *tune_shapes]):
        wb = torch.randn(n, k, device=device, dtype=torch.bfloat16) * 0.02
        weights[(n, k)] = (wb, *quantize_weight(wb))
    log, winners = [], None
    if args.tune:
        buckets = {b: m for b, m in TUNE_MS.items() if not args.smoke or b in ("1", "64")}
        if args.smoke:
            buckets = {b: [2 if b == "1" else 20] for b in buckets}
        winners = tune({s: weights[s] for s in tune_shapes}, buckets, device, log, 2 if args.smoke else None)
        W.tables().update(winners)  # this GPU's table: the timed rows launch with the winners
    rows = rows_for({s: weights[s] for s in shapes}, ms, device)
    date = datetime.date.today().isoformat()
    meta = dict(card=card, date=date, torch=torch.__version__, triton=triton.__version__,
                command="python3 bench/quant_gemm.py " + " ".join(sys.argv[1:]), floor_us=floor,
                configs={f"W8A8/{b}": c for b, c in W.tables().items()}, tuned=bool(winners),
                device_key=tuned.current_key(),
                buckets_of_ms={m: bucket(m) for m in ms})
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"w8a8_gemm-{timing.card_slug(card)}-{date}")
    text = report_md(meta, rows, shapes)
    if not args.smoke:  # a smoke run checks the script; its CPU times are not results
        with open(base + ".json", "w") as f:
            json.dump(dict(meta=meta, rows=rows, tune_log=log), f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(text)
    print(text)
    if args.tune and not args.smoke:
        tuned.report_written(write_configs(args.out, meta), getattr(args, "write_package", False))


def write_configs(out: str, meta: dict) -> str:
    """This GPU's W8A8 configs (as the sweep left them) as a configs file of ``servesim/kernels/tuned.py``:
    ``w8a8_gemm_configs-<card>-<date>.json`` in ``out``."""
    provenance = {k: meta[k] for k in ("card", "date", "command", "torch", "triton")}
    doc = tuned.configs_document(meta["card"], "w8a8_gemm", W.section(W.tables()), provenance)
    path = os.path.join(out, f"w8a8_gemm_configs-{timing.card_slug(meta['card'])}-{meta['date']}.json")
    return str(tuned.write_document(path, doc))
