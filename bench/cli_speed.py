"""Whole-command wall and CPU time of the CLI: `servesim --help`, a 100-request `simulate`, the default `simulate`.

    python bench/cli_speed.py --rounds 5 --out bench/results/cli_speed-cpu-DATE

Each round runs every command once (interleaved), as a user would from a shell; the figures are medians and
minima over rounds of wall time and of the command's CPU time (user + system), with the 1-minute load average
before each command (other work on the machine shows there: with load above the core count, wall time is
mostly waiting).

The package's modules are byte-compiled first (``compileall``), as an installed package is (pip writes the
bytecode at install): an environment with ``PYTHONDONTWRITEBYTECODE`` set would otherwise compile every
servesim module from source on every command (about 70 ms of the 100-request run on the 2-core machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "servesim --help": ["--help"],
    "servesim simulate --num-requests 100": ["simulate", "--num-requests", "100"],
    "servesim simulate": ["simulate"],
}
TARGETS_S = {"servesim --help": 0.3, "servesim simulate --num-requests 100": 0.4, "servesim simulate": 1.5}


def run(args: list[str]) -> dict:
    exe = Path(sys.executable).with_name("servesim")
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "servesim"]) + args
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "load_1min": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, help="write Markdown + JSON here (path without suffix)")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "servesim")], check=True)
    runs: dict[str, list[dict]] = {name: [] for name in COMMANDS}
    for rnd in range(args.rounds):
        for name, argv in COMMANDS.items():
            r = run(argv)
            runs[name].append(r)
            print(f"round {rnd + 1}: {name:<40} {r['wall_s']:6.2f} s wall {r['cpu_s']:6.2f} s CPU "
                  f"(load {r['load_1min']:.2f})", flush=True)
    rows = [{"command": name, "target_wall_s": TARGETS_S[name],
             **{f"{stat}_{k}": f(r[k] for r in rr) for k in ("wall_s", "cpu_s")
                for stat, f in (("median", statistics.median), ("min", min))}}
            for name, rr in runs.items()]
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    meta = {"date": dt.date.today().isoformat(), "commit": commit, "python": platform.python_version(),
            "cpu": next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?"),
            "cores": os.cpu_count(), "rounds": args.rounds,
            "command": "python bench/cli_speed.py " + " ".join(sys.argv[1:]), "bytecode": "compiled first",
            "runs": runs}
    loads = [r["load_1min"] for rr in runs.values() for r in rr]
    lines = [f"# CLI speed — {meta['date']}", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores, Python {meta['python']}; servesim at commit {commit}.",
             f"Command: `{meta['command']}`; {args.rounds} interleaved rounds; 1-min load average before the commands "
             f"{min(loads):.2f}–{max(loads):.2f}; servesim byte-compiled first (as installed).", "",
             "| command | target wall s | median wall s | min wall s | median CPU s | min CPU s |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| `{r['command']}` | {r['target_wall_s']} | {r['median_wall_s']:.2f} | {r['min_wall_s']:.2f} | "
              f"{r['median_cpu_s']:.2f} | {r['min_cpu_s']:.2f} |" for r in rows]
    print("\n".join(lines[-len(rows) - 2:]))
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "commands": rows}, indent=2) + "\n")
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
