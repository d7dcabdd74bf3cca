"""Driving the dashboard in Debian's Chromium through Playwright: start `servesim dashboard` on a free loopback
port, wait for it, and the few page interactions the e2e tests and bench/dashboard_rerun.py share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Streamlit's status widget says "Running" while a script run is going on.
IDLE_JS = "() => !document.querySelector('[data-testid=stStatusWidget]')?.innerText.includes('Running')"
METRIC_IS_JS = """([label, value]) => [...document.querySelectorAll('[data-testid=stMetric]')].some(m =>
    m.querySelector('[data-testid=stMetricLabel]')?.innerText.trim() === label
    && m.querySelector('[data-testid=stMetricValue]')?.innerText.trim() === value)"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.read() == b"ok"
    except OSError:
        return False


def start_dashboard(cwd: Path, log: Path, timeout_s: float = 90.0) -> tuple[subprocess.Popen, str]:
    """`servesim dashboard` (this checkout's) on a free port, started in ``cwd``; returns it and its URL once
    /_stcore/health answers. Stop it with :func:`stop`."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SERVESIM_DASHBOARD_STORE": str(cwd / "store")}  # a fresh cache
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "servesim", "dashboard", "--port", str(port)], cwd=cwd,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while not healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"the dashboard did not come up on {url}:\n{log.read_text()}")
        time.sleep(0.3)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def launch(playwright):
    """Headless Debian Chromium."""
    if not Path(CHROMIUM).is_file():
        raise RuntimeError(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def plots_drawn(page, timeout_s: float = 60.0) -> None:
    """Wait until every visible chart holds a drawn plotly graph (Playwright's locators see into shadow roots)."""
    charts = page.locator('[data-testid="stPlotlyChart"]:visible')
    deadline = time.monotonic() + timeout_s
    while charts.count() == 0 or charts.locator(".js-plotly-plot").count() < charts.count():
        if time.monotonic() > deadline:
            raise TimeoutError("charts not drawn")
        time.sleep(0.02)


def settled(page) -> None:
    """Wait until no script run is going on."""
    page.wait_for_timeout(300)
    page.wait_for_function(IDLE_JS)
    page.wait_for_timeout(300)


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()


def view(page, name: str) -> None:
    """Pick one of the What-if page's views (a segmented control) and wait for its run."""
    page.locator('[data-testid="stButtonGroup"]').get_by_role("radio", name=name, exact=True).click()
    settled(page)


def metric(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]', has=page.get_by_text(label, exact=True)).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def wait_metric(page, label: str, value: str, timeout_ms: float = 60_000) -> None:
    """Wait until the metric ``label`` shows ``value``; fail naming what it shows instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(METRIC_IS_JS, arg=[label, value], timeout=timeout_ms)
    except PlaywrightTimeout:
        raise AssertionError(f"metric {label!r} shows {metric(page, label)!r}, expected {value!r}") from None
