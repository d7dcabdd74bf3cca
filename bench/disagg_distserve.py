"""DistServe's motivating experiment in servesim: per-GPU goodput of colocated serving against a prefill-only
GPU, a decode-only GPU and two prefill GPUs feeding one decode GPU (2P1D).

The setup of DistServe (Zhong et al., OSDI 2024), Figure 1, and its blog's Figure 6: a 13B model (OPT-13B;
here Llama-2-13B, the same 40 layers of width 5120, 40 heads without GQA and within 2% of its FLOPs per
token) on one A100-80GB, prompts of 512 tokens, 64 output tokens, Poisson arrivals; SLOs P90 TTFT <= 0.4 s
and P90 TPOT <= 0.04 s. A configuration's goodput is the highest rate meeting the SLO that binds it,
divided by its GPUs. The paper's figures: colocated 1.6 req/s per GPU (TPOT-bound; about 3 req/s on TTFT
alone), prefill-only 5.6, decode-only 10, 2P1D 10 req/s on 3 GPUs = 3.3 per GPU, 2.1x colocated.

    python bench/disagg_distserve.py [--requests 2000] [--seed 0]

prints a Markdown table (the one in docs/disaggregation.md). Each rate search is bisection on the rate
(servesim.plan's RateSearch) to 2%.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from servesim.plan.search import RateSearch
from servesim.sim import workload as wl
from servesim.sim.config import make_scenario
from servesim.sim.simulator import simulate

BASE = {"model": "Llama-2-13B", "gpu": "A100-80GB-SXM", "max_model_len": 4096}
V0 = {"batching": "continuous", "max_num_batched_tokens": 4096}  # vLLM of 2023: prefill steps pause decodes
SLO_MS = {"ttft": 400.0, "tpot": 40.0}
PAPER = {"colocated (vLLM-like)": 1.6, "prefill only": 5.6, "decode only": 10.0, "2P1D": 10.0 / 3}

# name -> (scenario fields, GPUs, output tokens, the SLOs that apply)
CONFIGS = {
    "colocated (vLLM-like)": ({**V0}, 1, 64, ("ttft", "tpot")),
    "colocated, chunked prefill": ({}, 1, 64, ("ttft", "tpot")),
    "prefill only": ({**V0}, 1, 1, ("ttft",)),
    # One decode GPU fed by 8 prefill GPUs over NVLink, so that only the decode GPU limits the rate.
    "decode only": ({**V0, "prefill_replicas": 8, "decode_replicas": 1, "kv_link": "nvlink"}, 1, 64, ("tpot",)),
    "2P1D": ({**V0, "prefill_replicas": 2, "decode_replicas": 1, "kv_link": "nvlink"}, 3, 64, ("ttft", "tpot")),
    "2P1D over 400G InfiniBand": ({**V0, "prefill_replicas": 2, "decode_replicas": 1, "kv_link": "ib"}, 3, 64,
                                  ("ttft", "tpot")),
}


def probe(fields: dict, output: int, rate: float, n: int, seed: int) -> dict:
    w = wl.synthesize(n, wl.Poisson(rate), wl.Lengths(wl.Fixed(512), wl.Fixed(output)), np.random.default_rng(seed))
    return simulate(make_scenario({**BASE, **fields, "seed": seed}), w).summary


def max_rate(fields: dict, output: int, metrics: tuple[str, ...], n: int, seed: int) -> tuple[float, dict]:
    """The highest rate whose P90 of every metric in ``metrics`` meets its SLO, and the summary there."""
    search, at = RateSearch(start_rps=1.0, rel_tol=0.02), {}
    while rates := search.next_rates():
        for rate in rates:
            s = probe(fields, output, rate, n, seed)
            ok = s["rejected"] == 0 and all(s[f"p90_{m}_ms"] <= SLO_MS[m] for m in metrics)
            search.record(rate, ok)
            at[rate] = s
    return search.lo or 0.0, at.get(search.lo, {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.perf_counter()
    rows = []
    for name, (fields, gpus, output, metrics) in CONFIGS.items():
        alone = {m: max_rate(fields, output, (m,), args.requests, args.seed)[0] for m in metrics}
        rate, s = max_rate(fields, output, metrics, args.requests, args.seed)
        rows.append((name, gpus, alone, rate, s))
    colocated = rows[0][3] / rows[0][1]
    print(f"servesim (the A100's roofline prior), {args.requests} requests per probe, seed {args.seed}; "
          f"{time.perf_counter() - started:.0f} s\n")
    print("| configuration | GPUs | rate at P90 TTFT 0.4 s | rate at P90 TPOT 40 ms | goodput | per GPU "
          "| vs colocated | paper per GPU | P90 TTFT, TPOT at goodput (ms) | KV transfer mean (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, gpus, alone, rate, s in rows:
        cell = {m: f"{alone[m]:.2f}" if m in alone else "-" for m in ("ttft", "tpot")}
        paper = f"{PAPER[name]:.1f}" if name in PAPER else "-"
        kv = s.get("pd", {}).get("kv_transfer", {}).get("mean_kv_transfer_ms")
        print(f"| {name} | {gpus} | {cell['ttft']} | {cell['tpot']} | {rate:.2f} | {rate / gpus:.2f} | "
              f"{rate / gpus / colocated:.2f}x | {paper} | {s.get('p90_ttft_ms', float('nan')):.0f}, "
              f"{s.get('p90_tpot_ms', float('nan')):.1f} | {'-' if kv is None else f'{kv:.2f}'} |")


if __name__ == "__main__":
    main()
