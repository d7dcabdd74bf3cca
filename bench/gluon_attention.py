"""Gluon prefill attention on Hopper (issue 17) against cuDNN SDPA, flash SDPA and our plain-Triton kernel.

    PYTHONPATH=. python3 bench/gluon_attention.py --out bench/results [--candidates round2|0,3] [--budget-s 110]
    PYTHONPATH=. python3 bench/gluon_attention.py --compile-only       # any machine: compile every candidate for sm_90

Causal, bf16, head_dim 128, 32 query / 8 KV heads, batch 1, S = 4096, 8192, 16384; TFLOP/s count 4 * S^2/2 *
head_dim * heads; every figure in-step (``servesim.kernels.timing.stream_ms``: back to back with a 256 MB read in one
CUDA graph). Each Gluon candidate (``CANDIDATES``: variant, tiles, stages, consumer warps) is compiled, checked
against the float32 reference at S = 1024 (relative error < 1e-2, max abs < 3e-2), and timed only if it passes.

Candidates run in a child process, one after the other: a compile error is recorded with its first lines; a
crash (an illegal address poisons the CUDA context) or a hang (a wrong mbarrier phase waits forever; the
candidate is killed after ``--job-timeout-s``) costs that candidate only, and a fresh child takes the rest. The
baselines run first in the same child. Writes ``gluon_attention-<card>-<date>.md/.json`` into ``--out``
(``gluon_attention_round2-...`` for ``--candidates round2``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path

HQ, HKV, D = 32, 8, 128
TIMED_S = [4096, 8192, 16384]
CHECK_S = 1024
TOL_REL, TOL_ABS = 1e-2, 3e-2
BASELINES = ["cudnn", "flash", "triton"]
ROUND1 = [  # most promising first, so a budget cut loses the least: 2 consumer warpgroups, then 1
    dict(variant="ws", BLOCK_M=128, BLOCK_N=128, STAGES=2, num_warps=8, maxnreg=168),
    dict(variant="pipelined", BLOCK_M=128, BLOCK_N=128, STAGES=2, num_warps=8),
    dict(variant="ws", BLOCK_M=128, BLOCK_N=64, STAGES=4, num_warps=8, maxnreg=168),
    dict(variant="pipelined", BLOCK_M=128, BLOCK_N=64, STAGES=3, num_warps=8),
    dict(variant="ws", BLOCK_M=128, BLOCK_N=128, STAGES=3, num_warps=8, maxnreg=168),
    dict(variant="pipelined", BLOCK_M=128, BLOCK_N=128, STAGES=3, num_warps=8),
    dict(variant="ws", BLOCK_M=64, BLOCK_N=128, STAGES=2, num_warps=4),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=128, STAGES=2, num_warps=4),
    dict(variant="ws", BLOCK_M=64, BLOCK_N=64, STAGES=4, num_warps=4),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4),
    dict(variant="ws", BLOCK_M=128, BLOCK_N=64, STAGES=3, num_warps=4),  # 128 rows on one warpgroup: spills
]
# Round 2. Round 1 on the H200: one warpgroup on 64 x 64 tiles, pipelined, 3 stages, was best (1.02 / 0.90 / 0.87x
# cuDNN at 4k / 8k / 16k) and the only config of 2 programs per SM (112 KiB of shared memory, 141 registers): two
# programs overlap each other's softmax and MMA. Every config of 1 per SM lost; three spilled. Levers: (1) tile
# order by KV head (kv1 / kv2): at 16k the K/V of all 8 KV heads (64 MiB) exceeds the 50 MiB L2 once programs
# at every query block of every head run together; one head's is 8 MiB. (2) Q in registers for QK^T (qreg): at
# 64 x 64 a wgmma that reads Q and K from shared memory needs as many shared-memory cycles as MMA cycles.
# (3) the diagonal tile in its own loop (split). (4) 2-4 programs per SM (<= 113 / 75 / 56 KiB; 4 need <= 128
# registers, ws's 5 warps at 2 per SM <= 200).
ROUND2 = [
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4),  # round 1's best, same run
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4, kv_heads_per_pass=1),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4, kv_heads_per_pass=1,
         q_in_registers=True, maxnreg=240),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4, kv_heads_per_pass=1,
         q_in_registers=True, split_diag=True, maxnreg=240),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4, q_in_registers=True, maxnreg=240),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4, kv_heads_per_pass=1, split_diag=True),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4, kv_heads_per_pass=2),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4, split_diag=True),
    dict(variant="ws", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4, kv_heads_per_pass=1),
    dict(variant="ws", BLOCK_M=64, BLOCK_N=64, STAGES=3, num_warps=4, kv_heads_per_pass=1, q_in_registers=True,
         maxnreg=200),
    dict(variant="ws", BLOCK_M=64, BLOCK_N=64, STAGES=2, num_warps=4, kv_heads_per_pass=1),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=64, STAGES=2, num_warps=4, kv_heads_per_pass=1,
         q_in_registers=True, maxnreg=240),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=32, STAGES=4, num_warps=4, kv_heads_per_pass=1,
         q_in_registers=True),
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=32, STAGES=3, num_warps=4, kv_heads_per_pass=1,
         q_in_registers=True),  # 3 per SM
    dict(variant="pipelined", BLOCK_M=64, BLOCK_N=32, STAGES=2, num_warps=4, kv_heads_per_pass=1, maxnreg=128),
    dict(variant="ws", BLOCK_M=128, BLOCK_N=128, STAGES=2, num_warps=8, maxnreg=168, kv_heads_per_pass=1),
]
ROUNDS = {"round1": ROUND1, "round2": ROUND2}


def name(cfg: dict) -> str:
    """``variant MxN sS wW``, then ``kvK`` (tile order) and ``split`` (diagonal loop) where set, ``rR`` (maxnreg)
    where it differs from the kernel's default."""
    parts = ["{variant} {BLOCK_M}x{BLOCK_N} s{STAGES} w{num_warps}".format(**cfg)]
    if cfg.get("kv_heads_per_pass"):
        parts.append(f"kv{cfg['kv_heads_per_pass']}")
    if cfg.get("split_diag"):
        parts.append("split")
    if cfg.get("q_in_registers"):
        parts.append("qreg")
    if cfg.get("maxnreg", 168) != 168:
        parts.append(f"r{cfg['maxnreg']}")
    return " ".join(parts)


CANDIDATES = list({name(c): c for c in ROUND1 + ROUND2}.values())  # round 1's indices unchanged, then round 2's


def select(spec: str) -> list[dict]:
    """``--candidates``: 'all', a round ('round1', 'round2'), or comma-separated indices into CANDIDATES and
    names (``name``), in the order given."""
    return pick(spec, CANDIDATES, ROUNDS, name)


def pick(spec: str, candidates: list[dict], rounds: dict, name_of) -> list[dict]:
    """:func:`select` over any bench's ``candidates``, ``rounds`` and names (the paged bench's too)."""
    if spec == "all":
        return candidates
    if spec in rounds:
        return rounds[spec]
    by_name = {name_of(c): c for c in candidates}
    out = []
    for item in (x.strip() for x in spec.split(",")):
        if item.isdigit() and int(item) < len(candidates):
            out.append(candidates[int(item)])
        elif item in by_name:
            out.append(by_name[item])
        else:
            kinds = f", a round ({', '.join(rounds)})" if rounds else ""
            raise SystemExit(f"--candidates: {item!r} is not an index < {len(candidates)}{kinds} or a name: "
                             f"{sorted(by_name)}")
    return out


def first_lines(e: BaseException, n: int = 6) -> str:
    """The error's type and its last ``n`` non-blank lines (Triton puts the cause at the end)."""
    lines = [ln for ln in f"{type(e).__name__}: {e}".splitlines() if ln.strip()]
    return "\n".join(lines[:1] + lines[1:][-n:])


# --- the child: CUDA work ----------------------------------------------------------------------------------------

class Runner:
    """Inputs per S, the reference at CHECK_S, and the timed closures; lives in the child process."""

    def __init__(self):
        import torch

        from servesim.kernels import timing
        from servesim.kernels.attention import gluon_prefill as gp
        from servesim.kernels.attention import prefill as pre

        self.torch, self.timing, self.gp, self.pre = torch, timing, gp, pre
        self.inputs: dict = {}
        self.sdpa = _attention_bench().sdpa
        q, k, v = self.data(CHECK_S)
        self.ref = gp.gluon_prefill_ref(q, k, v)

    def data(self, s: int):
        if s not in self.inputs:
            gen = self.torch.Generator(device="cuda").manual_seed(s)
            self.inputs[s] = [self.torch.randn(s, h, D, generator=gen, device="cuda", dtype=self.torch.bfloat16)
                              for h in (HQ, HKV, HKV)]
        return self.inputs[s]

    def fn(self, job: dict, s: int):
        """A closure computing attention at S = s, or None, and a note (how SDPA took GQA, or why it cannot)."""
        q, k, v = self.data(s)
        if job["kind"] == "gluon":
            out = self.torch.empty_like(q)
            return (lambda: self.gp.gluon_prefill_attention(q, k, v, config=job["config"], out=out)), ""
        if job["kind"] == "triton":
            cu = self.torch.tensor([0, s], device="cuda", dtype=self.torch.int32)
            return (lambda: self.pre.prefill_attention_contiguous(q, k, v, cu, cu, s)), "prefill.py, TMA config"

        def view(x):
            return x.view(1, s, x.shape[1], D).transpose(1, 2)

        return self.sdpa(job["kind"], view(q), view(k), view(v), causal=True)  # output [1, Hq, S, D]

    def run(self, job: dict) -> dict:
        torch = self.torch
        row = {"name": job["name"], "kind": job["kind"], "config": job.get("config")}
        t0 = time.perf_counter()
        try:
            fn, row["note"] = self.fn(job, CHECK_S)
            if fn is None:
                return {**row, "status": "unavailable"}
            out = fn()
            torch.cuda.synchronize()
            row["first_call_s"] = time.perf_counter() - t0  # compile included
            out = (out.transpose(1, 2)[0] if out.dim() == 4 else out).float()
            row["rel_err"] = ((out - self.ref).norm() / self.ref.norm()).item()
            row["max_abs_err"] = (out - self.ref).abs().max().item()
        except Exception as e:  # noqa: BLE001 - a candidate that does not compile or launch is a result
            return {**row, "status": "compile/launch error", "error": first_lines(e)}
        if not (row["rel_err"] < TOL_REL and row["max_abs_err"] < TOL_ABS):  # NaN fails too
            return {**row, "status": "wrong result"}
        try:
            for s in TIMED_S:
                fn, _ = self.fn(job, s)
                ms = self.timing.stream_ms(fn, reps=10)
                row[f"tflops_{s}"] = self.gp.causal_flops(s, HQ, D) / (ms * 1e-3) / 1e12
        except Exception as e:  # noqa: BLE001
            return {**row, "status": "timing error", "error": first_lines(e)}
        return {**row, "status": "ok", "wall_s": time.perf_counter() - t0}


    def healthy(self) -> bool:
        """False once a kernel fault (illegal address, ...) has poisoned this process's CUDA context."""
        try:
            self.torch.cuda.synchronize()
            return self.torch.ones(1, device="cuda").add_(1).item() == 2.0
        except Exception:  # noqa: BLE001
            return False


def child(jobs: list[dict], results, runner_cls=None) -> None:
    """Run ``jobs`` in order, sending ("start", i) and ("done", i, row) on the connection ``results``.
    ``runner_cls`` (default :class:`Runner`): an object with ``run(job) -> row`` and ``healthy()``, built here."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    try:
        runner = (runner_cls or Runner)()
    except Exception as e:  # noqa: BLE001
        results.send(("fatal", first_lines(e, 20) + "\n" + traceback.format_exc()[-2000:]))
        return
    results.send(("ready", None))
    for i, job in enumerate(jobs):
        results.send(("start", i))
        row = runner.run(job)
        healthy = row["status"] == "ok" or runner.healthy()
        results.send(("done", i, row if healthy else {**row, "status": row["status"] + "; CUDA context lost"}))
        if not healthy:  # every later launch in this process would fail: a fresh child takes the rest
            results.send(("exit", "CUDA context lost"))
            return


def _attention_bench():
    """bench/attention.py as a module (its SDPA closure, GQA handling included)."""
    spec = importlib.util.spec_from_file_location("bench_attention", Path(__file__).with_name("attention.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the parent: orchestration, no CUDA --------------------------------------------------------------------------

def run_all(jobs: list[dict], job_timeout_s: float, budget_s: float, start_timeout_s: float = 120.0,
            target=child) -> list[dict]:
    """Every job's row; a child that dies or hangs is replaced and the job it was on recorded as such.

    ``target(jobs, results)`` is the child's body (:func:`child`; tests pass stand-ins)."""
    ctx = mp.get_context("spawn")
    rows: list[dict | None] = [None] * len(jobs)
    t_start = time.perf_counter()
    todo = list(range(len(jobs)))
    while todo:
        if time.perf_counter() - t_start > budget_s:
            for i in todo:
                rows[i] = {"name": jobs[i]["name"], "kind": jobs[i]["kind"], "config": jobs[i].get("config"),
                           "status": "skipped: over the time budget"}
            break
        results, sender = ctx.Pipe(duplex=False)  # a pipe, not a Queue: a send is written before a crash
        proc = ctx.Process(target=target, args=([jobs[i] for i in todo], sender), daemon=True)
        proc.start()
        sender.close()
        current, deadline, done = None, time.perf_counter() + start_timeout_s, set()
        while True:
            msg = None
            if results.poll(1.0):
                with contextlib.suppress(EOFError):  # the child is gone; is_alive below says so
                    msg = results.recv()
            if msg is not None:
                if msg[0] == "fatal":
                    raise RuntimeError(f"the benchmark child could not start: {msg[1]}")
                if msg[0] == "exit":
                    print(f"         child exits: {msg[1]}; a fresh one takes the rest", flush=True)
                    break
                if msg[0] == "start":
                    current, deadline = todo[msg[1]], time.perf_counter() + job_timeout_s
                    print(f"[{time.perf_counter() - t_start:6.1f}s] {jobs[current]['name']} ...", flush=True)
                elif msg[0] == "done":
                    rows[todo[msg[1]]] = msg[2]
                    done.add(todo[msg[1]])
                    print(f"         {json.dumps(msg[2], default=str)}", flush=True)
                    current = None
                    if len(done) == len(todo):
                        break
                continue
            if not proc.is_alive() or time.perf_counter() > deadline:
                why = f"child died (exit code {proc.exitcode})" if not proc.is_alive() else \
                    f"hang: no result in {job_timeout_s:.0f} s, killed"
                if proc.is_alive():
                    proc.kill()
                proc.join(5)
                if current is None:
                    raise RuntimeError(f"the benchmark child failed between jobs: {why}")
                rows[current] = {"name": jobs[current]["name"], "kind": jobs[current]["kind"],
                                 "config": jobs[current].get("config"), "status": why}
                done.add(current)
                print(f"         {why}", flush=True)
                break
        proc.join(10)
        results.close()
        todo = [i for i in todo if i not in done]
    return rows


def programs_per_sm(cfg: dict, shared_bytes: int, registers: int) -> int:
    """Programs an H100/H200 SM holds at once: 228 KiB of shared memory (1 KiB reserved per program), 64 Ki
    registers (allocated per warp in steps of 8 per thread), 64 warps; ``ws`` adds its producer warp."""
    warps = cfg["num_warps"] + (cfg["variant"] == "ws")
    return min(228 * 1024 // (shared_bytes + 1024), 65536 // (-(-registers // 8) * 8 * 32 * warps), 64 // warps)


def compile_only(cands: list[dict]) -> list[dict]:
    """Compile every candidate for sm_90 in this process (no GPU needed); ptxas's registers and spills each."""
    from servesim.kernels.attention import gluon_prefill as gp

    rows = []
    for cfg in cands:
        t0 = time.perf_counter()
        try:
            kernel = gp.compile_sm90(cfg)
            ptx = kernel.asm["ptx"]
            rows.append({"name": name(cfg), "status": "compiled", "compile_s": round(time.perf_counter() - t0, 2),
                         "shared_bytes": kernel.metadata.shared, **gp.ptxas_usage(kernel),
                         "setmaxnreg": "setmaxnreg" in ptx, "wgmma": ptx.count("wgmma.mma_async")})
            rows[-1]["per_sm"] = programs_per_sm(cfg, rows[-1]["shared_bytes"], rows[-1]["registers"])
        except Exception as e:  # noqa: BLE001
            rows.append({"name": name(cfg), "status": "compile error", "error": first_lines(e)})
        print(rows[-1], flush=True)
    return rows


def commit() -> str:
    from servesim.provenance import git_commit

    return git_commit()


def run_meta() -> dict:
    """The result files' header: card, date, commit, command line, versions (imports torch: GPU runs only)."""
    import torch
    import triton

    from servesim.kernels import timing

    return {"card": timing.card(), "date": datetime.date.today().isoformat(), "commit": commit(),
            "command": "PYTHONPATH=. python3 " + " ".join(sys.argv), "torch": torch.__version__,
            "triton": triton.__version__, "capability": list(torch.cuda.get_device_capability())}


def ratios(rows: list[dict]) -> None:
    """Add each timed row's ratio to cuDNN at every S (cuDNN measured in the same run)."""
    cudnn = next((r for r in rows if r["kind"] == "cudnn" and r["status"] == "ok"), None)
    for r in rows:
        for s in TIMED_S:
            if cudnn and f"tflops_{s}" in r:
                r[f"vs_cudnn_{s}"] = r[f"tflops_{s}"] / cudnn[f"tflops_{s}"]


def report(rows: list[dict], meta: dict) -> str:
    from servesim.kernels import timing

    cols = ["name", "status"] + [f"tflops_{s}" for s in TIMED_S] + [f"vs_cudnn_{s}" for s in TIMED_S] + \
        ["rel_err", "max_abs_err", "first_call_s"]
    table = [{c: r.get(c, "") for c in cols} for r in rows]
    errors = [f"- **{r['name']}** ({r['status']}):\n\n```\n{r['error']}\n```" for r in rows if r.get("error")]
    return "\n".join([
        f"# Gluon prefill attention on {meta['card']}", "", "```", json.dumps(meta, indent=1), "```", "",
        __doc__.split("\n\n")[2].replace("\n", " "), "",
        "## Results (TFLOP/s in-step; vs_cudnn = / cuDNN at the same S)", "", timing.markdown_table(table), "",
        "## Errors", "", *(errors or ["none"]), ""])


def result_stem(spec: str, card_slug: str, date: str) -> str:
    """``gluon_attention-<card>-<date>``; a later round's run is ``gluon_attention_round2-...``, so it does not
    overwrite round 1's files of the same day."""
    tag = f"_{spec}" if spec in ROUNDS and spec != "round1" else ""
    return f"gluon_attention{tag}-{card_slug}-{date}"


def arguments(description: str, candidates_help: str, budget_s: float, job_timeout_s: float):
    """The command line of a Gluon bench (this one and the paged one)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default="bench/results", help="folder for the .md and .json results")
    ap.add_argument("--candidates", default="all", help=candidates_help)
    ap.add_argument("--compile-only", action="store_true", help="compile the candidates for sm_90 and stop (no GPU)")
    ap.add_argument("--budget-s", type=float, default=budget_s, help="start no job after this many seconds")
    ap.add_argument("--job-timeout-s", type=float, default=job_timeout_s, help="kill a job (a hang) after this long")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    return args


def write(stem: str, meta: dict, rows: list[dict], md: str) -> None:
    """``stem``.json (meta and rows) and ``stem``.md, then the markdown on stdout."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(md)
    print(md)


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "'all', 'round1', 'round2', or comma-separated indices into "
                     "CANDIDATES and names", 100.0, 30.0)
    cands = select(args.candidates)
    if args.compile_only:
        compile_only(cands)
        return
    from servesim.kernels import timing

    t0 = time.perf_counter()
    meta = run_meta()
    jobs = [{"name": b, "kind": b} for b in BASELINES] + [{"name": name(c), "kind": "gluon", "config": c}
                                                           for c in cands]
    rows = run_all(jobs, args.job_timeout_s, args.budget_s)
    ratios(rows)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    stem = os.path.join(args.out, result_stem(args.candidates, timing.card_slug(meta["card"]), meta["date"]))
    write(stem, meta, rows, report(rows, meta))


if __name__ == "__main__":
    main()
