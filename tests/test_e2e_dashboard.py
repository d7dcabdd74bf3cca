"""The dashboard in a real browser: `servesim dashboard` started from a scratch directory on a free loopback port,
driven by Debian's Chromium through Playwright. Changing a knob changes the numbers, an uploaded trace is
simulated, a bad one is a message, the downloaded scenario runs under `servesim simulate --config`, and every
page is screenshotted (into out/screenshots/, or $SERVESIM_SCREENSHOT_DIR: `make screenshots` refreshes docs/img/).

Run with `python -m pytest -m e2e` (pytest's default options deselect the marker); needs `apt-get install chromium`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import dashboard_browser as b
import pytest
from app_testing import example_report
from profile_helpers import synthetic_profile

from servesim.app import knobs, reports
from servesim.cli.main import main
from servesim.hwmodels.profile import load_profile, save_profile, shipped_profiles
from servesim.sim.config import make_scenario
from servesim.sim.simulator import simulate

pytestmark = pytest.mark.e2e

SHOTS = Path(os.environ.get("SERVESIM_SCREENSHOT_DIR") or b.ROOT / "out" / "screenshots")
VIEWPORT = {"width": 1280, "height": 900}
PAGE_DEFAULTS = {"start_s": 0.0, "duration_s": knobs.WINDOW_S, "slo_ttft_ms": 500.0, "slo_tpot_ms": 50.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`servesim dashboard` on a free port, started in an empty directory; its base URL."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    try:
        proc, url = b.start_dashboard(cwd, cwd / "dashboard.log")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        b.stop(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        try:
            chromium = b.launch(p)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector('[data-testid="stMetric"]')
    b.settled(page)


def _shot(pg, name: str, height: int | None = None, element=None) -> Path:
    """A screenshot of the page (``height`` px tall), or of one ``element``, once its charts are drawn, reduced to
    a 128-colour palette."""
    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"dashboard-{name}.png"
    if height:
        pg.set_viewport_size({**VIEWPORT, "height": height})
    if pg.locator('[data-testid="stPlotlyChart"]').count():
        b.plots_drawn(pg)
        pg.wait_for_timeout(500)  # plotly's transitions
    (element or pg).screenshot(path=path)
    Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)
    return path


def _no_traceback(pg) -> None:
    assert pg.locator('[data-testid="stException"]').count() == 0


def test_what_if_knob_changes_the_numbers(server, page):
    _open(page, server)
    expected = simulate(make_scenario(PAGE_DEFAULTS)).summary
    assert b.metric(page, "p50 TPOT (ms)") == f"{expected['p50_tpot_ms']:,.2f}"
    assert b.metric(page, "p99 TTFT (ms)") == f"{expected['p99_ttft_ms']:,.1f}"
    b.plots_drawn(page)
    assert page.locator(".js-plotly-plot").count() == 4  # three CDFs and latency over time
    _shot(page, "whatif")

    b.choose(page, "GPU", "A100-80GB-SXM")
    slower = simulate(make_scenario({**PAGE_DEFAULTS, "gpu": "A100-80GB-SXM"})).summary
    b.wait_metric(page, "p50 TPOT (ms)", f"{slower['p50_tpot_ms']:,.2f}")
    assert slower["p50_tpot_ms"] > expected["p50_tpot_ms"]
    # Streamlit replaces a rerun's elements one by one: wait for this one too, not only for the first that changed.
    b.wait_metric(page, "Output tokens/s", f"{slower['output_throughput']:,.0f}")
    _no_traceback(page)

    b.view(page, "Step time")
    _shot(page, "whatif-steptime")
    b.view(page, "Timelines")
    _shot(page, "whatif-timelines")


def test_uploaded_trace_and_a_bad_one(server, page, tmp_path):
    _open(page, server)
    page.locator('[data-testid="stRadio"]').filter(has_text="Workload").get_by_text("upload", exact=True).click()
    page.get_by_text("Upload a trace file, or pick a built-in trace.").wait_for()
    good = tmp_path / "mine.csv"
    good.write_text("arrival_s,input_tokens,output_tokens\n" + "".join(f"{i * 0.25},{300 + 11 * i},{40 + i}\n"
                                                                      for i in range(80)))
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Trace file")
    uploader.locator('input[type="file"]').set_input_files(str(good))
    page.get_by_text("80 requests", exact=False).first.wait_for()
    b.settled(page)
    assert page.locator('[data-testid="stMetric"]').count() == 10
    _shot(page, "whatif-upload")

    bad = tmp_path / "bad.csv"
    bad.write_text("when,prompt,reply\n1,2,3\n")
    uploader.locator('input[type="file"]').set_input_files(str(bad))
    alert = page.locator('[data-testid="stAlert"]').filter(has_text="Trace not usable")
    alert.wait_for()
    assert re.search(r"bad\.csv: unknown trace format", alert.inner_text())
    assert page.locator('[data-testid="stMetric"]').count() == 0
    _no_traceback(page)


def test_downloaded_scenario_runs_in_simulate(server, page, tmp_path, capsys):
    _open(page, server)
    b.choose(page, "Policy", "sjf")
    page.get_by_text("chunked batching, sjf", exact=False).wait_for()
    b.view(page, "Downloads")
    with page.expect_download() as info:
        page.get_by_role("button", name="Scenario (YAML)").click()
    path = tmp_path / "scenario.yaml"
    info.value.save_as(path)
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--config", str(path), "--json"])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    doc = json.loads(out.out)
    assert doc["meta"]["scenario"]["policy"] == "sjf"
    assert b.metric(page, "p99 TTFT (ms)") == f"{doc['p99_ttft_ms']:,.1f}"


def test_capacity_search(server, page):
    page.goto(f"{server}/capacity")
    page.get_by_test_id("stMain").get_by_role("heading", name="Capacity", exact=True).wait_for()
    b.settled(page)
    # A small question: H100 and H200 in bf16 at TP 1 (two candidates).
    page.locator('[data-testid="stMultiSelect"]').filter(has_text="GPUs").get_by_role(
        "button", name="Remove A100-80GB-SXM").click()
    b.settled(page)
    for label in ("TP", "Weight formats"):
        box = page.get_by_role("combobox", name=label)
        box.click()
        box.press("Backspace")  # removes the last chosen value: TP 2, W4A16
        box.press("Escape")
        b.settled(page)
    page.get_by_text("2 candidate configurations", exact=False).wait_for()
    page.get_by_role("button", name="Find the cheapest configurations").click()
    heading = page.get_by_role("heading", name="Cheapest:")
    heading.wait_for(timeout=300_000)
    page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for()  # both Pareto charts
    b.settled(page)
    assert re.match(r"Cheapest: (H100-SXM|H200) bf16 tp1", heading.inner_text())
    assert float(b.metric(page, "$ per hour").replace(",", "")) > 0
    _no_traceback(page)
    _shot(page, "capacity", height=1250)


def test_calibration_profile_against_the_roofline(server, page, tmp_path):
    page.goto(f"{server}/calibration")
    page.get_by_test_id("stMain").get_by_role("heading", name="Calibration", exact=True).wait_for()
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
    b.settled(page)
    table = "attn_decode[head_dim=128,kv_dtype=bf16,kv_heads=8,q_heads=32]"
    shipped = shipped_profiles()
    if shipped:  # the shipped profile opens first: the screenshot shows real measurements
        profile_id = load_profile(next(iter(shipped.values()))).profile_id
        page.get_by_role("heading", name=f"Profile {profile_id}: measured vs roofline").wait_for()
        b.choose(page, "Operator table", table)
        b.settled(page)
        _shot(page, "calibration", height=1500)
    path = tmp_path / "h200.json"
    save_profile(synthetic_profile(), path)
    page.locator('[data-testid="stRadio"]').filter(has_text="upload").get_by_text("upload", exact=True).click()
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Profile JSON")
    uploader.locator('input[type="file"]').set_input_files(str(path))
    page.get_by_role("heading", name="Profile synthetic-h200: measured vs roofline").wait_for()
    b.choose(page, "Operator table", table)
    b.settled(page)
    _no_traceback(page)
    if not shipped:
        _shot(page, "calibration", height=1500)
    _shot(page, "calibration-roofline", element=page.locator('[data-testid="stPlotlyChart"]').last)


def test_compare_page(server, page):
    page.goto(f"{server}/compare")
    page.get_by_test_id("stMain").get_by_role("heading", name="Compare", exact=True).wait_for()
    page.locator('[data-testid="stPlotlyChart"]').nth(4).wait_for()  # three against rate, two of slowdown
    b.settled(page)
    _no_traceback(page)
    _shot(page, "compare", height=1300)


def test_validation_report_upload(server, page, tmp_path):
    page.goto(f"{server}/validation")
    page.get_by_test_id("stMain").get_by_role("heading", name="Validation", exact=True).wait_for()
    b.settled(page)
    if not reports.committed_reports():
        page.get_by_text("No validation report is committed yet", exact=False).wait_for()
    example_report(tmp_path / "example", "H200")
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="report.json")
    if not uploader.count():
        page.locator('[data-testid="stRadio"]').filter(has_text="upload").get_by_text("upload", exact=True).click()
    uploader.locator('input[type="file"]').set_input_files(
        [str(tmp_path / "example" / f) for f in ("report.json", "requests.parquet")])
    page.get_by_role("heading", name="Example: H100-SXM predicted vs an H200 simulation").wait_for()
    page.locator('[data-testid="stPlotlyChart"]').nth(3).wait_for()  # errors and three CDFs
    b.settled(page)
    _no_traceback(page)
    _shot(page, "validation", height=1300)
