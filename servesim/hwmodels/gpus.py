"""GPU catalog: datasheet peaks (memory, HBM bandwidth, dense TFLOP/s per dtype, links, power) and $/hour.

All throughput figures are *dense* (no 2:4 sparsity). ``memory_bytes`` is the datasheet capacity read in
binary units (HBM and GDDR capacities are powers of two: "80 GB" is 80 GiB); the CUDA driver reports about
1% less on an H100 SXM (85,017,493,504 bytes measured, vs 85,899,345,920). ``interconnect_bytes_per_s`` is
the datasheet's per-GPU NVLink/xGMI figure, which counts both directions (the cost model uses half of it for
one direction of a ring). ``usd_per_hour`` values are editable defaults (rough on-demand cloud prices), not
quotes. The catalog is ``catalog/gpus.yaml``; users add GPUs in the same format with :func:`load_gpus_yaml`.

Each GPU has one canonical name (its catalog key) and may list ``aliases`` (``H200-SXM`` for ``H200``,
``H100-80GB-HBM3`` for ``H100-SXM``, as ``torch.cuda.get_device_name`` spells it); :func:`get_gpu` resolves
any of them, so configurations, hashes and result files carry the canonical name only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from servesim.errors import ConfigError, InputError, unknown_name

GIB = 2**30
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")


@dataclass(frozen=True)
class GPU:
    """One accelerator's datasheet peaks; ``tflops`` maps a dtype in :data:`DTYPES` to dense TFLOP/s
    (TOP/s for int8). A dtype the GPU cannot run on tensor cores (fp8 before Hopper/Ada) is absent."""

    name: str
    memory_bytes: int
    hbm_bytes_per_s: float
    tflops: dict[str, float]
    sm_count: int
    interconnect_bytes_per_s: float  # NVLink / xGMI per GPU, both directions; PCIe figure when none
    pcie_bytes_per_s: float  # both directions
    tdp_w: float
    usd_per_hour: float
    source: str
    aliases: tuple[str, ...] = ()
    family: str = ""  # the roofline prior's GPU family (hwmodels/prior.py); "" = its pooled default
    l2_bytes: int = 0  # last-level on-chip cache (datasheet / whitepaper); 0 = not stated (the prior gives no L2 term)

    def peak_flops_per_s(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; fp8 and int8 fall back to bf16 on GPUs without such tensor cores."""
        if dtype in ("fp8", "int8") and dtype not in self.tflops:
            dtype = "bf16"
        return self.tflops[dtype] * 1e12


def _catalog() -> dict[str, GPU]:
    return load_gpus_yaml(Path(__file__).parent / "catalog" / "gpus.yaml")


def gpu_key(name: str) -> str:
    """The lookup form of a GPU name: lower case, spaces and underscores as '-', no leading 'NVIDIA '."""
    key = "-".join(str(name).strip().lower().replace("_", " ").split())
    return key.removeprefix("nvidia-")


def _index(table: dict[str, GPU]) -> dict[str, GPU]:
    """Every name and alias (in lookup form) -> its GPU; later tables may override earlier names."""
    out: dict[str, GPU] = {}
    for g in table.values():
        for n in (g.name, *g.aliases):
            out[gpu_key(n)] = g
    return out


def get_gpu(name: str, extra: dict[str, GPU] | None = None) -> GPU:
    """Look a GPU up by its name or an alias, case-insensitively (``extra`` adds user GPUs from
    :func:`load_gpus_yaml`); ConfigError naming the closest catalog names otherwise."""
    table = {**GPUS, **(extra or {})}
    found = {**_index(GPUS), **_index(extra or {})}.get(gpu_key(name))
    if found is None:
        aliases = {a: g.name for g in table.values() for a in g.aliases}
        raise ConfigError(unknown_name("GPU", name, table, aliases), field="gpu")
    return found


# YAML fields (human units) -> (GPU field, scale)
_YAML_FIELDS = {
    "memory_gib": ("memory_bytes", GIB),
    "hbm_tbps": ("hbm_bytes_per_s", 1e12),
    "sm_count": ("sm_count", 1),
    "interconnect_gbps": ("interconnect_bytes_per_s", 1e9),
    "pcie_gbps": ("pcie_bytes_per_s", 1e9),
    "tdp_w": ("tdp_w", 1),
    "usd_per_hour": ("usd_per_hour", 1),
}
_REQUIRED = (*_YAML_FIELDS, "tflops", "source")
_OPTIONAL = ("aliases", "family", "l2_mib")


def _number(value, file: str, field: str) -> float:
    # PyYAML reads "3.35e12" (no dot before e, no sign) as a string; accept it as a number.
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"expected a number, got {value!r}", file=file, field=field) from None
    if not out >= 0:
        raise InputError(f"must be >= 0, got {value!r}", file=file, field=field)
    if not math.isfinite(out):
        raise InputError(f"must be finite, got {value!r}", file=file, field=field)
    return out


def gpu_from_dict(name: str, raw: dict, file: str = "<dict>") -> GPU:
    """A validated :class:`GPU` from one YAML entry (fields of ``catalog/gpus.yaml``, in human units)."""
    if not isinstance(raw, dict):
        raise InputError("expected a mapping of GPU fields", file=file, field=name)
    unknown = sorted(map(str, set(raw) - set(_REQUIRED) - set(_OPTIONAL)))
    if unknown:
        raise InputError(
            f"unknown field; expected {', '.join(_REQUIRED + _OPTIONAL)}", file=file, field=f"{name}.{unknown[0]}"
        )
    aliases = raw.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise InputError("expected a list of names", file=file, field=f"{name}.aliases")
    for key in _REQUIRED:
        if key not in raw:
            raise InputError("missing", file=file, field=f"{name}.{key}")
    tflops = raw["tflops"]
    if not isinstance(tflops, dict) or "bf16" not in tflops:
        raise InputError(
            "expected a mapping of dtype to dense TFLOP/s with at least bf16",
            file=file,
            field=f"{name}.tflops",
        )
    for dt in tflops:
        if dt not in DTYPES:
            raise InputError(
                f"unknown dtype; expected one of {', '.join(DTYPES)}", file=file, field=f"{name}.tflops.{dt}"
            )
    if not str(raw["source"]).strip():
        raise InputError("must name the datasheet", file=file, field=f"{name}.source")
    vals = {}
    for key, (attr, scale) in _YAML_FIELDS.items():
        value = _number(raw[key], file, f"{name}.{key}") * scale
        if not math.isfinite(value):
            raise InputError(f"too large, got {raw[key]!r}", file=file, field=f"{name}.{key}")
        vals[attr] = int(round(value)) if attr in ("memory_bytes", "sm_count") else value
    peaks = {k: _number(v, file, f"{name}.tflops.{k}") for k, v in tflops.items()}
    l2 = int(round(_number(raw["l2_mib"], file, f"{name}.l2_mib") * 2**20)) if "l2_mib" in raw else 0
    if not vals["memory_bytes"] or not vals["hbm_bytes_per_s"] or not peaks["bf16"]:
        raise InputError("memory, bandwidth and bf16 TFLOP/s must be > 0", file=file, field=name)
    return GPU(name=name, tflops=peaks, source=str(raw["source"]).strip(), aliases=tuple(a.strip() for a in aliases),
               family=str(raw.get("family") or "").strip(), l2_bytes=l2, **vals)


def read_yaml(path: str | Path):
    """The YAML document in ``path`` (safe loading); InputError naming the file if it cannot be read (missing, not
    UTF-8) or parsed (bad YAML, nested too deeply, a date no calendar has)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when PyYAML has it: the same document
    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=loader)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError:
        raise InputError("not a text file (not UTF-8)", file=str(path)) from None
    except RecursionError:
        raise InputError("not valid YAML: nested too deeply", file=str(path)) from None
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {yaml_problem(exc)}", file=str(path)) from None
    except ValueError as exc:  # a scalar YAML reads as a timestamp (2023-13-45) but no calendar has
        raise InputError(f"not valid YAML: {exc}", file=str(path)) from None


def yaml_problem(exc: Exception) -> str:
    """A YAML error as one short phrase: what is wrong and its line (``found undefined alias 'x' at line 3``)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)


def load_gpus_yaml(path: str | Path) -> dict[str, GPU]:
    """Read GPUs from YAML in the format of ``catalog/gpus.yaml``: ``{name: {memory_gib: 80, hbm_tbps: 3.35,
    tflops: {bf16: 989.4, ...}, sm_count, interconnect_gbps, pcie_gbps, tdp_w, usd_per_hour, source}}``.

    Every field is required (``tflops`` needs bf16); errors name the file and the field.
    """
    file = str(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not raw:
        raise InputError("expected a mapping of GPU name to fields", file=file)
    gpus = {str(name): gpu_from_dict(str(name), fields, file) for name, fields in raw.items()}
    seen: dict[str, str] = {}
    for g in gpus.values():
        for n in (g.name, *g.aliases):
            if seen.setdefault(gpu_key(n), g.name) != g.name:
                raise InputError(f"'{n}' already names {seen[gpu_key(n)]}", file=file, field=g.name)
    return gpus


GPUS: dict[str, GPU] = _catalog()
