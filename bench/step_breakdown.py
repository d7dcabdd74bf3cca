"""Where a mixed step's time goes, eager and as piecewise CUDA graphs, by chunk and context (issues 13, 14, 16).

    python3 bench/step_breakdown.py --out bench/results [--contexts 0,2048,4096,8192,16384] [--chunks 16,256,2048]
    python3 bench/step_breakdown.py --smoke      # tiny model on the CPU: the script runs, no files

The H200 validation replays' eager mixed steps measure over their priced operator sum by a gap that grows with the
chunk's context (median -0.1 / +3.3 / +5.1 ms at 1-3k / 3-6k / 6-20k tokens before the chunk), while calibration's
synthetic trace never puts a chunk past 2k of context. For one chunk of each ``--chunks`` size at each context beside
``--decodes`` decoding sequences this times, on one engine in one process:

* ``eager``: the step as the engine runs it (``runner.run``: Python launches, device span by CUDA events);
* ``piecewise``: the same step as piecewise CUDA graphs (``EngineConfig.piecewise_graphs``: the token rows padded
  to their bucket, L + 1 graphs, attention eager between them), device span and wall time, and how long the first
  step of its bucket took (the capture);
* ``graph``: the same forward pass captured in a CUDA graph and replayed (the device time of exactly those kernels,
  without the host's launches);
* ``attn``: the chunk's paged prefill attention alone at its exact (tokens, context), in-step
  (``servesim.kernels.timing``), times the layers;

beside the shipped profile's price of the step (its operator sum, and the prefill attention term). ``eager`` over
``graph`` is what eager execution adds; ``graph`` over the operator sum is what the operator tables miss; ``attn``
against the profile's attention term says whether the attention table is the one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from servesim.hwmodels.ops import BatchShape  # noqa: E402
from servesim.kernels import timing  # noqa: E402


def build_batch(chunk: int, context: int, decodes: int, decode_ctx: int, block: int):
    """One prefill chunk at ``context`` tokens before it and ``decodes`` decoding sequences, each on its own blocks."""
    from servesim.sim.request import Batch, PrefillChunk, Request

    r = Request(10**9, 0.0, context + chunk + 1, 2)  # the chunk does not complete the prompt: nothing sampled
    r.block_ids = list(range(-(-(context + chunk) // block)))
    nxt = len(r.block_ids)
    reqs = []
    for i in range(decodes):
        d = Request(10**9 + 1 + i, 0.0, decode_ctx, 2)
        n = -(-decode_ctx // block)
        d.block_ids, nxt = list(range(nxt, nxt + n)), nxt + n
        reqs.append(d)
    pairs = chunk * context + chunk * (chunk + 1) / 2
    shape = BatchShape(prefill_seqs=1, prefill_tokens=chunk, prefill_attn_pairs=pairs,
                       prefill_ctx_tokens=context + chunk, decode_seqs=decodes, decode_query_tokens=decodes,
                       decode_ctx_tokens=decode_ctx * decodes, decode_ctx_max=decode_ctx if decodes else 0,
                       sampled_tokens=decodes)
    return Batch([PrefillChunk(r, chunk, context)], reqs, np.full(decodes, decode_ctx, np.int64), 1, shape), [r, *reqs]


def step_s(eng, batch, reqs, reps: int, piecewise: bool = False) -> tuple[float, float]:
    """(device span, wall time) of the step as ``runner.run`` takes it, medians past two warm-up steps: eager, or
    as piecewise CUDA graphs (the engine built with them; its pieces set aside for the eager timing)."""
    runner = eng.runner
    pieces, runner.pieces = runner.pieces, (runner.pieces if piecewise else None)
    try:
        gpu, wall = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            runner.run(batch)
            wall.append(time.perf_counter() - t0)
            if piecewise and not runner.stats.piecewise:
                raise RuntimeError(f"a {batch.num_tokens}-token step did not run as piecewise graphs")
            for x in reqs:
                runner.release(x)
            gpu.append(runner.stats.gpu_s)
    finally:
        runner.pieces = pieces
    return float(statistics.median(gpu[2:])), float(statistics.median(wall[2:]))


def graph_s(eng, batch, reps: int) -> float | None:
    """The step's forward pass captured once and replayed: its kernels' device time (None off CUDA)."""
    runner = eng.runner
    if not runner.cuda:
        return None
    plan = runner._plan(batch, runner._swap_plan(batch))
    plan.graph = plan.piecewise = None
    staged = runner._stage(plan)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        runner._launch(plan, staged)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        runner._launch(plan, staged)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    del graph
    return float(statistics.median(times))


def attention_s(builder, key: dict, chunk: int, context: int, layers: int, cuda: bool) -> float:
    from servesim.calibrate.run import time_point

    fn = builder.attn_prefill(key, chunk, context)
    return layers * time_point(fn, cuda, reference=False)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--contexts", default="0,2048,4096,8192,16384")
    ap.add_argument("--chunks", default="2048", help="prefill chunk sizes (comma-separated)")
    ap.add_argument("--decodes", type=int, default=6)
    ap.add_argument("--decode-ctx", type=int, default=1024, help="context of each decoding sequence")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU (torch reference path), no files")
    args = ap.parse_args()
    rows, meta = run(args)
    text = report(meta, rows)
    print(text)
    if not args.smoke:
        base = os.path.join(args.out, f"step_breakdown-{timing.card_slug()}-{meta['date']}")
        os.makedirs(args.out, exist_ok=True)
        with open(base + ".json", "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(text)


def run(args) -> tuple[list[dict], dict]:
    from servesim.calibrate.ops import OpBuilder
    from servesim.engine.engine import EngineConfig, build_engine

    contexts = [int(c) for c in args.contexts.split(",")]
    chunks = [int(c) for c in args.chunks.split(",")]
    decodes, decode_ctx = args.decodes, args.decode_ctx
    if args.smoke:
        import tempfile
        from pathlib import Path

        from tests.engine_helpers import tiny_config, write_config

        model = write_config(tiny_config(hidden_size=128, intermediate_size=256, head_dim=32,
                                         max_position_embeddings=4096), Path(tempfile.mkdtemp()) / "m")
        contexts, chunks, decodes, decode_ctx = [0, 64], [5, 32], 2, 32
        cfg = EngineConfig(model=model, device="cpu", max_model_len=256, max_num_batched_tokens=64, max_num_seqs=4,
                           cuda_graphs=False, capture_at_start=False, num_gpu_blocks=64, piecewise_graphs=True)
    else:
        chunk = max(chunks)
        need = -(-(max(contexts) + chunk) // 16) + decodes * -(-decode_ctx // 16) + 16
        cfg = EngineConfig(max_model_len=max(contexts) + chunk + 16, max_num_batched_tokens=chunk + decodes,
                           max_num_seqs=max(decodes, 1), capture_at_start=False, num_gpu_blocks=need,
                           piecewise_graphs=True, piecewise_max_tokens=chunk + 2 * decodes)  # past the cap too
    eng = build_engine(cfg)
    mc = eng.model.cfg
    cuda = eng.runner.cuda
    builder = OpBuilder("cuda" if cuda else "cpu")
    key = {"q_heads": mc.num_heads, "kv_heads": mc.num_kv_heads, "head_dim": mc.head_dim,
           "kv_dtype": cfg.kv_dtype}
    cost = None
    if not args.smoke:
        from servesim.hwmodels.calibrated import CalibratedCostModel
        from servesim.hwmodels.gpus import get_gpu
        from servesim.hwmodels.models import get_model
        from servesim.hwmodels.placement import Placement
        from servesim.hwmodels.profile import load_profile, shipped_profiles

        profile = load_profile(shipped_profiles()["H200"])
        cost = CalibratedCostModel(Placement(get_model(cfg.model), get_gpu("H200"), weight_format="bf16"), profile)
    rows = []
    for chunk, c in ((ch, c) for ch in chunks for c in contexts):
        batch, reqs = build_batch(chunk, c, decodes, decode_ctx, cfg.block_size)
        step_s(eng, batch, reqs, 3)  # compiles this shape's kernel variants
        t0 = time.perf_counter()
        step_s(eng, batch, reqs, 3, piecewise=True)  # captures this bucket's pieces (CUDA) the first time
        warm_pw = time.perf_counter() - t0
        (e_gpu, e_wall), (p_gpu, p_wall) = (step_s(eng, batch, reqs, args.reps, pw) for pw in (False, True))
        row = {"context": c, "chunk": chunk, "decodes": decodes, "eager_s": e_gpu, "eager_wall_s": e_wall,
               "piecewise_s": p_gpu, "piecewise_wall_s": p_wall, "piecewise_bucket": eng.runner.pieces.bucket(
                   batch.num_tokens), "piecewise_warm_s": warm_pw,
               "graph_s": graph_s(eng, batch, args.reps),
               "attn_s": attention_s(builder, key, chunk, c, mc.num_layers, cuda)}
        for x in reqs:  # the captured pass staged their token ids: the next row's requests start afresh
            eng.runner.release(x)
        if cost is not None:
            st = cost.step_time(batch.shape)
            terms = ("step_gap", "eager_floor", "piecewise_gap", "piecewise_floor")  # beyond the operators
            row["priced_ops_s"] = float(sum(v for k, v in st.op_s.items() if k not in terms))
            row["priced_attn_s"] = float(st.op_s["attn_prefill"])
            row["priced_step_s"] = float(st.total_s)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"card": timing.card() if cuda else "cpu", "date": datetime.date.today().isoformat(),
            "piecewise_buckets": list(eng.runner.pieces.buckets), "piecewise_graphs": len(eng.runner.pieces.graphs),
            "torch": torch.__version__, "command": "python3 bench/step_breakdown.py " + " ".join(sys.argv[1:]),
            "profile": None if cost is None else cost.profile_id,
            "decode_ctx": decode_ctx}
    return rows, meta


def report(meta: dict, rows: list[dict]) -> str:
    ms = lambda v: "" if v is None else f"{v * 1e3:.2f}"  # noqa: E731
    out = [f"# Mixed steps by chunk and context on {meta['card']} ({meta['date']})", "",
           f"Command: `{meta['command']}`; torch {meta['torch']}; one prefill chunk beside decodes at context "
           f"{meta['decode_ctx']}; times in ms (device spans; wall: `runner.run` end to end). Piecewise buckets "
           f"{meta['piecewise_buckets']}.", "",
           "| context | chunk | decodes | eager | eager wall | piecewise (bucket) | piecewise wall | "
           "graph of the same pass | eager - graph | priced operator sum | "
           "graph - priced | attention alone x layers | priced attention |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        g, p = r["graph_s"], r.get("priced_ops_s")
        out.append(f"| {r['context']} | {r['chunk']} | {r['decodes']} | {ms(r['eager_s'])} | "
                   f"{ms(r['eager_wall_s'])} | {ms(r['piecewise_s'])} ({r['piecewise_bucket']}) | "
                   f"{ms(r['piecewise_wall_s'])} | {ms(g)} | "
                   f"{ms(None if g is None else r['eager_s'] - g)} | {ms(p)} | "
                   f"{ms(None if g is None or p is None else g - p)} | {ms(r['attn_s'])} | "
                   f"{ms(r.get('priced_attn_s'))} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
