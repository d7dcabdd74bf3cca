"""Where the simulation loop spends its time: py-spy samples (native frames included), summarized.

    python bench/sim_profile.py --out bench/results/sim_profile-cpu-DATE

Two loops, each under ``py-spy record --native`` (raw stacks, 200 Hz): the default scenario (``servesim
simulate`` with no options: azure-conv's 19,366 requests, Llama-3.1-8B on one H200 with the shipped profile) and
``bench/sim_speed.py``'s (Llama-3.1-8B on one H100-SXM, chunked prefill, Poisson arXiv lengths at 7.49 req/s,
``--requests`` of them). For the samples inside ``Simulation.run`` it writes where the innermost frame is (numpy's
C code or its Python wrappers, SimPy, the interpreter's own C code, servesim's Python lines), the share of
samples by function (its own time, native frames under it folded into the Python function that called them) and
with what it calls. py-spy samples wall-clock stacks; on a loaded machine the shares stay those of the process's
own work.
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
CHILDREN = {
    "default": """
from servesim.sim.config import make_scenario
from servesim.sim.deployment import build_deployment, build_workload
from servesim.sim.simulator import Simulation
s = make_scenario({{}})
Simulation(build_deployment(s), build_workload(s), seed=s.seed).run()
""",
    "sim_speed": """
import sys
sys.path.insert(0, {bench!r})
from sim_speed import one_run
one_run({n}, 7.49)
""",
}
TITLES = {"default": "the default scenario (servesim simulate: 19,366 azure-conv requests, H200, shipped profile)",
          "sim_speed": "bench/sim_speed.py's scenario ({n:,} requests: H100-SXM roofline, Poisson arXiv lengths)"}


def _name(frame: str) -> str:
    """``func (path/file.py:line)`` -> ``func (file.py)``: lines of one function count together."""
    func, _, where = frame.partition(" (")
    return f"{func} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})" if where else func


def _python(frame: str) -> bool:
    return ".py:" in frame


def _kind(frame: str) -> str:
    """Where a sample's innermost frame is."""
    if "numpy/" in frame:
        return "numpy (C code and Python wrappers)"
    if "simpy/" in frame:
        return "SimPy (Python)"
    if "servesim/" in frame:
        return "servesim (Python lines)"
    if _python(frame):
        return "other Python (dataclasses' generated __init__, standard library)"
    return "the interpreter's C code (objects, calls, allocation)"


def profile(kind: str, n: int, top: int) -> list[str]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "stacks.txt"
        code = CHILDREN[kind].format(bench=str(ROOT / "bench"), n=n)
        subprocess.run([spy, "record", "--native", "-r", "200", "-f", "raw", "-o", str(raw), "--", sys.executable,
                        "-c", code], check=True, capture_output=True, cwd=ROOT)
        lines = raw.read_text().splitlines()
    own, incl, where, total = collections.Counter(), collections.Counter(), collections.Counter(), 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(f.startswith("Simulation.run ") for f in frames):
            continue
        c = int(count)
        total += c
        where[_kind(frames[-1])] += c
        py = [f for f in frames if _python(f)]
        own[_name(py[-1])] += c
        for name in {_name(f) for f in py}:
            incl[name] += c
    out = [f"## {TITLES[kind].format(n=n)}", "", f"{total:,} samples inside Simulation.run "
           f"(1-min load {os.getloadavg()[0]:.2f}).", "", "```", "innermost frame:"]
    out += [f"  {100 * c / total:5.1f}%  {name}" for name, c in where.most_common()]
    out += ["", "own time (innermost Python frame, the native code under it included):"]
    out += [f"  {100 * c / total:5.1f}%  {name}" for name, c in own.most_common(top)]
    out += ["", "with callees:"]
    out += [f"  {100 * c / total:5.1f}%  {name}" for name, c in incl.most_common(top)]
    return out + ["```", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20_000, help="requests of bench/sim_speed.py's scenario")
    ap.add_argument("--scenarios", default="default,sim_speed", help="comma-separated: default, sim_speed")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, help="write the summary here (.md added)")
    args = ap.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out = [f"# Simulation loop profile — {dt.date.today().isoformat()}", "",
           f"Command: `python bench/sim_profile.py {' '.join(sys.argv[1:])}` (py-spy --native, 200 Hz, raw stacks); "
           f"servesim at commit {commit}.", ""]
    for kind in args.scenarios.split(","):
        out += profile(kind, args.requests, args.top)
    text = "\n".join(out)
    print(text)
    if args.out:
        args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
