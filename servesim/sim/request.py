"""Requests and batches: the data that crosses the seam between scheduler and executor.

A request's progress is two counters, as in vLLM v1:

* ``num_computed``: tokens whose KV is in the cache;
* ``generated``: output tokens emitted so far.

The sequence the model has seen is ``prompt_tokens + generated`` tokens long; a step computes
some of the ``known - num_computed`` tokens not yet in the cache and, when it reaches the end,
emits the next token(s). A first prefill computes the prompt and emits token 1; a decode step
computes the last emitted token and emits one more (1 + accepted drafts with speculation); a
request preempted by recompute starts again from ``num_computed = 0`` and re-prefills
``prompt + generated`` tokens. One rule covers prefill, chunked prefill, decode and resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from servesim.hwmodels.ops import BatchShape

NAN = math.nan


class State(IntEnum):
    WAITING = 0
    RUNNING = 1
    SWAPPED = 2
    FINISHED = 3
    REJECTED = 4


@dataclass(slots=True, eq=False)
class Request:
    """One inference request and everything that happens to it (times in seconds)."""

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()
    hash_block_tokens: int = 0  # tokens covered by one entry of hash_ids (Mooncake: 512)
    priority: int = 0
    deadline_s: float = math.inf
    # Scheduler-owned progress.
    state: State = State.WAITING
    num_computed: int = 0
    generated: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (first admission)
    predicted_output_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    swapped_blocks: int = 0
    # Timestamps.
    first_scheduled_s: float = NAN
    first_token_s: float = NAN
    last_token_s: float = NAN
    finish_s: float = NAN
    num_preemptions: int = 0
    rejected_reason: str = ""
    replica: int = -1
    token_times_s: list[float] | None = None

    @property
    def known_tokens(self) -> int:
        """Tokens of the sequence so far: the prompt and every emitted token."""
        return self.prompt_tokens + self.generated

    @property
    def remaining_prefill(self) -> int:
        """Tokens still to compute before the next token can be emitted."""
        return self.known_tokens - self.num_computed

    @property
    def remaining_tokens(self) -> int:
        """Work left, in tokens: uncomputed context plus outputs still to emit (SRPT's measure)."""
        return self.remaining_prefill + self.output_tokens - self.generated

    @property
    def finished(self) -> bool:
        return self.state == State.FINISHED


@dataclass(slots=True)
class PrefillChunk:
    request: Request
    tokens: int  # new tokens computed this step
    context_before: int  # tokens already in the cache (earlier chunks, cached prefix)

    @property
    def completes(self) -> bool:
        """True when this chunk reaches the end of the known sequence and so emits a token."""
        return self.context_before + self.tokens == self.request.known_tokens


@dataclass(slots=True)
class Batch:
    """What one iteration runs on one replica: prefill chunks and decoding requests.

    ``decode`` holds the decoding requests in slot order and ``decode_ctx`` their context length
    after this step (KV tokens attended; empty from a scheduler with ``decode_contexts`` off: the
    simulator's); each computes ``decode_query`` tokens (1, or 1 + k with speculative decoding).
    ``steps`` > 1 means that many iterations advanced at once (simulator fast-forward): identical
    pure-decode iterations, or a run of full-budget prefill chunks of one request (its one
    ``PrefillChunk`` then holds every chunk's tokens); contexts and ``shape`` refer to the first.
    """

    prefill: list[PrefillChunk]
    decode: list[Request]
    decode_ctx: np.ndarray
    decode_query: int
    shape: BatchShape
    steps: int = 1
    swap_in_blocks: int = 0
    swap_out_blocks: int = 0
    preempted: list[Request] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.prefill) + len(self.decode)

    @property
    def empty(self) -> bool:
        return not self.prefill and not self.decode

    @property
    def num_tokens(self) -> int:
        return self.shape.prefill_tokens + self.shape.decode_query_tokens
