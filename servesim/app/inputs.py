"""Files a dashboard scenario points at: uploaded traces and config.json files, and synthetic length traces.

Each is checked with the project's own loaders (``load_trace``, ``get_model``) and stored under a
content-addressed directory, so the same bytes always give the same path (and the same cache key) and a
``Scenario`` can name it like any file on disk. Problems are ``InputError`` naming the uploaded file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from servesim.errors import InputError
from servesim.hwmodels.models import ModelSpec, get_model
from servesim.hwmodels.profile import Profile, load_profile
from servesim.sim.workload import Lengths, LogNormal, Workload, load_trace

MAX_TRACE_BYTES = 50 * 2**20
MAX_CONFIG_BYTES = 2**20
MAX_PROFILE_BYTES = 32 * 2**20
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def store_dir() -> Path:
    """Where the dashboard keeps the files scenarios point at (one folder per content hash) and the capacity
    planner's probe cache: ``$SERVESIM_DASHBOARD_STORE``, else ``servesim-dashboard`` in the temporary directory."""
    return Path(os.environ.get("SERVESIM_DASHBOARD_STORE") or Path(tempfile.gettempdir()) / "servesim-dashboard")


def _store(data: bytes, *parts: str) -> Path:
    path = store_dir().joinpath(hashlib.sha256(data).hexdigest()[:16], *parts)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def _safe_name(name: str, default: str) -> str:
    stem = _SAFE.sub("-", Path(name).name).strip("-.")
    return stem or default


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def _check_size(name: str, data: bytes, limit: int, what: str) -> None:
    if len(data) > limit:
        raise InputError(f"{_size(len(data))} is over the dashboard's {_size(limit)} limit for {what} "
                         "(servesim simulate on the command line has none)", file=name)
    if not data.strip():
        raise InputError("empty file", file=name)


def _as_uploaded(exc: InputError, name: str) -> InputError:
    """The same error, naming the uploaded file instead of where it was stored."""
    return type(exc)(exc.problem, file=name, row=exc.row, column=exc.column, field=exc.field)


def trace_upload(name: str, data: bytes, fmt: str | None = None) -> tuple[Path, Workload]:
    """Store an uploaded trace (CSV or JSON Lines, any format ``load_trace`` knows) and load it; returns the
    stored path a Scenario's ``trace`` can name, and the workload."""
    _check_size(name, data, MAX_TRACE_BYTES, "traces")
    path = _store(data, _safe_name(name, "trace.csv"))
    try:
        return path, load_trace(path, fmt)
    except InputError as exc:
        raise _as_uploaded(exc, name) from None


def _model_label(name: str, cfg: dict) -> str:
    stem = Path(name).stem
    if stem.lower() != "config":
        return _safe_name(stem, "custom-model")
    return _safe_name(str(cfg.get("_name_or_path") or "").rstrip("/").split("/")[-1], "custom-model")


def config_upload(name: str, data: bytes) -> tuple[Path, ModelSpec]:
    """Store an uploaded HuggingFace ``config.json`` as ``<label>/config.json`` (the label names the model in
    the results) and read it; only decoder-only causal LMs pass (``read_hf_config`` says why others fail)."""
    _check_size(name, data, MAX_CONFIG_BYTES, "config.json files")
    try:
        cfg = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError("not a text file (expected a HuggingFace config.json)", file=name) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} at line {exc.lineno}", file=name) from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4,300 digits; nesting past the stack
        what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        raise InputError(f"not valid JSON: {what}", file=name) from None
    if not isinstance(cfg, dict):
        raise InputError("expected a JSON object (a HuggingFace config.json)", file=name)
    path = _store(data, _model_label(name, cfg), "config.json")
    try:
        return path, get_model(str(path))
    except InputError as exc:
        raise _as_uploaded(exc, name) from None


def profile_upload(name: str, data: bytes) -> tuple[Path, Profile]:
    """Store an uploaded calibration profile (the JSON ``servesim calibrate`` writes) and load it; the stored path
    is what a Scenario's ``profile`` names."""
    _check_size(name, data, MAX_PROFILE_BYTES, "profiles")
    path = _store(data, _safe_name(name, "profile.json"))
    try:
        return path, load_profile(path)
    except InputError as exc:
        raise _as_uploaded(exc, name) from None


def synthetic_lengths(n: int, prompt_median: float, prompt_sigma: float, output_median: float,
                      output_sigma: float, seed: int = 0, max_tokens: int | None = None) -> Path:
    """A length-only generic trace (``input_tokens,output_tokens``) of ``n`` requests with lognormal
    prompt and output lengths, drawn from ``seed``; pair it with an arrival process and a rate."""
    lengths = Lengths(LogNormal(prompt_median, prompt_sigma, max_tokens), LogNormal(output_median, output_sigma,
                                                                                     max_tokens))
    inp, out = lengths.sample(n, np.random.default_rng([seed, 7]))
    text = pd.DataFrame({"input_tokens": inp, "output_tokens": out}).to_csv(index=False)
    name = f"synthetic-{n}-{prompt_median:g}-{prompt_sigma:g}-{output_median:g}-{output_sigma:g}-s{seed}.csv"
    return _store(text.encode(), name)
