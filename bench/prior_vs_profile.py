"""The roofline prior against a calibrated profile on the same GPU: decode and prefill steps over the profile's grid.

Run: ``.venv/bin/python bench/prior_vs_profile.py [--profile PATH] [--model Llama-3.1-8B]`` (default: the H200
profile shipped in servesim/hwmodels/profiles/). The prior is what a GPU without a profile gets, so its error on
a GPU with one is the honest estimate of its error elsewhere: the prior here is fitted on other GPUs' public
tables and servesim's H100 attention (docs/roofline-prior.md), never on this profile. Two comparisons per step:
device time (the operators; the calibrated model's measured gaps, eager floor and host overhead left out) and
the whole step the simulator advances by (the prior's 1 ms overhead against the engine's measured host time).
Prints the tables and writes bench/results/prior_vs_profile-<gpu>-<date>.{md,json}. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from servesim.hwmodels.calibrated import CalibratedCostModel
from servesim.hwmodels.cost import CostModel
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import get_model
from servesim.hwmodels.ops import decode_shape, prefill_shape
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.profile import load_profile, shipped_profiles

REPO = Path(__file__).resolve().parents[1]
NOT_DEVICE = ("step_gap", "eager_floor", "piecewise_gap", "piecewise_floor")  # whole-step terms beyond the operators


def _grid(profile, op: str, kv: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    t = next(t for t in profile.tables if t.op == op and t.key.get("kv_dtype") == kv)
    return t.grid[0], t.grid[1]


def _shapes(profile, kv: str) -> dict[str, list]:
    batches, contexts = _grid(profile, "attn_decode", kv)
    tokens, pctx = _grid(profile, "attn_prefill", kv)
    return {
        "decode": [(f"b={int(b)} ctx={int(c)}", decode_shape(int(b), int(c))) for b, c in itertools.product(batches,
                                                                                                            contexts)],
        "prefill": [(f"T={int(t)} ctx={int(c)}", prefill_shape(int(t), int(c))) for t, c in itertools.product(tokens,
                                                                                                             pctx)],
    }


def _device_s(st) -> float:
    return sum(v for k, v in st.op_s.items() if k not in NOT_DEVICE)


def _stats(e: np.ndarray) -> dict:
    return {"n": int(len(e)), "median": float(np.median(e)), "median_abs": float(np.median(np.abs(e))),
            "p90_abs": float(np.quantile(np.abs(e), 0.9)), "max_abs": float(np.max(np.abs(e))),
            "within_10pct": float(np.mean(np.abs(e) <= 0.10))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", type=Path, default=None, help="profile JSON (default: the shipped H200 profile)")
    ap.add_argument("--model", default="Llama-3.1-8B")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    path = args.profile or shipped_profiles().get("H200")
    if path is None:
        print("no profile: pass --profile PATH", file=sys.stderr)
        return 2
    profile = load_profile(path)
    gpu, model = get_gpu(profile.gpu), get_model(args.model)
    formats = sorted({t.key["format"] for t in profile.tables if t.op == "gemm"})
    kvs = sorted({t.key["kv_dtype"] for t in profile.tables if t.op == "attn_decode"})
    rows, summary = [], []
    for fmt, kv in itertools.product(formats, kvs):
        placement = Placement(model, gpu, weight_format=fmt, kv_dtype=kv)
        cal, prior = CalibratedCostModel(placement, profile), CostModel(placement)
        for phase, shapes in _shapes(profile, kv).items():
            dev, tot = [], []
            for label, shape in shapes:
                c, p = cal.step_time(shape), prior.step_time(shape)
                d = _device_s(p) / _device_s(c) - 1
                t = p.total_s / c.total_s - 1
                dev.append(d)
                tot.append(t)
                rows.append({"format": fmt, "kv": kv, "phase": phase, "case": label, "device_error": d,
                             "step_error": t, "calibrated_device_s": _device_s(c), "prior_device_s": _device_s(p),
                             "calibrated_step_s": c.total_s, "prior_step_s": p.total_s})
            summary.append({"format": fmt, "kv": kv, "phase": phase, "what": "device time", **_stats(np.array(dev))})
            summary.append({"format": fmt, "kv": kv, "phase": phase, "what": "whole step", **_stats(np.array(tot))})
    # per operator (bf16, bf16 KV): the prior's norm_act against the engine's four elementwise kernels
    placement = Placement(model, gpu)
    cal, prior = CalibratedCostModel(placement, profile), CostModel(placement)
    groups = {"qkv": ("qkv",), "o": ("o",), "gate_up": ("gate_up",), "down": ("down",), "lm_head": ("lm_head",),
              "attn_decode": ("attn_decode",), "attn_prefill": ("attn_prefill",), "sampling": ("sampling",),
              "norm_act": ("rms_norm", "rotary", "silu_mul", "kv_write", "final_norm")}
    per_op = []
    for phase, shapes in _shapes(profile, "bf16").items():
        errs: dict[str, list[float]] = {g: [] for g in groups}
        for _, shape in shapes:
            c, p = cal.step_time(shape), prior.step_time(shape)
            for g, names in groups.items():
                cs = sum(c.op_s.get(n, 0.0) for n in names)
                if cs > 0 and p.op_s.get(g, 0.0) > 0:
                    errs[g].append(p.op_s[g] / cs - 1)
        per_op += [{"phase": phase, "op": g, **_stats(np.array(e))} for g, e in errs.items() if e]

    date = dt.date.today().isoformat()
    head = ["format", "kv", "phase", "what", "n", "median", "median_abs", "p90_abs", "max_abs", "within_10pct"]

    def table(recs, cols):
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in recs:
            out.append("| " + " | ".join(
                f"{r[c]:+.1%}" if c == "median" else f"{r[c]:.1%}" if isinstance(r[c], float) else str(r[c])
                for c in cols) + " |")
        return "\n".join(out)

    md = [f"# Roofline prior vs the {profile.gpu} profile {profile.profile_id} — {date}", "",
          f"Command: `.venv/bin/python bench/prior_vs_profile.py` ({args.model}; decode: every batch x context of "
          "the profile's decode-attention grid; prefill: one sequence, every tokens x cached-context point of its "
          "prefill grid). Error = prior/calibrated − 1.", "",
          "## Step times", "", table(summary, head), "",
          "## Per operator (bf16 weights, bf16 KV; norm_act against rms_norm + rotary + silu_mul + kv_write + "
          "final norm)", "", table(per_op, ["phase", "op", "n", "median", "median_abs", "p90_abs", "max_abs"]), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"prior_vs_profile-{profile.gpu.lower()}-{date}"
    stem.with_suffix(".md").write_text("\n".join(md))
    stem.with_suffix(".json").write_text(json.dumps({"profile": profile.profile_id, "summary": summary,
                                                     "per_op": per_op, "rows": rows}, indent=1))
    print("\n".join(md))
    print(f"wrote {stem.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
