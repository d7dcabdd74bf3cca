"""Public per-operator GPU measurements (Vidur's shipped profiling data) as rows the roofline prior can price.

The tables are not part of the package (MIT data; the project keeps them in ``../shared/profiles-public/vidur/``
beside the checkout, or where ``SERVESIM_SHARED`` points). Each compute table times one fp16 Llama decoder block
per op, by token count M and tensor-parallel degree; :func:`compute_rows` turns every (row, op) into one kernel
with the FLOPs and bytes ops.py counts for it (GEMMs through :func:`~servesim.hwmodels.ops.layer_ops`, the
elementwise kernels through ops.py's per-token byte formulas). :func:`allreduce_rows` keeps the single-node NCCL
all-reduce rows. :func:`error_table` summarizes prior-vs-measured errors the way docs/roofline-prior.md reports.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from servesim.errors import InputError
from servesim.hwmodels import ops
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import ModelSpec

# File prefix -> catalog GPU (Vidur's a100 and h100 are DGX parts: SXM, NVLink).
VIDUR_GPUS = {"a100": "A100-80GB-SXM", "h100": "H100-SXM", "a40": "A40"}
VIDUR_SYSTEMS = {"a100_dgx": "A100-80GB-SXM", "h100_dgx": "H100-SXM"}
# Vidur op -> (prior kind, family reported)
VIDUR_OPS = {
    "attn_pre_proj": ("gemm", "qkv"),
    "attn_post_proj": ("gemm", "o"),
    "mlp_up_proj": ("gemm", "gate_up"),
    "mlp_down_proj": ("gemm", "down"),
    "mlp_act": ("act", "act"),
    "attn_rope": ("rope", "rope"),
    "input_layernorm": ("norm", "norm"),
    "post_attention_layernorm": ("norm", "norm"),
    "add": ("add", "add"),
}
M_BANDS = ((0, 128, "M<=128"), (128, 1024, "128<M<=1024"), (1024, np.inf, "M>1024"))
SIZE_BANDS = ((0, 256 * 1024, "<256KiB"), (256 * 1024, 8 * 2**20, "256KiB-8MiB"), (8 * 2**20, np.inf, ">=8MiB"))
_MODEL_COLS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "num_tokens", "num_tensor_parallel_workers")


def shared_dir() -> Path | None:
    """The shared data folder: ``$SERVESIM_SHARED``, else ``<repo root>/../shared``; None if absent."""
    env = os.environ.get("SERVESIM_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"
    return path if path.is_dir() else None


def vidur_dir(shared: Path | None = None) -> Path | None:
    """``<shared>/profiles-public/vidur`` if it holds the compute and network tables, else None."""
    shared = shared or shared_dir()
    if shared is None:
        return None
    path = shared / "profiles-public" / "vidur"
    return path if (path / "compute").is_dir() and (path / "network").is_dir() else None


def _read(path: Path, columns) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read as CSV: {exc}", file=str(path)) from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError("missing column", file=str(path), field=missing[0])
    return df


def _model(row: pd.Series, name: str) -> ModelSpec:
    h, heads = int(row.n_embd), int(row.n_head)
    return ModelSpec(name, h, 1, heads, int(row.n_kv_head), h // heads, int(row.n_expanded_embd), 32000, dtype="fp16")


def compute_rows(root: Path) -> pd.DataFrame:
    """One row per (table, token count, TP, op): gpu, model, tp, tokens, op, kind, family, flops, bytes,
    row_bytes (one token's bytes: the one-block-per-token term), out_width (a GEMM's N: its wave term; 0 for the
    elementwise kernels), measured_s (median of Vidur's runs)."""
    frames = []
    for path in sorted((root / "compute").glob("*.csv")):
        prefix, model_name = path.name.split("_", 1)
        if prefix not in VIDUR_GPUS:
            raise InputError(f"unknown GPU prefix '{prefix}'; known: {', '.join(VIDUR_GPUS)}", file=str(path))
        model_name = model_name.removesuffix(".mlp.csv").replace("meta-llama_", "")
        df = _read(path, (*_MODEL_COLS, *(f"time_stats.{op}.median" for op in VIDUR_OPS)))
        for (tp,), part in df.groupby(["num_tensor_parallel_workers"]):
            tp = int(tp)
            model = _model(part.iloc[0], model_name)
            m = part.num_tokens.to_numpy(float)
            feats = {"new_tokens": m, "touched_experts": 0.0}
            gemms = {op.name: op for op in ops.layer_ops(model, tp, "fp16") if op.kind == "gemm"}
            q = model.q_size // tp
            kv = max(model.num_kv_heads // tp, 1) * model.head_dim
            h, i = model.hidden_size, model.intermediate_size // tp
            per_token = {
                "mlp_act": ops.silu_mul_bytes(i),
                "attn_rope": ops.rope_bytes(q, kv),
                "input_layernorm": ops.rms_norm_bytes(h),
                "post_attention_layernorm": ops.rms_norm_bytes(h),
                "add": ops.residual_add_bytes(h),
            }
            for op, (kind, family) in VIDUR_OPS.items():
                if kind == "gemm":
                    g = gemms[family]
                    flops = sum(c * feats[k] for k, c in g.flops.items())
                    nbytes = g.const_bytes + sum(c * feats[k] for k, c in g.bytes.items())
                    row, width = np.zeros_like(m), g.out_width
                else:
                    flops, nbytes, row = np.zeros_like(m), per_token[op] * m, np.full_like(m, per_token[op])
                    width = 0.0
                measured = part[f"time_stats.{op}.median"].to_numpy(float) * 1e-3
                frames.append(pd.DataFrame({
                    "gpu": VIDUR_GPUS[prefix], "model": model_name, "tp": tp, "tokens": m.astype(int), "op": op,
                    "kind": kind, "family": family, "flops": flops, "bytes": nbytes, "row_bytes": row,
                    "out_width": width, "measured_s": measured,
                }))
    if not frames:
        raise InputError("no compute tables (*.csv)", file=str(root / "compute"))
    out = pd.concat(frames, ignore_index=True)
    if not (out.measured_s > 0).all():
        bad = out[~(out.measured_s > 0)].iloc[0]
        raise InputError(f"non-positive time at {bad.tokens} tokens, tp {bad.tp}", file=bad.gpu, field=bad.op)
    return out


def allreduce_rows(root: Path) -> pd.DataFrame:
    """Single-node NCCL all-reduce rows: gpu, tp, size (bytes reduced), ring_bytes (each GPU sends 2(tp−1)/tp
    of it, as ops.py counts), measured_s."""
    frames = []
    for system, gpu in VIDUR_SYSTEMS.items():
        path = root / "network" / f"{system}.all_reduce.csv"
        df = _read(path, ("num_workers", "devices_per_node", "size", "time_stats.all_reduce.median"))
        df = df[df.devices_per_node == df.num_workers]
        tp = df.num_workers.to_numpy(int)
        size = df["size"].to_numpy(float)
        frames.append(pd.DataFrame({
            "gpu": gpu, "tp": tp, "size": size, "ring_bytes": 2 * (tp - 1) / tp * size,
            "measured_s": df["time_stats.all_reduce.median"].to_numpy(float) * 1e-3,
        }))
    return pd.concat(frames, ignore_index=True)


def predict_compute(rows: pd.DataFrame, prior_of) -> np.ndarray:
    """The prior's seconds for each compute row; ``prior_of(gpu) -> GPUPrior``."""
    out = np.empty(len(rows))
    for (gpu_name, kind), idx in rows.groupby(["gpu", "kind"]).groups.items():
        gpu = get_gpu(gpu_name)
        r = rows.loc[idx]
        widths = r.out_width.to_numpy()
        for width in np.unique(widths):  # the wave term takes one GEMM width a call
            sel = widths == width
            out[rows.index.get_indexer(idx[sel])] = prior_of(gpu).kernel_s(
                kind, r.flops.to_numpy()[sel], r.bytes.to_numpy()[sel], gpu, "fp16", r.row_bytes.to_numpy()[sel],
                r.tokens.to_numpy(float)[sel], float(width),
            )
    return out


def predict_allreduce(rows: pd.DataFrame, prior_of, mode: str = "nccl") -> np.ndarray:
    out = np.empty(len(rows))
    for gpu_name, idx in rows.groupby("gpu").groups.items():
        gpu = get_gpu(gpu_name)
        out[rows.index.get_indexer(idx)] = prior_of(gpu).collective_s(rows.loc[idx].ring_bytes.to_numpy(), gpu, mode)
    return out


def layer_rows(rows: pd.DataFrame, predicted: np.ndarray) -> pd.DataFrame:
    """A decoder layer without attention and communication: the nine timed kernels summed per (table, tokens,
    TP), measured and predicted."""
    df = rows.assign(predicted_s=predicted)
    out = df.groupby(["gpu", "model", "tp", "tokens"], as_index=False)[["measured_s", "predicted_s"]].sum()
    return out.assign(family="layer")


def band_of(values: np.ndarray, bands=M_BANDS) -> np.ndarray:
    """The band label of each value (``(lo, hi]`` intervals)."""
    labels = np.empty(len(values), dtype=object)
    for lo, hi, name in bands:
        labels[(values > lo) & (values <= hi)] = name
    return labels


def error_table(df: pd.DataFrame, by=("gpu", "family", "band")) -> pd.DataFrame:
    """Median signed error, median |error| and p90 |error| of ``predicted_s`` vs ``measured_s`` per group."""
    e = df.predicted_s / df.measured_s - 1
    g = df.assign(err=e, abs_err=e.abs()).groupby(list(by))
    return pd.DataFrame({
        "n": g.size(),
        "median": g.err.median(),
        "median_abs": g.abs_err.median(),
        "p90_abs": g.abs_err.quantile(0.9),
    }).reset_index()
