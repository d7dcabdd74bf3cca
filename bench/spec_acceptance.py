"""Speculative decoding with a trained pair: acceptance of a small draft by its target on held-out text, measured
through the engine's greedy speculation.

    servesim train --out /work/models/byte-llama                     # the target
    servesim train --out /work/models/byte-llama-draft --size draft  # the draft (same sources, same split)
    python3 bench/spec_acceptance.py --target /work/models/byte-llama --draft /work/models/byte-llama-draft \\
        --out bench/results

Prompts are windows of the target's held-out files, all arriving at once; the engine (CPU backend, or ``--device
cuda``) replays them with ``k`` greedy draft tokens per step, so each request emits exactly the target's greedy
continuation. Measured: the mean tokens a decoding sequence emits per step, and ``alpha``, the share of positions
of those continuations where the draft's argmax is the target's token (the draft run over the final sequences).
With acceptances independent at rate ``alpha`` a step emits ``(1 - alpha^(k+1)) / (1 - alpha)`` tokens; the ratio
of the measured mean to it says how far the independence assumption (the simulator's acceptance model) holds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from servesim.engine import quality  # noqa: E402
from servesim.engine.calibration_inputs import prefill_logits  # noqa: E402
from servesim.engine.engine import EngineConfig, build_engine  # noqa: E402
from servesim.engine.replay import replay  # noqa: E402
from servesim.engine.train import windows  # noqa: E402
from servesim.sim.config import make_scenario  # noqa: E402
from servesim.sim.spec import expected_accepted_tokens  # noqa: E402
from servesim.sim.workload import Workload  # noqa: E402


def run(target: str, draft: str | None, prompts: torch.Tensor, output_len: int, k: int, device: str):
    """Replay the prompts (greedy, speculating with ``draft`` when given): (result, each request's tokens)."""
    n, plen = prompts.shape
    mlen = plen + output_len + k + 16
    spec = {"spec_k": k, "draft_model": draft + "/config.json"} if draft else {}
    s = make_scenario({"model": target + "/config.json", "max_model_len": mlen, "max_num_batched_tokens": 2048,
                       "max_num_seqs": n, **spec})
    eng = build_engine(EngineConfig(model=target + "/config.json", weights=target, device=device, max_model_len=mlen,
                                    max_num_batched_tokens=2048, max_num_seqs=n, spec_k=k if draft else 0,
                                    draft_model=draft + "/config.json" if draft else None, draft_weights=draft,
                                    spec_mode="greedy", cuda_graphs=False))
    for rid, p in enumerate(prompts.tolist()):
        eng.runner.tokens[rid] = list(p)  # the runner takes a request's prompt from here before drawing one
    kept = {}
    release = eng.runner.release
    eng.runner.release = lambda r: (kept.__setitem__(r.request_id, list(eng.runner.tokens[r.request_id])), release(r))
    df = pd.DataFrame({"arrival_s": [0.0] * n, "input_tokens": [plen] * n, "output_tokens": [output_len] * n})
    res = replay(s, eng, Workload(name="heldout", requests=df, source="held-out windows"))
    for rid, p in enumerate(prompts.tolist()):
        if kept[rid][:plen] != p:
            raise RuntimeError(f"request {rid} did not run its held-out prompt")
    return res, {rid: t[: plen + output_len] for rid, t in kept.items()}


def draft_agreement(draft: str, seqs: dict[int, list[int]], plen: int) -> tuple[int, int]:
    """(positions where the draft's argmax is the next token, positions) over the continuations after their first
    token (the first comes from the target's prefill, before any draft)."""
    model = quality.quantized_model(draft, "bf16")
    hit = total = 0
    for t in seqs.values():
        ids = torch.tensor(t)
        rows = torch.arange(plen, len(t) - 1)
        with torch.no_grad():
            pred = prefill_logits(model, ids[:-1], 16, rows).argmax(-1)
        hit += int((pred == ids[plen + 1:]).sum())
        total += len(rows)
    return hit, total


def _shape(model_dir: str) -> str:
    c = json.loads(Path(model_dir, "config.json").read_text())
    return f"hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, MLP {c['intermediate_size']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    corpus, _ = quality.heldout_corpus(args.target)
    prompts = windows(corpus.heldout, args.prompt_len - 1, args.prompts)  # windows of prompt_len bytes
    t0 = time.perf_counter()
    plain, t_plain = run(args.target, None, prompts, args.output_len, args.k, args.device)
    t1 = time.perf_counter()
    spec, t_spec = run(args.target, args.draft, prompts, args.output_len, args.k, args.device)
    t2 = time.perf_counter()
    if t_spec != t_plain:
        raise RuntimeError("greedy speculation emitted other tokens than greedy decoding")
    req, it = spec.result.requests, spec.iterations
    emitted = int(req.generated_tokens.sum()) - len(req)  # decode steps' tokens (the first came from prefill)
    seq_steps = int(it.decode_seqs.sum())
    hit, total = draft_agreement(args.draft, t_spec, args.prompt_len)
    alpha = hit / total
    predicted = expected_accepted_tokens(alpha, args.k)
    row = dict(k=args.k, prompts=args.prompts, prompt_len=args.prompt_len, output_len=args.output_len, alpha=alpha,
               draft_agreements=hit, positions=total, mean_tokens_per_step=emitted / seq_steps, predicted=predicted,
               ratio=emitted / seq_steps / predicted, steps_plain=len(plain.iterations), steps_spec=len(it),
               wall_plain_s=t1 - t0, wall_spec_s=t2 - t1)
    date = datetime.date.today().isoformat()
    meta = dict(date=date, device=args.device, torch=torch.__version__, threads=torch.get_num_threads(),
                command="python3 bench/spec_acceptance.py " + " ".join(sys.argv[1:]),
                target=_shape(args.target), draft=_shape(args.draft))
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"spec_acceptance-{'cpu' if args.device == 'cpu' else 'gpu'}-{date}")
    with open(base + ".json", "w") as f:
        json.dump(dict(meta=meta, result=row), f, indent=1)
    text = (f"# Speculative decoding with a trained pair ({args.device}, {date})\n\nCommand: `{meta['command']}`. "
            + __doc__.split("\n\n")[2].replace("\n", " ") + "\n\n| k | alpha | tokens/step measured | "
            "(1-a^(k+1))/(1-a) | measured / predicted | steps plain | steps speculative |\n"
            "|---:|---:|---:|---:|---:|---:|---:|\n"
            f"| {args.k} | {alpha:.3f} | {row['mean_tokens_per_step']:.3f} | {predicted:.3f} | {row['ratio']:.3f} | "
            f"{row['steps_plain']} | {row['steps_spec']} |\n")
    with open(base + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
