"""Bit-for-bit check of simulated results across a code change: digests of every output of a set of scenarios.

    python bench/sim_exact.py --write /tmp/before.json     # at the old code
    python bench/sim_exact.py --check /tmp/before.json     # at the new code: exit 1 on any difference

Each scenario (default, chunked, continuous, static, SJF, recompute and swap preemption, prefix caching,
speculation, P/D, MoE, TP, PP, replicas behind routers, closed loop, presets, token times, fast-forward off)
is simulated and its summary.json document (less wall-clock fields), every column of the requests and timeline
tables and the ITL sample are hashed (SHA-256 of the bytes). A speed change must leave every digest as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from servesim.sim.config import make_scenario
from servesim.sim.outputs import dumps_json, summary_document
from servesim.sim.simulator import simulate

ARXIV = {"trace": "arxiv-summarization", "arrival": "poisson"}
SCENARIOS: dict[str, dict] = {
    "default": {"num_requests": 3000},
    "default-step-by-step": {"num_requests": 1500, "fast_forward": False},
    "roofline-h100-arxiv": {**ARXIV, "gpu": "H100-SXM", "rate": 2.5, "num_requests": 2000},
    "roofline-arxiv-step-by-step": {**ARXIV, "gpu": "H100-SXM", "rate": 2.5, "num_requests": 600,
                                    "fast_forward": False},
    "long-prompts-small-budget": {**ARXIV, "rate": 3.0, "num_requests": 1500, "max_num_batched_tokens": 512},
    "continuous": {"batching": "continuous", "num_requests": 2000},
    "inflight": {"batching": "inflight", "num_requests": 2000},
    "static": {"batching": "static", "max_num_seqs": 16, "num_requests": 1000},
    "sjf-preempt-recompute": {"policy": "sjf", "num_gpu_blocks": 600, "num_requests": 1500, "rate": 12.0},
    "srpt-preempt-swap": {"policy": "srpt", "preemption": "swap", "num_gpu_blocks": 600, "num_requests": 1500,
                          "rate": 12.0},
    "sjf-predicted": {"policy": "sjf-predicted", "num_requests": 1500, "rate": 10.0},
    "prefix-caching": {"trace": "mooncake-conv", "prefix_caching": True, "num_requests": 600, "rate": 2.0,
                       "max_model_len": 131072},
    "spec": {"spec_k": 3, "num_requests": 1000},
    "spec-per-request": {"spec_k": 4, "spec_alpha_concentration": 5.0, "num_requests": 800},
    "pd": {"prefill_replicas": 1, "decode_replicas": 2, "num_requests": 1500, "rate": 8.0},
    "moe": {"model": "Mixtral-8x7B", "tp": 2, "num_requests": 1000},
    "tp": {"model": "Llama-3.1-70B", "tp": 4, "num_requests": 1500},
    "pp": {"model": "Llama-3.1-70B", "tp": 2, "pp": 2, "num_requests": 800},
    "replicas-least-kv": {"replicas": 3, "router": "least_kv", "num_requests": 3000, "rate": 15.0},
    "replicas-p2c": {"replicas": 2, "router": "power_of_two", "num_requests": 2000, "rate": 10.0},
    "closed-loop": {"arrival": "closed", "users": 8, "trace": "sharegpt", "num_requests": 600},
    "closed-loop-replicas": {"arrival": "closed", "users": 6, "think_time_s": 0.5, "trace": "sharegpt",
                             "num_requests": 400, "replicas": 2},
    "gamma-bursty": {"arrival": "gamma", "rate": 8.0, "cv": 3.0, "num_requests": 1500},
    "preset-trtllm": {"preset": "tensorrt-llm", "num_requests": 1500},
    "preset-llamacpp": {"preset": "llamacpp", "num_requests": 500},
    "token-times": {"record_token_times": True, "num_requests": 500, "num_gpu_blocks": 800},
    "slo": {"slo_ttft_ms": 200, "slo_tpot_ms": 30, "num_requests": 1000},
}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _cell(v: object) -> object:
    if isinstance(v, (list, tuple)):
        return [_cell(x) for x in v]
    return float(v) if isinstance(v, np.floating) else v  # a token time as a float or a numpy float: one value


def _column_bytes(col: np.ndarray) -> bytes:
    if col.dtype == object:  # reasons, token times: their repr is exact for floats
        return repr([_cell(v) for v in col.tolist()]).encode()
    return np.ascontiguousarray(col).tobytes()


def digests(fields: dict) -> dict[str, str]:
    r = simulate(make_scenario(fields))
    out = {"summary": _digest(dumps_json(summary_document(r.summary, r.meta)).encode())}
    for kind, table in (("requests", r.request_table), ("timeline", r.timeline_table)):
        for name, col in table.items():
            out[f"{kind}.{name}"] = _digest(_column_bytes(col))
    out["itl_s"] = _digest(np.asarray(r.itl_s).tobytes())
    out["itl_weights"] = _digest(np.asarray(r.itl_weights).tobytes())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--write", type=Path, help="write the digests here")
    what.add_argument("--check", type=Path, help="compare with digests written before")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--ignore-timeline", action="store_true",
                    help="compare requests, ITL and the summary's request entries only (a change that merges "
                         "timeline rows)")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    got: dict[str, dict[str, str]] = {}
    for name in names:
        t = time.process_time()
        got[name] = digests(SCENARIOS[name])
        print(f"{name:<30} {time.process_time() - t:6.2f} s CPU", flush=True)
    if args.write:
        args.write.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return
    want = json.loads(args.check.read_text())
    bad = 0
    for name, d in got.items():
        diff = [k for k in sorted(set(d) | set(want.get(name, {}))) if d.get(k) != want.get(name, {}).get(k)]
        if args.ignore_timeline:
            diff = [k for k in diff if not k.startswith("timeline.") and k != "summary"]
        if diff:
            bad += 1
            print(f"DIFFERS {name}: {', '.join(diff)}")
    print(f"{len(got) - bad} of {len(got)} scenarios identical")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
