"""Decoding requests in numpy slot arrays, so a decode step costs a few vector operations.

Slot ``i`` holds one decoding request's counters (tokens computed, tokens generated, output
length, KV blocks held). The arrays are authoritative while a request decodes; its ``Request``
fields are written back when it leaves (finish, preemption) or on ``sync()``. Leaving moves the
last slot into the hole, so slots ``[0, n)`` are always the decoding requests.
"""

from __future__ import annotations

import numpy as np

from servesim.sim.request import Request


class DecodeSlots:
    def __init__(self, capacity: int, block_size: int) -> None:
        self.block_size = block_size
        self.reqs: list[Request] = []
        self.comp = np.zeros(capacity, np.int64)  # num_computed
        self.gen = np.zeros(capacity, np.int64)  # generated
        self.out = np.zeros(capacity, np.int64)  # output_tokens
        self.nblk = np.zeros(capacity, np.int64)  # KV blocks held

    def __len__(self) -> int:
        return len(self.reqs)

    def __bool__(self) -> bool:
        return bool(self.reqs)

    def index(self, r: Request) -> int:
        return self.reqs.index(r)

    def join(self, r: Request) -> None:
        i = len(self.reqs)
        self.reqs.append(r)
        self.comp[i], self.gen[i], self.out[i], self.nblk[i] = (
            r.num_computed, r.generated, r.output_tokens, len(r.block_ids))

    def leave(self, r: Request) -> None:
        """Write ``r``'s counters back and free its slot."""
        i, last = self.reqs.index(r), len(self.reqs) - 1
        r.num_computed, r.generated = int(self.comp[i]), int(self.gen[i])
        if i != last:
            self.reqs[i] = self.reqs[last]
            for a in (self.comp, self.gen, self.out, self.nblk):
                a[i] = a[last]
        self.reqs.pop()

    def sync(self) -> None:
        """Write every slot's counters back into its ``Request``."""
        for i, r in enumerate(self.reqs):
            r.num_computed, r.generated = int(self.comp[i]), int(self.gen[i])

    def block_need(self, n: int, tokens: int) -> np.ndarray:
        """Blocks each of the first ``n`` slots lacks to hold ``tokens`` more KV tokens."""
        bs = self.block_size
        return (self.comp[:n] + (tokens + bs - 1)) // bs - self.nblk[:n]

    def contexts(self, n: int, q: int) -> np.ndarray:
        """Context length (KV tokens attended) of the first ``n`` slots in a step of ``q`` tokens."""
        return self.comp[:n] + q

    def steps_to_first_finish(self, n: int) -> int:
        return int((self.out[:n] - self.gen[:n]).min())

    def advance(self, n: int, adv, clip: bool) -> np.ndarray:
        """Add ``adv`` tokens (a number or one per slot) to the first ``n`` slots.

        ``clip`` caps generated tokens at the output length (a last speculative step may
        overshoot). Returns the indices of the slots that finished, highest first.
        """
        self.comp[:n] += adv
        gen, out = self.gen[:n], self.out[:n]
        gen += adv
        if clip:
            np.minimum(gen, out, out=gen)
        done = gen >= out
        return done.nonzero()[0][::-1] if done.any() else done[:0].nonzero()[0]
