"""A cost model over a measured profile: the time of each operator the engine launches, interpolated on the
grid it was timed on, with the roofline interface (``step_time``, ``step_time_s``, ``decode_run_s``).

Interpolation is piecewise linear in each axis (bilinear over two), so it is exact at every grid point and
monotone between monotone points, and it uses only ``+ - * /``, so the vectorised ``decode_run_s`` reproduces
``step_time_s`` bit for bit (the simulator's fast-forward relies on it). Outside the grid a value continues the
last segment (for token and context axes the measured times are linear there: bandwidth- or compute-bound),
and an operator of a shape the profile lacks (another model's GEMM, another head count) takes the nearest
measured shape scaled by the roofline ratio of the two shapes; both are reported as extrapolated
(:attr:`CalibratedCostModel.extrapolated`, ``StepTime.extrapolated``, and the run summary's metadata).

A step is ``overhead(mode, seqs) + layers x [token ops(T) + attention] + head(sampled rows) + kernels x gap``:
token ops are the four GEMMs, two fused add-norms, rotary, KV write and SiLU-mul of one layer over the
``T`` tokens of the step; the overhead is the engine's host time per step, measured separately for CUDA-graph
decode steps and eager steps; the gap is what a whole step measured on the engine adds over its operators timed
alone (fitted per kernel at calibration).

With piecewise CUDA graphs (``piecewise``: the engine's buckets, :mod:`servesim.hwmodels.buckets`) a step with a
prefill chunk (not speculative, TP 1) of ``n <=`` the largest bucket runs padded to ``T = bucket(n)`` rows: its
token ops are priced at ``T`` (the excess over ``n`` is the breakdown's ``padding``, with the LM head and final
norm over ``min(T, max_num_seqs)`` rows instead of the sampled ones), attention at the real rows, and the step
is ``overhead_pw + max(kernels + padding + gap_pw, floor_pw)`` with the profile's ``piecewise_*`` step terms; a
profile without them prices it from its other terms (:meth:`CalibratedCostModel._piecewise_terms`), flagged
``piecewise(fallback)`` the way extrapolation is.

``host_speed`` (default 1.0) multiplies the host-time terms (the overheads and the eager and piecewise floors),
for a serving host slower or faster than the calibration host; the gaps are device time and stay.

Under tensor parallelism the token ops add the layer's two all-reduces of ``T x hidden`` bf16 activations and
the head adds the all-gather of the sampled rows' logits, each from the profile's measured table for that TP
degree (``allreduce``/``allgather`` over message bytes) or, where the profile has none, from the roofline
prior's link figures for the all-reduce mode asked for (flagged ``allreduce(roofline)``, ``allgather(roofline)``).
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np

from servesim.hwmodels.buckets import PieceBuckets
from servesim.hwmodels.cost import StepTime
from servesim.hwmodels.models import get_weight_format, kv_dtype_bytes
from servesim.hwmodels.ops import ACT_BYTES, LOGIT_BYTES, BatchShape
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.precision import parse_quant
from servesim.hwmodels.prior import prior_for
from servesim.hwmodels.profile import OpTable, Profile

TOKEN_OPS = ("qkv", "o", "gate_up", "down", "rms_norm", "rotary", "kv_write", "silu_mul")
KERNELS_PER_LAYER = 11  # 2 norms, 4 GEMMs, rotary, KV write, attention (prefill and/or decode), SiLU-mul
GRAPH_MAX_SEQS = 256  # the engine captures decode graphs (plain and speculative) up to this batch


class ProfileMismatch(ValueError):
    """The profile cannot price this placement at all (no table of an operator kind it needs)."""


def _seg(xs: list[float], x: float) -> int:
    """Index j of the segment [xs[j], xs[j+1]] that holds x (the first or last one outside the grid)."""
    j = bisect_right(xs, x) - 1
    return 0 if j < 0 else (len(xs) - 2 if j > len(xs) - 2 else j)


FAR = 1e6  # the extension node: past the grid, a time grows in proportion to its axis (a line through 0)


def _extend(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The table with a node at 0 (holding the first value) and one at ``FAR x`` the last (``FAR x`` its value),
    so linear interpolation is constant below the grid and proportional above it: never negative, monotone where
    the measurements are, whatever the slope of the last measured segment."""
    xs, ys = list(xs), list(ys)
    if xs[0] > 0:
        xs, ys = [0.0, *xs], [ys[0], *ys]
    return [*xs, xs[-1] * FAR], [*ys, ys[-1] * FAR]


def staircase(xs: list[float], ys: list[float], runs) -> tuple[list[float], list[float]]:
    """The nodes of a 1-D table whose kernel steps by launch load (``OpTable.launch_load``: (first M, load) runs):
    in a segment over which the load rises, the segment's rise follows the load's running maximum (flat inside a
    launch shape, a jump from ``s - 1`` to ``s`` where one starts) instead of M; elsewhere the segment stays linear.
    Exact at the grid's points and monotone between monotone ones; with no runs, the table itself."""
    xs, ys = list(xs), list(ys)
    if not runs:
        return xs, ys
    starts = [r[0] for r in runs]
    nx, ny = [xs[0]], [ys[0]]
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        i = bisect_right(starts, x0) - 1
        peak = l0 = runs[i][1] if i >= 0 else 0.0
        rises = []
        for s, load in runs:
            if x0 < s <= x1 and load > peak:
                peak = load
                rises.append((s, load))
        prev = l0
        for s, load in rises:
            if s - 1 > nx[-1]:  # flat at the previous launch shape's value up to s - 1
                nx.append(s - 1)
                ny.append(y0 + (y1 - y0) * (prev - l0) / (peak - l0))
            nx.append(s)
            ny.append(y1 if s == x1 else y0 + (y1 - y0) * (load - l0) / (peak - l0))
            prev = load
        if nx[-1] != x1:
            nx.append(x1)
            ny.append(y1)
    return nx, ny


def table_nodes(table: OpTable) -> tuple[list[float], list[float]]:
    """A 1-D table's nodes as the cost model interpolates them (its launch steps where it has them)."""
    return staircase(table.grid[0], table.median_s, table.launch_load)


def _lerp(xs: list[float], ys: list[float], x: float) -> float:
    if len(xs) == 1:
        return ys[0]
    j = _seg(xs, x)
    return ys[j] + (ys[j + 1] - ys[j]) * (x - xs[j]) / (xs[j + 1] - xs[j])


class _Grid2:
    """A 2-D table over (a, b), bilinear; ``column(a)`` is the 1-D table over b at fixed a."""

    def __init__(self, table: OpTable, scale: float = 1.0) -> None:
        a, b = list(table.grid[0]), list(table.grid[1])
        self.a_max, self.b_max = a[-1], b[-1]  # the measured ranges (beyond: extrapolated)
        nb = len(b)
        vals = [v * scale for v in table.median_s]
        rows = [_extend(b, vals[i * nb:(i + 1) * nb]) for i in range(len(a))]
        self.b = rows[0][0]
        rows = [r for _, r in rows]
        self.a = _extend(a, [1.0] * len(a))[0]
        ext = [rows[0]] if a[0] > 0 else []
        self.rows = ext + rows + [[v * FAR for v in rows[-1]]]

    def column(self, a: float) -> list[float]:
        rows, xs = self.rows, self.a
        if len(xs) == 1:
            return rows[0]
        i = _seg(xs, a)
        w = (a - xs[i]) / (xs[i + 1] - xs[i])
        lo, hi = rows[i], rows[i + 1]
        return [lo[j] + (hi[j] - lo[j]) * w for j in range(len(lo))]

    def __call__(self, a: float, b: float) -> float:
        """``_lerp(self.b, self.column(a), b)`` from the four corners only (the same operations, so the same
        bits as the column route ``decode_run_s`` takes)."""
        rows, xa, xb = self.rows, self.a, self.b  # extended grids: at least three nodes on each axis
        i = bisect_right(xa, a) - 1
        la = len(xa) - 2
        i = 0 if i < 0 else (la if i > la else i)
        r0, r1 = rows[i], rows[i + 1]
        w = (a - xa[i]) / (xa[i + 1] - xa[i])
        j = bisect_right(xb, b) - 1
        lb = len(xb) - 2
        j = 0 if j < 0 else (lb if j > lb else j)
        v0 = r0[j] + (r1[j] - r0[j]) * w
        v1 = r0[j + 1] + (r1[j + 1] - r0[j + 1]) * w
        return v0 + (v1 - v0) * (b - xb[j]) / (xb[j + 1] - xb[j])

    def outside(self, a: float, b: float) -> bool:
        return a > self.a_max or b > self.b_max


def _two_points(table: tuple[list[float], list[float]] | None) -> tuple[list[float], list[float]]:
    """A 1-D table with at least two points (a constant one when measured at one point; zero when absent)."""
    if table is None:
        return [0.0, 1.0], [0.0, 0.0]
    xs, ys = table
    return (xs, ys) if len(xs) > 1 else ([xs[0], xs[0] + 1.0], [ys[0], ys[0]])  # host tables: held flat


def _scaled(terms: tuple[float, ...], h: float) -> tuple[float, ...]:
    """Host-time fit coefficients times the host-speed factor ``h`` (the terms themselves at 1.0)."""
    return terms if h == 1.0 else tuple(v * h for v in terms)


def _log_distance(key: dict, want: dict, names: tuple[str, ...]) -> float:
    return sum(abs(math.log(float(key[n]) / float(want[n]))) for n in names)


class CalibratedCostModel:
    """Step time of one replica at ``placement`` from a measured ``profile`` (same interface as ``CostModel``)."""

    def __init__(self, placement: Placement, profile: Profile, overhead_s: float | None = None,
                 allreduce: str = "custom", piecewise: PieceBuckets | None = None, host_speed: float = 1.0) -> None:
        """``piecewise``: the engine's piecewise-graph buckets when it runs steps with prefill so (None: eager;
        ignored at TP > 1, where the engine runs them eagerly). ``host_speed``: the serving host's time for the
        same host work relative to the calibration host's (1.0: as calibrated; 1.2: a host 20% slower); it
        multiplies the host-time terms, the step overheads (fits or tables; not a fixed ``overhead_s``) and the
        eager and piecewise floors (an eager step's launches), not the gaps (device time). Applied to the terms
        once here, so the pricing path is unchanged and 1.0 prices bit for bit as without it."""
        if not (host_speed > 0 and math.isfinite(host_speed)):
            raise ValueError(f"host_speed must be a positive finite factor, got {host_speed!r}")
        self.placement, self.profile, self.allreduce = placement, profile, allreduce
        self.host_speed = hs = float(host_speed)
        m, tp = placement.model, placement.tp
        self.model, self.gpu, self.tp, self.pp = m, placement.gpu, tp, placement.pp
        self.layers = math.ceil(m.num_layers / placement.pp)
        self.extrapolated: set[str] = set()
        self._fixed_overhead = overhead_s
        spec, kv = parse_quant(placement.weight_format), placement.kv_dtype
        if any(get_weight_format(f).quantizes_activations for f in spec.formats()):
            raise ProfileMismatch(f"{placement.weight_format} quantizes activations per token, a kernel calibrated "
                                  f"profiles do not time yet")
        fmt = spec.default  # host-time and step fits: the spec's main format
        # mixed precision: each GEMM's curve is the layers' shares of its formats' tables
        self._layer_groups = spec.layer_groups(m.num_layers)
        q, kvh = m.num_heads // tp, max(m.num_kv_heads // tp, 1)
        h, i = m.hidden_size, m.intermediate_size // tp
        self._gemm_shapes = {"qkv": ((q + 2 * kvh) * m.head_dim, h), "o": (h, q * m.head_dim),
                             "gate_up": (2 * i, h), "down": (h, i)}
        self._elementwise = {"rms_norm": {"hidden": h},
                             "rotary": {"q_heads": q, "kv_heads": kvh, "head_dim": m.head_dim},
                             "kv_write": {"kv_dtype": kv, "kv_heads": kvh, "head_dim": m.head_dim},
                             "silu_mul": {"intermediate": i}}
        if m.is_moe:
            raise ProfileMismatch(f"{m.name} is a mixture-of-experts model; calibrated profiles cover dense models")
        self._build_token_table()
        self._build_head_table(-(-m.vocab_size // tp))
        attn_key = {"kv_dtype": kv, "q_heads": q, "kv_heads": kvh, "head_dim": m.head_dim}
        self._prefill = _Grid2(*self._nearest("attn_prefill", attn_key, ("q_heads", "kv_heads", "head_dim"),
                                              lambda k: k["q_heads"] * k["head_dim"]))
        self._decode = _Grid2(*self._nearest("attn_decode", attn_key, ("q_heads", "kv_heads", "head_dim"),
                                             lambda k: k["kv_heads"] * k["head_dim"] * kv_dtype_bytes(k["kv_dtype"])))
        self._prefill_floor = self._prefill.rows[0][0]
        if len(self._decode.b) < 2:
            raise ProfileMismatch(f"profile {profile.profile_id} has a decode grid of one context")
        self._xb_last = len(self._decode.b) - 2
        self._w_max = profile.decode_max_weight  # the weight of a batch size with no per-batch weights
        self._w_pairs = profile.decode_max_weights
        self._w_of: dict[int, float] = {}  # batch size -> its weight (memoised: a run sees few batch sizes)
        self._columns: dict[int, list[float]] = {}
        self._token_memo: dict[int, float] = {}  # token count -> the token table's value (_kernels_s)
        self._head_memo: dict[int, float] = {}  # sampled rows -> the head table's value
        self._arrays: dict[int, tuple[np.ndarray, ...]] = {}
        spec = profile.table("spec_verify", vocab=m.vocab_size)
        self._spec = _Grid2(spec) if spec else None
        self._overhead = {}
        for mode in ("graph", "eager"):
            t = profile.table("step_overhead", mode=mode, format=fmt) or profile.table("step_overhead", mode=mode)
            self._overhead[mode] = (list(t.grid[0]), [v * hs for v in t.median_s]) if t else None
        ov = self._overhead
        self._over_graph = _two_points(ov["graph"] or ov["eager"])
        self._over_eager = _two_points(ov["eager"] or ov["graph"])
        fit = self.step_fit = profile.steps.get(fmt) or next(iter(profile.steps.values()), None)
        kernels = self.launches = KERNELS_PER_LAYER * self.layers + 4  # kernels a forward pass launches
        self._graph_gap = fit.graph_gap_s * kernels if fit else 0.0
        self._eager_gap = fit.eager_gap_s if fit else 0.0
        self._eager_floor = fit.eager_floor_s * hs if fit else 0.0
        self._eager_floor_mixed = (fit.eager_floor_mixed_s or fit.eager_floor_s) * hs if fit else 0.0
        linear = fit is not None and any(fit.graph_host_s + fit.eager_host_s)
        self._host = (_scaled(fit.graph_host_s, hs), _scaled(fit.eager_host_s, hs)) if linear else None
        self.piecewise = piecewise if tp == 1 else None
        self._pw_top = self.piecewise.largest if self.piecewise else 0  # steps of up to this many tokens (0: off)
        self._pw_memo: dict[int, float] = {}  # tokens << 20 + sampled rows -> _piecewise_rows_s
        self._piecewise_terms(fit)

    @property
    def profile_id(self) -> str:
        return self.profile.profile_id

    def _piecewise_terms(self, fit) -> None:
        """Gap, floors and host time of piecewise steps: the profile's fitted ``piecewise_*`` terms, or, where it
        has none (``piecewise_steps`` 0), the fallback built from its other terms: the graph gap per kernel for the
        captured kernels plus the eager gap per launch (the eager step's gap over its launches) for each attention
        launch (one a layer, two beside decodes); the eager floors scaled by the launches the host makes, ``L + 1``
        graph replays and the attention launches against the eager step's; the eager host time."""
        self.piecewise_measured = fit is not None and fit.piecewise_steps > 0
        layers, launches = self.layers, self.launches
        if fit is None:
            self._pw_gap = self._pw_gap_mixed = self._pw_floor = self._pw_floor_mixed = 0.0
        elif self.piecewise_measured:
            self._pw_gap = self._pw_gap_mixed = fit.piecewise_gap_s
            self._pw_floor = fit.piecewise_floor_s * self.host_speed
            self._pw_floor_mixed = (fit.piecewise_floor_mixed_s or fit.piecewise_floor_s) * self.host_speed
        else:
            captured, per_launch = launches - layers, fit.eager_gap_s / launches
            self._pw_gap = fit.graph_gap_s * captured + per_launch * layers
            self._pw_gap_mixed = fit.graph_gap_s * captured + per_launch * 2 * layers
            self._pw_floor = self._eager_floor * (2 * layers + 1) / launches
            self._pw_floor_mixed = self._eager_floor_mixed * (3 * layers + 1) / (launches + layers)
        measured_host = self.piecewise_measured and any(fit.piecewise_host_s)
        self._pw_host = _scaled(fit.piecewise_host_s, self.host_speed) if measured_host else (
            self._host[1] if self._host else None)
        # a step of more tokens than this pads past the token grid (flagged as its operators are)
        self._pw_grid_n = max((t for t in self.piecewise.buckets if t <= self._tx_max), default=0) if (
            self.piecewise) else 0

    # -- construction ----------------------------------------------------------------------------------------
    def _nearest(self, op: str, want: dict, shape_keys: tuple[str, ...], size) -> tuple[OpTable, float]:
        """The table of ``op`` matching ``want`` (exactly, or the nearest shape scaled by ``size``)."""
        match = [t for t in self.profile.tables_of(op) if all(t.key.get(k) == v for k, v in want.items())]
        if match:
            return match[0], 1.0
        same = [t for t in self.profile.tables_of(op)
                if all(t.key.get(k) == v for k, v in want.items() if k not in shape_keys)]
        if not same:
            raise ProfileMismatch(f"profile {self.profile.profile_id} has no {op} table for "
                                  f"{', '.join(f'{k}={v}' for k, v in want.items() if k not in shape_keys)}")
        best = min(same, key=lambda t: _log_distance(t.key, want, shape_keys))
        self.extrapolated.add(f"{op}(shape)")
        return best, size(want) / size(best.key)

    def _gemm_curve(self, name: str, fmt: str, n: int, k: int, xs: list[float]) -> list[float]:
        """A GEMM's time at token counts ``xs``: its table, or the nearest (N, K) scaled by the roofline ratio."""
        tables = [t for t in self.profile.tables_of("gemm") if t.key.get("format") == fmt]
        if not tables:
            raise ProfileMismatch(f"profile {self.profile.profile_id} has no {fmt} GEMMs")
        exact = [t for t in tables if t.key["n"] == n and t.key["k"] == k]
        t = exact[0] if exact else min(tables, key=lambda t: _log_distance(t.key, {"n": n, "k": k}, ("n", "k")))
        grid, ys = table_nodes(t) if exact else (list(t.grid[0]), list(t.median_s))  # steps: this shape's only
        out = [_lerp(grid, ys, x) for x in xs]
        if not exact:
            self.extrapolated.add(f"{name}(shape)")
            tn, tk = t.key["n"], t.key["k"]
            out = [y * self._gemm_prior(fmt, x, n, k) / self._gemm_prior(fmt, x, tn, tk) for x, y in zip(xs, out)]
        return out

    def _gemm_prior(self, fmt: str, m: float, n: int, k: int) -> float:
        wf, g = get_weight_format(fmt), self.gpu
        flops = 2.0 * m * n * k
        nbytes = wf.matrix_bytes(k, n) + (k + n) * m * ACT_BYTES
        return max(flops / g.peak_flops_per_s(wf.compute_dtype), nbytes / g.hbm_bytes_per_s)

    def _build_token_table(self) -> None:
        """One table over tokens T of every token-proportional operator of all layers, on the GEMM grid."""
        grids = sorted({x for t in self.profile.tables_of("gemm") for x in table_nodes(t)[0]})  # with launch steps
        if not grids:
            raise ProfileMismatch(f"profile {self.profile.profile_id} has no GEMM tables")
        xs = grids
        parts: dict[str, list[float]] = {}
        for name, (n, k) in self._gemm_shapes.items():
            curves = [(share, self._gemm_curve(name, fmts[name], n, k, xs)) for share, fmts in self._layer_groups]
            parts[name] = [sum(share * c[j] for share, c in curves) for j in range(len(xs))]
        for op, want in self._elementwise.items():
            shape_keys = tuple(k for k in want if k != "kv_dtype")
            t, scale = self._nearest(op, want, shape_keys, lambda key, ks=shape_keys: math.prod(
                float(key[k]) for k in ks))
            parts[op] = [scale * _lerp(list(t.grid[0]), list(t.median_s), x) for x in xs]
        parts["rms_norm"] = [2 * v for v in parts["rms_norm"]]  # two add-norms per layer
        self._ar_tokens_max = math.inf  # tokens past which the all-reduce leaves its measured grid
        if self.tp > 1:  # after O and after down
            msg = self.model.hidden_size * ACT_BYTES
            curve, top = self._collective("allreduce", [x * msg for x in xs], 2 * (self.tp - 1) / self.tp)
            parts["allreduce"] = [2 * v for v in curve]
            self._ar_tokens_max = top / msg
        self._token_parts = parts
        if len(xs) < 2:
            raise ProfileMismatch(f"profile {self.profile.profile_id} has GEMM grids of one point")
        self._tx_max = xs[-1]
        self._token_parts = {k: _extend(xs, v)[1] for k, v in parts.items()}
        self._tx, self._ty = _extend(xs, [self.layers * sum(p[j] for p in parts.values()) for j in range(len(xs))])
        self._tx_last = len(self._tx) - 2

    def _build_head_table(self, vocab_rows: int) -> None:
        """LM head GEMM (bf16), final norm and sampling over the sampled rows."""
        fmt, h = "bf16", self.model.hidden_size
        t = self.profile.table("sampling", vocab=self.model.vocab_size) or self._nearest(
            "sampling", {"vocab": self.model.vocab_size}, ("vocab",), lambda k: k["vocab"])[0]
        xs = sorted(set(t.grid[0]) | {x for x in self._tx if x <= t.grid[0][-1]})
        lm = self._gemm_curve("lm_head", fmt, vocab_rows, h, xs)
        norm_t, norm_scale = self._nearest("rms_norm", {"hidden": h}, ("hidden",), lambda k: k["hidden"])
        scale = 1.0 if t.key["vocab"] == self.model.vocab_size else self.model.vocab_size / t.key["vocab"]
        smp = [scale * _lerp(list(t.grid[0]), list(t.median_s), x) for x in xs]
        norm = [norm_scale * _lerp(list(norm_t.grid[0]), list(norm_t.median_s), x) for x in xs]
        parts = {"lm_head": lm, "sampling": smp, "final_norm": norm}
        if self.tp > 1:  # the vocabulary-parallel logits, gathered
            v = self.model.vocab_size
            parts["logits_gather"] = self._collective("allgather", [x * v * ACT_BYTES for x in xs],
                                                      (self.tp - 1) / self.tp, LOGIT_BYTES / ACT_BYTES)[0]
        if len(xs) < 2:
            raise ProfileMismatch(f"profile {self.profile.profile_id} has a sampling grid of one point")
        self._head_parts = {k: _extend(xs, v)[1] for k, v in parts.items()}
        self._hx, self._hy = _extend(xs, [sum(p[j] for p in parts.values()) for j in range(len(xs))])
        self._hx_last = len(self._hx) - 2
        # the rows a piecewise step's last graph runs beyond the sampled ones: LM head and final norm, no sampling
        rows = [v for k, v in self._head_parts.items() if k != "sampling"]
        self._hy_rows = [sum(v[j] for v in rows) for j in range(len(self._hx))]

    def _collective(self, op: str, sizes: list[float], ring: float, roofline_bytes: float = 1.0
                    ) -> tuple[list[float], float]:
        """One call of collective ``op`` at each message size (bytes): the profile's table for this TP degree,
        or the roofline prior's line over the ring bytes (``ring`` x size, ``roofline_bytes`` x for the
        roofline's own element size); and the largest size measured (inf: the roofline holds everywhere)."""
        t = self.profile.table(op, tp=self.tp)
        if t is not None:
            xs, ys = _extend(list(t.grid[0]), list(t.median_s))
            return [_lerp(xs, ys, b) for b in sizes], t.grid[0][-1]
        self.extrapolated.add(f"{op}(roofline)")
        prior = prior_for(self.gpu)
        return [float(prior.collective_s(ring * roofline_bytes * b, self.gpu, self.allreduce)) for b in sizes], math.inf

    # -- pricing -------------------------------------------------------------------------------------------
    @staticmethod
    def _graph(shape: BatchShape) -> bool:
        """Whether the engine runs this step as a captured CUDA graph: pure decode (one token each, or a
        speculative verification of ``1 + k``) up to the largest graph batch."""
        return not shape.prefill_tokens and shape.decode_seqs <= GRAPH_MAX_SEQS

    def _overhead_s(self, shape: BatchShape, graph: bool) -> float:
        """Host time of the step: the fitted linear model when the profile has one, else its tables by sequences."""
        if self._fixed_overhead is not None:
            return self._fixed_overhead
        seqs = shape.prefill_seqs + shape.decode_seqs
        if self._host is not None:
            b0, b1, b2 = self._host[0 if graph else 1]
            return (b0 + b1 * seqs) + b2 * (shape.decode_ctx_tokens + shape.prefill_ctx_tokens)
        xs, ys = self._over_graph if graph else self._over_eager
        return _lerp(xs, ys, seqs)

    def step_mode(self, shape: BatchShape) -> str:
        """How the engine runs this step: ``graph`` (a captured decode graph), ``piecewise`` (padded piecewise
        graphs, when the model was built with them) or ``eager``."""
        pt, dq, ds = shape.prefill_tokens, shape.decode_query_tokens, shape.decode_seqs
        if pt and pt + dq <= self._pw_top and dq == ds:
            return "piecewise"
        return "graph" if not pt and ds <= GRAPH_MAX_SEQS else "eager"

    def _padding_s(self, n: int, sampled: int) -> float:
        """Device time a piecewise step of ``n`` tokens adds over the same operators at its real rows: token ops
        over its bucket's ``T - n`` padding rows, the LM head and final norm over ``min(T, max_num_seqs)`` rows
        instead of the ``sampled`` ones."""
        t = self.piecewise.bucket(n)
        hx, hy = self._hx, self._hy_rows
        return (_lerp(self._tx, self._ty, t) - _lerp(self._tx, self._ty, n)
                + _lerp(hx, hy, self.piecewise.sample_rows(t)) - (_lerp(hx, hy, sampled) if sampled else 0.0))

    def _piecewise_over_s(self, shape: BatchShape) -> float:
        """Host time of a piecewise step: its fitted linear model (the eager one in the fallback), else the eager
        step-overhead table."""
        if self._fixed_overhead is not None:
            return self._fixed_overhead
        seqs = shape.prefill_seqs + shape.decode_seqs
        if self._pw_host is not None:
            b0, b1, b2 = self._pw_host
            return (b0 + b1 * seqs) + b2 * (shape.decode_ctx_tokens + shape.prefill_ctx_tokens)
        return _lerp(*self._over_eager, seqs)

    def _piecewise_gap_floor(self, shape: BatchShape) -> tuple[float, float]:
        n = shape.prefill_tokens + shape.decode_query_tokens
        if n > self._pw_grid_n:
            self.extrapolated.add("tokens(grid)")
        if not self.piecewise_measured:
            self.extrapolated.add("piecewise(fallback)")
        if shape.decode_seqs:
            return self._pw_gap_mixed, self._pw_floor_mixed
        return self._pw_gap, self._pw_floor

    def _piecewise_rows_s(self, n: int, sampled: int) -> float:
        """The token ops at bucket ``T`` of ``n`` tokens, the LM head and final norm at ``min(T, max_num_seqs)``
        rows and the sampling of the ``sampled`` ones: a piecewise step's kernels but attention (memoised)."""
        t = self.piecewise.bucket(n)
        hx = self._hx
        v = (_lerp(self._tx, self._ty, t) + _lerp(hx, self._hy_rows, self.piecewise.sample_rows(t))
             + (_lerp(hx, self._head_parts["sampling"], sampled) if sampled else 0.0))
        self._pw_memo[(n << 20) + sampled] = v
        return v

    def operators_s(self, shape: BatchShape) -> float:
        """Device time of the step's operators timed alone, as the engine runs them (a piecewise step's at its
        padded rows): the step's time without overhead, gaps and floors (what calibration fits those on)."""
        n = shape.prefill_tokens + shape.decode_query_tokens
        if n == 0:
            return 0.0
        if self.step_mode(shape) == "piecewise":
            k = self._pw_memo.get((n << 20) + shape.sampled_tokens)
            k = (self._piecewise_rows_s(n, shape.sampled_tokens) if k is None else k) + self._prefill_s(shape)
        else:
            k = self._kernels_s(shape)
        return k + self._decode_s(shape) if shape.decode_seqs else k

    def _piecewise_s(self, shape: BatchShape, n: int) -> float:
        """``overhead_pw + max(kernels + gap_pw, floor_pw)`` with the kernels at the padded rows (their excess
        over the real rows is ``_padding_s``); ``_piecewise_gap_floor`` and ``_piecewise_over_s`` inline (the
        simulator's hot path)."""
        s, ds = shape.sampled_tokens, shape.decode_seqs
        k = self._pw_memo.get((n << 20) + s)  # sampled rows < 2**20 (at most max_num_seqs)
        if k is None:
            k = self._piecewise_rows_s(n, s)
        if n > self._pw_grid_n or not self.piecewise_measured:
            self._piecewise_gap_floor(shape)  # its flags
        k += self._prefill_s(shape)
        if ds:
            k = k + self._decode_s(shape)
            gap, floor = self._pw_gap_mixed, self._pw_floor_mixed
        else:
            gap, floor = self._pw_gap, self._pw_floor
        host = self._pw_host
        if host is not None and self._fixed_overhead is None:
            b0, b1, b2 = host
            over = (b0 + b1 * (shape.prefill_seqs + ds)) + b2 * (shape.decode_ctx_tokens + shape.prefill_ctx_tokens)
        else:
            over = self._piecewise_over_s(shape)
        e = k + gap
        return over + (e if e > floor else floor)

    def _floor(self, shape: BatchShape) -> float:
        return self._eager_floor_mixed if shape.decode_seqs and shape.prefill_tokens else self._eager_floor

    def _prefill_s(self, shape: BatchShape) -> float:
        s, pt = shape.prefill_seqs, shape.prefill_tokens
        q = pt / s
        c = (shape.prefill_ctx_tokens - pt) / s
        g = self._prefill
        if q > g.a_max or c > g.b_max:
            self.extrapolated.add("attn_prefill(grid)")
        one = g(q, c)
        pairs_mean = q * c + q * (q + 1) / 2
        ratio = shape.prefill_attn_pairs / (s * pairs_mean) if pairs_mean else 1.0
        floor = self._prefill_floor
        return self.layers * (floor + (one - floor) * s * ratio)

    def _spec_s(self, shape: BatchShape) -> float:
        ds = shape.decode_seqs
        k = (shape.decode_query_tokens - ds) / ds
        if self._spec is None:
            self.extrapolated.add("spec_verify(missing)")
            return 0.0
        if self._spec.outside(ds, k):
            self.extrapolated.add("spec_verify(grid)")
        return self._spec(ds, k)

    def _kernels_s(self, shape: BatchShape, verify: bool = True) -> float:
        """Device time of every operator but the decode attention (the one term that grows with context);
        ``verify=False``: without the speculative verification (a draft's pass of several tokens a sequence)."""
        pt, dq = shape.prefill_tokens, shape.decode_query_tokens
        n = pt + dq
        if n > self._tx_max or n > self._ar_tokens_max:  # flagged on every call (step_time collects its own)
            self.extrapolated.add("tokens(grid)" if n > self._tx_max else "allreduce(grid)")
        t = self._token_memo.get(n)
        if t is None:  # token counts repeat (a chunk budget, a batch size): each one interpolated once
            tx, ty = self._tx, self._ty
            j = bisect_right(tx, n) - 1
            j = 0 if j < 0 else (self._tx_last if j > self._tx_last else j)
            t = self._token_memo[n] = ty[j] + (ty[j + 1] - ty[j]) * (n - tx[j]) / (tx[j + 1] - tx[j])
        if pt:
            t += self._prefill_s(shape)
        s = shape.sampled_tokens
        if s:
            h = self._head_memo.get(s)
            if h is None:
                hx, hy = self._hx, self._hy
                j = bisect_right(hx, s) - 1
                j = 0 if j < 0 else (self._hx_last if j > self._hx_last else j)
                h = self._head_memo[s] = hy[j] + (hy[j + 1] - hy[j]) * (s - hx[j]) / (hx[j + 1] - hx[j])
            t += h
        ds = shape.decode_seqs
        if ds and dq > ds and verify:
            t += self._spec_s(shape)
        return t

    def _decode_column(self, ds: int) -> list[float]:
        """Decode attention over the context grid at batch ``ds`` (memoised: a run sees few batch sizes)."""
        col = self._columns.get(ds)
        if col is None:
            if ds > self._decode.a_max:
                self.extrapolated.add("attn_decode(batch)")
            col = self._columns[ds] = self._decode.column(ds)
        return col

    def _decode_arrays(self, ds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The context grid, the decode column at batch ``ds``, and their segment differences, as arrays (for
        ``decode_run_s``; memoised with the column)."""
        arrays = self._arrays.get(ds)
        if arrays is None:
            xs, ys = np.asarray(self._decode.b), np.asarray(self._decode_column(ds))
            arrays = self._arrays[ds] = (xs, ys, ys[1:] - ys[:-1], xs[1:] - xs[:-1])
        return arrays

    def _weight(self, ds: int) -> float:
        """The longest-context weight of a ``ds``-sequence batch (``Profile.decode_max_weights``, else the one)."""
        w = max_weight_at(self._w_pairs, ds) if self._w_pairs else self._w_max
        self._w_of[ds] = w
        return w

    def _decode_s(self, shape: BatchShape) -> float:
        ds = shape.decode_seqs
        c = shape.decode_ctx_tokens / ds
        mx = shape.decode_ctx_max
        if mx:  # ragged: toward the longest context (decode_run_s repeats these operations)
            w = self._w_of.get(ds)
            if w is None:
                w = self._weight(ds)
            if w:
                c = c + w * (mx - c)
        xb = self._decode.b
        col = self._columns.get(ds) or self._decode_column(ds)
        if c > self._decode.b_max:
            self.extrapolated.add("attn_decode(context)")
        j = bisect_right(xb, c) - 1
        j = self._xb_last if j > self._xb_last else (0 if j < 0 else j)
        return (col[j] + (col[j + 1] - col[j]) * (c - xb[j]) / (xb[j + 1] - xb[j])) * self.layers

    def step_time_s(self, shape: BatchShape) -> float:
        """``overhead + kernels + gap`` (graph steps), ``overhead + max(kernels + gap, eager floor)`` (eager), or
        ``overhead_pw + max(kernels + padding + gap_pw, floor_pw)`` (piecewise)."""
        ds, dq, pt = shape.decode_seqs, shape.decode_query_tokens, shape.prefill_tokens
        if pt + dq == 0:
            return 0.0
        if pt and pt + dq <= self._pw_top and dq == ds:  # step_mode(shape) == "piecewise", inline (hot path)
            return self._piecewise_s(shape, pt + dq)
        k = self._kernels_s(shape)
        if ds:  # added last, in the order decode_run_s adds it
            k = k + self._decode_s(shape)
        graph = not pt and ds <= GRAPH_MAX_SEQS
        host = self._host
        if host is not None and self._fixed_overhead is None:  # inline _overhead_s: the simulator's hot path
            b0, b1, b2 = host[0 if graph else 1]
            over = (b0 + b1 * (shape.prefill_seqs + ds)) + b2 * (shape.decode_ctx_tokens + shape.prefill_ctx_tokens)
        else:
            over = self._overhead_s(shape, graph)
        if graph:
            return over + (k + self._graph_gap)
        e = k + self._eager_gap
        floor = self._eager_floor_mixed if ds and pt else self._eager_floor
        return over + (e if e > floor else floor)

    def pass_s(self, shape: BatchShape, graph: bool, eager_scale: float = 1.0) -> float:
        """Device time of one forward pass of a speculative step's draft (no verification kernel; the step's host
        time is priced once, with the target's pass). Inside the step's CUDA graph: kernels + the per-kernel
        gap. Eager: max(kernels + gap, floor), the eager gap and floor times ``eager_scale`` (the host launches
        the pass's kernels one by one; a draft launches fewer per pass than the model they were fitted on)."""
        k = self._kernels_s(shape, verify=False)
        if shape.decode_seqs:
            k = k + self._decode_s(shape)
        if graph:
            return k + self._graph_gap
        e = k + self._eager_gap * eager_scale
        floor = self._floor(shape) * eager_scale
        return e if e > floor else floor

    def decode_run_s(self, shape: BatchShape, n: int) -> np.ndarray:
        """Durations of ``n`` pure-decode steps with contexts growing by one token per sequence per step,
        bit for bit what ``step_time_s`` gives for each."""
        ds = shape.decode_seqs
        if n <= 0:
            return np.zeros(0)
        if ds == 0 or shape.prefill_tokens:
            raise ValueError("decode_run_s takes a pure-decode shape (decode_seqs > 0, no prefill)")
        k = self._kernels_s(shape)
        xs, ys, dy, dx = self._decode_arrays(ds)
        # In place where an operation makes a new array of the same values: a*b = b*a and a+b = b+a exactly.
        ctx, mx = shape.decode_ctx_tokens, shape.decode_ctx_max
        kv = np.arange(ctx, ctx + ds * n, ds, dtype=np.float64)  # KV tokens read by each step (exact: integers)
        c = kv / ds
        w = self._w_of.get(ds)
        if w is None:
            w = self._weight(ds)
        if mx and w:  # c + w * ((mx + step) - c)
            t = np.arange(mx, mx + n, dtype=np.float64)
            t -= c
            t *= w
            c += t
        last = c[-1]
        if last > self._decode.b_max:
            self.extrapolated.add("attn_decode(context)")
        # the segment of each context on the extended grid (its first node is 0: never below), then
        # step_time_s's interpolation on arrays: ys[j] + (ys[j+1] - ys[j]) * (c - xs[j]) / (xs[j+1] - xs[j]).
        # Contexts grow by one token a step: a run mostly stays in one segment, whose values are scalars then.
        xb, top = self._decode.b, self._xb_last
        j0, j1 = bisect_right(xb, c[0]) - 1, bisect_right(xb, last) - 1
        j0, j1 = (top if j0 > top else (0 if j0 < 0 else j0)), (top if j1 > top else (0 if j1 < 0 else j1))
        if j0 == j1:  # ys[j] + dy[j] * (c - xs[j]) / dx[j]
            v = c - xs[j0]
            v *= dy[j0]
            v /= dx[j0]
            v += ys[j0]
        else:
            j = np.minimum(np.maximum(xs.searchsorted(c, side="right") - 1, 0), top)
            v = ys[j] + dy[j] * (c - xs[j]) / dx[j]
        v *= self.layers
        v += k  # k + attention x layers: the kernels of each step
        graph = self._graph(shape)
        if self._host is not None and self._fixed_overhead is None:  # host time grows with the KV tokens too
            b0, b1, b2 = self._host[0 if graph else 1]
            kv *= b2
            kv += b0 + b1 * ds
            over = kv  # (b0 + b1 ds) + b2 kv
        else:
            over = self._overhead_s(shape, graph)
        if graph:
            v += self._graph_gap
        else:
            v += self._eager_gap
            np.maximum(v, self._floor(shape), out=v)
        v += over  # over + (kernels + gap), or over + max(kernels + gap, floor)
        return v

    def step_time(self, shape: BatchShape) -> StepTime:
        """Per-operator breakdown (device time; the eager floor's excess and the gaps as their own terms; a piecewise
        step's ``padding``, ``piecewise_gap`` and ``piecewise_floor`` excess);
        ``total_s`` is :meth:`step_time_s` and equals ``overhead_s`` plus the operator sum up to rounding."""
        pt, dq = shape.prefill_tokens, shape.decode_query_tokens
        n = pt + dq
        if n == 0:
            return StepTime({}, {}, 0.0, 0.0)
        seen, self.extrapolated = self.extrapolated, set()  # collect this step's own flags
        op_s = {name: self.layers * _lerp(self._tx, part, n) for name, part in self._token_parts.items()}
        op_s["attn_prefill"] = self._prefill_s(shape) if pt else 0.0
        op_s["attn_decode"] = self._decode_s(shape) if shape.decode_seqs else 0.0
        for name, part in self._head_parts.items():
            op_s[name] = _lerp(self._hx, part, shape.sampled_tokens) if shape.sampled_tokens else 0.0
        ds = shape.decode_seqs
        op_s["spec_verify"] = self._spec_s(shape) if ds and dq > ds else 0.0
        mode = self.step_mode(shape)
        kernels = sum(op_s.values())
        if mode == "piecewise":  # the padding rows, then the piecewise step's own terms
            op_s["padding"] = self._padding_s(n, shape.sampled_tokens)
            gap, floor = self._piecewise_gap_floor(shape)
            op_s["piecewise_gap"] = gap
            op_s["piecewise_floor"] = max(0.0, floor - (kernels + op_s["padding"] + gap))
            overhead = self._piecewise_over_s(shape)
        elif mode == "graph":
            op_s["step_gap"] = self._graph_gap
            overhead = self._overhead_s(shape, True)
        else:
            op_s["step_gap"] = self._eager_gap
            op_s["eager_floor"] = max(0.0, self._floor(shape) - (kernels + self._eager_gap))
            overhead = self._overhead_s(shape, False)
        total = self.step_time_s(shape)
        bound = {k: "measured" for k in op_s}
        flags = self.extrapolated | {x for x in seen if x.endswith(("(shape)", "(roofline)"))}
        self.extrapolated = seen | flags
        return StepTime(op_s, bound, overhead, total, extrapolated=tuple(sorted(flags)))

    def pp_transfer_s(self, tokens: int) -> float:
        """Hidden states to the next pipeline stage over the GPU's link (not calibrated: roofline)."""
        return tokens * self.model.hidden_size * ACT_BYTES / (self.gpu.interconnect_bytes_per_s / 2 * 0.8)


def max_weight_at(pairs: tuple[tuple[float, float], ...], batch: float) -> float:
    """The longest-context weight at ``batch``: linear in log2(batch) between the fitted batches, held beyond."""
    if batch <= pairs[0][0]:
        return pairs[0][1]
    for (b0, w0), (b1, w1) in zip(pairs, pairs[1:], strict=False):
        if batch <= b1:
            return w0 + (w1 - w0) * (math.log2(batch) - math.log2(b0)) / (math.log2(b1) - math.log2(b0))
    return pairs[-1][1]
