"""Speculative decoding with a trained pair: acceptance of a small draft by its target on held-out text, and the
speed-up over plain greedy decoding, measured through the engine.

    servesim train --out /work/models/byte-llama                     # the target
    servesim train --out /work/models/byte-llama-draft --size draft  # the draft (same sources, same split)
    python3 bench/spec_acceptance.py --target /work/models/byte-llama --draft /work/models/byte-llama-draft \\
        --out bench/results

(On a GPU: sizes ``target-gpu`` and ``draft-gpu`` with ``--device cuda``; docs/engine.md has the one command.)

Prompts are windows of the target's held-out files, all arriving at once; the engine (CPU backend, or ``--device
cuda`` with CUDA graphs) replays them greedily, once plainly and once with ``k`` draft tokens per step, at each
concurrency in ``--concurrency`` (the scheduler's max_num_seqs). Measured: ``alpha``, the share of positions of
the speculative continuations where the draft's argmax is the target's token (the draft run over the final
sequences on the CPU reference path); the mean tokens a decoding sequence emits per step; and the busy wall time
per output token of each replay. With acceptances independent at rate ``alpha`` a step emits ``(1 - alpha^(k+1))
/ (1 - alpha)`` tokens. Each request's last step is cut at its output length, which biases the measured mean
low; the mean over the steps that are not a request's last is reported beside it, not in its place.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
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
from servesim.kernels import timing  # noqa: E402
from servesim.sim.config import make_scenario  # noqa: E402
from servesim.sim.spec import expected_accepted_tokens  # noqa: E402
from servesim.sim.workload import Workload  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def build(target: str, draft: str | None, k: int, max_seqs: int, max_model_len: int, device: str):
    """An engine of the target (speculating with ``draft`` when given), its KV cache sized for ``max_seqs``
    sequences of ``max_model_len``; its runner records each step's per-request emitted counts in ``eng.steps``."""
    blocks = max_seqs * -(-max_model_len // 16) + 16
    eng = build_engine(EngineConfig(model=target + "/config.json", weights=target, device=device,
                                    max_model_len=max_model_len, max_num_batched_tokens=2048, max_num_seqs=max_seqs,
                                    num_gpu_blocks=blocks, spec_k=k if draft else 0,
                                    draft_model=draft + "/config.json" if draft else None, draft_weights=draft,
                                    spec_mode="greedy", cuda_graphs=device == "cuda"))
    runner, eng.steps, eng.kept = eng.runner, [], {}
    run, release = runner.run, runner.release

    def run_and_record(batch):
        emitted = run(batch)
        eng.steps.append(([r.request_id for r in batch.decode], [int(e) for e in emitted], bool(batch.prefill)))
        return emitted

    runner.run = run_and_record
    runner.release = lambda r: (eng.kept.__setitem__(r.request_id, list(runner.tokens[r.request_id])), release(r))
    return eng


def serve(eng, concurrency: int, prompts: torch.Tensor, output_len: int):
    """Replay the prompts at ``concurrency``: (result, each request's tokens, the steps' emitted counts)."""
    n, plen = prompts.shape
    spec = eng.runner.spec
    extra = {"spec_k": spec.k, "draft_model": eng.config.draft_model} if spec else {}
    s = make_scenario({"model": eng.config.model, "max_model_len": eng.config.max_model_len,
                       "max_num_batched_tokens": 2048, "max_num_seqs": concurrency, **extra})
    for rid, p in enumerate(prompts.tolist()):
        eng.runner.tokens[rid] = list(p)  # the runner takes a request's prompt from here before drawing one
    eng.steps.clear()
    eng.kept.clear()
    df = pd.DataFrame({"arrival_s": [0.0] * n, "input_tokens": [plen] * n, "output_tokens": [output_len] * n})
    res = replay(s, eng, Workload(name="heldout", requests=df, source="held-out windows"))
    for rid, p in enumerate(prompts.tolist()):
        if eng.kept[rid][:plen] != p:
            raise RuntimeError(f"request {rid} did not run its held-out prompt")
    return res, {rid: t[: plen + output_len] for rid, t in eng.kept.items()}, list(eng.steps)


def step_counts(steps, output_len: int) -> dict:
    """Per-sequence decode steps and their tokens: as the scheduler keeps them (a request's last step cut at its
    output length), over the steps that are not a request's last, and with the last steps uncut (the tokens the
    draft and target agreed on there, the output length aside). The first token of each request is its prefill's."""
    gen: dict[int, int] = {}
    kept = steps_n = last_n = tail_tok = raw_last = 0
    for rids, emitted, _ in steps:
        for rid, e in zip(rids, emitted, strict=True):
            left = output_len - gen.setdefault(rid, 1)
            take = min(e, left)
            gen[rid] += take
            kept += take
            steps_n += 1
            if take == left:  # the request's last step
                last_n += 1
                tail_tok += take
                raw_last += e
    return {"decode_seq_steps": steps_n, "decode_tokens": kept, "last_steps": last_n,
            "tokens_per_step": kept / steps_n,
            "tokens_per_step_not_last": (kept - tail_tok) / (steps_n - last_n) if steps_n > last_n else math.nan,
            "tokens_per_step_last_uncut": (kept - tail_tok + raw_last) / steps_n}


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


def measure(eng, concurrency: int, prompts: torch.Tensor, output_len: int, repeats: int, warm: bool):
    """Replays of the prompts (after one unmeasured replay when ``warm``): (tokens of the last, its steps, the
    median busy seconds per output token, its iteration count)."""
    if warm:
        serve(eng, concurrency, prompts, output_len)
    per_token, tokens = [], None
    for _ in range(repeats):
        res, toks, steps = serve(eng, concurrency, prompts, output_len)
        if tokens is not None and toks != tokens:
            raise RuntimeError("two replays of the same prompts emitted different tokens")
        tokens = toks
        if step_counts(steps, output_len)["decode_seq_steps"] != int(res.iterations.decode_seqs.sum()):
            raise RuntimeError("the recorded steps disagree with the iteration log")
        per_token.append(float(res.iterations.step_s.sum()) / (len(prompts) * output_len))
        if int(res.result.requests.generated_tokens.sum()) != len(prompts) * output_len:
            raise RuntimeError("a request did not complete its output")
    return tokens, steps, statistics.median(per_token), len(res.iterations)


def row_for(args, concurrency: int, plain, spec) -> dict:
    (t_plain, s_plain, wall_plain, it_plain), (t_spec, s_spec, wall_spec, it_spec) = plain, spec
    same = [rid for rid in t_spec if t_spec[rid] == t_plain[rid]]
    hit, total = draft_agreement(args.draft, t_spec, args.prompt_len)
    alpha = hit / total
    predicted = expected_accepted_tokens(alpha, args.k)
    c = step_counts(s_spec, args.output_len)
    if step_counts(s_plain, args.output_len)["tokens_per_step"] != 1.0:
        raise RuntimeError("plain decoding emitted more than one token per step")
    return dict(concurrency=concurrency, alpha=alpha, draft_agreements=hit, positions=total, **c,
                predicted=predicted, ratio=c["tokens_per_step"] / predicted,
                ratio_not_last=c["tokens_per_step_not_last"] / predicted,
                ratio_last_uncut=c["tokens_per_step_last_uncut"] / predicted,
                identical_requests=len(same), requests=len(t_spec), steps_plain=it_plain, steps_spec=it_spec,
                s_per_token_plain=wall_plain, s_per_token_spec=wall_spec, speedup=wall_plain / wall_spec)


def _shape(model_dir: str) -> str:
    c = json.loads(Path(model_dir, "config.json").read_text())
    return f"hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, MLP {c['intermediate_size']}"


def _commit() -> str:
    from servesim.provenance import git_commit

    return git_commit()


def markdown(doc: dict) -> str:
    m = doc["meta"]
    head = (f"# Speculative decoding with a trained pair ({m['card']}, {m['date']})\n\n"
            f"Command: `{m['command']}` at commit {m['commit']}; torch {m['torch']}. Target: {m['target']}; draft: "
            f"{m['draft']}; k = {m['k']}, {m['prompts']} held-out prompts of {m['prompt_len']} bytes, "
            f"{m['output_len']} output bytes each, device {m['device']} (CUDA graphs: {m['cuda_graphs']}), "
            f"median of {m['repeats']} replay(s) per figure. " + __doc__.split("\n\n")[3].replace("\n", " ") + "\n\n")
    table = ("| concurrency | alpha | tokens/step measured | not a request's last step | last steps uncut | "
             "(1-a^(k+1))/(1-a) | measured / predicted | not last / predicted | ms/token plain | "
             "ms/token speculative | speed-up | steps plain → spec | requests as plain |\n"
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in doc["rows"]:
        table += (f"| {r['concurrency']} | {r['alpha']:.3f} | {r['tokens_per_step']:.3f} | "
                  f"{r['tokens_per_step_not_last']:.3f} | {r['tokens_per_step_last_uncut']:.3f} | "
                  f"{r['predicted']:.3f} | {r['ratio']:.3f} | {r['ratio_not_last']:.3f} | "
                  f"{r['s_per_token_plain'] * 1e3:.4f} | {r['s_per_token_spec'] * 1e3:.4f} | {r['speedup']:.2f}× | "
                  f"{r['steps_plain']} → {r['steps_spec']} | {r['identical_requests']}/{r['requests']} |\n")
    note = ("\nms/token: the replay's busy wall time (every iteration, the prefills included) over its output "
            "tokens. 'Requests as plain': requests whose speculative tokens equal plain greedy decoding's (in bf16 "
            "a near-tie may fall the other way under another batch shape; alpha is measured on the speculative "
            "tokens).\n")
    return head + table + note


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--concurrency", default=None, help="comma-separated max_num_seqs (default: all prompts)")
    ap.add_argument("--repeats", type=int, default=1, help="measured replays per figure (median)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    levels = [int(c) for c in args.concurrency.split(",")] if args.concurrency else [args.prompts]
    corpus, _ = quality.heldout_corpus(args.target)
    prompts = windows(corpus.heldout, args.prompt_len - 1, args.prompts)  # windows of prompt_len bytes
    mlen = args.prompt_len + args.output_len + args.k + 16
    cuda = args.device == "cuda"
    t0 = time.perf_counter()
    engines = {name: build(args.target, d, args.k, max(levels), mlen, args.device)
               for name, d in (("plain", None), ("spec", args.draft))}
    runs = {c: {name: measure(eng, c, prompts, args.output_len, args.repeats, cuda) for name, eng in engines.items()}
            for c in levels}
    rows = [row_for(args, c, r["plain"], r["spec"]) for c, r in runs.items()]
    card = timing.card() if cuda else "cpu"
    date = datetime.date.today().isoformat()
    meta = dict(card=card, date=date, device=args.device, cuda_graphs=cuda, torch=torch.__version__,
                threads=torch.get_num_threads(), commit=_commit(),
                command="python3 bench/spec_acceptance.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                target=_shape(args.target), draft=_shape(args.draft), k=args.k, prompts=args.prompts,
                prompt_len=args.prompt_len, output_len=args.output_len, repeats=args.repeats,
                build_s={n: e.timings_s for n, e in engines.items()}, bench_s=time.perf_counter() - t0)
    doc = dict(meta=meta, rows=rows)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"spec_acceptance-{timing.card_slug(card) if cuda else 'cpu'}-{date}")
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    text = markdown(doc)
    with open(base + ".md", "w") as f:
        f.write(text)
    print(text)
    return doc


if __name__ == "__main__":
    main()
