"""GPU timing shared by the kernel benchmarks (and calibration): two L2 conditions, one CUDA-graph harness.

Every kernel and every baseline is timed the same way, in the same process:

``cold_ms`` -- the issues' reference method (what ``triton.testing.do_bench`` measures): each sample is one
    CUDA-graph replay of ``fn`` timed with events, after zeroing 256 MB. The zeroing leaves L2 (50 MB on an
    H100) full of *dirty* lines that ``fn`` must write back as its own loads evict them -- up to ~17 us of
    extra DRAM traffic at 3 TB/s -- and each sample also pays the ~5 us launch floor of an isolated graph
    replay (``floor_us``). Large kernels barely notice; a 20 us decode kernel loses half its bandwidth.
``stream_ms`` -- the condition a kernel meets inside an engine's CUDA-graphed decode step: ``copies`` pairs
    (read 256 MB, ``fn``) captured back to back in one graph, minus the same graph without ``fn``, divided by
    ``copies``. L2 is cold but clean (the read evicts everything, writes nothing), and launches overlap as in
    a real step, so what remains is ``fn``'s own time plus one inter-kernel gap.

The flush buffer is allocated on first use. Off CUDA (``--smoke`` runs under the Triton interpreter) both
functions return one wall-clock call, so the scripts can be checked on a CPU.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable

import torch
import triton

FLUSH_BYTES = 256 * 2**20
_STATE: dict = {}


def _flush_buffer() -> torch.Tensor:
    if "flush" not in _STATE:
        _STATE["flush"] = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
        _STATE["flush"].zero_()
        _STATE["sink"] = torch.empty((), dtype=torch.int32, device="cuda")
    return _STATE["flush"]


def _read_flush() -> None:
    """Read 256 MB and write 4 bytes: L2 ends up holding only clean lines of the flush buffer."""
    torch.amax(_flush_buffer(), dim=0, out=_STATE["sink"])


def capture(body: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """Warm ``body`` up on a side stream (as capture requires), capture it, replay it once."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    graph.replay()
    torch.cuda.synchronize()
    return graph


def _wall_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def cold_ms(fn: Callable[[], object], reps: int = 50, flush: str | None = "dirty") -> float:
    """Median ms of one graph replay of ``fn`` after an L2 flush (``"dirty"``: zero 256 MB, the reference
    method; ``"clean"``: read 256 MB; ``None``: no flush, L2 warm with ``fn``'s own data)."""
    if not torch.cuda.is_available():
        return _wall_ms(fn)
    fn()
    graph = capture(fn)
    buf = _flush_buffer()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        if flush == "dirty":
            buf.zero_()
        elif flush == "clean":
            _read_flush()
        else:
            torch.cuda._sleep(100_000)  # keep the GPU ahead of the CPU without touching L2
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def stream_ms(fn: Callable[[], object], reps: int = 15, copies: int | None = None) -> float:
    """Median ms of ``fn`` running back to back with a 256 MB read (cold, clean L2) inside one graph.

    ``copies`` defaults to enough pairs for ~2 ms of ``fn`` per replay (4 to 32), so the difference of the two
    graphs is well above their replay jitter. Samples interleave the two graphs; the median of the per-pair
    differences is reported.
    """
    return max(statistics.median(stream_samples_ms(fn, reps, copies)), 1e-6)


def stream_samples_ms(fn: Callable[[], object], reps: int = 15, copies: int | None = None) -> list[float]:
    """The per-replay samples behind :func:`stream_ms` (ms of ``fn`` each), for percentiles."""
    if not torch.cuda.is_available():
        return [_wall_ms(fn)]
    fn()
    if copies is None:
        copies = max(4, min(32, int(2.0 / max(cold_ms(fn, reps=5, flush="clean"), 1e-3))))

    def with_fn() -> None:
        for _ in range(copies):
            _read_flush()
            fn()

    def flush_only() -> None:
        for _ in range(copies):
            _read_flush()

    _flush_buffer()
    graphs = (capture(with_fn), capture(flush_only))
    samples = []
    for _ in range(reps):
        pair = []
        for graph in graphs:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            pair.append((start, end))
        samples.append(pair)
    torch.cuda.synchronize()
    return [(a[0].elapsed_time(a[1]) - b[0].elapsed_time(b[1])) / copies for a, b in samples]


def floor_us() -> dict[str, float]:
    """Both methods' time for a 1-element kernel: the fixed cost inside every figure they give."""
    one = torch.zeros(1, device="cuda")
    return {"cold_us": cold_ms(lambda: one.add_(1.0)) * 1e3, "stream_us": stream_ms(lambda: one.add_(1.0)) * 1e3}


def host_launch_us(device: str | torch.device = "cuda", n: int = 2000, rounds: int = 5) -> float:
    """The host's speed at launching work: wall microseconds per eager launch of a one-element in-place add on
    ``device`` (median of ``rounds`` rounds of ``n``, each ended by a synchronize).

    An eager engine step is ~350 such launches from Python, and its floor is host time that drifts between runs
    and machines (the H200's bf16 floor 17.6 ms in one calibration, 11.3 ms in the next); calibration and
    validation record this probe beside what they measure so host-bound terms can be compared across runs."""
    x = torch.zeros(1, device=device)
    cuda = x.device.type == "cuda"
    for _ in range(100):
        x.add_(1.0)
    if cuda:
        torch.cuda.synchronize()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            x.add_(1.0)
        if cuda:
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return float(statistics.median(samples))


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB launched eagerly: (bytes read + bytes written) / time, in bytes/s.

    Eager, not from a graph: captured, ``copy_`` becomes a memcpy node that ran at 2.43 TB/s on an H100
    against 3.0 TB/s for the eager copy kernel.
    """
    src = torch.randint(0, 255, (2**30,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * 2**30 / (ms * 1e-3)


def card() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu-smoke"


def card_slug(name: str | None = None) -> str:
    """The GPU's one spelling in result file names (``<bench>-<slug>-<date>``): its model number in lower case,
    ``h100`` for "NVIDIA H100 80GB HBM3", ``h200``, ``a100`` for "NVIDIA A100-SXM4-80GB", ``l40s``; ``cpu`` off
    CUDA. Memory and form-factor variants share a slug: the card field inside each result says which."""
    name = card() if name is None else name
    if name == "cpu-smoke":
        return "cpu"
    words = re.sub(r"^(NVIDIA|AMD)\s+(Instinct\s+|GeForce\s+)?", "", name.strip(), flags=re.I)
    tokens = [t.lower() for t in re.split(r"[\s_-]+", words) if t]
    if len(tokens) > 1 and tokens[0].isalpha():  # "RTX 4090": the series alone names no card
        return f"{tokens[0]}-{tokens[1]}"
    return tokens[0] if tokens else "gpu"


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of dict rows (keys of the first row; floats to 3 significant digits)."""
    keys = list(rows[0])

    def fmt(x) -> str:
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    """Show what each method charges a pure read of growing size (``python3 -m servesim.kernels.timing``)."""
    import datetime

    rows = []
    for mib in (8, 32, 128, 512):
        x = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device="cuda").fill_(1.0)
        out = torch.empty((), device="cuda")

        def read(x=x, out=out) -> None:
            torch.sum(x, dim=0, out=out)

        times = {"dirty": cold_ms(read), "clean": cold_ms(read, flush="clean"), "warm": cold_ms(read, flush=None),
                 "in-step": stream_ms(read)}
        rows.append({"MiB read": mib, **{f"{k} us": v * 1e3 for k, v in times.items()},
                     **{f"{k} TB/s": mib * 2**20 / (v * 1e-3) / 1e12 for k, v in times.items()}})
        print(rows[-1], flush=True)
    floor = floor_us()
    print(f"# Timing methods on {card()} ({datetime.date.today().isoformat()})\n")
    print(f"`python3 -m servesim.kernels.timing`; torch {torch.__version__}. A read-only reduction (`torch.sum`) "
          "of growing size timed by each condition: dirty = reference method (graph replay after zeroing 256 MB), "
          "clean = the same after reading 256 MB, warm = no flush, in-step = back to back with a 256 MB read in one "
          f"graph. 1-element kernel: {floor['cold_us']:.1f} us (reference), {floor['stream_us']:.1f} us (in-step); "
          f"1 GiB copy: {copy_bandwidth() / 1e12:.2f} TB/s.\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
