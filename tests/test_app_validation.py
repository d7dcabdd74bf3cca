"""The Validation page under AppTest: committed reports (validation/results/<case>/) make the suite table, a
report's error bars and CDF overlays are its numbers, uploads work, bad ones are messages."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from app_testing import example_report, figures, ok, page, trace

from servesim.app import reports


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    return root, {"h100-vs-h200": example_report(root / "h100-vs-h200", "H200"),
                  "h100-vs-itself": example_report(root / "h100-vs-itself", "H100-SXM")}


@pytest.fixture
def with_committed(committed, monkeypatch):
    monkeypatch.setattr(reports, "VALIDATION_DIR", committed[0])
    return committed[1]


def test_without_reports_the_page_says_which_command_makes_one(tmp_path, monkeypatch):
    monkeypatch.setattr(reports, "VALIDATION_DIR", tmp_path / "none")
    at = ok(page("validation").run())
    text = at.info[0].value
    assert "No validation report is committed yet" in text and "servesim validate --suite" in text
    assert "validation/results" in text and not at.get("plotly_chart")


def test_committed_reports_make_the_suite_table_and_show_one(with_committed):
    at = ok(page("validation").run())
    suite = at.dataframe[0].value.set_index("case")
    h200 = with_committed["h100-vs-h200"]
    by_key = {m["key"]: m["error"] for m in h200.metrics}
    assert suite.loc["h100-vs-h200", "p99 TTFT"] == pytest.approx(by_key["p99_ttft_ms"])
    assert suite.loc["h100-vs-itself", "p99 TTFT"] == 0.0 and suite.loc["h100-vs-itself", "within_bounds"]
    assert not suite.loc["h100-vs-h200", "within_bounds"]  # an H100 is not an H200
    at.radio(key="validation.choice").set_value("h100-vs-h200")
    ok(at.run())
    assert at.subheader[1].value == "Example: H100-SXM predicted vs an H200 simulation (not a measurement)"
    figs = figures(at)
    tpot = trace(figs["Prediction error by latency statistic"], "TPOT")
    want = [100 * m["error"] for m in h200.metrics if m["metric"] == "tpot"]
    assert list(tpot["y"]) == pytest.approx(want) and min(want) > 3  # predicting H100 TPOT for an H200: slower
    cdf = trace(figs["TTFT CDF, predicted and measured"], "measured")
    np.testing.assert_allclose(cdf["x"], np.sort(h200.requests["ttft_s_meas"] * 1e3))


def test_uploaded_report(committed, tmp_path, monkeypatch):
    monkeypatch.setattr(reports, "VALIDATION_DIR", tmp_path / "none")
    d = committed[0] / "h100-vs-h200"
    at = ok(page("validation").run())
    at.sidebar.file_uploader[0].set_value([(f, (d / f).read_bytes(), "application/octet-stream")
                                           for f in ("report.json", "requests.parquet")])
    ok(at.run())
    assert at.subheader[0].value.startswith("Example: H100-SXM predicted vs an H200")
    assert "TPOT CDF, predicted and measured" in figures(at)


@pytest.mark.parametrize("files, needle", [
    ({"report.json": b'{"title": "x"}'}, "report.json, field 'metrics': not a servesim validation report"),
    ({"report.json": b"{nope"}, "report.json: not valid JSON"),
    ({"requests.parquet": b"PAR1"}, "uploaded: a validation report needs its report.json"),
    ({"report.json": None, "requests.parquet": b"not parquet"}, "requests.parquet: not a Parquet file"),
])
def test_bad_uploads_are_messages(committed, tmp_path, monkeypatch, files, needle):
    monkeypatch.setattr(reports, "VALIDATION_DIR", tmp_path / "none")
    good = (committed[0] / "h100-vs-h200" / "report.json").read_bytes()
    at = ok(page("validation").run())
    at.sidebar.file_uploader[0].set_value([(n, good if data is None else data, "application/octet-stream")
                                           for n, data in files.items()])
    ok(at.run())
    assert at.error[0].value.startswith(f"Report not usable: {needle}")


def test_suite_rows_and_parse_report_directly(committed):
    root, made = committed
    loaded = {n: reports.load_report(d) for n, d in reports.committed_reports(root).items()}
    assert list(loaded) == ["h100-vs-h200", "h100-vs-itself"]
    rows = reports.suite_rows(loaded)
    assert list(rows["case"]) == ["h100-vs-h200", "h100-vs-itself"]
    assert rows.loc[0, "max_abs_tail_error"] == pytest.approx(made["h100-vs-h200"].summary["max_abs_tail_error"])
    doc = json.loads((root / "h100-vs-h200" / "report.json").read_text())
    parsed = reports.parse_report("x", {"report.json": json.dumps(doc).encode(),
                                        "requests.parquet": (root / "h100-vs-h200" / "requests.parquet").read_bytes()})
    pd.testing.assert_frame_equal(parsed.requests, pd.read_parquet(io.BytesIO(
        (root / "h100-vs-h200" / "requests.parquet").read_bytes())))
