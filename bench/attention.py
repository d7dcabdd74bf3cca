"""Benchmark the paged attention kernels against PyTorch SDPA (cuDNN and flash backends) on one GPU.

    PYTHONPATH=. python3 bench/attention.py --out bench/results [--tune [--write-package]]

Prefill: causal, bf16, head_dim 128, 32 query / 8 KV heads (GQA 4), S = 1k..16k with batch 16k/S, TFLOP/s
counting causal FLOPs as 4 * S^2/2 * heads * head_dim per sequence. Decode: bf16, GQA 4, page 16, one
query token, bandwidth counting the K+V bytes read (batch * context * 2 * kv_heads * head_dim * 2 B).
SDPA runs on contiguous K/V (it has no paged path) in [batch, heads, seq, head_dim] views, with
``enable_gqa=True`` where the backend takes it, else with K/V expanded to 32 heads beforehand (noted).
Every figure is given twice (``servesim/kernels/timing.py``): plain columns use the issues' reference method (one
CUDA-graph replay after zeroing 256 MB: dirty L2 plus the isolated-launch floor), ``_stream`` columns the
in-step condition (back to back with a 256 MB read in one graph: cold, clean L2). ``--tune`` first sweeps
tile configs and the split heuristic (ranked in-step), applies the best, and records the sweep.

Without ``--tune`` the kernels launch with this GPU's tables (``servesim/kernels/tuned.py``). ``--tune`` also writes
the winners to ``<out>/attention_configs-<card>-<date>.json`` (the ``decode_attention`` and ``prefill_attention``
sections of a configs file); ``--write-package``, or ``python3 -m servesim.kernels.tuned install FILE`` later,
merges them into ``servesim/kernels/configs/<card>.json`` (the H100's tables are code: ``decode.py``, ``prefill.py``).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from servesim.kernels import timing, tuned
from servesim.kernels.attention import decode as dec
from servesim.kernels.attention import prefill as pre
from servesim.kernels.attention.kv_cache import allocate_kv_cache, write_kv, write_kv_bytes
from servesim.kernels.counters import SplitCounters, sm_count

HQ, HKV, D = 32, 8, 128
DT = torch.bfloat16
PREFILL_S = [1024, 2048, 4096, 8192, 16384]
DECODE_SHAPES = [(1, 8192), (1, 16384), (1, 32768), (4, 16384), (8, 8192), (16, 4096), (32, 2048),
                 (64, 1024), (16, 16384), (64, 4096), (128, 2048), (256, 1024)]
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
PREFILL_TOKENS = 16384  # batch * S of each prefill row
EXTRA_SHAPES = [(1, 16384), (64, 2048)]
DEV = "cuda"  # --smoke: "cpu" with the Triton interpreter and tiny shapes, to check this script


def ms(fn, rep: int = 50, flush: str | None = "dirty") -> float:
    """Reference-method time (:func:`timing.cold_ms`); eager ``do_bench`` when graph capture fails."""
    try:
        return timing.cold_ms(fn, reps=rep, flush=flush)
    except RuntimeError as e:
        print(f"  graph capture failed ({str(e).splitlines()[0][:80]}); eager timing", flush=True)
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


TIMERS = {"": ms, "_stream": timing.stream_ms}  # column suffix -> timer: reference method, in-step


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def paged_copy(k: torch.Tensor, v: torch.Tensor, lens: list[int], block_size: int = 16, head_major=False):
    """Scatter contiguous per-sequence K/V [sum(lens), H, D] into a paged cache with shuffled blocks."""
    blocks = [-(-n // block_size) for n in lens]
    k_cache, v_cache = allocate_kv_cache(sum(blocks), block_size, k.shape[1], k.shape[2], k.dtype, DEV,
                                         head_major)
    perm = torch.randperm(sum(blocks), device=DEV, dtype=torch.int64)
    tables = torch.zeros(len(lens), max(blocks), dtype=torch.int32, device=DEV)
    slots, first = [], 0
    for s, (n, nb) in enumerate(zip(lens, blocks, strict=True)):
        tables[s, :nb] = perm[first:first + nb].int()
        pos = torch.arange(n, device=DEV)
        slots.append(perm[first + pos // block_size] * block_size + pos % block_size)
        first += nb
    write_kv(k, v, k_cache, v_cache, torch.cat(slots))
    return k_cache, v_cache, tables


def sdpa(backend: str, q, k, v, causal: bool):
    """A closure timing SDPA on [B, H, S, D] views and a note on how GQA was handled."""
    def run(kk, vv, gqa):
        with sdpa_kernel(BACKENDS[backend]):
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=gqa)
    try:
        run(k, v, True)
        return (lambda: run(k, v, True)), "enable_gqa"
    except RuntimeError:
        group = q.shape[1] // k.shape[1]
        ke, ve = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        try:
            run(ke, ve, False)
            return (lambda: run(ke, ve, False)), "K/V expanded to 32 heads"
        except RuntimeError as e:
            return None, f"unavailable: {str(e).splitlines()[0][:80]}"


def prefill_inputs(s: int, batch: int):
    q = torch.randn(batch * s, HQ, D, device=DEV, dtype=DT)
    k = torch.randn(batch * s, HKV, D, device=DEV, dtype=DT)
    v = torch.randn(batch * s, HKV, D, device=DEV, dtype=DT)
    cu = torch.arange(0, batch * s + 1, s, device=DEV, dtype=torch.int32)
    return q, k, v, cu


def prefill_row(s: int, notes: dict) -> dict:
    """One prefill row: paged and contiguous kernels and the SDPA backends on the same data."""
    batch = max(1, PREFILL_TOKENS // s)
    q, k, v, cu = prefill_inputs(s, batch)
    k_cache, v_cache, tables = paged_copy(k, v, [s] * batch)
    lens = torch.full((batch,), s, device=DEV, dtype=torch.int32)
    flops = batch * 4 * s * s / 2 * HQ * D

    def view(x):
        return x.view(batch, s, x.shape[1], D).transpose(1, 2)

    runs = {"paged": lambda: pre.prefill_attention(q, k_cache, v_cache, tables, cu, lens, s),
            "contiguous": lambda: pre.prefill_attention_contiguous(q, k, v, cu, cu, s)}
    row = {"S": s, "batch": batch}
    for name in BACKENDS:
        runs[name], notes[f"prefill {name}"] = sdpa(name, view(q), view(k), view(v), causal=True)
    for suffix, timer in TIMERS.items():
        for name, fn in runs.items():
            row[f"{name}{suffix}_tflops"] = flops / timer(fn) / 1e9 if fn else float("nan")
    ref = next((runs[name]() for name in BACKENDS if runs[name] is not None), None)
    if ref is not None:
        row["rel_err_vs_sdpa"] = max(rel_err(view(runs[name]()), ref) for name in ("paged", "contiguous"))
    return row


def bench_prefill(rows: list, notes: dict) -> None:
    for s in PREFILL_S:
        rows.append(prefill_row(s, notes))
        print(rows[-1], flush=True)


def decode_inputs(batch: int, ctx: int, head_major=False, num_q: int = 1):
    k = torch.randn(batch * ctx, HKV, D, device=DEV, dtype=DT)
    v = torch.randn(batch * ctx, HKV, D, device=DEV, dtype=DT)
    k_cache, v_cache, tables = paged_copy(k, v, [ctx] * batch, 16, head_major)
    shape = (batch, HQ, D) if num_q == 1 else (batch, num_q, HQ, D)
    q = torch.randn(shape, device=DEV, dtype=DT)
    lens = torch.full((batch,), ctx, device=DEV, dtype=torch.int32)
    return q, k, v, k_cache, v_cache, tables, lens


def decode_fn(batch, ctx, inputs, config=None):
    q, _, _, k_cache, v_cache, tables, lens = inputs
    return lambda: dec.decode_attention(q, k_cache, v_cache, tables, lens, ctx, config=config, counters=counters())


def decode_row(batch: int, ctx: int, notes: dict) -> dict:
    inputs = decode_inputs(batch, ctx)
    q, k, v = inputs[:3]
    kv_bytes = dec.decode_bytes([ctx] * batch, HKV, D)
    ours = decode_fn(batch, ctx, inputs)
    row = {"batch": batch, "ctx": ctx, "splits": dec.choose_num_splits(batch, HKV, ctx, sms())}

    def view(x):
        return x.view(batch, ctx, HKV, D).transpose(1, 2)

    runs = {"ours": ours}
    for name in BACKENDS:
        runs[name], notes[f"decode {name}"] = sdpa(name, q.unsqueeze(2), view(k), view(v), causal=False)
    for suffix, timer in TIMERS.items():
        for name, fn in runs.items():
            row[f"{name}{suffix}_tbps"] = kv_bytes / timer(fn) / 1e9 if fn else float("nan")
    ref = next((fn().squeeze(2) for name, fn in runs.items() if name != "ours" and fn is not None), None)
    if ref is not None:
        row["rel_err_vs_sdpa"] = rel_err(ours(), ref)
    return row


def bench_decode(rows: list, notes: dict) -> None:
    for batch, ctx in DECODE_SHAPES:
        rows.append(decode_row(batch, ctx, notes))
        print(rows[-1], flush=True)


def bench_decode_extras(rows: list) -> None:
    """Speculative verification (4 tokens), fp8 KV, head-major layout and the KV write kernel."""
    for batch, ctx in EXTRA_SHAPES:
        for label, kwargs in (("spec4", dict(num_q=4)), ("head-major", dict(head_major=True))):
            inputs = decode_inputs(batch, ctx, **kwargs)
            t = ms(decode_fn(batch, ctx, inputs))
            rows.append({"case": f"decode {label} b{batch} ctx{ctx}", "us": t * 1e3,
                         "tbps_kv": dec.decode_bytes([ctx] * batch, HKV, D) / t / 1e9})
        q, _, _, k_cache, v_cache, tables, lens = decode_inputs(batch, ctx)
        scale = torch.full((HKV,), 0.02, device=DEV)
        k8, v8 = ((x.float() / 0.02).to(torch.float8_e4m3fn) for x in (k_cache, v_cache))
        t = ms(lambda: dec.decode_attention(q, k8, v8, tables, lens, ctx, k_scale=scale, v_scale=scale,  # noqa: B023
                                            counters=counters()))
        rows.append({"case": f"decode fp8 b{batch} ctx{ctx}", "us": t * 1e3,
                     "tbps_kv": dec.decode_bytes([ctx] * batch, HKV, D, kv_dtype_bytes=1) / t / 1e9})
    n = PREFILL_TOKENS
    key, value = (torch.randn(n, HKV, D, device=DEV, dtype=DT) for _ in range(2))
    k_cache, v_cache = allocate_kv_cache(n // 16, 16, HKV, D, DT, DEV)
    slots = torch.randperm(n, device=DEV)
    t = ms(lambda: write_kv(key, value, k_cache, v_cache, slots))
    rows.append({"case": f"write_kv {n} tokens", "us": t * 1e3, "tbps_kv": write_kv_bytes(n, HKV, D) / t / 1e9})
    breakdown(rows)
    for r in rows:
        print(r, flush=True)


def breakdown(rows: list) -> None:
    """Where the time of batch-1 decode goes: timing floor, L2-warm run, the merge kernel alone."""
    if DEV == "cuda":
        for method, us in timing.floor_us().items():
            rows.append({"case": f"floor: one 1-element kernel, {method[:-3]} method", "us": us,
                         "tbps_kv": float("nan")})
    batch, ctx = EXTRA_SHAPES[0]
    inputs = decode_inputs(batch, ctx)
    kv_bytes = dec.decode_bytes([ctx] * batch, HKV, D)
    splits = dec.choose_num_splits(batch, HKV, ctx, sms())
    for label, kwargs in (("dirty L2", {}), ("clean L2", dict(flush="clean")), ("L2 warm", dict(flush=None))):
        t = ms(decode_fn(batch, ctx, inputs), **kwargs)
        rows.append({"case": f"decode b{batch} ctx{ctx} {splits} splits, {label}", "us": t * 1e3,
                     "tbps_kv": kv_bytes / t / 1e9})
    t = ms(lambda: dec.decode_attention(*inputs[:1], *inputs[3:], ctx, num_splits=1, counters=counters()))
    rows.append({"case": f"decode b{batch} ctx{ctx} 1 split (no merge)", "us": t * 1e3, "tbps_kv": kv_bytes / t / 1e9})


def sms() -> int:
    return sm_count(DEV)


@functools.cache
def counters() -> SplitCounters:
    """The split-merge counters of every timed decode launch (the benchmark runs on one stream)."""
    return SplitCounters(DEV)


# --- tuning: each candidate is compiled and timed once; the best goes into the module dicts ----------------

PREFILL_CANDIDATES = [  # (BLOCK_M, BLOCK_N, num_warps, num_stages) of the paged path; the page-id lookup takes
    # a pipeline stage, so Triton 3.6 buffers (num_stages + 1) // 2 K/V tiles here
    (128, 64, 8, 5), (128, 64, 8, 7), (128, 128, 8, 3), (64, 64, 4, 5), (64, 64, 4, 3), (128, 64, 8, 3)]
TUNE_PREFILL_S = [4096, 8192]
DECODE_CANDIDATES = [  # (BLOCK_N, num_warps, num_stages, PREFETCH: first tiles' K/V rows prefetched into L2)
    (64, 4, 3, 0), (64, 4, 3, 1), (64, 4, 3, 2), (64, 4, 3, 4), (64, 4, 5, 1), (128, 4, 3, 1), (32, 4, 7, 2)]
SPLIT_GRID = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
SPLIT_WAVES_GRID = [2, 3, 4]
MIN_KEYS_GRID = [128, 256, 512]


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def timed(fn) -> float:
    """In-step time of a tuning candidate (configs are ranked in the condition they run in)."""
    try:
        return timing.stream_ms(fn, reps=7)
    except Exception as e:  # a config that does not compile or fit in shared memory
        print(f"  failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
        return float("inf")


def tune_prefill(log: list) -> None:
    """Paged-path tiles at S = 4k and 8k (the contiguous TMA config is kept)."""
    sizes = TUNE_PREFILL_S if DEV == "cuda" else [64]
    cases = []
    for s in sizes:
        batch = max(1, PREFILL_TOKENS // s)
        q, k, v, cu = prefill_inputs(s, batch)
        k_cache, v_cache, tables = paged_copy(k, v, [s] * batch)
        lens = torch.full((batch,), s, device=DEV, dtype=torch.int32)
        cases.append((s, batch * 4 * s * s / 2 * HQ * D, (q, k_cache, v_cache, tables, cu, lens)))
    best = (0.0, None)
    for bm, bn, w, st in PREFILL_CANDIDATES:
        cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
        tflops = {}
        for s, flops, args in cases:
            tflops[s] = flops / timed(lambda: pre.prefill_attention(*args, s, config=cfg)) / 1e9  # noqa: B023
        log.append({"kernel": "prefill", "path": "paged", **cfg, "tflops": tflops,
                    "geomean": geomean(list(tflops.values()))})
        print(log[-1], flush=True)
        best = max(best, (log[-1]["geomean"], cfg), key=lambda x: x[0])
    pre.tables()[(D, True)] = best[1]  # this GPU's table: the timed rows launch with it


def decode_config(cand: tuple) -> dict:
    return dict(BLOCK_N=cand[0], num_warps=cand[1], num_stages=cand[2], PREFETCH=cand[3])


def tune_decode(log: list) -> None:
    """Per config: every decode shape at a grid of split counts, then the split heuristic's parameters.

    The config with the best geomean of per-shape best TB/s wins; then (SPLIT_WAVES, MIN_SPLIT_KEYS) are
    chosen by the geomean TB/s of the split counts they pick (timings memoised per split count).
    """
    shapes = DECODE_SHAPES if DEV == "cuda" else [(1, 512), (2, 256)]
    inputs = {shape: decode_inputs(*shape) for shape in shapes}
    cache: dict = {}

    def tbps(cfg_key, shape, splits) -> float:
        if (cfg_key, shape, splits) not in cache:
            b, c = shape
            cfg = decode_config(cfg_key)
            q, _, _, k_cache, v_cache, tables, lens = inputs[shape]
            t = timed(lambda: dec.decode_attention(q, k_cache, v_cache, tables, lens, c, num_splits=splits,
                                                   config=cfg, counters=counters()))
            cache[(cfg_key, shape, splits)] = dec.decode_bytes([c] * b, HKV, D) / t / 1e9
        return cache[(cfg_key, shape, splits)]

    best = (0.0, None)
    for cand in DECODE_CANDIDATES:
        per_shape = {}
        for b, c in shapes:
            grid = [s for s in SPLIT_GRID if s == 1 or (c // s >= 64 and b * HKV * s <= 64 * sms())]
            per_shape[(b, c)] = {s: tbps(cand, (b, c), s) for s in grid}
        top = [max(v.values()) for v in per_shape.values()]
        log.append({"kernel": "decode", **decode_config(cand),
                    "grid": {str(k): v for k, v in per_shape.items()}, "best_geomean": geomean(top)})
        print({k: v for k, v in log[-1].items() if k != "grid"},
              {str(k): max(v, key=v.get) for k, v in per_shape.items()}, flush=True)
        best = max(best, (geomean(top), cand), key=lambda x: x[0])
    cand = best[1]
    table = dec.tables()  # this GPU's: the timed rows launch with what the sweep leaves in it
    table.configs[D] = decode_config(cand)
    tune_wide(log, table, shapes, tbps)
    best = (0.0, None)
    for waves in SPLIT_WAVES_GRID:
        for min_keys in MIN_KEYS_GRID:
            table.split.update(SPLIT_WAVES=waves, MIN_SPLIT_KEYS=min_keys)
            got = {str(sh): tbps(cand, sh, dec.choose_num_splits(*sh[:1], HKV, sh[1], sms())) for sh in shapes}
            log.append({"kernel": "split", "SPLIT_WAVES": waves, "MIN_SPLIT_KEYS": min_keys, "tbps": got,
                        "geomean": geomean(list(got.values()))})
            print(log[-1], flush=True)
            best = max(best, (log[-1]["geomean"], (waves, min_keys)), key=lambda x: x[0])
    table.split.update(SPLIT_WAVES=best[1][0], MIN_SPLIT_KEYS=best[1][1])


WIDE_WAVES = 3  # programs per SM from which the wide-grid config launches (dec.WIDE_CONFIGS)


def tune_wide(log: list, table, shapes, tbps) -> None:
    """The wide-grid config: the candidate with the best geomean TB/s over the shapes whose unsplit grid holds at
    least WIDE_WAVES programs per SM (the split heuristic leaves them unsplit), kept where it beats the config the
    sweep chose there; from the timings ``tbps`` already memoised."""
    wide = [sh for sh in shapes if sh[0] * HKV >= WIDE_WAVES * sms()]
    if not wide:
        return
    scores = {cand: geomean([tbps(cand, sh, 1) for sh in wide]) for cand in DECODE_CANDIDATES}
    best = max(scores, key=scores.get)
    chosen = next(c for c in DECODE_CANDIDATES if decode_config(c) == table.configs[D])
    log.append({"kernel": "decode-wide", "shapes": [str(sh) for sh in wide], "MIN_WAVES": WIDE_WAVES,
                "geomean": {str(c): v for c, v in scores.items()}, "best": str(best)})
    print(log[-1], flush=True)
    if scores[best] > scores[chosen]:
        table.wide[D] = {**decode_config(best), "MIN_WAVES": WIDE_WAVES}
    else:
        table.wide.pop(D, None)


def tune(out: str) -> list:
    log: list = []
    tune_decode(log)
    tune_prefill(log)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tune-partial.json"), "w") as f:  # kept if the benchmark runs out of time
        json.dump(log, f, default=str)
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results", help="folder for the .md and .json results")
    ap.add_argument("--tune", action="store_true", help="sweep configs first and use the best")
    ap.add_argument("--write-package", action="store_true", help="with --tune: install the winners as this GPU's "
                    "configs (servesim/kernels/configs/<card>.json)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU interpreter (script check)")
    args = ap.parse_args()
    if args.write_package and not args.tune:
        ap.error("--write-package installs what --tune chose: pass --tune too")
    if args.smoke:
        global DEV, PREFILL_S, DECODE_SHAPES, PREFILL_CANDIDATES, DECODE_CANDIDATES, PREFILL_TOKENS, EXTRA_SHAPES
        global SPLIT_GRID, SPLIT_WAVES_GRID, MIN_KEYS_GRID
        SPLIT_GRID, SPLIT_WAVES_GRID, MIN_KEYS_GRID = [1, 3], [2], [128]
        DEV, PREFILL_S, DECODE_SHAPES = "cpu", [256], [(1, 512), (2, 256)]
        PREFILL_TOKENS, EXTRA_SHAPES = 256, [(1, 256)]
        PREFILL_CANDIDATES, DECODE_CANDIDATES = PREFILL_CANDIDATES[-2:], DECODE_CANDIDATES[:2]
    torch.manual_seed(0)
    card = timing.card()
    meta = {"card": card, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "triton": triton.__version__, "sms": sms(),
            "command": "PYTHONPATH=. python3 bench/attention.py" + (" --tune" if args.tune else ""),
            "device_key": tuned.current_key()}
    sweep = tune(args.out) if args.tune else None
    if args.tune:  # the configs file before the timed rows, so that a failure there loses no tuning
        tuned.report_written(write_configs(args.out, meta), args.write_package)
    notes: dict = {}
    prefill, decode, extras = [], [], []
    bench_prefill(prefill, notes)
    for r in prefill:
        r["paged/cudnn"] = r["paged_tflops"] / r["cudnn_tflops"]
        r["paged/flash"] = r["paged_tflops"] / r["flash_tflops"]
        r["contig/cudnn"] = r["contiguous_tflops"] / r["cudnn_tflops"]
        r["paged/cudnn stream"] = r["paged_stream_tflops"] / r["cudnn_stream_tflops"]
    bench_decode(decode, notes)
    for r in decode:
        r["ours/cudnn"] = r["ours_tbps"] / r["cudnn_tbps"]
        r["ours/flash"] = r["ours_tbps"] / r["flash_tbps"]
        r["ours/cudnn stream"] = r["ours_stream_tbps"] / r["cudnn_stream_tbps"]
    bench_decode_extras(extras)
    configs = {"prefill": {str(k): v for k, v in pre.tables().items()}, "decode": dec.tables().configs,
               "split": dec.tables().split, "decode_wide": dec.tables().wide}
    result = {"meta": meta, "notes": notes, "configs": configs, "prefill": prefill, "decode": decode,
              "extras": extras, "tune": sweep}
    stem = os.path.join(args.out, f"attention-{timing.card_slug(card)}-{meta['date']}")
    os.makedirs(args.out, exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    md = [f"# Paged attention vs SDPA on {card}", "", "```", json.dumps(meta, indent=1), "```", "",
          __doc__.split("\n\n")[2].replace("\n", " "), "",
          f"SDPA GQA handling: {json.dumps(notes)}", f"Configs: `{json.dumps(configs, default=str)}`", "",
          "## Prefill (causal, bf16, hd128, 32q/8kv heads; TFLOP/s = 4*S^2/2*heads*hd*batch / time)", "",
          timing.markdown_table(prefill), "",
          "## Decode (bf16, GQA 4, page 16, 1 token; TB/s = K+V bytes / time)", "",
          timing.markdown_table(decode), "", "## Extras", "", timing.markdown_table(extras), ""]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md))
    print("\n".join(md[10:]))


def write_configs(out: str, meta: dict) -> str:
    """This GPU's decode and prefill tables (as the sweep left them) as a configs file of
    ``servesim/kernels/tuned.py``: ``attention_configs-<card>-<date>.json`` in ``out``."""
    provenance = {k: meta[k] for k in ("card", "date", "command", "torch", "triton")}
    doc = tuned.configs_document(meta["card"], "decode_attention", dec.section(dec.tables()), provenance)
    doc["prefill_attention"] = {**provenance, **pre.section(pre.tables())}
    path = os.path.join(out, f"attention_configs-{timing.card_slug(meta['card'])}-{meta['date']}.json")
    return str(tuned.write_document(path, doc))


if __name__ == "__main__":
    main()
