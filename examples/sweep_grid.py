"""Sweep a grid of scenarios in parallel and compare them: `python examples/sweep_grid.py [OUTPUT_DIR]`.

Runs examples/grid.yaml (16 scenarios) on the local cores, caching each finished scenario in
OUTPUT_DIR/cache (a rerun takes seconds), and prints goodput per configuration and rate.
"""

import sys
from pathlib import Path

from servesim.plan import sweep

out = Path(sys.argv[1] if len(sys.argv) > 1 else "sweep-example")
result = sweep(Path(__file__).with_name("grid.yaml"), cache_dir=out / "cache")
result.write(out)

t = result.table
print(f"{len(t)} scenarios in {result.wall_s:.1f} s on {result.workers} workers ({result.cached} cached); "
      f"cost model: {', '.join(t.profile_id.unique())}")
print(t.pivot_table(index=["gpu", "quant", "max_num_seqs"], columns="rate", values="request_goodput").round(2))
print(f"wrote {out}/results.csv and results.parquet")
