"""Where the simulation loop spends its time: py-spy samples of bench/sim_speed.py's scenario, summarized.

    python bench/sim_profile.py --requests 20000 --out bench/results/sim_profile-cpu-DATE

Runs the loop of ``bench/sim_speed.py`` (Llama-3.1-8B on one H100-SXM, chunked prefill, Poisson arXiv lengths
at 7.49 req/s) under ``py-spy record`` (raw stacks, 200 Hz) and writes the share of samples by function: its
own time (the innermost frame of a sample) and with what it calls, over the samples inside ``Simulation.run``.
py-spy samples wall-clock stacks; on a loaded machine the shares stay those of the process's own work.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys
sys.path.insert(0, {bench!r})
from sim_speed import one_run
one_run({n}, 7.49)
"""


def _name(frame: str) -> str:
    """``func (path/file.py:line)`` -> ``func (file.py)``: lines of one function count together."""
    func, _, where = frame.partition(" (")
    return f"{func} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})" if where else func


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, help="write the summary here (.md added)")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "stacks.txt"
        code = CHILD.format(bench=str(ROOT / "bench"), n=args.requests)
        subprocess.run([spy, "record", "-r", "200", "-f", "raw", "-o", str(raw), "--", sys.executable, "-c", code],
                       check=True, capture_output=True)
        lines = raw.read_text().splitlines()
    own, incl, total = collections.Counter(), collections.Counter(), 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(f.startswith("Simulation.run ") for f in frames):
            continue
        n = int(count)
        total += n
        own[_name(frames[-1])] += n
        for name in {_name(f) for f in frames}:
            incl[name] += n
    out = [f"# Simulation loop profile — {dt.date.today().isoformat()}",
           f"Command: python bench/sim_profile.py {' '.join(sys.argv[1:])} (py-spy 200 Hz, raw stacks); "
           f"{args.requests:,} requests of bench/sim_speed.py's scenario; 1-min load {os.getloadavg()[0]:.2f}.",
           f"{total:,} samples inside Simulation.run.", "", "own time (innermost frame):"]
    out += [f"  {100 * c / total:5.1f}%  {name}" for name, c in own.most_common(args.top)]
    out += ["", "with callees:"]
    out += [f"  {100 * c / total:5.1f}%  {name}" for name, c in incl.most_common(args.top)]
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:  # Markdown: the heading and command, then the table as it prints
        head, _, body = text.partition("\n\n")
        args.out.with_suffix(".md").write_text(head.replace("\n", "\n\n", 1) + "\n\n```\n" + body + "```\n")


if __name__ == "__main__":
    main()
