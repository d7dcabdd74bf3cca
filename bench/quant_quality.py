"""Quality of each weight format on a model trained in-project: bits per byte and perplexity on held-out text.

    servesim train --out /work/models/byte-llama-target                       # ~8 min on one CPU thread
    python3 bench/quant_quality.py --weights /work/models/byte-llama-target --out bench/results

The model (``servesim.engine.train``: a byte-level Llama trained on the Python standard library's sources) is
quantized by each row's format and quantizer and run through the engine's forward pass (``servesim.engine.quality``:
CPU reference path, float32 activations, weights rounded to bf16 first), over windows of the files it held out;
AWQ and GPTQ calibrate on windows of the training files. ``Δ`` is each row's bits/byte minus bf16's on the same
windows, with two standard errors of that paired difference over the windows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from servesim.engine import quality  # noqa: E402
from servesim.hwmodels.models import get_model  # noqa: E402

ROWS = [  # (label, weight-format spec, quantizer)
    ("bf16", "bf16", "rtn"),
    ("W8A16 RTN", "w8a16", "rtn"),
    ("W8A16 GPTQ", "w8a16", "gptq"),
    ("W4A16 RTN", "w4a16", "rtn"),
    ("W4A16 AWQ", "w4a16", "awq"),
    ("W4A16 GPTQ", "w4a16", "gptq"),
    ("W8A8 RTN (per-token activations)", "w8a8", "rtn"),
    ("W8A8 GPTQ (per-token activations)", "w8a8", "gptq"),
    ("FP8 e4m3 (per-token activations)", "fp8", "rtn"),
    ("mixed: W4A16 MLP, bf16 attention", "w4a16,attn=bf16", "rtn"),
    ("mixed: W4A16, first and last layer bf16", "w4a16,first:1=bf16,last:1=bf16", "rtn"),
    ("mixed: W4A16 GPTQ, first and last layer bf16", "w4a16,first:1=bf16,last:1=bf16", "gptq"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="model directory written by `servesim train`")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--windows", type=int, default=128, help="evaluation windows (and calibration windows)")
    ap.add_argument("--seq-len", type=int, default=256, help="bytes per window")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default=None, help="comma-separated row numbers (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    corpus, meta_train = quality.heldout_corpus(args.weights)
    evals, calib = quality.eval_windows(corpus, args.seq_len, args.windows)
    spec = get_model(os.path.join(args.weights, "config.json"))
    picked = ROWS if args.rows is None else [ROWS[int(i)] for i in args.rows.split(",")]
    results, base = [], None
    for label, fmt, quantizer in picked:
        t0 = time.perf_counter()
        model = quality.quantized_model(args.weights, fmt, quantizer, calib)
        s = quality.score(model, evals)
        base = s if fmt == "bf16" else base
        row = dict(label=label, quant=fmt, quantizer=quantizer, bits_per_byte=s.bits_per_byte,
                   perplexity=s.perplexity, weight_bytes=spec.weight_bytes(fmt), seconds=time.perf_counter() - t0)
        if base is not None:
            d = (s.nats_per_window - base.nats_per_window) / math.log(2)
            row["delta_bits_per_byte"] = float(d.mean())
            row["delta_2se"] = 2 * float(d.std()) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        results.append(row)
        print(f"{label:48s} {s.bits_per_byte:.4f} bits/byte  ppl {s.perplexity:.4f}  "
              f"({row['seconds']:.0f} s)", flush=True)
    date = datetime.date.today().isoformat()
    meta = dict(date=date, machine="cpu", torch=torch.__version__, threads=torch.get_num_threads(),
                command="python3 bench/quant_quality.py " + " ".join(sys.argv[1:]), windows=args.windows,
                seq_len=args.seq_len, bytes_scored=args.windows * args.seq_len, model=meta_train["model"],
                train={k: meta_train[k] for k in ("steps", "tokens", "train_s", "device", "threads", "source",
                                                   "train_bytes", "heldout_bytes")},
                heldout_files=len(corpus.heldout_files))
    os.makedirs(args.out, exist_ok=True)
    base_name = os.path.join(args.out, f"quant_quality-cpu-{date}")
    with open(base_name + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=results), f, indent=1)
    text = report_md(meta, results)
    with open(base_name + ".md", "w") as f:
        f.write(text)
    print(text)


def report_md(meta, rows) -> str:
    m, t = meta["model"], meta["train"]
    out = [f"# Quality of weight formats on a model trained in-project (CPU, {meta['date']})", "",
           f"Command: `{meta['command']}`; torch {meta['torch']}, {meta['threads']} thread(s). Model: byte-level "
           f"Llama, hidden {m['hidden_size']}, {m['num_layers']} layers, {m['num_heads']} heads "
           f"({m['num_kv_heads']} KV), MLP {m['intermediate_size']}, trained on {t['device']} for {t['steps']} steps "
           f"({t['tokens']:,} bytes, {t['train_s']} s) on the Python standard library's sources ({t['source']}); "
           f"scored on {meta['windows']} windows of {meta['seq_len']} bytes ({meta['bytes_scored']:,} bytes) of the "
           f"{meta['heldout_files']} files it held out. " + __doc__.split("\n\n")[2].replace("\n", " "), "",
           "| format | quant spec | quantizer | bits/byte | perplexity | Δ bits/byte vs bf16 (± 2 s.e.) | weights KB |",
           "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        delta = ("—" if r["quant"] == "bf16" or "delta_bits_per_byte" not in r
                 else f"{r['delta_bits_per_byte']:+.4f} ± {r['delta_2se']:.4f}")
        out.append(f"| {r['label']} | `{r['quant']}` | {r['quantizer']} | {r['bits_per_byte']:.4f} | "
                   f"{r['perplexity']:.4f} | {delta} | {r['weight_bytes'] / 1e3:.0f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
