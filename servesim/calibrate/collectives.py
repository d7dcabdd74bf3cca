"""``servesim calibrate allreduce``: time the collectives of a tensor-parallel step on ``tp`` GPUs at once (one
process per GPU, NCCL) and add them to a profile.

What a TP step sends, per rank: two all-reduces per layer of ``tokens x hidden`` bf16 activations (decode:
batch x hidden x 2 bytes; prefill: chunk tokens x hidden x 2 bytes) and one all-gather of the sampled rows'
logits (rows x vocab x 2 bytes gathered). The message sizes are those of the models named, over the GEMM token
grid (all-reduce) and the decode batch grid (all-gather).

Each size is timed the way the engine issues it: ``copies`` calls captured back to back in one CUDA graph (as
a decode step replays them), median, p20 and p80 of 11 replays divided by ``copies``; the eager call (one
launch, as a prefill step makes it) is recorded beside it as the reference time. Every rank times its own
calls; a table keeps the slowest rank's figure (a collective finishes when its last rank does). On a CPU (gloo,
wall clocks) the same pipeline runs so CI can check it; its times say nothing about GPUs.
"""

from __future__ import annotations

import datetime
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from servesim.calibrate.fit import held_out_errors
from servesim.calibrate.grid import CPU_GRID, DECODE_BATCH, GEMM_M
from servesim.errors import ConfigError
from servesim.hwmodels.models import get_model
from servesim.hwmodels.ops import ACT_BYTES
from servesim.hwmodels.profile import OpTable, Profile, Provenance, with_collectives
from servesim.kernels.comm import Group, init_group, start_ranks
from servesim.kernels.timing import capture

COLLECTIVES = ("allreduce", "allgather")
COPIES, REPS, REF_REPS = 8, 11, 10
MIN_S = 1e-7


def message_sizes(models: list[str], cpu: bool = False) -> dict[str, tuple[int, ...]]:
    """Bytes per call of each collective that the models' TP steps send (sorted, distinct)."""
    specs = [get_model(m) for m in models]
    tokens = CPU_GRID["m"] if cpu else GEMM_M
    rows = CPU_GRID["rows"] if cpu else DECODE_BATCH
    return {"allreduce": tuple(sorted({t * m.hidden_size * ACT_BYTES for m in specs for t in tokens})),
            "allgather": tuple(sorted({r * m.vocab_size * ACT_BYTES for m in specs for r in rows}))}


def _call(comm: Group, op: str, nbytes: int) -> Callable[[], None]:
    """One call of ``op`` moving ``nbytes`` (bf16 on a GPU, fp32 on a CPU: gloo's sums are float)."""
    dtype = torch.bfloat16 if comm.device.type == "cuda" else torch.float32
    elem = torch.tensor([], dtype=dtype).element_size()
    if op == "allreduce":
        x = torch.randn(max(1, nbytes // elem), device=comm.device).to(dtype)
        return lambda: dist.all_reduce(x)
    per = max(1, -(-nbytes // (elem * comm.world)))  # each rank's part of the gathered result
    inp = torch.randn(per, device=comm.device).to(dtype)
    out = torch.empty(per * comm.world, dtype=dtype, device=comm.device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return lambda: gather(out, inp)


def _events_s(fn: Callable[[], None], reps: int, per: int = 1) -> list[float]:
    pairs = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        pairs.append((a, b))
    torch.cuda.synchronize()
    return [x.elapsed_time(y) * 1e-3 / per for x, y in pairs]


def _time_cuda(comm: Group, fn: Callable[[], None]) -> tuple[list[float], float]:
    """(in-graph samples, eager reference median), seconds per call."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    dist.barrier()
    ref = statistics.median(_events_s(fn, REF_REPS))
    graph = capture(lambda: [fn() for _ in range(COPIES)])  # every rank captures, then replays, in step
    dist.barrier()
    samples = _events_s(graph.replay, REPS, COPIES)
    del graph
    return samples, ref


def _time_cpu(fn: Callable[[], None]) -> list[float]:
    fn()
    dist.barrier()
    out = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure_all(comm: Group, sizes: dict[str, tuple[int, ...]], on_point: Callable[[], None] | None = None
                ) -> list[OpTable]:
    """Every rank times every size of every collective; the tables (slowest rank per statistic) on every rank."""
    cuda = comm.device.type == "cuda"
    tables = []
    for op in COLLECTIVES:
        stats = []
        for nbytes in sizes[op]:
            fn = _call(comm, op, nbytes)
            samples, ref = _time_cuda(comm, fn) if cuda else (_time_cpu(fn), 0.0)
            q = sorted(max(x, MIN_S) for x in samples)
            med, p20, p80 = statistics.median(q), q[len(q) // 5], q[(4 * len(q)) // 5]
            stats.append(comm.max_floats([med, p20, p80, max(ref, MIN_S)]))
            del fn
            if on_point:
                on_point()
        tables.append(OpTable(
            op=op, key={"tp": comm.world, "dtype": "bf16"}, axes=("bytes",), grid=(tuple(float(b) for b in sizes[op]),),
            median_s=tuple(s[0] for s in stats), p20_s=tuple(min(s[1], s[0]) for s in stats),
            p80_s=tuple(max(s[2], s[0]) for s in stats), reference_s=tuple(s[3] for s in stats) if cuda else None))
    return tables


def _rank(rank: int, world: int, init_method: str, device: str, conn, sizes: dict) -> None:
    """Ranks 1 .. tp-1 of a measurement."""
    comm = init_group(rank, world, init_method, device)
    conn.send(("ready", rank))
    measure_all(comm, sizes)
    dist.barrier()


def measure(tp: int, device: str, sizes: dict[str, tuple[int, ...]],
            on_point: Callable[[], None] | None = None) -> list[OpTable]:
    """Start ``tp`` ranks (this process is rank 0), time every size, stop them; the collective tables."""
    if tp < 2:
        raise ConfigError(f"collectives need at least 2 ranks, got {tp}", field="tp")
    if device == "cuda" and tp > torch.cuda.device_count():
        raise ConfigError(f"TP {tp} needs {tp} GPUs; this machine has {torch.cuda.device_count()}", field="tp")
    ranks = start_ranks(_rank, tp, device, (sizes,))
    comm = None
    try:
        ranks.wait("started")
        comm = init_group(0, tp, ranks.init_method, device)
        ranks.wait("ready")
        tables = measure_all(comm, sizes, on_point)
        dist.barrier()
    except BaseException:
        err = ranks.error()
        if err:
            raise RuntimeError(f"collective timing failed on {err}") from None
        raise
    finally:
        if comm is not None:
            comm.close()
        ranks.join(timeout_s=30)
    return tables


def provenance(command: str, device: str, wall_s: float) -> Provenance:
    """Where and when the collectives were timed (the NCCL version on a GPU)."""
    from servesim.calibrate.run import provenance as base

    nccl = ".".join(map(str, torch.cuda.nccl.version())) if device == "cuda" else "gloo"
    p = base(command, wall_s, device)
    if device == "cuda":
        n = torch.cuda.device_count()
        p = p.model_copy(update={"gpu_name": f"{p.gpu_name} x{n}"})
    return p.model_copy(update={"nccl": nccl, "condition": "in-graph" if device == "cuda" else "cpu-wall",
                                "date": datetime.date.today().isoformat()})


def calibrate_collectives(profile: Profile, tps: tuple[int, ...], device: str, models: list[str], command: str,
                          on_progress: Callable[[int, int], None] | None = None) -> Profile:
    """``profile`` with the collectives of each TP degree in ``tps`` measured on this machine."""
    started = time.perf_counter()
    sizes = message_sizes(models, cpu=device != "cuda")
    total = len(tps) * sum(len(v) for v in sizes.values())
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress(done, total)

    tables = [t for tp in tps for t in measure(tp, device, sizes, tick)]
    new = with_collectives(profile, tables, provenance(command, device, time.perf_counter() - started))
    kept = [t for t in new.tables if t.op in COLLECTIVES]  # held-out fit quality over every degree now stored
    ops = {**new.fit.ops, **held_out_errors(kept)}
    return new.model_copy(update={"fit": new.fit.model_copy(update={"ops": ops})})
