"""The collectives of a tensor-parallel step, through ``torch.distributed`` (NCCL on GPUs, gloo on CPUs), and the
launcher that starts one process per rank.

A TP step sends two all-reduces per layer (after the attention output projection and after the MLP down
projection: ``tokens x hidden`` activations each) and one all-gather of the vocab-parallel logits. NCCL's
multicast paths (NVLink SHARP, symmetric-memory multicast, NVSHMEM NVLS) stay off in every process
(:data:`NCCL_ENV`): the machines this runs on do not enable them.

Ring bytes (what one GPU sends, and receives, in a ring all-reduce of ``n`` bytes over ``w`` ranks) are
``2 (w - 1) / w x n``; bus bandwidth, as nccl-tests reports it, is those bytes over the time.

Processes: the caller is rank 0; :func:`start_ranks` spawns ranks 1 .. w-1 (a fresh interpreter each,
``multiprocessing`` spawn), which report over a pipe that they started, are ready, or failed (with the
error), so rank 0 never waits on a rank that died. They meet through a rendezvous file in a temporary folder.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing as mp
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
TIMEOUT = datetime.timedelta(minutes=10)  # a collective that waits longer than this fails (a rank hung)


def set_collective_env(device: str) -> None:
    """Every rank of a CUDA run sets :data:`NCCL_ENV` before NCCL starts."""
    if device == "cuda":
        os.environ.update(NCCL_ENV)


def ring_bytes(message_bytes: float, world: int) -> float:
    """Bytes one rank sends in a ring all-reduce of ``message_bytes``."""
    return 2.0 * (world - 1) / world * message_bytes


def bus_bandwidth(message_bytes: float, seconds: float, world: int) -> float:
    """nccl-tests' bus bandwidth of an all-reduce (bytes/s): ring bytes over the time."""
    return ring_bytes(message_bytes, world) / seconds


def all_reduce_ref(parts: list[torch.Tensor]) -> torch.Tensor:
    """What an all-reduce leaves on every rank: the sum of the ranks' tensors."""
    return torch.stack(parts).sum(0)


def all_gather_cols_ref(parts: list[torch.Tensor]) -> torch.Tensor:
    """What :meth:`Group.all_gather_cols` leaves on every rank: the ranks' column blocks side by side."""
    return torch.cat(parts, dim=1)


@dataclass(frozen=True)
class Group:
    """This process's place in the default process group, and the collectives a TP step makes."""

    rank: int
    world: int
    device: torch.device

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the ranks, in place (inside a CUDA graph when captured there)."""
        dist.all_reduce(x)
        return x

    def all_gather_cols(self, x: torch.Tensor) -> torch.Tensor:
        """``[rows, cols]`` on each rank -> ``[rows, world x cols]``, rank 0's columns first."""
        rows, cols = x.shape
        out = torch.empty(self.world * rows, cols, dtype=x.dtype, device=x.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, x.contiguous())
        return out.view(self.world, rows, cols).permute(1, 0, 2).reshape(rows, self.world * cols)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``x`` into every rank's ``x``."""
        dist.broadcast(x, 0)
        return x

    def min_int(self, value: int) -> int:
        """The smallest of the ranks' ``value`` (every rank gets it)."""
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def max_floats(self, values: list[float]) -> list[float]:
        """Elementwise maximum of the ranks' ``values``."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_group(rank: int, world: int, init_method: str, device: str) -> Group:
    """Join the process group as ``rank``: NCCL on ``cuda`` (GPU ``rank``), gloo on ``cpu``."""
    set_collective_env(device)
    if device == "cuda":
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
        dist.init_process_group("nccl", init_method=init_method, rank=rank, world_size=world, timeout=TIMEOUT,
                                device_id=dev)
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world, timeout=TIMEOUT)
    return Group(rank, world, dev)


@dataclass
class Ranks:
    """Ranks 1 .. world-1, spawned; the caller is rank 0."""

    world: int
    init_method: str
    procs: list = field(default_factory=list)
    conns: list = field(default_factory=list)
    tmpdir: str = ""

    def wait(self, what: str) -> list:
        """Each rank's next message, which must be ``what``; a rank that failed or died raises its error."""
        out = []
        for r, (p, c) in enumerate(zip(self.procs, self.conns, strict=True), start=1):
            while not c.poll(0.2):
                if not p.is_alive():
                    raise RuntimeError(f"rank {r} exited (code {p.exitcode}) before it was {what}")
            kind, payload = c.recv()
            if kind == "error":
                raise RuntimeError(f"rank {r}: {payload}")
            if kind != what:
                raise RuntimeError(f"rank {r} said {kind!r}, expected {what!r}")
            out.append(payload)
        return out

    def error(self) -> str | None:
        """The first error a rank reported, if any (does not wait)."""
        for r, c in enumerate(self.conns, start=1):
            try:
                while c.poll(0):
                    kind, payload = c.recv()
                    if kind == "error":
                        return f"rank {r}: {payload}"
            except (EOFError, OSError):
                continue
        return None

    def join(self, timeout_s: float = 60.0) -> None:
        """Wait for the ranks to exit (they do once told to stop); terminate any still running."""
        for p in self.procs:
            p.join(timeout_s)
            if p.is_alive():
                p.terminate()
                p.join(5)
        for c in self.conns:
            c.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def start_ranks(target: Callable, world: int, device: str, args: tuple = ()) -> Ranks:
    """Spawn ranks 1 .. world-1 running ``target(rank, world, init_method, device, *args)`` under
    :func:`rank_main` (which reports start, failure and exit over a pipe)."""
    set_collective_env(device)  # the spawned interpreters inherit the environment
    tmp = tempfile.mkdtemp(prefix="servesim-tp-")
    ranks = Ranks(world, f"file://{os.path.join(tmp, 'rendezvous')}", tmpdir=tmp)
    ctx = mp.get_context("spawn")
    for r in range(1, world):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=rank_main, args=(target, r, world, ranks.init_method, device, child, args),
                        daemon=True, name=f"servesim-rank{r}")
        p.start()
        child.close()
        ranks.procs.append(p)
        ranks.conns.append(parent)
    return ranks


def rank_main(target: Callable, rank: int, world: int, init_method: str, device: str, conn, args: tuple) -> None:
    """A spawned rank: says it started, runs ``target`` (which sends ``ready`` when it is), reports a failure."""
    set_collective_env(device)
    try:
        conn.send(("started", os.getpid()))
        target(rank, world, init_method, device, conn, *args)
    except BaseException as exc:  # noqa: BLE001  reported to rank 0, then the process exits non-zero
        msg = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, (ValueError, KeyboardInterrupt)):
            msg += "\n" + traceback.format_exc(limit=6)
        with contextlib.suppress(OSError):
            conn.send(("error", msg))
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        conn.close()
