"""Paged, varlen Gluon prefill (issue 17) against cuDNN SDPA, flash SDPA and ``prefill.py``'s paged kernel, in-step.

    PYTHONPATH=. python3 bench/gluon_paged_prefill.py --out bench/results [--candidates all|0,2|<name>] [--budget-s 300]
    PYTHONPATH=. python3 bench/gluon_paged_prefill.py --compile-only    # any machine: compile every candidate for sm_90

Causal, bf16, head_dim 128, 32 query / 8 KV heads, one sequence, K/V in a 16-token-page cache with shuffled blocks
(``bench/attention.py``'s ``paged_copy``). Shapes (queries, context): S = 4k / 8k / 16k without context, and the
engine's 2,048-token prefill chunk after 0 / 4k / 8k tokens of context. TFLOP/s count visible keys only
(``prefill_flops``); every figure in-step (``servesim.kernels.timing.stream_ms``). SDPA runs on the contiguous
equivalent (the same queries, the sequence's K/V contiguous): without context ``is_causal``; with context the
bottom-right causal mask, which flash takes as torch's ``causal_lower_right`` and cuDNN only as an explicit boolean
mask (its ``is_causal`` is top-left when L_q != L_k), so cuDNN's context rows carry a mask read. Each candidate is
checked against the float32 reference at (1000, 0) and (777, 1300) (relative error < 1e-2, max abs < 3e-2) and timed
only if it passes; each runs in a child process (``bench/gluon_attention.py``'s ``run_all``: a crash or a hang costs
that candidate only). Writes ``gluon_paged_prefill-<card>-<date>.md/.json`` into ``--out``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GA = _load("gluon_attention")  # child-process orchestration, error summaries, commit id
HQ, HKV, D = 32, 8, 128
SHAPES = [("S4k", 4096, 0), ("S8k", 8192, 0), ("S16k", 16384, 0),
          ("2k+0", 2048, 0), ("2k+4k", 2048, 4096), ("2k+8k", 2048, 8192)]  # (label, queries, context)
CHECKS = [(1000, 0), (777, 1300)]
BASELINES = ["cudnn", "flash", "triton"]
BEST = dict(BLOCK_M=64, BLOCK_N=64, STAGES=2, num_warps=4, kv_heads_per_pass=1, q_in_registers=True, maxnreg=240)
CANDIDATES = [  # the contiguous kernel's round-2 best (the module's default) first, then its neighbours
    BEST,
    {**BEST, "STAGES": 3},
    {**BEST, "kv_heads_per_pass": 2},
    {**BEST, "kv_heads_per_pass": 0},
    {**BEST, "q_in_registers": False, "maxnreg": None},
    dict(BLOCK_M=128, BLOCK_N=64, STAGES=2, num_warps=8, kv_heads_per_pass=1, q_in_registers=False, maxnreg=168),
]


def name(cfg: dict) -> str:
    """``MxN sS wW``, then ``kvK`` (KV heads per pass; absent: all), ``qreg``, ``rR`` (maxnreg) where set."""
    parts = [f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']} s{cfg['STAGES']} w{cfg['num_warps']}"]
    if cfg.get("kv_heads_per_pass"):
        parts.append(f"kv{cfg['kv_heads_per_pass']}")
    if cfg.get("q_in_registers"):
        parts.append("qreg")
    if cfg.get("maxnreg"):
        parts.append(f"r{cfg['maxnreg']}")
    return " ".join(parts)


def select(spec: str) -> list[dict]:
    """``--candidates``: 'all', or comma-separated indices into CANDIDATES and names, in the order given."""
    return GA.pick(spec, CANDIDATES, {}, name)


# --- the child: CUDA work ----------------------------------------------------------------------------------------

def sdpa(torch, backend: str, q, k, v, ctx: int):
    """A closure of SDPA ``backend`` on [1, H, L, D] views of ``q [Lq, Hq, D]``, ``k, v [Lk, Hkv, D]`` with the
    bottom-right causal mask, and a note on the mask and on GQA (``enable_gqa``, else K/V expanded)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    lq, lk = q.shape[0], k.shape[0]
    qv, kt, vt = (x.view(1, x.shape[0], x.shape[1], D).transpose(1, 2) for x in (q, k, v))
    if ctx == 0:
        mask, note = None, "is_causal"
    elif backend == "flash":
        mask, note = causal_lower_right(lq, lk), "causal_lower_right"
    else:
        mask, note = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq), "explicit mask"
    chosen = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]

    def run(kk, vv, gqa):
        with sdpa_kernel(chosen):
            return torch.nn.functional.scaled_dot_product_attention(qv, kk, vv, attn_mask=mask, is_causal=mask is None,
                                                                    enable_gqa=gqa)
    error = None
    for gqa in (True, False):
        kk, vx = (kt, vt) if gqa else (kt.repeat_interleave(HQ // HKV, 1), vt.repeat_interleave(HQ // HKV, 1))
        try:
            run(kk, vx, gqa)
            return (lambda kk=kk, vx=vx, gqa=gqa: run(kk, vx, gqa)), note + ("" if gqa else ", K/V expanded")
        except RuntimeError as e:
            error = e
    return None, f"unavailable: {str(error).splitlines()[0][:80]}"


class Runner:
    """Inputs per shape, the references at CHECKS, the timed closures; lives in the child process."""

    healthy = GA.Runner.healthy

    def __init__(self):
        import torch

        from servesim.kernels import timing
        from servesim.kernels.attention import gluon_paged_prefill as gpp
        from servesim.kernels.attention import prefill as pre

        self.torch, self.timing, self.gpp, self.pre = torch, timing, gpp, pre
        self.paged_copy = GA._attention_bench().paged_copy
        self.inputs: dict = {}
        self.refs = {c: pre.causal_attention_ref(*self.data(*c)[:3], 1.0 / math.sqrt(D)) for c in CHECKS}

    def data(self, q_len: int, ctx: int):
        """(q, k, v contiguous, k_cache, v_cache, block_tables, cu_seqlens_q, kv_lens) of one sequence."""
        if (q_len, ctx) not in self.inputs:
            torch = self.torch
            gen = torch.Generator(device="cuda").manual_seed(q_len * 7 + ctx)
            n = q_len + ctx
            q, k, v = (torch.randn(m, h, D, generator=gen, device="cuda", dtype=torch.bfloat16)
                       for m, h in ((q_len, HQ), (n, HKV), (n, HKV)))
            k_cache, v_cache, tables = self.paged_copy(k, v, [n], 16)
            cu = torch.tensor([0, q_len], dtype=torch.int32, device="cuda")
            lens = torch.tensor([n], dtype=torch.int32, device="cuda")
            self.inputs[(q_len, ctx)] = (q, k, v, k_cache, v_cache, tables, cu, lens)
        return self.inputs[(q_len, ctx)]

    def fn(self, job: dict, q_len: int, ctx: int):
        """A closure computing attention on the shape, or None, and a note."""
        q, k, v, k_cache, v_cache, tables, cu, lens = self.data(q_len, ctx)
        out = self.torch.empty_like(q)
        if job["kind"] == "gluon":
            return (lambda: self.gpp.gluon_paged_prefill_attention(q, k_cache, v_cache, tables, cu, lens, q_len,
                                                                   config=job["config"], out=out)), ""
        if job["kind"] == "triton":
            return (lambda: self.pre.prefill_attention(q, k_cache, v_cache, tables, cu, lens, q_len, out=out)), \
                "prefill.py paged, this GPU's table"
        return sdpa(self.torch, job["kind"], q, k, v, ctx)

    def run(self, job: dict) -> dict:
        torch = self.torch
        row = {"name": job["name"], "kind": job["kind"], "config": job.get("config")}
        t0 = time.perf_counter()
        try:
            for c in CHECKS:
                fn, note = self.fn(job, *c)
                if fn is None:
                    return {**row, "status": "unavailable", "note": note}
                out = fn()
                torch.cuda.synchronize()
                row.setdefault("first_call_s", time.perf_counter() - t0)  # compile included
                out = (out.transpose(1, 2)[0] if out.dim() == 4 else out).float()
                ref = self.refs[c]
                row["rel_err"] = max(row.get("rel_err", 0.0), ((out - ref).norm() / ref.norm()).item())
                row["max_abs_err"] = max(row.get("max_abs_err", 0.0), (out - ref).abs().max().item())
        except Exception as e:  # noqa: BLE001 - a candidate that does not compile or launch is a result
            return {**row, "status": "compile/launch error", "error": GA.first_lines(e)}
        if not (row["rel_err"] < GA.TOL_REL and row["max_abs_err"] < GA.TOL_ABS):  # NaN fails too
            return {**row, "status": "wrong result"}
        try:
            for label, q_len, ctx in SHAPES:
                fn, row[f"note_{label}"] = self.fn(job, q_len, ctx)
                if fn is not None:
                    ms = self.timing.stream_ms(fn, reps=10)
                    flops = self.pre.prefill_flops([q_len], [q_len + ctx], HQ, D)
                    row[f"tflops_{label}"] = flops / (ms * 1e-3) / 1e12
        except Exception as e:  # noqa: BLE001
            return {**row, "status": "timing error", "error": GA.first_lines(e)}
        return {**row, "status": "ok", "wall_s": time.perf_counter() - t0}


def child(jobs: list[dict], results) -> None:
    GA.child(jobs, results, Runner)


# --- the parent: orchestration, no CUDA --------------------------------------------------------------------------

def ratios(rows: list[dict]) -> None:
    """Each timed row's ratio to cuDNN and to ``prefill.py``'s paged kernel at every shape, same run."""
    base = {kind: next((r for r in rows if r["kind"] == kind and r["status"] == "ok"), None)
            for kind in ("cudnn", "triton")}
    for r in rows:
        for label, *_ in SHAPES:
            for kind, b in base.items():
                if b and f"tflops_{label}" in r and b.get(f"tflops_{label}"):
                    r[f"vs_{kind}_{label}"] = r[f"tflops_{label}"] / b[f"tflops_{label}"]


def report(rows: list[dict], meta: dict) -> str:
    from servesim.kernels import timing

    labels = [label for label, *_ in SHAPES]
    tflops = [{"name": r["name"], "status": r["status"], **{s: r.get(f"tflops_{s}", "") for s in labels},
               "rel_err": r.get("rel_err", ""), "first_call_s": r.get("first_call_s", "")} for r in rows]
    ratio = [{"name": r["name"], **{f"{s} /cuDNN": r.get(f"vs_cudnn_{s}", "") for s in labels},
              **{f"{s} /prefill.py": r.get(f"vs_triton_{s}", "") for s in labels}}
             for r in rows if r["status"] == "ok"]
    notes = sorted({f"- {r['name']} at {s}: {r[f'note_{s}']}" for r in rows for s in labels if r.get(f"note_{s}")})
    errors = [f"- **{r['name']}** ({r['status']}):\n\n```\n{r['error']}\n```" for r in rows if r.get("error")]
    return "\n".join([
        f"# Paged Gluon prefill attention on {meta['card']}", "", "```", json.dumps(meta, indent=1), "```", "",
        __doc__.split("\n\n")[2].replace("\n", " "), "",
        "## TFLOP/s in-step (visible keys; shapes: queries + context)", "", timing.markdown_table(tflops), "",
        "## Ratios (same run)", "", timing.markdown_table(ratio) if ratio else "none timed", "",
        "## Notes", "", *(notes or ["none"]), "", "## Errors", "", *(errors or ["none"]), ""])


def compile_only(cands: list[dict]) -> list[dict]:
    """Compile every candidate for sm_90 in this process (no GPU): ptxas's registers and spills, programs per SM."""
    from servesim.kernels.attention import gluon_paged_prefill as gpp

    rows = []
    for cfg in cands:
        t0 = time.perf_counter()
        try:
            kernel = gpp.compile_sm90(cfg)
            rows.append({"name": name(cfg), "status": "compiled", "compile_s": round(time.perf_counter() - t0, 2),
                         "shared_bytes": kernel.metadata.shared, **gpp.ptxas_usage(kernel),
                         "tma_copies": kernel.asm["ptx"].count("cp.async.bulk.tensor.2d.shared")})
            rows[-1]["per_sm"] = GA.programs_per_sm({**cfg, "variant": "pipelined"}, rows[-1]["shared_bytes"],
                                                    rows[-1]["registers"])
        except Exception as e:  # noqa: BLE001
            rows.append({"name": name(cfg), "status": "compile error", "error": GA.first_lines(e)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    args = GA.arguments(__doc__.splitlines()[0], "'all', or comma-separated indices into CANDIDATES and names",
                        300.0, 90.0)
    cands = select(args.candidates)
    if args.compile_only:
        compile_only(cands)
        return
    from servesim.kernels import timing

    t0 = time.perf_counter()
    meta = GA.run_meta()
    jobs = [{"name": b, "kind": b} for b in BASELINES] + [{"name": name(c), "kind": "gluon", "config": c}
                                                           for c in cands]
    rows = GA.run_all(jobs, args.job_timeout_s, args.budget_s, target=child)
    ratios(rows)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    stem = os.path.join(args.out, f"gluon_paged_prefill-{timing.card_slug(meta['card'])}-{meta['date']}")
    GA.write(stem, meta, rows, report(rows, meta))


if __name__ == "__main__":
    main()
