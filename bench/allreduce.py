"""All-reduce (and logits all-gather) latency and bus bandwidth per message size on N GPUs of one host.

    PYTHONPATH=. python3 bench/allreduce.py --tp 2,4 --out bench/results [--models Llama-3.1-8B,Llama-3.1-70B]

One process per GPU (NCCL, with NVLS/multicast off: ``servesim.kernels.comm.NCCL_ENV``), the sizes a TP step of
the models sends (``servesim.calibrate.collectives.message_sizes``: decode batch x hidden x 2 bytes, prefill chunk
x hidden x 2 bytes; the sampled rows' logits for the all-gather), timed as calibration times them: ``copies``
calls captured back to back in one CUDA graph (median, p20, p80 of 11 replays, per call) and the eager call
beside it. Algorithm bandwidth = bytes / time; bus bandwidth = algorithm bandwidth x 2 (N - 1) / N for the
all-reduce, x (N - 1) / N for the all-gather (nccl-tests' convention). Writes
``allreduce-<gpu>x<N>-<date>.{md,json}`` per N. ``--device cpu`` runs the same pipeline on gloo (a check of the
script; its figures are not results).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from servesim.calibrate.collectives import COPIES, REPS, measure, message_sizes
from servesim.hwmodels.models import get_model
from servesim.kernels import timing

BUS = {"allreduce": lambda n: 2 * (n - 1) / n, "allgather": lambda n: (n - 1) / n}


def rows_of(tables, tp: int, models: list[str]) -> list[dict]:
    specs = [get_model(m) for m in models]
    out = []
    for t in tables:
        per_token = {m.name: m.hidden_size * 2 if t.op == "allreduce" else m.vocab_size * 2 for m in specs}
        for i, b in enumerate(t.grid[0]):
            med = t.median_s[i]
            what = ", ".join(f"{m} x{int(b // p)}" for m, p in per_token.items() if b % p == 0)
            out.append({"op": t.op, "tp": tp, "bytes": int(b), "for": what, "median_us": med * 1e6,
                        "p20_us": t.p20_s[i] * 1e6, "p80_us": t.p80_s[i] * 1e6,
                        "eager_us": t.reference_s[i] * 1e6 if t.reference_s else None,
                        "algbw_GBps": b / med / 1e9, "busbw_GBps": b / med * BUS[t.op](tp) / 1e9})
    return out


def write(out: Path, card: str, tp: int, meta: dict, rows: list[dict]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"allreduce-{card}x{tp}-{meta['date']}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    cuda = meta["nccl"] != "gloo"
    how = (f"{tp} GPUs, one process each; NCCL {meta['nccl']}, torch {meta['torch']}, CUDA {meta['cuda']}; "
           f"environment {meta['env']}" if cuda else
           f"{tp} CPU processes, gloo, torch {meta['torch']}: a check of the script, not a result")
    timed = (f"time: {COPIES} calls back to back in one CUDA graph, median (p20-p80) of {REPS} replays per call; "
             "eager: one launched call, median of 10" if cuda else f"time: wall clock, median (p20-p80) of {REPS}")
    lines = [f"# All-reduce and all-gather on {tp} x {meta['card']} ({meta['date']})", "",
             f"{how}; command: `{meta['command']}`", "",
             f"{timed}; the slowest rank's figure. 'for': the step that sends this message (model x tokens for the "
             "all-reduce, x sampled rows for the all-gather). busbw: nccl-tests' convention.", ""]
    for op in ("allreduce", "allgather"):
        lines += [f"## {op}", "", "| bytes | for | time us | p20-p80 us | eager us | algbw GB/s | busbw GB/s |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["op"] == op):
            eager = f"{r['eager_us']:.1f}" if r["eager_us"] is not None else "-"
            lines.append(f"| {r['bytes']:,} | {r['for']} | {r['median_us']:.1f} | {r['p20_us']:.1f}-{r['p80_us']:.1f}"
                         f" | {eager} | {r['algbw_GBps']:.1f} | {r['busbw_GBps']:.1f} |")
        lines.append("")
    stem.with_suffix(".md").write_text("\n".join(lines))
    return stem


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", default="2", help="comma-separated GPU counts (each one collective group)")
    ap.add_argument("--models", default="Llama-3.1-8B,Llama-3.1-70B")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    name = timing.card() if args.device == "cuda" else "cpu-smoke"
    cuda = args.device == "cuda"
    meta = {"card": name, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "cuda": str(torch.version.cuda), "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else "gloo",
            "env": "NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1",
            "gpus_on_host": torch.cuda.device_count() if cuda else 0, "models": models,
            "command": " ".join(["python3"] + sys.argv)}
    sizes = message_sizes(models, cpu=not cuda)
    for tp in (int(x) for x in args.tp.split(",")):
        rows = rows_of(measure(tp, args.device, sizes), tp, models)
        stem = write(args.out, timing.card_slug(name), tp, meta, rows)
        big = max((r for r in rows if r["op"] == "allreduce"), key=lambda r: r["bytes"])
        small = min((r for r in rows if r["op"] == "allreduce"), key=lambda r: r["bytes"])
        print(f"TP {tp}: all-reduce {small['median_us']:.1f} us at {small['bytes']:,} B, busbw "
              f"{big['busbw_GBps']:.0f} GB/s at {big['bytes']:,} B -> {stem}.{{md,json}}", flush=True)


if __name__ == "__main__":
    main()
