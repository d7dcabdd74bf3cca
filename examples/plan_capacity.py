"""Plan capacity from Python: `python examples/plan_capacity.py [OUTPUT_DIR]`.

The cheapest way to serve Llama-3.1-8B at 12 req/s of the Azure conversation trace with p99 TTFT under 1 s
and p99 TPOT under 50 ms, over two GPUs and two weight formats (small probes, so it runs in seconds).
"""

import sys

from servesim.plan import plan

out = sys.argv[1] if len(sys.argv) > 1 else "plan-example"
result = plan("Llama-3.1-8B", rate=12, slo="ttft_p99_ms=1000,tpot_p99_ms=50", workload="azure-conv",
              gpus=["H100-SXM", "A100-80GB-SXM"], quants=["bf16", "w4a16"], tps=[1, 2],
              base={"num_requests": 150}, verify=2, cache_dir=f"{out}/cache")
result.write(out)

best = result.cheapest(3)
print(best[["label", "replicas", "gpus_total", "usd_per_hour", "capacity_rps", "limited_by", "verified",
            "profile_id"]].to_string(index=False))
for _, r in result.rejected().iterrows():
    print(f"rejected {r.label}: {r.reject_kind}: {r.reason}")
print(f"{len(result.probes)} probes in {result.wall_s:.1f} s; wrote {out}/pareto.html")
