"""Tensor parallelism: one process per rank, rank 0 driving the others step by step (one tensor-parallel
engine per process at a time: its ranks form the process's default process group).

Rank 0 is the caller's process: it holds the scheduler (the simulator's, unchanged), builds each step's
:class:`~servesim.engine.runner.StepPlan` from the ``Batch`` (swaps, token ids, positions, slot mapping, block
tables) and broadcasts it before running it itself; ranks 1 .. N-1 (spawned, ``servesim.kernels.comm``) run
every plan they receive on their shard of the model, so the two all-reduces of each layer and the logits'
all-gather meet on every rank. Only rank 0 samples. On the wire a plan is one int64 header and one int64
payload, each a broadcast (NCCL on GPUs, gloo on CPUs); block tables travel only as wide as the longest context
of the step needs.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from servesim.engine.config import EngineModelConfig
from servesim.engine.engine import Engine, EngineConfig, build_rank
from servesim.engine.runner import StepPlan, SwapPlan
from servesim.errors import ConfigError
from servesim.kernels.comm import Group, Ranks, init_group, start_ranks

HEADER = 16
STOP, STEP = 0, 1


def launch(cfg: EngineConfig, mc: EngineModelConfig) -> Engine:
    """Start ranks 1 .. tp-1, join them as rank 0, build every rank's shard; rank 0's engine, whose runner
    publishes each step's plan and whose ``close`` stops the others."""
    if torch.distributed.is_initialized():
        raise ConfigError("this process already runs a tensor-parallel engine (or another process group): "
                          "close it first", field="tp")
    ranks = start_ranks(_rank_main, cfg.tp, cfg.device, (cfg, mc))
    comm = None
    try:
        ranks.wait("started")
        comm = init_group(0, cfg.tp, ranks.init_method, cfg.device)
        engine = build_rank(cfg, mc, comm)
        ranks.wait("ready")
    except BaseException as exc:
        err = ranks.error()
        if comm is not None:
            comm.close()
        ranks.join(timeout_s=5)
        if err and not isinstance(exc, ConfigError):  # a rank failed first; rank 0 only lost its peer
            raise RuntimeError(f"tensor-parallel engine failed on {err}") from None
        raise
    engine.runner.publish = partial(send_plan, comm, engine.runner.block_size)
    engine.shutdown = partial(_stop, comm, ranks)
    return engine


def _stop(comm: Group, ranks: Ranks) -> None:
    comm.broadcast(torch.zeros(HEADER, dtype=torch.int64, device=comm.device))
    ranks.join()
    comm.close()


def _rank_main(rank: int, world: int, init_method: str, device: str, conn, cfg: EngineConfig,
               mc: EngineModelConfig) -> None:
    """Ranks 1 .. tp-1: build the shard, say ready, run plans until told to stop."""
    comm = init_group(rank, world, init_method, device)
    runner = build_rank(cfg, mc, comm).runner
    conn.send(("ready", rank))
    while (plan := recv_plan(comm, runner.max_blocks)) is not None:
        runner.execute(plan)


# -- the wire -------------------------------------------------------------------------------------------------
def _swaps_flat(s: SwapPlan) -> list[int]:
    out = [len(s.out)]
    for rid, ids in s.out:
        out += [rid, len(ids), *ids]
    out.append(len(s.into))
    for rid, ids in s.into:
        out += [rid, len(ids), *ids]
    return out + [len(s.drop), *s.drop]


def _swaps_read(a: list[int]) -> SwapPlan:
    s, i = SwapPlan(), 0
    for target in (s.out, s.into):
        n, i = a[i], i + 1
        for _ in range(n):
            rid, k = a[i], a[i + 1]
            target.append((rid, a[i + 2: i + 2 + k]))
            i += 2 + k
    n = a[i]
    s.drop.extend(a[i + 1: i + 1 + n])
    return s


def pack(plan: StepPlan, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(header, payload) of ``plan``: int64 arrays; tables cut to the width the step's longest context needs."""
    longest = max(int(plan.prefill_kvl.max(initial=0)), int(plan.decode_ctx.max(initial=0)))
    width = min(plan.decode_table.shape[1], -(-longest // block_size))
    swaps = _swaps_flat(plan.swaps)
    parts = [plan.ids, plan.pos, plan.slots, plan.sample, plan.prefill_cu, plan.prefill_kvl,
             plan.prefill_table[:, :width].ravel(), plan.decode_ctx, plan.decode_table[:, :width].ravel(),
             np.asarray(swaps, np.int64)]
    payload = np.concatenate([np.asarray(p, np.int64).ravel() for p in parts])
    b, c, q = plan.graph or (0, 0, 0)
    header = np.zeros(HEADER, np.int64)
    header[:14] = (STEP, len(plan.ids), len(plan.sample), len(plan.prefill_kvl), len(plan.decode_ctx), width,
                   plan.n_pre, plan.prefill_max_q, plan.decode_q, b, c, q, len(swaps), len(payload))
    return header, payload


def unpack(header: list[int], payload: np.ndarray, max_blocks: int) -> StepPlan:
    """The plan :func:`pack` sent, tables padded back to ``max_blocks`` columns."""
    _, t, s, p, d, w, n_pre, pmax, q, b, c, gq, n_swaps, _ = header[:14]
    sizes = (t, t, t, s, p + 1, p, p * w, d, d * w, n_swaps)
    cuts = np.cumsum(sizes)[:-1]
    ids, pos, slots, sample, cu, kvl, ptab, dctx, dtab, swaps = np.split(payload, cuts)

    def table(flat: np.ndarray, rows: int) -> np.ndarray:
        out = np.zeros((rows, max_blocks), np.int32)
        out[:, :w] = flat.reshape(rows, w)
        return out

    return StepPlan(_swaps_read(swaps.tolist()), ids.copy(), pos.astype(np.int32), slots.copy(), sample.copy(),
                    n_pre, cu.astype(np.int32), kvl.astype(np.int32), table(ptab, p), pmax, dctx.astype(np.int32),
                    table(dtab, d), q, (b, c, gq) if b else None)


def send_plan(comm: Group, block_size: int, plan: StepPlan) -> None:
    """Rank 0: broadcast ``plan`` to the other ranks."""
    header, payload = pack(plan, block_size)
    comm.broadcast(torch.from_numpy(header).to(comm.device))
    comm.broadcast(torch.from_numpy(payload).to(comm.device))


def recv_plan(comm: Group, max_blocks: int) -> StepPlan | None:
    """Ranks 1 ..: the next plan rank 0 broadcast, or None when it said stop."""
    h = comm.broadcast(torch.zeros(HEADER, dtype=torch.int64, device=comm.device)).tolist()
    if h[0] == STOP:
        return None
    payload = comm.broadcast(torch.empty(h[13], dtype=torch.int64, device=comm.device))
    return unpack(h, payload.cpu().numpy(), max_blocks)
