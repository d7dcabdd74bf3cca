"""Time the What-if page's re-run in a real browser: a knob changed -> the page showing the new numbers.

    PYTHONPATH=. python3 bench/dashboard_rerun.py [--repeat 3] [--out bench/results]

Starts ``servesim dashboard`` on a free loopback port, opens the What-if page in Debian's Chromium (headless,
through Playwright) on its default workload window, then changes one knob at a time and measures, with the
browser's clock, from the option click until the caption names the new scenario's config hash, streamlit reports no
script running and every visible chart is drawn; beside it the CPU seconds the server spent (a figure that a
busy shared machine inflates less than the wall time). Each knob value is new the first time (a simulation);
the last rows return to values already seen (a cache hit). Prints a table; ``--out`` also writes it as markdown.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests import dashboard_browser as b

STEPS = [("GPU", "H100-SXM"), ("Policy", "sjf"), ("Weights", "fp8"), ("Batching", "continuous"), ("TP", "2"),
         ("KV cache", "fp8"),  # each a new scenario; then back, step by step, through scenarios already run:
         ("KV cache", "bf16"), ("TP", "1"), ("Batching", "chunked")]
HASH_JS = "() => document.querySelector('[data-testid=stCaptionContainer] code')?.innerText"
DONE_JS = """(old) => {
    const code = document.querySelector('[data-testid=stCaptionContainer] code');
    const status = document.querySelector('[data-testid=stStatusWidget]');
    return code && code.innerText !== old && !(status && status.innerText.includes('Running'));
}"""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, pid: int) -> list[tuple[str, float, float, str]]:
    """(step, wall s, server CPU s, config hash) per step."""
    rows = []
    with sync_playwright() as p:
        browser = b.launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(120_000)
        t0, c0 = time.perf_counter(), cpu_s(pid)
        page.goto(url)
        page.wait_for_function(DONE_JS, arg="")
        page.wait_for_load_state("networkidle")  # plotly.js fetched
        b.plots_drawn(page)
        rows.append(("first load (default scenario)", time.perf_counter() - t0, cpu_s(pid) - c0,
                     page.evaluate(HASH_JS)))
        for label, option in STEPS:
            old = page.evaluate(HASH_JS)
            page.get_by_role("combobox", name=label).click()
            t0, c0 = time.perf_counter(), cpu_s(pid)  # from the click on the new value
            page.get_by_role("option", name=option, exact=True).click()
            page.wait_for_function(DONE_JS, arg=old)
            b.plots_drawn(page)
            rows.append((f"{label} -> {option}", time.perf_counter() - t0, cpu_s(pid) - c0, page.evaluate(HASH_JS)))
        browser.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="fresh servers to measure (each starts with an empty cache)")
    ap.add_argument("--out", type=Path, help="directory for dashboard_rerun-<date>.md")
    args = ap.parse_args()
    runs: list[list[tuple[str, float, float, str]]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            proc, url = b.start_dashboard(Path(tmp), Path(tmp) / "dashboard.log")
            try:
                runs.append(measure(url, proc.pid))  # `servesim dashboard` execs streamlit: same pid
            finally:
                b.stop(proc)
    seen: set[str] = set()
    lines = [f"What-if re-run, browser clock: knob click -> new numbers drawn ({args.repeat} fresh server(s); "
             f"{platform.node()}, {os.cpu_count()} CPUs, 1-min load {load_before:.2f} before and "
             f"{os.getloadavg()[0]:.2f} after)", "",
             "| step | cache | wall s, median | wall s, max | server CPU s, median |", "|---|---|---:|---:|---:|"]
    for i, (step, _, _, h) in enumerate(runs[0]):
        walls, cpus = [r[i][1] for r in runs], [r[i][2] for r in runs]
        cache = "hit" if h in seen else "miss"
        seen.add(h)
        lines.append(f"| {step} | {cache} | {statistics.median(walls):.2f} | {max(walls):.2f} | "
                     f"{statistics.median(cpus):.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"dashboard_rerun-cpu-{datetime.date.today().isoformat()}.md"
        path.write_text(text + "\n\nCommand: `PYTHONPATH=. python3 bench/dashboard_rerun.py --repeat "
                        f"{args.repeat} --out {args.out}`\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
