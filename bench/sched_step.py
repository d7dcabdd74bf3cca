"""Scheduler cost per iteration: ``schedule()`` + ``complete()`` with N running decoding requests.

Two kinds of step, each at N = 64, 256 and 1024 running requests (``max_num_seqs`` = N, or N + 1):

* ``decode``: every request decodes one token (prompts of 128, outputs too long to finish);
* ``mixed``: chunked prefill, the same N decodes plus a 512-token chunk of a long prompt (a queue of
  64k-token prompts keeps one prefill running).

KV blocks never run out (no preemption) but each request takes a new block every 16 steps, as in a
real run. Each repeat times ``iters`` consecutive iterations with ``time.perf_counter``; the table
shows the median over repeats, per iteration and per running request.

    python bench/sched_step.py                 # prints the table, writes bench/results/sched_step-cpu-<date>.md
    python bench/sched_step.py --sizes 256 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from servesim.sim.kv import KVBlockManager
from servesim.sim.request import Request
from servesim.sim.scheduler import Scheduler, SchedulerConfig

PROMPT_TOKENS = 128
CHUNK_TOKENS = 512
BLOCK_SIZE = 16
MAX_LEN = 1 << 22


def build(n: int, kind: str, iters: int, repeats: int) -> tuple[Scheduler, float]:
    """A scheduler with ``n`` requests decoding (and, for ``mixed``, one long prefill queued)."""
    steps = iters * repeats + 10
    mixed = kind == "mixed"
    cfg = SchedulerConfig(
        batching="chunked", max_num_seqs=n + mixed, max_num_batched_tokens=n + CHUNK_TOKENS,
        max_model_len=MAX_LEN,
    )
    long_prompt = 1 << 16  # a queue of long prompts keeps one chunked prefill running
    num_long = steps * CHUNK_TOKENS // long_prompt + 2
    warmup = -(-n * PROMPT_TOKENS // CHUNK_TOKENS) + 2  # prefill steps before everyone decodes
    output = warmup + steps + 20  # nobody finishes while timed
    blocks = n * -(-(PROMPT_TOKENS + output) // BLOCK_SIZE) + (long_prompt // BLOCK_SIZE + 2) * mixed
    sched = Scheduler(cfg, KVBlockManager(blocks, BLOCK_SIZE, watermark=0.0))
    for i in range(n):
        sched.add(Request(i, 0.0, PROMPT_TOKENS, output), 0.0)
    assert not sched.finished, sched.finished[0].rejected_reason
    now = 0.0
    while sched.num_decoding < n:  # prefill everyone
        now += 0.01
        sched.complete(sched.schedule(now), now)
    if mixed:
        for i in range(num_long):
            sched.add(Request(n + i, now, long_prompt, 1), now)
        assert not sched.finished, sched.finished[0].rejected_reason
        now += 0.01
        sched.complete(sched.schedule(now), now)  # first chunk: the request is now a running prefill
    return sched, now


def measure(n: int, kind: str, iters: int, repeats: int) -> dict:
    sched, now = build(n, kind, iters, repeats)
    per_iter = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            now += 0.01
            batch = sched.schedule(now)
            sched.complete(batch, now)
        per_iter.append((time.perf_counter() - t0) / iters)
    # The last batch proves the shape measured: n decodes, plus one prefill chunk when mixed.
    assert len(batch.decode) == n and bool(batch.prefill) == (kind == "mixed"), (len(batch.decode), batch.prefill)
    us = statistics.median(per_iter) * 1e6
    return {"n": n, "kind": kind, "iters": iters, "us_per_iter": us, "ns_per_req": us * 1e3 / n,
            "spread_pct": 100 * (max(per_iter) - min(per_iter)) / statistics.median(per_iter)}


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores available"


def table(rows: list[dict]) -> str:
    lines = ["| step | running requests | µs per iteration | ns per request | spread over repeats |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['n']} | {r['us_per_iter']:.1f} | {r['ns_per_req']:.0f} | "
                     f"{r['spread_pct']:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=0, help="iterations per repeat (default: ~1M requests' worth)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    rows = []
    for kind in ("decode", "mixed"):
        for n in args.sizes:
            iters = args.iters or max(2000, 1_000_000 // n)
            rows.append(measure(n, kind, iters, args.repeats))
            print(f"{kind:6s} n={n:5d}  {rows[-1]['us_per_iter']:9.1f} µs/iter  {rows[-1]['ns_per_req']:6.0f} ns/req",
                  flush=True)
    text = table(rows)
    print(text)
    if args.no_write:
        return
    today = dt.date.today().isoformat()
    cmd = " ".join(["python", "bench/sched_step.py", *sys.argv[1:]])
    out = Path(__file__).parent / "results" / f"sched_step-cpu-{today}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"# Scheduler step cost (schedule + complete)\n\n"
        f"- machine: {machine()}\n- date: {today}\n- Python {platform.python_version()}, numpy "
        f"{__import__('numpy').__version__}\n- command: `{cmd}`\n- median of {args.repeats} repeats; "
        f"chunked batching, block size {BLOCK_SIZE}, prompts {PROMPT_TOKENS}, mixed = + one "
        f"{CHUNK_TOKENS}-token prefill chunk\n\n{text}\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
