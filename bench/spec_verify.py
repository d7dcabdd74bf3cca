"""Benchmark the fused speculative-decoding verification kernel (servesim/kernels/spec/) on a CUDA GPU.

For batch B in 1..256, drafts k in 1..8, V = 32000 and 128256 (bf16 logits, fp32 draft distributions):
time per call (by the reference method and in-step, ``servesim/kernels/timing.py``; plus eager ``do_bench`` median), the
bytes the verification must read (``verify_bytes``) against the device copy bandwidth measured in the same
run, and the cost as a fraction of a Llama-3.1-8B decode step at batch B, the step being MEASURED here as
its GEMMs alone (torch bf16 matmuls: 32 x (QKV 4096->6144, O 4096->4096, gate+up 4096->28672, down
14336->4096) + LM head 4096->128256) -- a cheap lower bound of a real step, so the fraction is an upper bound.

Two scenarios: ``accept``: drafts = target argmax, q uniform, so every draft is accepted (every target
row read once, bonus sampled); ``reject``: first draft = target argmin with q one-hot on it, so every
sequence is rejected at position 0 (adds the residual pass over one target row and one q row).

First a tuning phase times the launch-parameter candidates (this GPU's current ones first) on the largest
shapes and keeps the best for the main table; it writes them to ``<out>/spec_verify_configs-<card>-<date>.json``, the
``spec_verify`` section of a configs file (``servesim/kernels/tuned.py``), which ``--write-package`` (or ``python3 -m
servesim.kernels.tuned install FILE`` later) merges into ``servesim/kernels/configs/<card>.json``; the H100's
parameters are code (``LAUNCH`` in ``servesim/kernels/spec/verify.py``). ``--quick`` runs with this GPU's.
Then diagnostic rows: ``k = 0`` (every row a bonus row, the noise-bound case) and greedy (a plain read with
max/argmax, the ceiling of a row pass). (Until commit f360453 it also timed a frozen copy of the
first-pass kernel as a same-run baseline; today's results file records that comparison.)
Run: ``python3 bench/spec_verify.py --out bench/results`` (``--quick``: smoke run, no tuning).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from servesim.kernels import timing, tuned  # noqa: E402
from servesim.kernels.counters import SplitCounters  # noqa: E402
from servesim.kernels.spec import verify, verify_bytes  # noqa: E402
from servesim.kernels.spec.verify import launch_section, launch_tables  # noqa: E402

BATCHES, DRAFTS, VOCABS = (1, 4, 16, 64, 256), (1, 2, 4, 8), (32000, 128256)
LLAMA8B_GEMMS = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]  # (K, N) per layer, x32


class DecodeStep:
    """Llama-3.1-8B step GEMMs (distinct weights per layer, ~15 GB) timed at a given token count."""

    def __init__(self) -> None:
        self.layers = [[torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02 for k, n in LLAMA8B_GEMMS]
                       for _ in range(32)]
        self.lm_head = torch.randn(128256, 4096, dtype=torch.bfloat16, device="cuda") * 0.02
        self.cache: dict[int, float] = {}

    def ms(self, m: int) -> float:
        if m not in self.cache:
            x = torch.randn(m, 4096, dtype=torch.bfloat16, device="cuda")
            h = torch.randn(m, 14336, dtype=torch.bfloat16, device="cuda")

            def step():
                for w_qkv, w_o, w_gu, w_d in self.layers:
                    torch.nn.functional.linear(x, w_qkv)
                    torch.nn.functional.linear(x, w_o)
                    torch.nn.functional.linear(x, w_gu)
                    torch.nn.functional.linear(h, w_d)
                torch.nn.functional.linear(x, self.lm_head)

            self.cache[m] = do_bench(step, warmup=30, rep=200, return_mode="median")
        return self.cache[m]


def make_inputs(b: int, k: int, vocab: int, scenario: str, gen: torch.Generator):
    """Inputs whose outcome is known: every draft accepted, or every sequence rejected at position 0."""
    n_rows = b * (k + 1)
    logits = torch.randn(n_rows, vocab, device="cuda", generator=gen).to(torch.bfloat16)
    cu = torch.arange(0, n_rows + 1, k + 1, dtype=torch.int32, device="cuda")
    draft_rows = (torch.arange(b * k, device="cuda") // k) * (k + 1) + torch.arange(b * k, device="cuda") % k
    seeds = torch.randint(0, 2**62, (b,), device="cuda", generator=gen)
    if scenario == "accept":
        tokens = logits[draft_rows].float().argmax(-1).int()
        q = torch.full((b * k, vocab), 1.0 / vocab, device="cuda")
    else:
        tokens = logits[draft_rows].float().argmin(-1).int()
        q = torch.nn.functional.one_hot(tokens.long(), vocab).float()
    return logits, cu, tokens, q, seeds


def time_case(b, k, vocab, scenario, gen, temperature=1.0, **params) -> dict:
    """One case timed with launch ``params`` (those not given: this GPU's); the row names every parameter."""
    args = make_inputs(b, k, vocab, scenario, gen)
    counters = SplitCounters(args[0].device)  # reused by every timed launch
    if temperature == 0:
        args = (*args[:3], None, args[4])
    acc, _ = verify(*args, temperature, k_max=k, counters=counters, **params)
    want = k if scenario == "accept" else 0
    if not bool((acc == want).all()) and temperature > 0:  # greedy: a bf16 tie may pick another argmax
        raise RuntimeError(f"unexpected acceptance for {scenario} B={b} k={k} V={vocab}")

    def fn():
        return verify(*args, temperature, k_max=k, counters=counters, **params)

    graph_ms = timing.cold_ms(fn)
    stream_ms = timing.stream_ms(fn)
    eager_ms = do_bench(fn, warmup=10, rep=60, return_mode="median")
    nbytes = verify_bytes(b, b * k, vocab, 2, 4, n_rejected=b if scenario == "reject" else 0, k_max=k,
                          greedy=temperature == 0)
    return {"batch": b, "k": k, "vocab": vocab, "scenario": scenario, "temperature": temperature,
            "graph_us": graph_ms * 1e3, "stream_us": stream_ms * 1e3, "eager_us": eager_ms * 1e3, "bytes": nbytes,
            "read_GBps": nbytes / (graph_ms * 1e-3) / 1e9, "stream_GBps": nbytes / (stream_ms * 1e-3) / 1e9,
            **launch_tables(), **params}


CANDIDATES = [{"block": b, "num_warps": w, "max_chunk": c}
              for b, w, c in ((1024, 4, 8192), (2048, 4, 8192), (2048, 4, 16384), (2048, 8, 16384), (4096, 8, 16384))]
DIAG_SHAPES = [(256, 0, 128256, 1.0), (1024, 0, 128256, 1.0), (256, 1, 128256, 0.0), (256, 8, 128256, 0.0)]
TUNE_SHAPES = [(256, 8, 128256, "accept"), (256, 1, 128256, "accept"), (256, 1, 128256, "reject"),
               (64, 4, 128256, "accept"), (16, 4, 128256, "accept"), (256, 2, 32000, "accept")]


def candidates() -> list[dict]:
    """:data:`CANDIDATES`, this GPU's current launch parameters first."""
    current = {k: launch_tables()[k] for k in ("block", "num_warps", "max_chunk")}
    return [current, *(c for c in CANDIDATES if c != current)]


def tune(gen) -> tuple[dict, list[dict]]:
    """Time every launch candidate on the shapes that move the most bytes; best = least total time."""
    cands = candidates()
    rows = [time_case(b, k, vocab, scenario, gen, **cand)
            for cand in cands for b, k, vocab, scenario in TUNE_SHAPES]
    n = len(TUNE_SHAPES)
    totals = [sum(r["stream_us"] for r in rows[i * n:(i + 1) * n]) for i in range(len(cands))]
    best = cands[totals.index(min(totals))]
    print(f"tuning: best {best} total {min(totals):.0f} us (worst {max(totals):.0f} us)", flush=True)
    return best, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="a few shapes only, no tuning (smoke run)")
    ap.add_argument("--write-package", action="store_true", help="install the tuned launch parameters as this GPU's "
                    "(servesim/kernels/configs/<card>.json)")
    args = ap.parse_args()
    if args.write_package and args.quick:
        ap.error("--quick does not tune: nothing to install")
    gen = torch.Generator(device="cuda").manual_seed(0)
    name = timing.card()
    card = timing.card_slug(name)
    meta = {"card": name, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "triton": triton.__version__, "command": " ".join(["python3"] + sys.argv),
            "device_key": tuned.current_key()}
    copy_bps = timing.copy_bandwidth()
    print(f"{name}: copy bandwidth {copy_bps / 1e9:.0f} GB/s (read+write of 1 GiB)", flush=True)
    launch, sweep_rows = ({}, []) if args.quick else tune(gen)
    meta["launch"] = {**launch_tables(), **launch}  # what every row below launched with
    if launch:
        tuned.report_written(write_configs(args.out, meta), args.write_package)
    batches, drafts = ((1, 64), (1, 8)) if args.quick else (BATCHES, DRAFTS)
    rows = []
    for vocab in VOCABS:
        for b in batches:
            for k in drafts:
                for scenario in ("accept", "reject"):
                    r = time_case(b, k, vocab, scenario, gen, **launch)
                    r["bw_frac"] = r["read_GBps"] * 1e9 / copy_bps
                    r["bw_frac_stream"] = r["stream_GBps"] * 1e9 / copy_bps
                    rows.append(r)
                    print(f"V={vocab:6d} B={b:3d} k={k} {scenario:6s} {r['graph_us']:8.1f} us "
                          f"{r['read_GBps']:7.0f} GB/s ({r['bw_frac']:.0%}); in-step {r['stream_us']:8.1f} us "
                          f"({r['bw_frac_stream']:.0%})", flush=True)
    diag_rows = []
    try:  # extras: a failure here must not lose the main table
        diagnostics(args.quick, gen, launch, copy_bps, diag_rows)
    except Exception as exc:  # noqa: BLE001
        print(f"diagnostics failed: {exc!r}", flush=True)
    step = DecodeStep()
    for r in rows:
        r["decode_step_ms"] = step.ms(r["batch"])
        r["verify_fwd_ms"] = step.ms(r["batch"] * (r["k"] + 1))
        r["frac_decode_step"] = r["graph_us"] * 1e-3 / r["decode_step_ms"]
        r["frac_decode_step_stream"] = r["stream_us"] * 1e-3 / r["decode_step_ms"]
        r["frac_verify_fwd"] = r["graph_us"] * 1e-3 / r["verify_fwd_ms"]
    write(args.out, card, meta, copy_bps, rows, sweep_rows, diag_rows)


def write_configs(out: Path, meta: dict) -> Path:
    """The launch parameters the rows ran with as a configs file of ``servesim/kernels/tuned.py``:
    ``spec_verify_configs-<card>-<date>.json`` in ``out``."""
    provenance = {k: meta[k] for k in ("card", "date", "command", "torch", "triton")}
    doc = tuned.configs_document(meta["card"], "spec_verify", launch_section(meta["launch"]), provenance)
    return tuned.write_document(out / f"spec_verify_configs-{timing.card_slug(meta['card'])}-{meta['date']}.json",
                                doc)


def diagnostics(quick, gen, launch, copy_bps, diag_rows) -> None:
    """The DIAG_SHAPES rows (appended to ``diag_rows``)."""
    if quick:
        return
    diag_rows += [time_case(b, k, vocab, "accept", gen, temperature=t, **launch) for b, k, vocab, t in DIAG_SHAPES]
    for r in diag_rows:
        r["bw_frac"] = r["read_GBps"] * 1e9 / copy_bps
        r["bw_frac_stream"] = r["stream_GBps"] * 1e9 / copy_bps
        print(f"diag V={r['vocab']} B={r['batch']} k={r['k']} T={r['temperature']}: {r['graph_us']:.1f} us "
              f"{r['read_GBps']:.0f} GB/s", flush=True)


def write(out: Path, card: str, meta: dict, copy_bps: float, rows: list[dict], sweep_rows: list[dict],
          diag_rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"spec_verify-{card}-{meta['date']}"
    stem.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "copy_GBps": copy_bps / 1e9, "rows": rows, "sweep": sweep_rows,
         "diagnostics": diag_rows}, indent=1))
    lines = [f"# spec_verify on {meta['card']} ({meta['date']})", "",
             f"torch {meta['torch']}, triton {meta['triton']}; command: `{meta['command']}`", "",
             f"Launch parameters (best total time in the tuning table below): `{meta['launch']}`.", "",
             f"Copy bandwidth (1 GiB device copy, read+write): **{copy_bps / 1e9:.0f} GB/s**.", "",
             "time = reference method (one CUDA-graph replay after zeroing 256 MB: dirty L2 plus the isolated-launch "
             "floor; median); in-step = back to back with a 256 MB read inside one graph (cold, clean L2; "
             "`servesim/kernels/timing.py`); eager = `do_bench` median of the Python call. "
             "bytes = `verify_bytes` (every target row once, + one q row per rejected sequence). "
             "step = measured GEMM time of a Llama-3.1-8B decode step at batch B (lower bound of a step); "
             "fwd = the same GEMMs at B*(k+1) tokens (the target's verification forward).", "",
             "| V | B | k | scenario | time us | in-step us | eager us | MB read | % copy BW | in-step % copy "
             "| step ms | % step | in-step % step | fwd ms | % fwd |", "|" + "---|" * 15]
    first = len(lines) - 2
    for r in rows:
        lines.append(f"| {r['vocab']} | {r['batch']} | {r['k']} | {r['scenario']} | {r['graph_us']:.1f} | "
                     f"{r['stream_us']:.1f} | {r['eager_us']:.1f} | {r['bytes'] / 1e6:.2f} | "
                     f"{r['bw_frac']:.0%} | {r['bw_frac_stream']:.0%} | {r['decode_step_ms']:.2f} | "
                     f"{r['frac_decode_step']:.2%} | {r['frac_decode_step_stream']:.2%} | "
                     f"{r['verify_fwd_ms']:.2f} | {r['frac_verify_fwd']:.2%} |")
    if diag_rows:
        lines += ["", "## Diagnostics: bonus rows only (k = 0) and greedy (T = 0, plain read)", "",
                  "| V | B | k | T | time us | in-step us | MB read | % copy BW | in-step % copy |", "|" + "---|" * 9]
        lines += [f"| {r['vocab']} | {r['batch']} | {r['k']} | {r['temperature']} | {r['graph_us']:.1f} | "
                  f"{r['stream_us']:.1f} | {r['bytes'] / 1e6:.2f} | {r['bw_frac']:.0%} | {r['bw_frac_stream']:.0%} |"
                  for r in diag_rows]
    if sweep_rows:
        lines += ["", "## Tuning: launch parameters", "",
                  "| V | B | k | scenario | block | warps | max chunk | time us | in-step us |", "|" + "---|" * 9]
        lines += [f"| {r['vocab']} | {r['batch']} | {r['k']} | {r['scenario']} | {r['block']} | {r['num_warps']} | "
                  f"{r['max_chunk']} | {r['graph_us']:.1f} | {r['stream_us']:.1f} |" for r in sweep_rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[first:first + len(rows) + 2]))


if __name__ == "__main__":
    main()
