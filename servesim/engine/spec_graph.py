"""Fixed-shape speculative decode steps, captured as one CUDA graph: the draft's passes and the target's verification.

A pure-decode speculative step of ``n`` sequences, padded to a graph batch ``b``, whose longest context fits the
context bucket ``c``, runs as one graph keyed ``(b, c, k + 1)``. With ``p0`` each sequence's last emitted token:

* **draft catch-up**: a decode pass of 2 tokens per sequence, at ``p0 - 1`` and ``p0``. The draft is 1 token
  behind (it holds KV below ``p0``) or 2 (below ``p0 - 1``: the step before accepted every draft, so its last
  draft never went through the draft model). When 1 behind, the first row's KV write is skipped (slot -1): the
  row keeps the shape fixed and attends over KV the draft already holds, and its output is not sampled. The
  eager path runs this pass through the varlen prefill kernel instead, whose shape changes with every step.
* **draft passes 1 .. k-1**: one token per sequence each, fed the previous pass's argmax on the device.
* **verification**: the target over ``[t_p0, d_1 .. d_k]`` per sequence (decode with ``q = k + 1``), argmax of
  every row: what ``SpecDecoder.accept`` compares the drafts with.

The host builds every input of the step before the replay (positions, slots and context lengths of every pass
follow from ``p0``; only the draft tokens are made on the device) and reads drafts and target tokens once after
it. The eager path reads the drafts back before it can build the verification, and launches the ``k + 1``
passes' kernels one by one from Python, about 350 launches per pass of an 8B model.

Padding rows (``n < b``) write nowhere (slot -1) and attend over the first key(s) of block 0, enough keys for
every query row, so no row divides by an empty softmax. Inputs travel as two packed host arrays (int64: tokens
and slots; int32: positions, context lengths, the block table), two copies a step; each field starts on a
256-byte boundary, as a tensor of its own would, so the kernels see the alignment they are compiled for.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from servesim.engine.model import AttentionMeta
from servesim.kernels.attention.decode import choose_num_splits
from servesim.kernels.counters import sm_count

# The packed fields, in buffer order: v* the verification's, c* the catch-up's, d* the draft passes' (one row each)
I64 = ("last", "vslots", "cids", "cslots", "dslots")
I32 = ("vpos", "vkvl", "bt", "cpos", "ckvl", "dpos", "dkvl")


def field_shapes(b: int, k: int, width: int) -> dict[str, tuple[int, ...]]:
    """Shape of every input of a step of ``b`` sequences verifying ``k`` drafts (``width``: block-table columns)."""
    q = k + 1
    return {"last": (b,), "vslots": (b * q,), "cids": (2 * b,), "cslots": (2 * b,), "dslots": (k - 1, b),
            "vpos": (b * q,), "vkvl": (b,), "bt": (b, width), "cpos": (2 * b,), "ckvl": (b,), "dpos": (k - 1, b),
            "dkvl": (k - 1, b)}


def step_inputs(table: np.ndarray, ctx: np.ndarray, tokens: list[list[int]], behind: np.ndarray, k: int,
                block_size: int) -> dict[str, np.ndarray]:
    """The host inputs of one fixed-shape step. ``table``: int32 ``[b, width]`` block tables, padded with zero
    rows to the graph batch ``b``; ``ctx``: the ``n`` sequences' contexts with the step's ``k + 1`` tokens;
    ``tokens``: their token ids (the last emitted at ``ctx - k - 1``); ``behind``: positions the draft must
    catch up, 1 or 2 each."""
    n, b, q = len(ctx), table.shape[0], k + 1
    p0 = np.asarray(ctx, np.int64) - q
    rows = np.arange(n)[:, None]

    def slots(pos: np.ndarray) -> np.ndarray:  # [n, m] positions -> their cache slots
        return table[rows, pos // block_size].astype(np.int64) * block_size + pos % block_size

    def padded(real: np.ndarray, fill, cols: int) -> np.ndarray:  # [n, cols] -> [b, cols], pad rows = fill
        out = np.empty((b, cols), real.dtype)
        out[:n], out[n:] = real, fill
        return out

    vp = p0[:, None] + np.arange(q)
    cp = p0[:, None] + np.array([-1, 0])
    cs = slots(cp)
    cs[:, 0] = np.where(np.asarray(behind) >= 2, cs[:, 0], -1)  # 1 behind: the draft holds p0 - 1 already
    dp = vp[:, 1:k]  # pass j feeds d_j at p0 + j, as the verification row j
    last = np.array([t[p] for t, p in zip(tokens, p0.tolist(), strict=True)], np.int64)
    prev = np.array([t[p - 1] for t, p in zip(tokens, p0.tolist(), strict=True)], np.int64)
    return {
        "last": padded(last[:, None], 0, 1).ravel(),
        "vslots": padded(slots(vp), -1, q).ravel(),
        "cids": padded(np.stack([prev, last], 1), 0, 2).ravel(),
        "cslots": padded(cs, -1, 2).ravel(),
        "dslots": padded(slots(dp), -1, k - 1).T.copy(),
        "vpos": padded(vp.astype(np.int32), np.arange(q, dtype=np.int32), q).ravel(),
        "vkvl": padded(np.asarray(ctx, np.int32)[:, None], q, 1).ravel(),
        "bt": table,
        "cpos": padded(cp.astype(np.int32), np.array([0, 1], np.int32), 2).ravel(),
        "ckvl": padded((p0 + 1).astype(np.int32)[:, None], 2, 1).ravel(),
        "dpos": padded(dp.astype(np.int32), 0, k - 1).T.copy(),
        "dkvl": padded((dp + 1).astype(np.int32), 1, k - 1).T.copy(),
    }


ALIGN_BYTES = 256


def layout(shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, int], int, int]:
    """Each field's element offset in its packed array (a multiple of 256 bytes), and the two arrays' lengths."""
    offsets, ends = {}, []
    for names, itemsize in ((I64, 8), (I32, 4)):
        at, step = 0, ALIGN_BYTES // itemsize
        for f in names:
            offsets[f] = at
            at += -(-int(np.prod(shapes[f])) // step) * step
        ends.append(at)
    return offsets, ends[0], ends[1]


class StaticStep:
    """The device buffers of the fixed-shape steps of one graph batch ``b`` (shared by its context buckets):
    the two packed input arrays, views of every field into them, the constant sample rows, and the host arrays
    the inputs are staged in (pinned on a GPU)."""

    def __init__(self, b: int, k: int, width: int, device: torch.device) -> None:
        shapes = field_shapes(b, k, width)
        self.b, self.k = b, k
        self.offsets, n64, n32 = layout(shapes)
        pin = device.type == "cuda"
        self.h64 = torch.zeros(n64, dtype=torch.int64, pin_memory=pin).numpy()
        self.h32 = torch.zeros(n32, dtype=torch.int32, pin_memory=pin).numpy()
        self.i64 = torch.zeros(n64, dtype=torch.int64, device=device)
        self.i32 = torch.zeros(n32, dtype=torch.int32, device=device)
        self.v: dict[str, torch.Tensor] = {}
        for names, buf in ((I64, self.i64), (I32, self.i32)):
            for f in names:
                at = self.offsets[f]
                self.v[f] = buf[at: at + int(np.prod(shapes[f]))].view(shapes[f])
        # safe contents before the first load (a capture's warm-up runs the step once): no writes, keys enough
        for f, value in (("vslots", -1), ("cslots", -1), ("dslots", -1), ("vkvl", k + 1), ("ckvl", 2), ("dkvl", 1)):
            self.v[f].fill_(value)
        self.v["csample"] = torch.arange(1, 2 * b, 2, device=device)  # the catch-up's row at p0
        self.v["rows"] = torch.arange(b, device=device)
        self.v["vsample"] = torch.arange(b * (k + 1), device=device)

    def load(self, inputs: dict[str, np.ndarray]) -> None:
        """Stage the step's inputs and copy them to the device: two copies, ordered before the replay (the host
        arrays are written again only after the step's tokens came back)."""
        for names, host in ((I64, self.h64), (I32, self.h32)):
            for f in names:
                a = inputs[f]
                host[self.offsets[f]: self.offsets[f] + a.size] = a.ravel()
        self.i64.copy_(torch.from_numpy(self.h64), non_blocking=True)
        self.i32.copy_(torch.from_numpy(self.h32), non_blocking=True)


def step_body(runner, static: StaticStep, c: int) -> Callable[[], torch.Tensor]:
    """The device work of a fixed-shape step of ``static.b`` sequences in context bucket ``c``: returns int64
    ``[b * k + b * (k + 1)]``, the drafts (``[b, k]``) then the target's argmax of every verification row."""
    spec, v, b, k = runner.spec, static.v, static.b, static.k
    sms = sm_count(runner.device)
    heads, dheads = runner.model.cfg.num_kv_heads, spec.draft.cfg.num_kv_heads
    runner._counters.take(b * max(heads, dheads))  # allocated outside any capture

    def meta(kv_lens: torch.Tensor, nq: int, kv_heads: int) -> AttentionMeta:
        return AttentionMeta(num_prefill_tokens=0, decode_kv_lens=kv_lens, decode_block_tables=v["bt"],
                             decode_num_q=nq, decode_max_kv_len=c,
                             decode_num_splits=choose_num_splits(b, kv_heads, c, sms), decode_split_per_seq=True,
                             decode_counters=runner._counters)

    catch = meta(v["ckvl"], 2, dheads)
    passes = [meta(v["dkvl"][j], 1, dheads) for j in range(k - 1)]
    verify = meta(v["vkvl"], k + 1, heads)

    def body() -> torch.Tensor:
        logits = spec.draft.forward(v["cids"], v["cpos"], v["cslots"], catch, spec.cache, v["csample"])
        drafts = [torch.argmax(logits, dim=-1)]
        for j, m in enumerate(passes):
            logits = spec.draft.forward(drafts[-1], v["dpos"][j], v["dslots"][j], m, spec.cache, v["rows"])
            drafts.append(torch.argmax(logits, dim=-1))
        d = torch.stack(drafts, dim=1)
        ids = torch.cat([v["last"][:, None], d], dim=1).view(-1)
        logits = runner.model.forward(ids, v["vpos"], v["vslots"], verify, runner.cache, v["vsample"])
        return torch.cat([d.view(-1), torch.argmax(logits, dim=-1)])

    return body
