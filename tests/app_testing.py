"""Helpers for the dashboard's AppTest tests: open a page, read its metrics and its plotly figures' data."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

AppTest = pytest.importorskip("streamlit.testing.v1", reason="the dashboard's tests need streamlit").AppTest

APP = Path(__file__).resolve().parent.parent / "servesim" / "app"
SMALL_WINDOW_S = 60.0  # What-if page tests simulate the first minute of the trace (about 190 requests)

LLAMA_CONFIG = {  # Llama-3.2-1B's config.json, the fields servesim reads
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192,
    "vocab_size": 128256, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "max_position_embeddings": 131072,
}
BERT_CONFIG = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 768,
               "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 30522}


def page(name: str) -> AppTest:
    """An AppTest of ``servesim/app/views/<name>.py`` (or the entry script for ``dashboard``), not yet run."""
    path = APP / ("dashboard.py" if name == "dashboard" else f"views/{name}.py")
    return AppTest.from_file(str(path), default_timeout=120)


def ok(at: AppTest) -> AppTest:
    """``at`` after a run that raised nothing; returns it for chaining."""
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    """Every st.metric on the page: label -> displayed value (the first of a repeated label)."""
    out: dict[str, str] = {}
    for m in at.metric:
        out.setdefault(m.label, m.value)
    return out


def _decode(v):
    if isinstance(v, dict) and "bdata" in v:  # plotly's typed-array encoding
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape(v["shape"]) if "shape" in v and isinstance(v["shape"], list) else a
    if isinstance(v, dict):
        return {k: _decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v


def figures(at: AppTest) -> dict[str, dict]:
    """The page's plotly figures by title: {"data": [trace dicts, arrays decoded], "layout": {...}}."""
    out = {}
    for el in at.get("plotly_chart"):
        spec = _decode(json.loads(el.proto.spec))
        title = spec["layout"].get("title", {})
        out[title.get("text", "") if isinstance(title, dict) else str(title)] = spec
    return out


def trace(fig: dict, name: str) -> dict:
    """The trace called ``name`` in a figure from :func:`figures`."""
    found = [t for t in fig["data"] if t.get("name") == name]
    assert found, f"no trace {name!r}; traces: {[t.get('name') for t in fig['data']]}"
    return found[0]


def example_report(out: Path, gpu_measured: str):
    """A validation report in the files `servesim validate` writes, for tests and screenshots: a prediction on
    H100-SXM against another simulation of the same 60 requests on ``gpu_measured`` standing in for the
    measurement (so its errors are known; it is not a measurement)."""
    from servesim.sim.config import make_scenario
    from servesim.sim.simulator import simulate
    from servesim.validate import compare
    from servesim.validate.report import Report, write_report

    pred = simulate(make_scenario({"num_requests": 60, "gpu": "H100-SXM"}))
    meas = simulate(make_scenario({"num_requests": 60, "gpu": gpu_measured}))
    rows = compare.metric_rows(pred.summary, meas.summary)
    case = {"workload": "azure-conv, first 60 requests", "profile_id": "roofline",
            "measured": f"a simulation on {gpu_measured}"}
    r = Report(title=f"Example: H100-SXM predicted vs an {gpu_measured} simulation (not a measurement)", case=case,
               metrics=rows, requests=compare.per_request(pred.requests, meas.requests),
               summary=compare.summary_errors(rows, None))
    write_report(r, out)
    return r
