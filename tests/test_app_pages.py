"""The Calibration page and the navigation under AppTest: a profile's measured times against the roofline (or,
without one, that none ships and which command makes one), and the roofline by operator of any placement."""

from __future__ import annotations

import json

import pytest
from app_testing import figures, metrics, ok, page, trace
from profile_helpers import synthetic_profile

from servesim.app import analysis, inputs
from servesim.hwmodels.cost import CostModel
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import get_model
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.profile import load_profile, save_profile, shipped_profiles


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "store_dir", lambda: tmp_path / "store")


@pytest.fixture(scope="module")
def profile_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "h200.json"
    save_profile(synthetic_profile(), path)
    return path


def test_calibration_says_no_profile_ships_and_shows_the_roofline_by_operator():
    at = ok(page("calibration").run())
    infos = " ".join(i.value for i in at.info)
    if shipped_profiles():
        assert at.subheader[0].value.startswith("Profile ")
    else:
        assert "No calibration profile ships with this installation yet" in infos and "servesim calibrate" in infos
    fig = figures(at)["Step time by operator (roofline)"]
    cost = CostModel(Placement(get_model("Llama-3.1-8B"), get_gpu(at.selectbox(key="calib.gpu").value)))
    expected = analysis.roofline_sweep(cost, "decode", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], 2048)
    attn = next(t for t in fig["data"] if t["name"] == "attn_decode")
    assert list(attn["y"]) == pytest.approx(list(expected[expected.operator == "attn_decode"]["ms"]))
    at.radio(key="calib.kind").set_value("prefill")
    at.selectbox(key="calib.quant").set_value("fp8")
    ok(at.run())
    fig = figures(at)["Step time by operator (roofline)"]
    assert "prefill tokens" in fig["layout"]["xaxis"]["title"]["text"]
    cost = CostModel(Placement(get_model("Llama-3.1-8B"), get_gpu(at.selectbox(key="calib.gpu").value),
                               weight_format="fp8"))
    qkv = next(t for t in fig["data"] if t["name"] == "qkv")
    expected = analysis.roofline_sweep(cost, "prefill", [16, 64, 256, 512, 1024, 2048, 4096, 8192])
    assert list(qkv["y"]) == pytest.approx(list(expected[expected.operator == "qkv"]["ms"]))


def test_uploaded_profile_against_the_roofline(profile_json):
    at = ok(page("calibration").run())
    at.radio(key="calib.source").set_value("upload")
    at.run()
    at.sidebar.file_uploader[0].set_value(("h200.json", profile_json.read_bytes(), "application/json"))
    ok(at.run())
    assert at.subheader[0].value == "Profile synthetic-h200: measured vs roofline"
    rows = analysis.profile_rows(load_profile(profile_json))
    summary = at.dataframe[0].value
    assert summary.loc["gemm", "points"] == (rows.op == "gemm").sum()
    gemm = rows[rows.op == "gemm"]
    assert summary.loc["gemm", "roofline median error"] == pytest.approx(gemm.roofline_error.median())
    key = "attn_decode[head_dim=128,kv_dtype=bf16,kv_heads=8,q_heads=32]"
    at.selectbox(key="calib.table").set_value(key)
    ok(at.run())
    fig = figures(at)["Measured vs roofline"]
    part = rows[rows.key == key]
    first = part.x0.min()
    measured = trace(fig, f"batch={first:g} measured")
    want = part[part.x0 == first].sort_values("x1")
    assert list(measured["x"]) == list(want.x1)
    assert list(measured["y"]) == pytest.approx(list(want.measured_s * 1e6))
    assert list(trace(fig, f"batch={first:g} roofline")["y"]) == pytest.approx(list(want.roofline_s * 1e6))
    assert fig["layout"]["yaxis"]["type"] == "log"


@pytest.mark.parametrize("change, needle", [
    ({"version": 99}, "h200.json, field 'version': profile version 99"),
    ({"schema": "other"}, "h200.json, field 'schema': not a servesim profile"),
])
def test_bad_profile_upload_is_a_message(profile_json, change, needle):
    doc = {**json.loads(profile_json.read_text()), **change}
    at = ok(page("calibration").run())
    at.radio(key="calib.source").set_value("upload")
    at.run()
    at.sidebar.file_uploader[0].set_value(("h200.json", json.dumps(doc).encode(), "application/json"))
    ok(at.run())
    assert at.error[0].value.startswith(f"Profile not usable: {needle}")


def test_calibration_placement_that_does_not_divide_says_why():
    at = ok(page("calibration").run())
    at.selectbox(key="calib.model").set_value("Qwen2.5-7B")  # 28 heads, 4 KV heads
    at.selectbox(key="calib.tp").set_value(8)
    ok(at.run())
    assert "This placement cannot run: " in at.error[0].value and "tp=8" in at.error[0].value


def test_navigation_opens_what_if_and_switches_pages():
    at = ok(page("dashboard").run())
    assert "p50 TTFT (ms)" in metrics(at)
    at.switch_page("views/calibration.py")
    ok(at.run())
    assert "Step time by operator (roofline)" in figures(at)
