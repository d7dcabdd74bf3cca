"""Benchmark the engine's forward steps against their floors and against HF transformers in the same run.

    PYTHONPATH=. python3 bench/engine.py --out DIR [--model Llama-3.1-8B] [--formats bf16,w8a16,w4a16] [--no-hf]

Random weights of the model's shape. Measured in one process on one GPU:
* ceilings: device copy bandwidth (1 GiB, read + write) and a bf16 8192^3 matmul on random data;
* decode steps (one token per sequence, every sequence at the same context) as the engine runs them: the
  CUDA graph of the runner's decode step (forward + greedy sampling), median of 30 replays timed with events;
  also the whole ``runner.run`` (host input building + replay + the device-to-host copy of the tokens);
* an 8192-token prefill (one chunk, eager), median of 5;
* HF transformers (``AutoModelForCausalLM``, SDPA, bf16) with a static cache: its decode forward captured in
  a CUDA graph and replayed the same way, and the same prefill.
Floors: decode = (every weight byte + the KV bytes the step reads) / copy bandwidth; prefill = FLOPs / the
measured matmul rate. Tokens/s at batch B = B / decode step time.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import triton

from servesim.engine.engine import EngineConfig, build_engine
from servesim.hwmodels.ops import decode_shape, prefill_shape
from servesim.kernels import timing
from servesim.provenance import git_commit
from servesim.sim.request import Batch, PrefillChunk, Request

DECODE = [(1, 512), (1, 8192), (8, 2048), (64, 1024), (256, 512)]
THROUGHPUT = [(1, 1024), (16, 1024), (64, 1024), (256, 1024)]
PREFILL = 8192


def events_ms(fn, reps: int) -> float:
    samples = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        samples.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(x.elapsed_time(y) for x, y in samples)


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="median")
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def _requests(batch: int, ctx: int, block_size: int, first_block: int = 0) -> list[Request]:
    per = -(-(ctx + 1) // block_size)
    out = []
    for i in range(batch):
        r = Request(i, 0.0, ctx + 1, 10**6)  # ctx tokens cached, the last emitted token to compute
        r.block_ids = list(range(first_block + i * per, first_block + (i + 1) * per))
        out.append(r)
    return out


def decode_batch(reqs: list[Request], ctx: int) -> Batch:
    return Batch([], reqs, np.full(len(reqs), ctx, np.int64), 1, decode_shape(len(reqs), ctx))


def engine_rows(model: str, fmt: str, kv: str, mm_tflops: float, copy_bw: float) -> tuple[list[dict], dict]:
    blocks = max(b * -(-(c + 1) // 16) for b, c in DECODE + THROUGHPUT + [(1, PREFILL)]) + 16
    t0 = time.perf_counter()
    eng = build_engine(EngineConfig(model=model, weight_format=fmt, kv_dtype=kv, max_model_len=16384,
                                    max_num_batched_tokens=PREFILL, max_num_seqs=256, num_gpu_blocks=blocks,
                                    capture_at_start=False))
    build_s = time.perf_counter() - t0
    runner, mc = eng.runner, eng.model_config
    weight_bytes = eng.model.w.nbytes()
    kv_token = 2 * mc.num_layers * mc.kv_size * (1 if kv == "fp8" else 2)
    rows = []
    for b, c in sorted(set(DECODE + THROUGHPUT)):
        reqs = _requests(b, c, 16)
        batch = decode_batch(reqs, c + 1)
        runner.run(batch)  # captures the graph of this (batch, context) bucket
        key = runner._graph_key(batch, batch.decode_ctx)
        graph, _ = runner.graphs[key]
        step = events_ms(graph.replay, 30)
        walls = []
        for _ in range(10):
            t1 = time.perf_counter()
            runner.run(batch)
            walls.append((time.perf_counter() - t1) * 1e3)
        wall = statistics.median(walls)
        floor = (weight_bytes + b * (c + 1) * kv_token) / copy_bw * 1e3
        rows.append({"engine": "servesim", "format": fmt, "kv": kv, "op": "decode", "batch": b, "context": c,
                     "step_ms": step, "run_ms": wall, "floor_ms": floor, "vs_floor": step / floor,
                     "tokens_per_s": b / step * 1e3, "graph_bucket": list(key)})
        print(rows[-1], flush=True)
        for r in reqs:
            runner.release(r)
    r = _requests(1, PREFILL, 16)[0]
    r.prompt_tokens = PREFILL
    batch = Batch([PrefillChunk(r, PREFILL, 0)], [], np.zeros(0, np.int64), 1, prefill_shape(PREFILL))
    runner.run(batch)
    gpu = statistics.median((runner.run(batch), runner.stats.gpu_s * 1e3)[1] for _ in range(5))
    flops = prefill_flops(mc, PREFILL)
    floor = flops / (mm_tflops * 1e12) * 1e3
    rows.append({"engine": "servesim", "format": fmt, "kv": kv, "op": "prefill", "batch": 1, "context": PREFILL,
                 "step_ms": gpu, "floor_ms": floor, "vs_floor": gpu / floor, "tflops": flops / gpu / 1e9})
    print(rows[-1], flush=True)
    meta = {"format": fmt, "kv": kv, "weight_bytes": weight_bytes, "build_s": build_s, **eng.timings_s}
    eng = runner = None  # free the GPU memory before the next build
    gc.collect()
    torch.cuda.empty_cache()
    return rows, meta


def prefill_flops(mc, n: int) -> float:
    """GEMM FLOPs of every layer over n tokens, causal attention FLOPs, and the LM head of the last token."""
    h, q, kv, i = mc.hidden_size, mc.q_size, mc.kv_size, mc.intermediate_size
    per_token = 2 * h * (q + 2 * kv) + 2 * q * h + 2 * h * 2 * i + 2 * i * h
    attn = 4 * q * n * (n + 1) / 2
    return mc.num_layers * (per_token * n + attn) + 2 * h * mc.vocab_size


def hf_rows(model: str, copy_bw: float, mm_tflops: float) -> list[dict]:
    import transformers

    from servesim.engine.config import EngineModelConfig

    mc = EngineModelConfig.resolve(model)
    cfg = {k: v for k, v in mc.hf_config_dict().items() if k != "architectures"}
    hfc = transformers.AutoConfig.for_model(**cfg)
    with torch.device("cuda"):
        hf = transformers.AutoModelForCausalLM.from_config(hfc, dtype=torch.bfloat16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    kv_token = 2 * mc.num_layers * mc.kv_size * 2
    rows = []
    for b, c in sorted(set(DECODE + THROUGHPUT)):
        try:
            step, how = _hf_decode_ms(transformers, hf, b, c)
        except Exception as exc:  # noqa: BLE001 - record why the baseline is missing
            rows.append({"engine": "hf", "format": "bf16", "op": "decode", "batch": b, "context": c,
                         "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            print(rows[-1], flush=True)
            continue
        floor = (weight_bytes + b * (c + 1) * kv_token) / copy_bw * 1e3
        rows.append({"engine": "hf", "format": "bf16", "kv": "bf16", "op": "decode", "batch": b, "context": c,
                     "step_ms": step, "floor_ms": floor, "vs_floor": step / floor, "tokens_per_s": b / step * 1e3,
                     "timing": how})
        print(rows[-1], flush=True)
        gc.collect()
        torch.cuda.empty_cache()
    ids = torch.randint(0, mc.vocab_size, (1, PREFILL), device="cuda")
    with torch.no_grad():
        step = triton.testing.do_bench(lambda: hf(input_ids=ids, use_cache=False, logits_to_keep=1), warmup=1,
                                       rep=5, return_mode="median")
    flops = prefill_flops(mc, PREFILL)
    rows.append({"engine": "hf", "format": "bf16", "op": "prefill", "batch": 1, "context": PREFILL, "step_ms": step,
                 "floor_ms": flops / (mm_tflops * 1e12) * 1e3, "tflops": flops / step / 1e9})
    print(rows[-1], flush=True)
    hf = None
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def _hf_decode_ms(transformers, hf, b: int, c: int) -> tuple[float, str]:
    """HF decode step at batch b, context c: static cache of c + 1 slots, cache filled with random K/V."""
    cache = transformers.StaticCache(config=hf.config, max_cache_len=c + 1)
    ids = torch.randint(0, hf.config.vocab_size, (b, 1), device="cuda")
    with torch.no_grad():
        hf(input_ids=ids, past_key_values=cache, cache_position=torch.zeros(1, dtype=torch.long, device="cuda"),
           use_cache=True)
        for layer in getattr(cache, "layers", []):  # random K/V: never time on zeros
            for name in ("keys", "values"):
                if isinstance(getattr(layer, name, None), torch.Tensor):
                    getattr(layer, name).normal_()
    pos = torch.full((1,), c, dtype=torch.long, device="cuda")
    position_ids = torch.full((b, 1), c, dtype=torch.long, device="cuda")

    def step():
        with torch.no_grad():
            out = hf(input_ids=ids, past_key_values=cache, cache_position=pos, position_ids=position_ids,
                     use_cache=True)
            return torch.argmax(out.logits[:, -1], dim=-1)

    step()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        return events_ms(g.replay, 30), "cuda-graph"
    except Exception as exc:  # noqa: BLE001
        print(f"HF graph capture failed at {b}x{c}: {exc}; eager", flush=True)
        torch.cuda.synchronize()
        return events_ms(step, 20), "eager"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="Llama-3.1-8B")
    ap.add_argument("--formats", default="bf16,w8a16,w4a16")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--markdown-from", type=Path, help="rewrite the markdown of an earlier JSON result and exit")
    args = ap.parse_args()
    if args.markdown_from:
        doc = json.loads(args.markdown_from.read_text())
        args.markdown_from.with_suffix(".md").write_text(markdown(doc))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    copy_bw = timing.copy_bandwidth()
    mm = matmul_tflops()
    print(f"copy {copy_bw / 1e12:.2f} TB/s, bf16 matmul {mm:.0f} TFLOP/s", flush=True)
    rows, metas = [], []
    for fmt in args.formats.split(","):
        r, m = engine_rows(args.model, fmt, "bf16", mm, copy_bw)
        rows += r
        metas.append(m)
    if not args.no_hf:
        rows += hf_rows(args.model, copy_bw, mm)
    card = timing.card()
    date = datetime.date.today().isoformat()
    commit = git_commit()
    doc = {"card": card, "date": date, "torch": torch.__version__, "triton": triton.__version__,
           "command": f"PYTHONPATH=. python3 bench/engine.py --model {args.model} --formats {args.formats}",
           "commit": commit, "copy_bytes_per_s": copy_bw, "matmul_tflops": mm, "builds": metas, "rows": rows}
    slug = timing.card_slug(card)
    (args.out / f"engine-{slug}-{date}.json").write_text(json.dumps(doc, indent=1))
    (args.out / f"engine-{slug}-{date}.md").write_text(markdown(doc))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    """The results as tables: decode and prefill against floors and HF, and tokens/s by batch and format."""
    rows = [r for r in doc["rows"] if "error" not in r]
    lines = [f"# Engine steps on {doc['card']} ({doc['date']})", "",
             f"`{doc['command']}` at commit {doc['commit']}; torch {doc['torch']}, Triton {doc['triton']}. Same run: "
             f"device copy {doc['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 8192^3 matmul {doc['matmul_tflops']:.0f} "
             "TFLOP/s. Random weights of the model's shape. Decode: the engine's CUDA graph of one step (forward + "
             "greedy sampling), median of 30 replays; `run` adds the host side (inputs, launch, token copy). HF: "
             "transformers with a static cache, its decode forward captured in a CUDA graph. Floors: every weight "
             "byte plus the KV bytes read, over the copy bandwidth; prefill FLOPs over the matmul rate.", "",
             "| engine | format | op | batch | context | step ms | run ms | floor ms | x floor | tokens/s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['format']} | {r['op']} | {r['batch']} | {r['context']} | "
                     f"{r['step_ms']:.3f} | {r.get('run_ms', float('nan')):.3f} | {r['floor_ms']:.3f} | "
                     f"{r['step_ms'] / r['floor_ms']:.3f} | {r.get('tokens_per_s', float('nan')):,.0f} |")
    hf = {(r["op"], r["batch"], r["context"]): r["step_ms"] for r in rows if r["engine"] == "hf"}
    ours = [r for r in rows if r["engine"] == "servesim" and (r["op"], r["batch"], r["context"]) in hf]
    if ours:
        lines += ["", "Speed-up over HF transformers in the same run (bf16 rows of both):", "",
                  "| format | op | batch | context | HF ms | servesim ms | speed-up |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in ours:
            h = hf[(r["op"], r["batch"], r["context"])]
            lines.append(f"| {r['format']} | {r['op']} | {r['batch']} | {r['context']} | {h:.3f} | "
                         f"{r['step_ms']:.3f} | {h / r['step_ms']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
