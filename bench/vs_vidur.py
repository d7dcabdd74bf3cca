"""servesim against Vidur on the same scenarios, the same machine, in one run: whole commands, interleaved rounds.

Scenarios (issue 20): arXiv-summarization lengths, Llama-3.1-8B (Vidur: Llama-3-8B, the same shapes) on one H100,
TP1, Poisson arrivals at 3 req/s, 5,000 and 50,000 requests; servesim's continuous batching against Vidur's vLLM
scheduler (128 sequences, 4,096 tokens a step) and chunked prefill against Sarathi (2,048-token chunks).
50,000 requests exceed the trace's 28,257 rows: servesim repeats it (``--repeat``), Vidur reads the file repeated.

Vidur 0.0.26 is installed beside the project, never in it, with the kit in ``shared/peers/vidur/`` (its README):

    python3 -m venv /tmp/vidur-venv && /tmp/vidur-venv/bin/pip install vidur==0.0.26
    /tmp/vidur-venv/bin/python shared/peers/vidur/build_fake_hf_cache.py /tmp/vidur-cache
    python bench/vs_vidur.py --out bench/results/vs_vidur-cpu-DATE   # --vidur-venv, --vidur-cache: where they are

Without Vidur it says what is missing and exits 0. Each round runs every pair, servesim and Vidur one after the
other (the order alternating by round); the figures are medians over rounds of wall time and of the command's
CPU time, with the load average before each command (other work on the machine shows there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = "vidur_arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
# servesim's counterpart of each Vidur scheduler (run_vidur.sh: cap 128 sequences, 4,096 tokens, 2,048 chunks)
SCHEDULERS = {
    "vllm": ("continuous", ["--max-num-batched-tokens", "4096"]),
    "sarathi": ("chunked", ["--max-num-batched-tokens", "2048"]),
}


def servesim_cmd(n: int, qps: float, sched: str) -> list[str]:
    batching, flags = SCHEDULERS[sched]
    exe = Path(sys.executable).with_name("servesim")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "servesim"]
    return head + ["simulate", "--trace", "arxiv-summarization", "--arrival", "poisson", "--rate", f"{qps:g}",
                   "--num-requests", str(n), *(["--repeat"] if n > 28_257 else []), "--gpu", "H100-SXM",
                   "--batching", batching, "--max-num-seqs", "128", *flags, "--max-model-len", "4096",
                   "--max-context-tokens", "4096",
                   "--seed", "42"]


def vidur_cmd(kit: Path, n: int, qps: float, sched: str, out: Path) -> list[str]:
    return ["bash", str(kit / "run_vidur.sh"), str(n), f"{qps:g}", str(out), sched]


def find_vidur(venv: Path, cache: Path, kit: Path) -> str:
    """What is missing for a Vidur run ('' when nothing is)."""
    if not (kit / "run_vidur.sh").is_file():
        return f"the Vidur kit is not at {kit} (run_vidur.sh)"
    py = venv / "bin" / "python"
    if not py.exists():
        return f"no Vidur venv at {venv} (python3 -m venv {venv} && {venv}/bin/pip install vidur==0.0.26)"
    if subprocess.run([str(py), "-c", "import vidur"], capture_output=True).returncode != 0:
        return f"{venv} has no vidur package ({venv}/bin/pip install vidur==0.0.26)"
    if not (cache / "profiling_data").is_dir():
        return f"no offline profiling cache at {cache} ({py} {kit}/build_fake_hf_cache.py {cache})"
    return ""


def timed(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd`` to completion: wall seconds, its CPU seconds (user + system, children included), load."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return {"wall_s": wall, "cpu_s": cpu, "load_1min": load}


def repeated_trace(src: Path, rows: int, where: Path) -> Path:
    """The arXiv file with its rows repeated until it holds ``rows`` (Vidur draws its requests from the file)."""
    lines = src.read_text().splitlines()
    header, body = lines[0], lines[1:]
    copies = -(-rows // len(body))
    out = where / f"arxiv_x{copies}.csv"
    out.write_text("\n".join([header] + body * copies) + "\n")
    return out


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "host": platform.node()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("SERVESIM_SHARED", ROOT.parent / "shared"))
    ap.add_argument("--sizes", default="5000,50000", help="comma-separated request counts")
    ap.add_argument("--schedulers", default="vllm,sarathi", help="Vidur schedulers (servesim: continuous, chunked)")
    ap.add_argument("--qps", type=float, default=3.0, help="Poisson arrival rate, requests/s")
    ap.add_argument("--rounds", default="3", help="rounds, one number or one per size (e.g. 3,2)")
    ap.add_argument("--pairs", help="only these SIZE:SCHEDULER pairs, e.g. 5000:vllm,5000:sarathi,50000:vllm")
    ap.add_argument("--vidur-venv", type=Path, default=Path(os.environ.get("VIDUR_VENV", "/tmp/vidur-venv")))
    ap.add_argument("--vidur-cache", type=Path, default=Path(os.environ.get("VIDUR_CACHE", "/tmp/vidur-cache")))
    ap.add_argument("--kit", type=Path, default=shared / "peers" / "vidur")
    ap.add_argument("--out", type=Path, help="write Markdown + JSON here (path without suffix)")
    args = ap.parse_args()
    missing = find_vidur(args.vidur_venv, args.vidur_cache, args.kit)
    if missing:
        print(f"vs_vidur: Vidur is not set up, nothing measured: {missing}")
        return
    # servesim's modules byte-compiled, as an installed package is (bench/cli_speed.py says why)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "servesim")], check=True)
    sizes = [int(x) for x in args.sizes.split(",")]
    scheds = [s.strip() for s in args.schedulers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="vs_vidur."))
    src = args.kit.parent.parent / "traces" / TRACE
    big = repeated_trace(src, max(sizes), tmp) if max(sizes) > 28_257 else None
    base_env = {**os.environ, "VIDUR_VENV": str(args.vidur_venv), "VIDUR_CACHE": str(args.vidur_cache)}
    pairs = [(n, s) for n in sizes for s in scheds]
    if args.pairs:
        wanted = {(int(p.split(":")[0]), p.split(":")[1]) for p in args.pairs.split(",")}
        pairs = [p for p in pairs if p in wanted]
    rounds = [int(x) for x in args.rounds.split(",")]
    rounds_of = dict(zip(sizes, rounds if len(rounds) == len(sizes) else [rounds[0]] * len(sizes), strict=True))
    runs: dict[str, list[dict]] = {}
    try:
        for size in sizes:  # all rounds of one size, then the next: a long size cannot starve a short one
            for rnd in range(rounds_of[size]):
                for n, sched in pairs:
                    if n != size:
                        continue
                    env = {**base_env, **({"VIDUR_TRACE": str(big)} if big and n > 28_257 else {})}
                    cmds = {"servesim": servesim_cmd(n, args.qps, sched),
                            "vidur": vidur_cmd(args.kit, n, args.qps, sched, tmp / f"out-{n}-{sched}-{rnd}")}
                    order = ("servesim", "vidur") if rnd % 2 == 0 else ("vidur", "servesim")
                    for tool in order:
                        r = timed(cmds[tool], env)
                        runs.setdefault(f"{tool}:{n}:{sched}", []).append({**r, "round": rnd})
                        print(f"round {rnd + 1}: {tool:>8} {n:>6,} {sched:<7} {r['wall_s']:7.2f} s wall "
                              f"{r['cpu_s']:7.2f} s CPU (load {r['load_1min']:.2f})", flush=True)
                    if args.out:  # a run stopped part-way leaves the pairs it finished
                        report(args, runs, pairs, rounds_of)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, runs, pairs, rounds_of, show=True)


def report(args, runs: dict[str, list[dict]], pairs, rounds_of, show: bool = False) -> None:
    """Medians and ratios of the pairs measured so far; Markdown + JSON at ``args.out``."""
    pairs = [(n, s) for n, s in pairs if f"vidur:{n}:{s}" in runs and f"servesim:{n}:{s}" in runs]
    rows = []
    if not pairs:
        return
    for n, sched in pairs:
        s, v = runs[f"servesim:{n}:{sched}"], runs[f"vidur:{n}:{sched}"]
        med = {f"{tool}_{k}": statistics.median(r[k] for r in rr) for tool, rr in (("servesim", s), ("vidur", v))
               for k in ("wall_s", "cpu_s")}
        rows.append({"requests": n, "vidur_scheduler": sched, "servesim_batching": SCHEDULERS[sched][0], **med,
                     "wall_ratio": med["vidur_wall_s"] / med["servesim_wall_s"],
                     "cpu_ratio": med["vidur_cpu_s"] / med["servesim_cpu_s"],
                     "servesim_command": " ".join(servesim_cmd(n, args.qps, sched)).replace(
                         str(Path(sys.executable).parent) + "/", ""),
                     "vidur_command": f"run_vidur.sh {n} {args.qps:g} OUT {sched}"
                                      + (" (VIDUR_TRACE: the arXiv file repeated)" if n > 28_257 else "")})
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    meta = {"commit": commit, "date": dt.date.today().isoformat(), **machine(), "rounds": rounds_of, "qps": args.qps,
            "command": "python bench/vs_vidur.py " + " ".join(sys.argv[1:]),
            "vidur": "vidur 0.0.26 (PyPI) with the kit of shared/peers/vidur", "runs": runs}
    if show:
        print("\n| requests | servesim | Vidur | servesim wall s | Vidur wall s | ratio | servesim CPU s | "
              "Vidur CPU s | ratio |")
    for r in rows if show else ():
        print(f"| {r['requests']:,} | {r['servesim_batching']} | {r['vidur_scheduler']} | {r['servesim_wall_s']:.2f} | "
              f"{r['vidur_wall_s']:.1f} | {r['wall_ratio']:.0f}x | {r['servesim_cpu_s']:.2f} | {r['vidur_cpu_s']:.1f} |"
              f" {r['cpu_ratio']:.0f}x |")
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "pairs": rows}, indent=2) + "\n")
        loads = [r["load_1min"] for rr in runs.values() for r in rr]
        lines = [f"# servesim vs Vidur — {meta['date']}", "",
                 f"Machine: {meta['cpu']}, {meta['cores']} cores, Python {meta['python']}. {meta['vidur']}. "
                 f"servesim at commit {commit}.",
                 f"Command: `{meta['command']}`; interleaved rounds (" + ", ".join(
                     f"{len(runs[f'vidur:{n}:{s}'])} of {n:,}/{s}" for n, s in pairs) + "), medians; whole commands "
                 f"(start-up included); 1-min load average before the commands {min(loads):.2f}–{max(loads):.2f}.",
                 "",
                 "arXiv-summarization lengths, Llama-3.1-8B (Vidur: Llama-3-8B) on one H100, TP1, Poisson "
                 f"{args.qps:g} req/s.", "",
                 "| requests | servesim | Vidur | servesim wall s | Vidur wall s | wall ratio | servesim CPU s | "
                 "Vidur CPU s | CPU ratio |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['requests']:,} | {r['servesim_batching']} | {r['vidur_scheduler']} | "
                  f"{r['servesim_wall_s']:.2f} | {r['vidur_wall_s']:.1f} | {r['wall_ratio']:.0f}× | "
                  f"{r['servesim_cpu_s']:.2f} | {r['vidur_cpu_s']:.1f} | {r['cpu_ratio']:.0f}× |" for r in rows]
        lines += ["", "Commands:", ""] + [f"- `{r['servesim_command']}` against `{r['vidur_command']}`" for r in rows]
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
