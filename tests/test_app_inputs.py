"""Uploads and synthetic traces of the dashboard (servesim.app.inputs): checked by the project's loaders, stored
by content, and refused with a one-line error that names the uploaded file."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from app_testing import BERT_CONFIG, LLAMA_CONFIG

from servesim.app import inputs
from servesim.errors import InputError
from servesim.sim.config import make_scenario
from servesim.sim.simulator import simulate

STORE_DIR = inputs.store_dir  # before the fixture below replaces it
GOOD = b"arrival_s,input_tokens,output_tokens\n" + b"".join(b"%g,%d,%d\n" % (i * 0.1, 100 + i, 10 + i)
                                                            for i in range(40))


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "store_dir", lambda: tmp_path / "store")


def test_trace_upload_loads_and_is_content_addressed():
    path, w = inputs.trace_upload("mine.csv", GOOD)
    assert len(w) == 40 and w.has_arrivals and path.name == "mine.csv"
    assert inputs.trace_upload("mine.csv", GOOD)[0] == path  # same bytes, same path
    assert inputs.trace_upload("mine.csv", GOOD.replace(b"0.1,", b"0.15,"))[0] != path
    r = simulate(make_scenario({"trace": str(path)}))
    assert r.summary["completed"] == 40


@pytest.mark.parametrize("data, needle", [
    (b"when,prompt,reply\n1,2,3\n", "mine.csv: unknown trace format"),
    (b"arrival_s,input_tokens,output_tokens,extra\n0,1,1,9\n", "mine.csv, column 'extra': unexpected column"),
    (b"arrival_s,input_tokens,output_tokens\n0,100,x\n", "mine.csv, row 1, column 'output_tokens': not a number"),
    (b"\xff\xfe\x00binary", "mine.csv: not a text file"),
    (b"  \n", "mine.csv: empty file"),
])
def test_bad_traces_name_the_uploaded_file(data, needle):
    with pytest.raises(InputError) as exc:
        inputs.trace_upload("mine.csv", data)
    assert str(exc.value).startswith(needle), str(exc.value)
    assert "servesim-dashboard" not in str(exc.value) and "store" not in str(exc.value)


def test_oversized_uploads_are_refused_before_they_are_stored(tmp_path):
    big = b"x" * (inputs.MAX_TRACE_BYTES + 1)
    with pytest.raises(InputError, match=r"big.csv: 50.0 MiB is over the dashboard's 50.0 MiB limit for traces"):
        inputs.trace_upload("big.csv", big)
    with pytest.raises(InputError, match=r"config.json: .* limit for config.json files"):
        inputs.config_upload("config.json", b" " * (inputs.MAX_CONFIG_BYTES + 1))
    assert not (tmp_path / "store").exists()


def test_config_upload_reads_a_decoder_and_names_it():
    data = json.dumps({**LLAMA_CONFIG, "_name_or_path": "meta-llama/Llama-3.2-1B"}).encode()
    path, spec = inputs.config_upload("config.json", data)
    assert path.name == "config.json" and path.parent.name == "Llama-3.2-1B" and spec.name == "Llama-3.2-1B"
    assert spec.param_count == pytest.approx(1.236e9, rel=1e-3)
    assert inputs.config_upload("tiny-llama.json", json.dumps(LLAMA_CONFIG).encode())[1].name == "tiny-llama"
    r = simulate(make_scenario({"model": str(path), "num_requests": 20}))
    assert r.summary["completed"] == 20


@pytest.mark.parametrize("data, needle", [
    (json.dumps(BERT_CONFIG).encode(), "config.json, field 'architectures': BertForMaskedLM is not a decoder-only"),
    (json.dumps({**LLAMA_CONFIG, "is_encoder_decoder": True}).encode(), "is an encoder-decoder model"),
    (b"{not json", "config.json: not valid JSON"),
    (b"[1, 2]", "config.json: expected a JSON object"),
    (b"\x89PNG\r\n\x1a\n", "config.json: not a text file"),
    (json.dumps({k: v for k, v in LLAMA_CONFIG.items() if k != "vocab_size"}).encode(),
     "config.json, field 'vocab_size': missing"),
    (b'{"hidden_size": 1' + b"0" * 5000 + b"}", "config.json: not valid JSON: Exceeds the limit"),  # was ValueError
    (b"[" * 100_000, "config.json: not valid JSON: nested too deeply"),  # was RecursionError
])
def test_bad_configs_name_the_uploaded_file(data, needle):
    with pytest.raises(InputError) as exc:
        inputs.config_upload("config.json", data)
    assert needle in str(exc.value) and str(exc.value).startswith("config.json")


def test_synthetic_lengths_are_seeded_lognormals():
    a = inputs.synthetic_lengths(2000, 1000, 0.5, 200, 0.8, seed=3)
    assert inputs.synthetic_lengths(2000, 1000, 0.5, 200, 0.8, seed=3) == a
    assert inputs.synthetic_lengths(2000, 1000, 0.5, 200, 0.8, seed=4) != a
    df = pd.read_csv(a)
    assert list(df.columns) == ["input_tokens", "output_tokens"] and len(df) == 2000
    assert df["input_tokens"].median() == pytest.approx(1000, rel=0.05)
    assert df["output_tokens"].median() == pytest.approx(200, rel=0.08)
    r = simulate(make_scenario({"trace": str(a), "arrival": "poisson", "rate": 2.0, "num_requests": 50}))
    assert r.summary["completed"] == 50


def test_store_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVESIM_DASHBOARD_STORE", str(tmp_path / "mine"))
    assert STORE_DIR() == tmp_path / "mine"
    monkeypatch.delenv("SERVESIM_DASHBOARD_STORE")
    assert STORE_DIR().name == "servesim-dashboard"
