"""Every input parser, fuzzed: a malformed file gives the project's one-line error (an `InputError` naming the file,
row or field), never another exception, and what loads is sound.

Inputs are valid seed documents broken on purpose (a value swapped for junk, a key deleted or added, a row
dropped, duplicated or reordered, the text truncated, bytes flipped) and, now and then, noise. Each parser takes
``SERVESIM_FUZZ_EXAMPLES`` inputs (60 in CI; ``bench/fuzz_parsers.py`` runs 10,000 each and writes the counts to
``bench/results/fuzz-cpu-<date>.{md,json}``); the run is derandomized, so CI sees the same inputs every time.
``SERVESIM_FUZZ_COUNTS=FILE`` records each parser's tally (inputs, loaded, refused) in FILE (JSON);
``SERVESIM_FUZZ_COLLECT=1`` tallies unhandled exceptions by kind instead of stopping at the first (to find bugs).
"""

from __future__ import annotations

import copy
import json
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servesim.cli.simulate import _pd_pools
from servesim.errors import ConfigError, InputError
from servesim.hwmodels.gpus import get_gpu, load_gpus_yaml
from servesim.hwmodels.models import get_model
from servesim.hwmodels.precision import parse_quant
from servesim.hwmodels.profile import load_profile
from servesim.plan.candidates import parse_pd
from servesim.plan.grid import Grid
from servesim.plan.search import Limits
from servesim.sim.config import Scenario, load_scenario
from servesim.sim.deployment import build_deployment
from servesim.sim.disagg import build_pd
from servesim.sim.workload import FORMATS, load_trace, workload_stats
from servesim.validate.external import external_summary, external_workload, load_external_all
from tests.test_validate_external import check_contract

EXAMPLES = int(os.environ.get("SERVESIM_FUZZ_EXAMPLES", "60"))
COUNTS = os.environ.get("SERVESIM_FUZZ_COUNTS")
COLLECT = os.environ.get("SERVESIM_FUZZ_COLLECT") == "1"
FIX = Path(__file__).parent / "fixtures" / "external"

# -- junk ------------------------------------------------------------------------------------------------------

EDGE_NUMBERS = [0, -1, 1, 2, 3, 2**31, 2**53 + 1, 2**63, 2**64 + 1, 10**30, -(10**30), 0.5, -0.0, 1e308, 5e-324,
                float("nan"), float("inf"), -float("inf")]
EDGE_TEXT = ["", " ", "nan", "NaN", "inf", "-inf", "-1", "0", "1e400", "1e-400", "0x10", "1_000", "１２", "٣", "true",
             "null", "None", "~", "\x00", '"', "'", ",", ";", "\n", "\r\n", "\t", "🙂", "\ufeff", "\u2028", "[1, 2]",
             "{", "}", "1 2 x", "1;2;3", "-5 7", "2023-11-16 18:15:46.6805900", "2023-13-45 25:61:61",
             "9999-12-31T23:59:59", "0001-01-01", "now", "today", "NaT", "1.5", "1e3", "+7", ".5", "5.", "a" * 300,
             "!!python/object:os.system", "&a [*a]", "*x", "%YAML 1.1", "---", "..."]
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
SCALARS = st.one_of(st.sampled_from(EDGE_NUMBERS), st.sampled_from(EDGE_TEXT), st.none(), st.booleans(),
                    st.integers(-(2**70), 2**70), st.floats(), _TEXT)
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
                    max_leaves=8)
CELLS = st.one_of(st.sampled_from(EDGE_TEXT), st.sampled_from([repr(x) for x in EDGE_NUMBERS]),
                  st.integers(-(10**25), 10**25).map(str), st.floats().map(repr), _TEXT)


# -- breaking documents -----------------------------------------------------------------------------------------

def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:6]):
            yield from _paths(v, (*prefix, i))


def _at(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def broken_tree(draw, seeds: list, keys: list[str] = ()):
    """A seed document with one to three of its nodes replaced, deleted, wrapped, duplicated or added to."""
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        node = _at(doc, path)
        how = draw(st.sampled_from(["replace", "replace", "delete", "wrap", "add", "nudge", "nudge", "keep"]))
        if how == "keep":
            continue
        if how == "nudge":  # a number moved to a neighbour or an edge: often still valid
            if isinstance(node, (int, float)) and not isinstance(node, bool) and path:
                parent = _at(doc, path[:-1])
                parent[path[-1]] = draw(st.sampled_from([node + 1, node - 1, node * 2, -node, node / 3, 0,
                                                         node * 10**6, float(node), int(node) if node == node
                                                         and abs(node) < 1e300 else 0]))
            continue
        if not path and how in ("replace", "delete"):
            return draw(JUNK)
        parent, last = (_at(doc, path[:-1]), path[-1]) if path else (None, None)
        if how == "replace":
            parent[last] = draw(JUNK)
        elif how == "delete":
            del parent[last]
        elif how == "wrap":
            wrapped = draw(st.sampled_from([[node], {"value": node}, str(node)]))
            if parent is None:
                doc = wrapped
            else:
                parent[last] = wrapped
        elif isinstance(node, dict):  # add a key, often one the parser knows
            name = draw(st.sampled_from(list(keys)) | _TEXT) if keys else draw(_TEXT)
            node[name] = draw(JUNK)
        elif isinstance(node, list):
            node.insert(draw(st.integers(0, len(node))), draw(st.sampled_from(node) if node else JUNK))
    return doc


@st.composite
def damaged(draw, text: str) -> bytes:
    """The text, often intact, else truncated, spliced with junk, with a line dropped or with flipped bytes."""
    data = text.encode("utf-8")
    how = draw(st.sampled_from(["intact", "intact", "intact", "truncate", "splice", "drop-line", "flip", "noise"]))
    if how == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if how == "splice":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.sampled_from(EDGE_TEXT) | _TEXT).encode("utf-8") + data[at:]
    if how == "drop-line":
        lines = data.splitlines(keepends=True)
        if lines:
            del lines[draw(st.integers(0, len(lines) - 1))]
        return b"".join(lines)
    if how == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            if out:
                out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if how == "noise":
        return draw(st.binary(max_size=64))
    return data


def _json(doc) -> str:
    return json.dumps(doc)


def _yaml(doc) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


@st.composite
def document(draw, seeds: list, dump: Callable[[object], str], keys: list[str] = ()) -> bytes:
    return draw(damaged(dump(draw(broken_tree(seeds, keys)))))


# -- traces: CSV rows and JSON Lines records ---------------------------------------------------------------------

CSV_SEEDS = {
    "azure": ["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
    "burstgpt": ["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"],
    "vidur": ["arrived_at", "num_prefill_tokens", "num_decode_tokens", "num_total_tokens", "pd_ratio"],
    "generic": ["arrival_s", "input_tokens", "output_tokens", "hash_ids", "priority", "deadline_s"],
}
CSV_ROWS = {
    "azure": [["2023-11-16 18:15:46.6805900", "374", "44"], ["2023-11-16 18:15:50.9951690", "396", "109"],
              ["2023-11-16 18:15:51.1", "879", "46"]],
    "burstgpt": [["5", "ChatGPT", "472", "18", "490", "Conversation log"],
                 ["45", "ChatGPT", "1087", "0", "1087", "Conversation log"],
                 ["118", "GPT-4", "417", "276", "693", "API log"]],
    "vidur": [["0.0", "3029", "164", "3193", "18.47"], ["0.5", "1110", "223", "1333", "4.98"],
              ["1.25", "4810", "320", "5130", "15.03"]],
    "generic": [["0", "10", "5", "1 2", "0", "30"], ["0.5", "1024", "20", "1;2;3", "2", "4.5"],
                ["2.5", "7", "1", "", "-1", "1e3"]],
}
JSONL_SEEDS = [
    [{"timestamp": 0, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48]},
     {"timestamp": 27482, "input_length": 6472, "output_length": 26, "hash_ids": [46, 47]},
     {"timestamp": 30535, "input_length": 6593, "output_length": 34, "hash_ids": []}],
    [{"arrival_s": 0.0, "input_tokens": 12, "output_tokens": 3, "priority": 1, "deadline_s": 2.5},
     {"arrival_s": 0.25, "input_tokens": 40, "output_tokens": 9, "hash_ids": [7, 8], "priority": 0}],
]
TRACE_KEYS = sorted({c for f in FORMATS.values() for c in f.known})


@st.composite
def csv_trace(draw) -> bytes:
    fmt = draw(st.sampled_from(sorted(CSV_SEEDS)))
    header = list(CSV_SEEDS[fmt])
    rows = [list(r) for r in CSV_ROWS[fmt]]
    for _ in range(draw(st.integers(0, 4))):
        how = draw(st.sampled_from(["cell", "cell", "cell", "drop-row", "copy-row", "swap", "drop-col", "add-cell",
                                    "header", "blank"]))
        if how == "cell" and rows:
            row = draw(st.sampled_from(rows))
            if row:
                row[draw(st.integers(0, len(row) - 1))] = draw(CELLS)
        elif how == "drop-row" and rows:
            del rows[draw(st.integers(0, len(rows) - 1))]
        elif how == "copy-row" and rows:
            rows.insert(draw(st.integers(0, len(rows))), list(draw(st.sampled_from(rows))))
        elif how == "swap" and len(rows) > 1:
            rows[0], rows[-1] = rows[-1], rows[0]
        elif how == "drop-col" and header:
            j = draw(st.integers(0, len(header) - 1))
            header.pop(j)
            for r in rows:
                if j < len(r):
                    r.pop(j)
        elif how == "add-cell" and rows:
            draw(st.sampled_from(rows)).append(draw(CELLS))
        elif how == "header" and header:
            header[draw(st.integers(0, len(header) - 1))] = draw(st.sampled_from(TRACE_KEYS) | _TEXT)
        elif how == "blank":
            rows.insert(draw(st.integers(0, len(rows))), [])
    text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    return draw(damaged(text))


@st.composite
def jsonl_trace(draw) -> bytes:
    records = draw(broken_tree(JSONL_SEEDS, TRACE_KEYS))
    if isinstance(records, list):
        text = "".join((json.dumps(r) if draw(st.booleans()) or not isinstance(r, str) else r) + "\n"
                       for r in records)
    else:
        text = json.dumps(records) + "\n"
    return draw(damaged(text))


def trace_input():
    return st.tuples(st.one_of(csv_trace(), jsonl_trace()), st.sampled_from([None, None, *FORMATS]))


def check_trace(path: Path, fmt: str | None) -> None:
    w = load_trace(path, fmt)
    t = w.table
    inp, out = np.asarray(t["input_tokens"]), np.asarray(t["output_tokens"])
    assert len(w) > 0 and inp.dtype == np.int64 and (inp > 0).all() and (out > 0).all()
    arrival = np.asarray(t["arrival_s"], np.float64)
    if w.has_arrivals:
        assert np.isfinite(arrival).all() and (arrival >= 0).all() and (np.diff(arrival) >= 0).all()
    if "deadline_s" in t.columns:
        assert (np.asarray(t["deadline_s"]) > 0).all()
    json.dumps(workload_stats(w), allow_nan=True)


# -- scenario YAML, grid YAML ------------------------------------------------------------------------------------

SCENARIO_SEEDS = [
    {},
    {"model": "Llama-3.1-8B", "gpu": "H100", "tp": 2, "policy": "sjf", "arrival": "poisson", "rate": 4.0,
     "num_requests": 100, "slo_ttft_ms": 500, "seed": 3},
    {"preset": "vllm", "quant": "w4a16,attn=bf16,first:2=bf16", "kv_dtype": "fp8", "max_num_seqs": 64,
     "max_num_batched_tokens": 4096, "preemption": "swap", "batching": "static"},
    {"prefill_replicas": 1, "decode_replicas": 2, "prefill_tp": 2, "kv_link": "nvlink", "kv-overlap": True},
    {"spec_k": 3, "spec_alpha": 0.6, "spec_alpha_concentration": 5.0, "start_s": 10, "duration_s": 60,
     "arrival": "closed_loop", "users": 4, "max_model_len": 4096},
]
SCENARIO_KEYS = sorted(Scenario.model_fields)


@st.composite
def scenario_text(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:  # YAML's own traps, whole
        return draw(st.sampled_from([b"[" * 5000, b"{a: " * 3000, b"&a [*a, *a]", b"- - - -", b"? [1]\n: 2\n",
                                     b"1: 2\n", b"null: 1\n", b"tp: !!python/object/apply:os.getcwd []\n",
                                     b"\t tp: 1\n", b"tp: 1\ntp: 2\n", b"---\ntp: 1\n---\ntp: 2\n",
                                     b"\xef\xbb\xbftp: 1"]))
    return draw(document(SCENARIO_SEEDS, _yaml, SCENARIO_KEYS))


def check_scenario(path: Path) -> None:
    """A scenario that loads also builds: the deployment `servesim simulate` makes of it next, or a clear error.
    A deployment that cannot work as a whole (the memory planner's numbers: weights, activations and KV that do not
    fit) names no one field; its one line is checked here and counted as refused."""
    s = load_scenario(path)
    try:
        build_pd(s) if s.disaggregated else build_deployment(s)
    except ConfigError as exc:
        if exc.field is not None or exc.file is not None:
            raise
        assert exc.problem.strip() and len(str(exc).splitlines()) == 1, str(exc)
        raise InputError(exc.problem, file=str(path)) from None


GRID_SEEDS = [
    {"base": {"num_requests": 20, "arrival": "poisson", "rate": 2.0},
     "axes": {"tp": [1, 2], "policy": ["fcfs", "sjf"]}},
    {"base": {"gpu": "H200", "num_requests": 10, "arrival": "poisson", "rate": 1.0},
     "axes": {"limits": [{"max_num_seqs": 64, "max_num_batched_tokens": 4096}, {"max_num_seqs": 128}]}},
]


# -- model config.json -------------------------------------------------------------------------------------------

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
         "max_position_embeddings": 131072, "torch_dtype": "bfloat16", "tie_word_embeddings": False, "head_dim": 128}
MIXTRAL = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
           "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 32768}
DEEPSEEK = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
            "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
            "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 256, "n_shared_experts": 1,
            "num_experts_per_tok": 8, "first_k_dense_replace": 3, "moe_layer_freq": 1, "kv_lora_rank": 512,
            "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
            "vocab_size": 129280, "max_position_embeddings": 163840, "torch_dtype": "bfloat16"}
QWEN_MOE = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 2048,
            "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 5632,
            "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts": 60,
            "num_experts_per_tok": 4, "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": 151936,
            "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}
LLAVA = {"architectures": ["LlavaForConditionalGeneration"], "text_config": dict(LLAMA, head_dim=None)}
MODEL_SEEDS = [LLAMA, MIXTRAL, DEEPSEEK, QWEN_MOE, LLAVA]
MODEL_KEYS = sorted({k for s in MODEL_SEEDS for k in s} | {"is_encoder_decoder", "n_embd", "n_head", "dtype",
                                                          "attention_bias", "num_experts"})


def check_model(path: Path) -> None:
    spec = get_model(str(path))
    assert spec.hidden_size > 0 and spec.num_layers > 0 and spec.kv_cache_width() > 0
    spec.linear_matrices()


# -- GPU YAML ----------------------------------------------------------------------------------------------------

GPU_SEEDS = [
    {"H100-SXM": {"family": "hopper", "aliases": ["H100", "H100-SXM5"], "memory_gib": 80, "hbm_tbps": 3.35,
                  "tflops": {"fp32": 67, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9, "int8": 1978.9},
                  "sm_count": 132, "interconnect_gbps": 900, "pcie_gbps": 128, "tdp_w": 700, "usd_per_hour": 3.0,
                  "source": "NVIDIA H100 datasheet"},
     "L4-test": {"memory_gib": 24, "hbm_tbps": "3e11", "tflops": {"bf16": 121}, "sm_count": 58,
                 "interconnect_gbps": 64, "pcie_gbps": 64, "tdp_w": 72, "usd_per_hour": 0.8, "source": "datasheet"}},
]
GPU_KEYS = ["family", "aliases", "memory_gib", "hbm_tbps", "tflops", "sm_count", "interconnect_gbps", "pcie_gbps",
            "tdp_w", "usd_per_hour", "source", "l2_mib", "bf16", "fp8", "int8", "fp32", "tf32", "fp16"]


def check_gpus(path: Path) -> None:
    gpus = load_gpus_yaml(path)
    for name, g in gpus.items():
        assert get_gpu(name, gpus) is g or get_gpu(name, gpus).name == name
        assert g.memory_bytes > 0 and g.peak_flops_per_s("bf16") > 0 and g.peak_flops_per_s("fp8") >= 0


# -- calibration profiles ------------------------------------------------------------------------------------------

PROVENANCE = {"gpu_name": "NVIDIA H200", "memory_bytes": 150754820096, "driver": "565", "cuda": "12.6",
              "torch": "2.5", "triton": "3.1", "date": "2026-12-02", "command": "servesim calibrate",
              "git_commit": "abc"}
PROFILE_SEEDS = [{
    "schema": "servesim-profile", "version": 2, "profile_id": "fuzz-h200", "gpu": "H200", "provenance": PROVENANCE,
    "tables": [
        {"op": "gemm", "key": {"format": "bf16", "n": 4096, "k": 4096}, "axes": ["m"], "grid": [[1, 16, 256]],
         "median_s": [1e-5, 2e-5, 9e-5], "p20_s": [1e-5, 2e-5, 8e-5], "p80_s": [2e-5, 3e-5, 1e-4]},
        {"op": "attn_decode", "key": {"kv_dtype": "bf16", "q_heads": 32, "kv_heads": 8, "head_dim": 128},
         "axes": ["batch", "context"], "grid": [[1, 8], [128, 4096]], "median_s": [1e-5, 2e-5, 3e-5, 9e-5],
         "p20_s": [1e-5, 2e-5, 3e-5, 8e-5], "p80_s": [1e-5, 2e-5, 3e-5, 1e-4], "reference_s": [None, 2e-5, None, 1e-4]},
        {"op": "allreduce", "key": {"tp": 2, "dtype": "bf16"}, "axes": ["bytes"], "grid": [[1024, 1048576]],
         "median_s": [5e-6, 2e-5], "p20_s": [5e-6, 2e-5], "p80_s": [6e-6, 3e-5]},
    ],
    "steps": {"bf16": {"graph_gap_s": 1e-6, "eager_gap_s": 2e-5, "eager_floor_s": 1e-3, "eager_floor_mixed_s": 2e-3,
                       "graph_host_s": [3e-4, 4e-6, 2e-9], "eager_host_s": [8e-4, 6e-6, 3e-9]}},
    "decode_max_weight": 0.3,
    "fit": {"ops": {"gemm": {"median_abs": 0.01, "p90_abs": 0.03, "points": 3}}, "steps": {}},
    "collective_provenance": dict(PROVENANCE, nccl="2.21"),
}]
PROFILE_KEYS = ["schema", "version", "profile_id", "gpu", "provenance", "tables", "steps", "op", "key", "axes", "grid",
                "median_s", "p20_s", "p80_s", "reference_s", "decode_max_weight", "fit", "collective_provenance"]


# -- external results (vLLM, GuideLLM, AIPerf) ---------------------------------------------------------------------

EXTERNAL = {"vllm": FIX / "vllm" / "bench_serve_detailed.json",
            "vllm-legacy": FIX / "vllm" / "benchmark_serving_legacy.json",
            "guidellm": FIX / "guidellm" / "benchmarks_v07.json",
            "guidellm-0.3": FIX / "guidellm" / "benchmarks_v03.json",
            "aiperf": FIX / "aiperf" / "profile_export.jsonl",
            "aiperf-aggregate": FIX / "aiperf" / "profile_export_aiperf.json"}


def _external_doc(path: Path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def _shrunk(doc):
    """A GuideLLM report keeps two requests of each kind and one benchmark in three: the same layout, faster."""
    if isinstance(doc, dict) and "benchmarks" in doc:
        doc = copy.deepcopy(doc)
        for b in doc["benchmarks"]:
            for group, reqs in (b.get("requests") or {}).items():
                if isinstance(reqs, list):
                    b["requests"][group] = reqs[:3]
    return doc


EXTERNAL_DOCS = {name: _shrunk(_external_doc(p)) for name, p in EXTERNAL.items()}


@st.composite
def external_input(draw):
    name = draw(st.sampled_from([*sorted(EXTERNAL), "guidellm-0.3.yaml"]))  # GuideLLM also writes YAML
    doc = draw(broken_tree([EXTERNAL_DOCS[name.removesuffix(".yaml")]]))
    if name.endswith(".yaml"):
        text = _yaml(doc)
    elif EXTERNAL[name].suffix == ".jsonl" and isinstance(doc, list):
        text = "".join(json.dumps(r) + "\n" for r in doc)
    else:
        text = json.dumps(doc)
    tool = draw(st.sampled_from([None, None, "vllm", "guidellm", "aiperf"]))
    return name, draw(damaged(text)), tool


def check_external(folder: Path, name: str, data: bytes, tool: str | None) -> None:
    source = Path("r.yaml") if name.endswith(".yaml") else EXTERNAL[name]
    target = folder / (source.name if source.parent.name == "aiperf" else f"r{source.suffix}")
    if source.parent.name == "aiperf":  # its sibling, pristine, so every example stands alone
        sibling = EXTERNAL["aiperf-aggregate" if name == "aiperf" else "aiperf"]
        (folder / sibling.name).write_bytes(sibling.read_bytes())
    target.write_bytes(data)
    for run in load_external_all(target, tool):
        check_contract(run)
        external_summary(run)
        try:
            external_workload(run)
        except InputError as exc:
            _clear(exc)


# -- spec strings: --quant, --slo, --pd ---------------------------------------------------------------------------

SPEC_TOKENS = ["w4a16", "w8a16", "bf16", "fp8", "w8a8", "attn", "mlp", "qkv", "o", "first:2", "last:1", "first:0",
               "first:99999999999999", "ttft_p99_ms", "tpot_p99_ms", "p99_e2el", "queueing_p99_ms", "500", "0", "-1",
               "1e400", "nan", "inf", "2:6", "1:3", "0:1", "²", "１", "٣", "off", "auto", "=", ",", ":", " ", ""]


@st.composite
def spec_text(draw) -> str:
    """A spec built the way each flag reads (often valid), or a soup of its tokens."""
    token = st.sampled_from(SPEC_TOKENS) | _TEXT
    kind = draw(st.sampled_from(["quant", "slo", "pd", "soup"]))
    if kind == "quant":
        fmt = st.sampled_from(["w4a16", "w8a16", "bf16", "fp8", "w8a8", "int4"]) | token
        group = st.sampled_from(["attn", "mlp", "qkv", "o", "gate_up", "down", "first:1", "first:3", "last:2"]) | token
        terms = [draw(fmt)] + [f"{draw(group)}={draw(fmt)}" for _ in range(draw(st.integers(0, 3)))]
    elif kind == "slo":
        name = st.sampled_from(["ttft_p99_ms", "tpot_p50_ms", "p99_e2el", "itl_p90_ms", "queueing_p99_ms"]) | token
        value = st.sampled_from(["500", "0.5", "1e3", "0", "-5", "nan", "inf"]) | token
        terms = [f"{draw(name)}={draw(value)}" for _ in range(draw(st.integers(1, 3)))]
    elif kind == "pd":
        count = st.sampled_from(["1", "2", "6", "0", "10"]) | token
        terms = [f"{draw(count)}:{draw(count)}" for _ in range(draw(st.integers(1, 3)))]
    else:
        parts = draw(st.lists(token, max_size=8))
        return "".join(parts) if draw(st.booleans()) else ",".join(parts)
    return ",".join(terms)


def check_specs(folder: Path, text: str) -> None:
    """Each spec parser on the same text: a value or one InputError naming the option (these come from flags).
    Counted as loaded when one of them takes the text, else refused."""
    refused = []
    for parse in (parse_quant, Limits.parse, parse_pd, lambda t: _pd_pools(t, {})):
        try:
            parse(text)
        except InputError as exc:
            _clear(exc)
            assert exc.field, str(exc)
            refused.append(exc)
    if len(refused) == 4:
        raise refused[0]


# -- the parsers -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parser:
    """What one parser reads: a strategy of inputs and a check that loads one (from a file under a folder)."""

    name: str
    inputs: st.SearchStrategy
    check: Callable[[Path, object], None]


def _file(name: str, load: Callable[[Path], object]) -> Callable[[Path, object], None]:
    def check(folder: Path, data: bytes) -> None:
        path = folder / name
        path.write_bytes(data)
        load(path)
    return check


def _trace(folder: Path, drawn) -> None:
    data, fmt = drawn
    path = folder / "trace"
    path.write_bytes(data)
    check_trace(path, fmt)


PARSERS = {p.name: p for p in (
    Parser("trace (CSV, JSON Lines; every format)", trace_input(), _trace),
    Parser("scenario YAML", scenario_text(), _file("scenario.yaml", check_scenario)),
    Parser("grid YAML (servesim sweep)", document(GRID_SEEDS, _yaml, ["base", "axes", *SCENARIO_KEYS]),
           _file("grid.yaml", lambda p: Grid.load(p).scenarios())),
    Parser("model config.json", document(MODEL_SEEDS, _json, MODEL_KEYS), _file("config.json", check_model)),
    Parser("GPU YAML", document(GPU_SEEDS, _yaml, GPU_KEYS), _file("gpus.yaml", check_gpus)),
    Parser("calibration profile", document(PROFILE_SEEDS, _json, PROFILE_KEYS), _file("profile.json", load_profile)),
    Parser("external results (vLLM, GuideLLM, AIPerf)", external_input(),
           lambda folder, drawn: check_external(folder, *drawn)),
    Parser("spec strings (--quant, --slo, --pd)", spec_text(), check_specs),
)}


def _clear(exc: InputError) -> None:
    """The project's clear error: one non-empty line naming a file, row, column or field."""
    text = str(exc)
    assert text.strip() and "\n" not in text and "\r" not in text, repr(text)
    assert any(x is not None for x in (exc.file, exc.row, exc.column, exc.field)), text


def _record(name: str, tally: Counter, wall_s: float, bugs: Counter) -> None:
    if not COUNTS:
        return
    path = Path(COUNTS)
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc[name] = {"inputs": sum(tally.values()), "loaded": tally["loaded"], "refused": tally["refused"],
                 "unhandled": tally["unhandled"], "wall_s": round(wall_s, 1),
                 "unhandled_kinds": dict(bugs.most_common(20))}
    path.write_text(json.dumps(doc, indent=2) + "\n")


@pytest.mark.parametrize("name", list(PARSERS))
def test_malformed_input_gives_one_clear_error(name, tmp_path, record_property):
    parser = PARSERS[name]
    tally: Counter = Counter()
    bugs: Counter = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(parser.inputs)
    def one(drawn):
        try:
            parser.check(tmp_path, drawn)
        except InputError as exc:
            _clear(exc)
            tally["refused"] += 1
            return
        except Exception as exc:
            if not COLLECT:
                raise
            tally["unhandled"] += 1
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            bugs[f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}: {str(exc)[:120]}"] += 1
            return
        tally["loaded"] += 1

    started = time.perf_counter()
    one()
    _record(name, tally, time.perf_counter() - started, bugs)
    for key in ("loaded", "refused", "unhandled"):  # in the JUnit report too (pytest --junitxml)
        record_property(key, tally[key])
    assert sum(tally.values()) >= min(EXAMPLES, 50) and not tally["unhandled"], bugs.most_common(5)


# -- the inputs that broke a parser before this suite (each an unhandled exception, a hang or a multi-line message) --

GEN = "arrival_s,input_tokens,output_tokens\n"
_GPU = (b"memory_gib: 80, hbm_tbps: 3, sm_count: 1, interconnect_gbps: 1, pcie_gbps: 1, tdp_w: 1, usd_per_hour: 1, "
        b"source: s")
FOUND = [  # (id, file name, content, check, what the one-line error says); before: the exception
    ("json-int-past-float", "t.jsonl", b'{"arrival_s": 0, "input_tokens": 1' + b"0" * 400 + b', "output_tokens": 1}\n',
     "trace", "not a finite number"),  # OverflowError
    ("json-int-of-5000-digits", "t.jsonl", b'{"arrival_s": 0, "input_tokens": 1' + b"0" * 5000 + b"}\n", "trace",
     "Exceeds the limit (4300 digits)"),  # ValueError
    ("json-nested-too-deep", "t.jsonl", b'{"arrival_s": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "trace",
     "nested too deeply"),  # RecursionError
    ("tokens-past-int64", "t.csv", (GEN + "0,1e30,5\n").encode(), "trace", "too large"),  # loaded as -2^63
    ("hash-id-past-64-bits", "t.csv", b"arrival_s,input_tokens,output_tokens,hash_ids\n0,5,5," + b"9" * 25 + b"\n",
     "trace", "beyond 64 bits"),  # OverflowError in the statistics
    ("column-name-with-a-newline", "t.csv", b'arrival_s,input_tokens,output_tokens,"a\nb"\n0,1,1,2\n', "trace",
     "column 'a\\nb'"),  # a two-line message
    ("scenario-integer-key", "s.yaml", b"1: 2\n", "scenario", "field '1'"),  # AttributeError
    ("scenario-not-utf8", "s.yaml", b"tp: \xff\n", "scenario", "not UTF-8"),  # UnicodeDecodeError
    ("scenario-nested-too-deep", "s.yaml", b"[" * 5000, "scenario", "not valid YAML"),  # RecursionError
    ("yaml-date-no-calendar-has", "s.yaml", b"start_s: 2023-13-45\n", "scenario", "month must be in 1"),  # ValueError
    ("scenario-negative-seed", "s.yaml", b"seed: -1\n", "scenario", "field 'seed'"),  # ValueError in numpy's seeding
    ("scenario-infinite-swap", "s.yaml", b"swap_space_gib: .inf\n", "scenario", "finite"),  # ValueError in the plan
    ("model-architectures-a-number", "config.json", b'{"architectures": 5, "hidden_size": 64}', "model",
     "field 'architectures'"),  # TypeError
    ("model-not-utf8", "config.json", b'{"hidden_size": "\xff"}', "model", "not UTF-8"),  # UnicodeDecodeError
    ("model-10^12-layers", "config.json", json.dumps(
        {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 10**12, "intermediate_size": 128,
         "vocab_size": 100, "num_experts": 4, "num_experts_per_tok": 2}).encode(), "model", "too large"),  # a hang
    ("gpu-peak-a-word", "g.yaml", b"X: {tflops: {bf16: abc}, " + _GPU + b"}\n", "gpus", "field 'X.tflops.bf16'"),
    ("gpu-infinite-memory", "g.yaml", b"X: {tflops: {bf16: 1}, " + _GPU.replace(b"80", b".inf") + b"}\n", "gpus",
     "must be finite"),  # OverflowError
    ("gpu-not-utf8", "g.yaml", b"X: \xff\n", "gpus", "not UTF-8"),  # UnicodeDecodeError
    ("profile-tables-a-number", "p.json", b'{"schema": "servesim-profile", "version": 1, "tables": 5}', "profile",
     "field"),  # TypeError
    ("profile-nested-too-deep", "p.json", b"[" * 100_000, "profile", "nested too deeply"),  # RecursionError
    ("grid-not-utf8", "grid.yaml", b"base: \xff\n", "grid", "not UTF-8"),  # UnicodeDecodeError
]


@pytest.mark.parametrize("text", ["²:1", "2:²", "1:٣x"])
def test_pd_ratios_in_other_digits_give_one_clear_error(text):
    # '²'.isdigit() is True but int('²') raises ValueError: --pd printed a traceback.
    for parse in (parse_pd, lambda t: _pd_pools(t, {})):
        with pytest.raises(InputError, match="field 'pd'"):
            parse(text)
CHECKS = {"trace": lambda p: check_trace(p, None), "scenario": check_scenario, "model": check_model,
          "gpus": check_gpus, "profile": load_profile, "grid": lambda p: Grid.load(p).scenarios()}


@pytest.mark.parametrize(("name", "content", "check", "match"), [c[1:] for c in FOUND], ids=[c[0] for c in FOUND])
def test_inputs_that_broke_a_parser_give_one_clear_error(tmp_path, name, content, check, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        CHECKS[check](path)
    _clear(info.value)
    assert match in str(info.value) and info.value.file == str(path)


def test_workload_statistics_of_a_span_of_centuries_are_cheap(tmp_path):
    # Requests per minute were a bincount over every minute of the span: 1e12 s asked for 124 GiB.
    path = tmp_path / "t.csv"
    path.write_text(GEN + "0,5,5\n30,5,5\n1e12,5,5\n")
    stats = workload_stats(load_trace(path))
    assert stats["per_minute_min"] == 0 and stats["per_minute_max"] == 2
