"""Calibration profiles: measured operator times on one GPU, keyed by operator shape, with their provenance.

A profile is a JSON file (``servesim calibrate`` writes one; ``hwmodels/profiles/`` ships some). Loading it
needs no torch. It holds one :class:`OpTable` per (operator, shape key): the measured median time (and the
20th/80th percentiles, and the reference-method time where it was taken) over a rectangular grid of one or two
axes, for example a GEMM of (format, N, K) over M tokens, or decode attention of (KV dtype, heads, head_dim)
over (batch, context). The calibrated cost model (:mod:`servesim.hwmodels.calibrated`) interpolates them.

Operators and axes (what the engine launches per step; ``calibrate`` measures exactly these):

==================  =============================================  ==============================
op                  key                                            axes
==================  =============================================  ==============================
gemm                format, n, k                                   m (tokens)
rms_norm            hidden                                         tokens (fused residual add)
rotary              q_heads, kv_heads, head_dim                    tokens
kv_write            kv_dtype, kv_heads, head_dim                   tokens
silu_mul            intermediate                                   tokens
attn_prefill        kv_dtype, q_heads, kv_heads, head_dim          tokens, context (before)
attn_decode         kv_dtype, q_heads, kv_heads, head_dim          batch, context
attn_decode_ragged  the same and spread                            batch, mean context (checks only)
sampling            vocab                                          rows
spec_verify         vocab                                          batch, k
step_overhead       mode (graph | eager), format                   seqs (host time per step)
allreduce           tp, dtype                                      bytes (the message on each rank)
allgather           tp, dtype                                      bytes (the gathered result)
==================  =============================================  ==============================

The collectives (version 2) are timed on ``tp`` GPUs at once (``servesim calibrate allreduce``), often on
another day than the operators; ``collective_provenance`` says where and when. Version 1 files (no collective
tables) still load: their TP collectives are priced by the roofline's link figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from servesim.errors import InputError

SCHEMA = "servesim-profile"
VERSION = 2  # written; 2 added the collective tables
READS = (1, 2)  # versions this servesim loads
OPS = ("gemm", "rms_norm", "rotary", "kv_write", "silu_mul", "attn_prefill", "attn_decode", "attn_decode_ragged",
       "sampling", "spec_verify", "step_overhead", "allreduce", "allgather")
AXES = {"gemm": ("m",), "rms_norm": ("tokens",), "rotary": ("tokens",), "kv_write": ("tokens",),
        "silu_mul": ("tokens",), "attn_prefill": ("tokens", "context"), "attn_decode": ("batch", "context"),
        "attn_decode_ragged": ("batch", "context"), "sampling": ("rows",), "spec_verify": ("batch", "k"),
        "step_overhead": ("seqs",), "allreduce": ("bytes",), "allgather": ("bytes",)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpTable(_Strict):
    """One operator at one shape key, timed over a grid (seconds; row-major over ``axes``)."""

    op: Literal[OPS]  # type: ignore[valid-type]
    key: dict[str, int | str]
    axes: tuple[str, ...]
    grid: tuple[tuple[float, ...], ...]  # the values of each axis, increasing
    median_s: tuple[float, ...]
    p20_s: tuple[float, ...]
    p80_s: tuple[float, ...]
    reference_s: tuple[float | None, ...] | None = None  # the reference timing method, where measured
    # points between the grid's, timed but never interpolated from: what the fit quality is judged on
    held_out_points: tuple[tuple[float, ...], ...] = ()
    held_out_s: tuple[float, ...] = ()
    # our quantized GEMMs: the kernel's launch load (waves x rows x K blocks a CTA) over M as (first M, load) runs;
    # the cost model spreads a segment's rise over its steps (servesim.calibrate.launch). Empty: linear in M.
    launch_load: tuple[tuple[float, float], ...] = ()

    @model_validator(mode="after")
    def _shape(self) -> OpTable:
        if self.axes != AXES[self.op]:
            raise ValueError(f"{self.op} tables have axes {AXES[self.op]}, not {self.axes}")
        if len(self.grid) != len(self.axes):
            raise ValueError(f"{len(self.axes)} axes but {len(self.grid)} grid vectors")
        for name, values in zip(self.axes, self.grid, strict=True):
            if not values or any(b <= a for a, b in zip(values, values[1:])):
                raise ValueError(f"axis {name} must be non-empty and strictly increasing, got {values}")
        n = math.prod(len(v) for v in self.grid)
        for name in ("median_s", "p20_s", "p80_s") + (("reference_s",) if self.reference_s is not None else ()):
            values = getattr(self, name)
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} values for a grid of {n} points")
            if any(v is not None and not (v > 0 and math.isfinite(v)) for v in values):
                raise ValueError(f"{name} must hold positive finite seconds")
        if len(self.held_out_points) != len(self.held_out_s):
            raise ValueError(f"{len(self.held_out_points)} held-out points but {len(self.held_out_s)} times")
        if any(len(pt) != len(self.axes) for pt in self.held_out_points):
            raise ValueError(f"held-out points need one value per axis ({len(self.axes)})")
        if any(not (v > 0 and math.isfinite(v)) for v in self.held_out_s):
            raise ValueError("held_out_s must hold positive finite seconds")
        if self.launch_load and (len(self.axes) != 1 or any(
                len(r) != 2 for r in self.launch_load) or any(
                b[0] <= a[0] for a, b in zip(self.launch_load, self.launch_load[1:]))):
            raise ValueError("launch_load needs a 1-D table and (first M, load) runs of increasing M")
        return self

    def key_str(self) -> str:
        return f"{self.op}[" + ",".join(f"{k}={v}" for k, v in sorted(self.key.items())) + "]"


class Provenance(_Strict):
    gpu_name: str
    memory_bytes: int
    driver: str
    cuda: str
    torch: str
    triton: str
    date: str
    command: str
    git_commit: str
    condition: str = "in-step"  # servesim.kernels.timing.stream_ms; reference: cold_ms
    wall_s: float = 0.0
    nccl: str = ""  # collectives: the NCCL version (gloo on a CPU)
    host_launch_us: float | None = None  # servesim.kernels.timing.host_launch_us where the operators were timed


class StepFit(_Strict):
    """What a whole engine step adds to the sum of its operators timed alone, for one weight format (fitted on
    engine iterations at calibration): a per-kernel gap inside CUDA-graph steps, one per eager step, the eager
    floors (an eager step never takes less than the host needs to launch it: prefill only, and prefill with
    decodes, which launches both attention kernels), and the host time per step as ``base + per_seq x
    sequences + per_kv_token x KV tokens attended`` for graph and for eager steps (zeros: use the
    ``step_overhead`` tables). The ``piecewise_*`` terms are the same for steps with prefill run as piecewise CUDA
    graphs (``servesim.engine.piecewise``): a gap per step, floors (one-token steps on the piecewise engine) and host
    time, fitted on ``piecewise_steps`` iterations; 0 there: not measured (profiles before them, or a calibration
    with ``--step-modes`` leaving them out), and the cost model prices such steps from the other terms (flagged).
    The host-time terms (every ``*_host_s`` and the floors) are what ``CalibratedCostModel(host_speed=...)``
    scales; the gaps are device time."""

    graph_gap_s: float = 0.0  # per kernel
    eager_gap_s: float = 0.0  # per step
    eager_floor_s: float = 0.0
    eager_floor_mixed_s: float = 0.0
    graph_host_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    eager_host_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    host_launch_us: float | None = None  # servesim.kernels.timing.host_launch_us beside the floors (their process)
    # the pure-Python scheduler's time per step in the fitted runs, base + per running + per waiting request: the
    # host-speed reference a validation run's own scheduler time is measured against (servesim.validate.hostspeed;
    # zeros: not recorded)
    schedule_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    piecewise_gap_s: float = 0.0  # per step
    piecewise_floor_s: float = 0.0
    piecewise_floor_mixed_s: float = 0.0
    piecewise_host_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    piecewise_steps: int = 0  # piecewise iterations the terms were fitted on (0: not measured)


class FitReport(_Strict):
    """Held-out error of the interpolation and of whole engine steps predicted from the operator sum, as
    fractions: median and p90 of |predicted/measured - 1|. ``method`` says which points were held out:
    ``off-grid`` (points between the grid's, timed for this and priced from the whole grid, as the simulator
    prices them) or ``leave-one-out`` (each interior grid point from its two neighbours, a gap twice the
    grid's: profiles measured before off-grid points existed)."""

    method: Literal["off-grid", "leave-one-out"] = "leave-one-out"
    ops: dict[str, dict[str, float]] = Field(default_factory=dict)  # op -> {median_abs, p90_abs, points}
    steps: dict[str, dict[str, float]] = Field(default_factory=dict)  # weight format -> {median_abs, ...}


class Profile(_Strict):
    schema_: Literal["servesim-profile"] = Field(SCHEMA, alias="schema")
    version: int
    profile_id: str
    gpu: str  # catalog name of the GPU it was measured on
    provenance: Provenance
    tables: tuple[OpTable, ...]
    steps: dict[str, StepFit] = Field(default_factory=dict)  # weight format -> whole-step fit
    # decode attention of a ragged batch is priced at mean + w x (longest - mean) context (fitted on the ragged
    # tables: the kernel's time follows its longest sequences)
    decode_max_weight: float = 0.0
    # the same weight per batch size (batch, w), from each batch of the ragged tables: a wide batch spreads its
    # sequences over many programs per SM and follows its longest ones less (H200: w 0.45-0.57 at batch 8, 0.33 at
    # 32, 0.07-0.22 at 128); linear in log2(batch) between the batches, held beyond them. Empty: the one weight.
    decode_max_weights: tuple[tuple[float, float], ...] = ()
    fit: FitReport = FitReport()
    collective_provenance: Provenance | None = None  # where the allreduce/allgather tables were measured

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def table(self, op: str, **key) -> OpTable | None:
        for t in self.tables:
            if t.op == op and all(t.key.get(k) == v for k, v in key.items()):
                return t
        return None

    def tables_of(self, op: str) -> list[OpTable]:
        return [t for t in self.tables if t.op == op]


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile; a missing file, bad JSON, another schema version or a malformed field is one
    :class:`InputError` naming the file and the field."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError("no such profile file", file=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", file=str(p)) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} at line {exc.lineno}", file=str(p)) from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4,300 digits; nesting past the stack
        what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        raise InputError(f"not valid JSON: {what}", file=str(p)) from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise InputError(f"not a servesim profile (schema must be {SCHEMA!r})", file=str(p), field="schema")
    if raw.get("version") not in READS:
        raise InputError(f"profile version {raw.get('version')!r}; this servesim reads versions "
                         f"{', '.join(map(str, READS))} (re-run servesim calibrate)", file=str(p), field="version")
    tables = raw.get("tables")
    if raw["version"] < 2 and isinstance(tables, list) and any(
            isinstance(t, dict) and t.get("op") in ("allreduce", "allgather") for t in tables):
        raise InputError("collective tables need profile version 2", file=str(p), field="version")
    try:
        return Profile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise InputError(err["msg"], file=str(p), field=loc) from None


def with_collectives(profile: Profile, tables: list[OpTable], provenance: Provenance) -> Profile:
    """``profile`` (any version) with ``tables`` of collectives replacing those of the same op and TP degree, as
    a version-2 profile whose id says it carries them."""
    keys = {(t.op, t.key.get("tp")) for t in tables}
    kept = tuple(t for t in profile.tables if (t.op, t.key.get("tp")) not in keys)
    pid = profile.profile_id if profile.profile_id.endswith("+collectives") else profile.profile_id + "+collectives"
    return profile.model_copy(update={"version": VERSION, "tables": kept + tuple(tables),
                                      "collective_provenance": provenance, "profile_id": pid})


def save_profile(profile: Profile, path: str | Path) -> None:
    """Write ``profile`` as JSON atomically (a temporary sibling, then a rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    try:
        tmp.write_text(json.dumps(profile.model_dump(mode="json", by_alias=True), indent=1))
        tmp.replace(p)
    except BaseException:  # a full disk, Ctrl-C: the previous profile stays, and no temporary file
        tmp.unlink(missing_ok=True)
        raise


def shipped_profiles() -> dict[str, Path]:
    """Catalog GPU name -> the profile shipped as package data (``hwmodels/profiles/<gpu>.json``)."""
    root = Path(__file__).parent / "profiles"
    out = {}
    for f in sorted(root.glob("*.json")):
        try:
            gpu = json.loads(f.read_text()).get("gpu")
        except (OSError, json.JSONDecodeError):
            continue
        if gpu:
            out[gpu] = f
    return out
