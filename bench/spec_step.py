"""Benchmark a speculative decode step as the engine runs it: one CUDA graph (draft passes + verification) against
the eager path, on the same runner.

    PYTHONPATH=. python3 bench/spec_step.py --out DIR [--model Llama-3.1-8B] [--draft Llama-3.2-1B] [--k 3]

Random weights of the two shapes, controlled acceptance (alpha 0.7: random weights accept nothing). For each
(batch, context) every sequence sits at the same context and the step is run again and again at that context
(the draft one token behind each time): ``runner.run`` wall time (host inputs, the device work, the tokens back,
acceptance) and device time (CUDA events), median of 20, with the fixed-shape step captured as a CUDA graph and
with the eager path (``runner.static_spec`` off: the draft's catch-up through the prefill kernel, its k - 1
passes and the verification launched from Python). Also the capture of every speculative graph up to the
largest context measured: seconds and the allocator's growth.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from servesim.engine.engine import EngineConfig, build_engine
from servesim.hwmodels.ops import decode_shape
from servesim.sim.request import Batch, Request

SHAPES = [(1, 1024), (4, 1024), (16, 1024), (16, 4096), (64, 1024), (128, 1024)]


def spec_batch(batch: int, ctx: int, k: int) -> Batch:
    """``batch`` sequences with ``ctx`` tokens cached before the step's ``1 + k``."""
    per = -(-(ctx + k + 1) // 16)
    reqs = []
    for i in range(batch):
        r = Request(i, 0.0, ctx + 1, 10**6)
        r.block_ids = list(range(i * per, (i + 1) * per))
        reqs.append(r)
    full = ctx + k + 1
    return Batch([], reqs, np.full(batch, full, np.int64), k + 1, decode_shape(batch, full, k))


def measure(runner, batch: Batch, reps: int = 20) -> tuple[float, float, bool]:
    runner.run(batch)  # a graph's capture, or the eager path's first launch
    walls, gpus = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        runner.run(batch)
        walls.append((time.perf_counter() - t0) * 1e3)
        gpus.append(runner.stats.gpu_s * 1e3)
    return statistics.median(walls), statistics.median(gpus), runner.stats.graph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="Llama-3.1-8B")
    ap.add_argument("--draft", default="Llama-3.2-1B")
    ap.add_argument("--k", type=int, default=3)
    args = ap.parse_args()
    k, top = args.k, max(c for _, c in SHAPES) + args.k + 1
    blocks = max(b * -(-(c + k + 1) // 16) for b, c in SHAPES) + 16
    eng = build_engine(EngineConfig(model=args.model, max_model_len=8192, max_num_batched_tokens=2048,
                                    max_num_seqs=max(b for b, _ in SHAPES), num_gpu_blocks=blocks, spec_k=k,
                                    draft_model=args.draft, spec_mode="controlled", capture_at_start=False))
    runner = eng.runner
    reserved = torch.cuda.memory_reserved()
    capture_s = runner.capture_all(max_ctx=top)
    pool = torch.cuda.memory_reserved() - reserved
    rows = []
    for b, c in SHAPES:
        batch = spec_batch(b, c, k)
        for r in batch.decode:
            runner.tokens[r.request_id] = [int(x) for x in np.random.default_rng(r.request_id).integers(0, 1000, c + 1)]
        row = {"batch": b, "context": c, "k": k}
        for mode, static in (("graph", True), ("eager", False)):
            runner.static_spec = static
            wall, gpu, graph = measure(runner, batch)
            assert graph == static, (mode, graph)
            row.update({f"{mode}_run_ms": wall, f"{mode}_gpu_ms": gpu})
        row["speedup"] = row["eager_run_ms"] / row["graph_run_ms"]
        rows.append(row)
        print(row, flush=True)
        for r in batch.decode:
            runner.release(r)
    doc = {"date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(), "model": args.model,
           "draft": args.draft, "k": k, "graphs": len(runner.graphs), "capture_s": capture_s, "pool_bytes": pool,
           "command": "PYTHONPATH=. python3 bench/spec_step.py --out " + str(args.out), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"spec_step-{torch.cuda.get_device_name().split()[-1].lower()}-{doc['date']}"
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [f"# Speculative decode step, {args.model} + draft {args.draft}, k = {k} ({doc['gpu']}, {doc['date']})", "",
             f"`{doc['command']}`; {doc['graphs']} speculative graphs captured in {capture_s:.1f} s, "
             f"{pool / 2**20:.0f} MiB of pool.", "",
             "| batch | context | graph run ms | graph device ms | eager run ms | eager device ms | speed-up |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['context']} | {r['graph_run_ms']:.2f} | {r['graph_gpu_ms']:.2f} | "
              f"{r['eager_run_ms']:.2f} | {r['eager_gpu_ms']:.2f} | {r['speedup']:.2f}x |" for r in rows]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
