"""The dedicated fuzzing run: every input parser of tests/test_fuzz_parsers.py fed 10,000 inputs (CI feeds 60).

    python bench/fuzz_parsers.py                    # 10,000 each; writes bench/results/fuzz-cpu-<date>.{md,json}
    python bench/fuzz_parsers.py --examples 500 --out /tmp/fuzz

It runs that test file under pytest with SERVESIM_FUZZ_EXAMPLES and SERVESIM_FUZZ_COUNTS (each parser's tally:
inputs, loaded, refused with the project's one-line error, unhandled) and SERVESIM_FUZZ_COLLECT=1 (an
unhandled exception is counted by kind rather than stopping the parser's run), then writes the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=10_000, help="inputs per parser")
    ap.add_argument("--out", type=Path, help="path without suffix (default: bench/results/fuzz-cpu-<date>)")
    args = ap.parse_args()
    date = dt.date.today().isoformat()
    with tempfile.TemporaryDirectory() as tmp:
        counts = Path(tmp) / "counts.json"
        env = {**os.environ, "SERVESIM_FUZZ_EXAMPLES": str(args.examples), "SERVESIM_FUZZ_COUNTS": str(counts),
               "SERVESIM_FUZZ_COLLECT": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz_parsers.py"]
        load0, wall0 = os.getloadavg()[0], time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - wall0
        tally = json.loads(counts.read_text()) if counts.is_file() else {}
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    meta = {"date": date, "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "command": "python bench/fuzz_parsers.py " + " ".join(sys.argv[1:]), "examples_per_parser": args.examples,
            "wall_s": round(wall, 1), "load_1min_start": load0, "load_1min_end": os.getloadavg()[0],
            "pytest_exit": proc.returncode, "pytest_tail": proc.stdout.strip().splitlines()[-1:]}
    out = args.out or ROOT / "bench" / "results" / f"fuzz-cpu-{date}"
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "parsers": tally}, indent=1) + "\n")
    total = sum(t["inputs"] for t in tally.values())
    unhandled = sum(t["unhandled"] for t in tally.values())
    lines = [f"# Parser fuzzing — {date}", "",
             f"Machine: {cpu}, {meta['cores']} cores, shared with other engineers' jobs (load {load0:.1f} at the "
             "start, "
             f"{meta['load_1min_end']:.1f} at the end); Python {meta['python']}; {wall:,.0f} s wall.",
             f"Command: `{meta['command']}` (pytest tests/test_fuzz_parsers.py, derandomized hypothesis, "
             f"{args.examples:,} examples per parser; pytest exit {proc.returncode}).", "",
             f"{total:,} inputs, {unhandled} unhandled exceptions.", "",
             "| parser | inputs | loaded | refused (one-line error) | unhandled | wall s |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {t['inputs']:,} | {t['loaded']:,} | {t['refused']:,} | {t['unhandled']} | "
              f"{t['wall_s']:,.0f} |"
              for name, t in tally.items()]
    kinds = {k: v for t in tally.values() for k, v in t.get("unhandled_kinds", {}).items()}
    if kinds:
        lines += ["", "Unhandled:", *[f"- {v} x {k}" for k, v in kinds.items()]]
    if proc.returncode:
        lines += ["", "pytest said:", "```", *proc.stdout.strip().splitlines()[-40:], "```"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if proc.returncode == 0 and not unhandled else 1)


if __name__ == "__main__":
    main()
