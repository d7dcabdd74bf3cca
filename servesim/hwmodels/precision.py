"""Weight-format specs: one format for every linear layer, or mixed precision per layer group.

A spec is the ``quant`` of a scenario. Its syntax: comma-separated terms, the first of which may be a bare
weight format (the default of every linear no other term names; bf16 when absent), then ``GROUP=FORMAT``:

* linear groups: ``attn`` (the QKV and O projections; MLA's up-projection too), ``mlp`` (gate/up and down, shared
  experts and dense layers included), or one linear: ``qkv``, ``o``, ``gate_up``, ``down``;
* layer ranges: ``first:N`` and ``last:N``, every linear of the N first or last decoder layers, over any
  linear group.

``w4a16,attn=bf16`` keeps attention in bf16 and the MLP in W4A16; ``w4a16,first:2=bf16,last:2=bf16`` keeps the
two outermost layers at each end in bf16. Embeddings, the LM head, norms and MoE routers stay in bf16 in every
spec. :func:`parse_quant` validates a spec (one-line ConfigError naming ``quant``) and gives its canonical
spelling, so equal specs hash alike (``w4a16,mlp=w4a16`` is ``w4a16``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from servesim.errors import ConfigError, unknown_name
from servesim.hwmodels.models import WEIGHT_FORMATS

LINEARS = ("qkv", "o", "gate_up", "down")
GROUPS = {"attn": ("qkv", "o"), "mlp": ("gate_up", "down"), **{name: (name,) for name in LINEARS}}
_RANGE = re.compile(r"^(first|last):(\d+)$")


def linear_role(op_name: str) -> str:
    """The linear of :data:`LINEARS` a weight matrix or an ops.py operator plays: MoE's ``shared_``/``dense_``
    MLPs are their ``gate_up``/``down``; MLA's query and KV projections (``q``, ``q_a``, ``q_b``, ``kv_a``,
    ``kv_b``, the operator ``kv_up``) are the attention's ``qkv``."""
    base = op_name.split("@")[0].removeprefix("shared_").removeprefix("dense_")
    return "qkv" if base in _MLA_QKV else base


_MLA_QKV = ("q", "q_a", "q_b", "kv_a", "kv_b", "kv_up")


@dataclass(frozen=True)
class QuantSpec:
    """A parsed spec: the default format, per-linear overrides, and the formats of the first and last layers."""

    default: str
    linears: tuple[tuple[str, str], ...] = ()  # (linear, format) differing from the default, in LINEARS order
    first: tuple[int, str] | None = None  # (layers, format)
    last: tuple[int, str] | None = None

    @property
    def uniform(self) -> bool:
        return not self.linears and self.first is None and self.last is None

    @property
    def name(self) -> str:
        """The canonical spelling."""
        terms = [self.default]
        own = dict(self.linears)
        for group, members in (("attn", ("qkv", "o")), ("mlp", ("gate_up", "down"))):
            fmts = {own.get(m) for m in members}
            if len(fmts) == 1 and None not in fmts:
                terms.append(f"{group}={fmts.pop()}")
            else:
                terms += [f"{m}={own[m]}" for m in members if m in own]
        for where, value in (("first", self.first), ("last", self.last)):
            if value is not None:
                terms.append(f"{where}:{value[0]}={value[1]}")
        return ",".join(terms)

    def formats(self) -> tuple[str, ...]:
        """Every weight format the spec uses."""
        used = [self.default, *(f for _, f in self.linears)]
        used += [v[1] for v in (self.first, self.last) if v is not None]
        return tuple(dict.fromkeys(used))

    def linear_formats(self) -> dict[str, str]:
        """The format of each linear in the layers no range covers."""
        own = dict(self.linears)
        return {m: own.get(m, self.default) for m in LINEARS}

    def check_layers(self, num_layers: int) -> None:
        """ConfigError unless the layer ranges fit ``num_layers`` layers (and overlap only in one format)."""
        f = self.first[0] if self.first else 0
        la = self.last[0] if self.last else 0
        if max(f, la) > num_layers:
            raise ConfigError(f"'{self.name}': a layer range is longer than the model's {num_layers} layers",
                              field="quant")
        if f + la > num_layers and self.first[1] != self.last[1]:
            raise ConfigError(f"'{self.name}': first:{f} and last:{la} overlap in a {num_layers}-layer model with "
                              f"different formats", field="quant")

    def layer_groups(self, num_layers: int) -> list[tuple[float, dict[str, str]]]:
        """The distinct per-layer assignments (linear -> format) with the fraction of the layers each holds,
        the largest first (ties: the middle layers first)."""
        self.check_layers(num_layers)
        middle = self.linear_formats()
        counts: dict[tuple[tuple[str, str], ...], int] = {}
        for layer in range(num_layers):
            key = tuple(self.layer_formats(layer, num_layers).items())
            counts[key] = counts.get(key, 0) + 1
        order = sorted(counts, key=lambda k: (-counts[k], dict(k) != middle))
        return [(counts[k] / num_layers, dict(k)) for k in order]

    def layer_formats(self, layer: int, num_layers: int) -> dict[str, str]:
        """The format of each linear of decoder layer ``layer`` (0-based) of ``num_layers``."""
        if self.first and layer < self.first[0]:
            return dict.fromkeys(LINEARS, self.first[1])
        if self.last and layer >= num_layers - self.last[0]:
            return dict.fromkeys(LINEARS, self.last[1])
        return self.linear_formats()


def _format(name: str, spec: str) -> str:
    if name.lower() not in WEIGHT_FORMATS:
        where = f"'{spec}': " if spec.lower() != name.lower() else ""
        raise ConfigError(where + unknown_name("weight format", name, WEIGHT_FORMATS), field="quant")
    return WEIGHT_FORMATS[name.lower()].name


@cache
def parse_quant(text: str) -> QuantSpec:
    """Parse a weight-format spec (module doc); ConfigError naming ``quant`` with the term at fault otherwise."""
    spec = str(text).strip()
    terms = [t.strip() for t in spec.split(",")]
    if not spec or any(not t for t in terms):
        raise ConfigError(f"'{spec}': empty term; give a format (bf16) or terms like w4a16,attn=bf16", field="quant")
    default = "bf16"
    if "=" not in terms[0]:
        default = _format(terms[0], spec)
        terms = terms[1:]
    own: dict[str, str] = {}
    ranges: dict[str, tuple[int, str]] = {}
    for term in terms:
        if term.count("=") != 1:
            raise ConfigError(f"'{spec}': '{term}' is not GROUP=FORMAT (only the first term may be a bare format)",
                              field="quant")
        group, fmt = (p.strip() for p in term.split("="))
        fmt = _format(fmt, spec)
        m = _RANGE.match(group.lower())
        if m:
            where, n = m.group(1), int(m.group(2))
            if n < 1 or where in ranges:
                raise ConfigError(f"'{spec}': '{term}': give {where}:N once, N >= 1", field="quant")
            ranges[where] = (n, fmt)
            continue
        if group.lower() not in GROUPS:
            known = [*GROUPS, "first:N", "last:N"]
            raise ConfigError(f"'{spec}': " + unknown_name("layer group", group, known), field="quant")
        for member in GROUPS[group.lower()]:
            if own.get(member, fmt) != fmt:
                raise ConfigError(f"'{spec}': {member} given two formats ({own[member]}, {fmt})", field="quant")
            own[member] = fmt
    linears = tuple((m, own[m]) for m in LINEARS if m in own and own[m] != default)
    middle = {own.get(m, default) for m in LINEARS}
    for where, (_, fmt) in list(ranges.items()):
        if middle == {fmt}:  # the range changes nothing
            del ranges[where]
    return QuantSpec(default, linears, ranges.get("first"), ranges.get("last"))
