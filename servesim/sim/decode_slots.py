"""Decoding requests in numpy slot arrays, so a decode step costs a few vector operations.

Slot ``i`` holds one decoding request's counters (tokens computed, tokens generated, output length, and
``over = computed - blocks * block_size``: minus the KV tokens its blocks still have room for). The three
counters that every step advances are rows of one array, so a step adds its tokens in one operation. The
arrays are authoritative while a request decodes; its ``Request`` fields are written back when it leaves
(finish, preemption) or on ``sync()``. Leaving moves the last slot into the hole, so slots ``[0, n)`` are
always the decoding requests.

What every step asks of all the slots is kept as it changes rather than recomputed: the sum of the
contexts (exact: integers), their maximum and the fewest tokens any slot has left to generate
(``None`` while unknown: recomputed on the next question), so a step over the whole set asks numpy
only which slots cross a block boundary.
"""

from __future__ import annotations

import numpy as np

from servesim.sim.request import Request

_NONE = np.zeros(0, np.int64)


class DecodeSlots:
    def __init__(self, capacity: int, block_size: int) -> None:
        self.block_size = block_size
        self.reqs: list[Request] = []
        self._adv = np.zeros((3, capacity), np.int64)  # the rows a step advances:
        self.comp, self.gen, self.over = self._adv  # num_computed, generated, num_computed - blocks * block_size
        self.out = np.zeros(capacity, np.int64)  # output_tokens
        self._sum = 0  # Σ comp over the slots
        self._max: int | None = 0  # max comp (None: unknown)
        self._left: int | None = None  # min (out - gen) (None: unknown)

    def __len__(self) -> int:
        return len(self.reqs)

    def __bool__(self) -> bool:
        return bool(self.reqs)

    def index(self, r: Request) -> int:
        return self.reqs.index(r)

    def join(self, r: Request) -> None:
        i = len(self.reqs)
        self.reqs.append(r)
        self.comp[i], self.gen[i], self.out[i], self.over[i] = (
            r.num_computed, r.generated, r.output_tokens, r.num_computed - len(r.block_ids) * self.block_size)
        self._sum += r.num_computed
        if self._max is not None and r.num_computed > self._max:
            self._max = r.num_computed
        if self._left is not None:
            self._left = min(self._left, r.output_tokens - r.generated)

    def leave(self, r: Request) -> None:
        """Write ``r``'s counters back and free its slot."""
        i, last = self.reqs.index(r), len(self.reqs) - 1
        comp, gen = int(self.comp[i]), int(self.gen[i])
        r.num_computed, r.generated = comp, gen
        self._sum -= comp
        if comp == self._max:
            self._max = None
        if self._left is not None and int(self.out[i]) - gen == self._left:
            self._left = None
        if i != last:
            self.reqs[i] = self.reqs[last]
            self._adv[:, i] = self._adv[:, last]
            self.out[i] = self.out[last]
        self.reqs.pop()
        if not self.reqs:
            self._max = 0

    def sync(self) -> None:
        """Write every slot's counters back into its ``Request``."""
        for i, r in enumerate(self.reqs):
            r.num_computed, r.generated = int(self.comp[i]), int(self.gen[i])

    # -- what a step asks ---------------------------------------------------------------------------------
    def block_need(self, n: int, tokens: int) -> np.ndarray:
        """Blocks each of the first ``n`` slots lacks to hold ``tokens`` more KV tokens (negative: blocks to spare):
        ``ceil((comp + tokens) / bs) - blocks``, which is ``(tokens + over + bs - 1) // bs``."""
        bs = self.block_size
        return ((tokens + bs - 1) + self.over[:n]) // bs

    def short(self, n: int, tokens: int) -> np.ndarray:
        """Indices of the first ``n`` slots whose blocks cannot hold ``tokens`` more KV tokens; with ``tokens``
        at most a block, each of them lacks exactly one block (``block_need`` is 1 there, 0 elsewhere)."""
        return (self.over[:n] > -tokens).nonzero()[0]

    def grant(self, idx: np.ndarray, blocks: np.ndarray | int = 1) -> None:
        """Slots ``idx`` received ``blocks`` more KV blocks each."""
        self.over[idx] -= blocks * self.block_size

    def contexts(self, n: int, q: int) -> np.ndarray:
        """Context length (KV tokens attended) of the first ``n`` slots in a step of ``q`` tokens."""
        return self.comp[:n] + q

    def context_sum(self, n: int, q: int) -> int:
        """``int(contexts(n, q).sum())``, kept as slots change."""
        if n == len(self.reqs):
            return self._sum + n * q
        return int(self.comp[:n].sum()) + n * q

    def context_max(self, n: int, q: int) -> int:
        """``int(contexts(n, q).max())`` (n > 0), kept as slots change."""
        if n == len(self.reqs):
            if self._max is None:
                self._max = int(self.comp[:n].max())
            return self._max + q
        return int(self.comp[:n].max()) + q

    def steps_to_first_finish(self, n: int) -> int:
        if n == len(self.reqs):
            if self._left is None:
                self._left = int((self.out[:n] - self.gen[:n]).min())
            return self._left
        return int((self.out[:n] - self.gen[:n]).min())

    def advance(self, n: int, adv, clip: bool) -> np.ndarray:
        """Add ``adv`` tokens (a number or one per slot) to the first ``n`` slots.

        ``clip`` caps generated tokens at the output length (a last speculative step may
        overshoot). Returns the indices of the slots that finished, highest first.
        """
        whole = n == len(self.reqs)
        self._adv[:, :n] += adv  # computed, generated and over, one operation
        gen, out = self.gen[:n], self.out[:n]
        if isinstance(adv, (int, np.integer)) and not clip:
            self._sum += n * adv
            if whole:
                if self._max is not None:
                    self._max += adv
                if self._left is not None:
                    self._left -= adv
                    if self._left > 0:  # nobody reached their output length
                        return _NONE
            else:
                self._max = self._left = None
        else:
            self._sum += n * int(adv) if isinstance(adv, (int, np.integer)) else int(np.sum(adv))
            self._max = self._left = None
        if clip:
            np.minimum(gen, out, out=gen)
        self._left = None
        done = gen >= out
        return done.nonzero()[0][::-1] if done.any() else _NONE
