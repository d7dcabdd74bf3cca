"""Launch state the kernels share: the split-merge counters and the SM count of the device.

Decode attention, the split-K quantized GEMM and speculative verification cut their work into splits and let
the last split to arrive merge the partials, so each is one launch. The last split knows it is last from an
int32 arrival counter, which it resets to zero: a counter buffer is zero again after every launch and can be
reused with no memset. :class:`SplitCounters` is that buffer, owned by the caller (an engine keeps one per
device and stream, a ``QuantLinear`` its own), not a module-global; a kernel given none allocates zeros.
"""

from __future__ import annotations

import functools

import torch

# The interpreter (TRITON_INTERPRET=1, CPU) has no SMs and runs programs one after another: a few SMs' worth of
# programs exercises the split paths without multiplying the CPU time.
INTERPRETER_SMS = 4


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device | str) -> int:
    """Streaming multiprocessors of ``device`` (read from the driver), :data:`INTERPRETER_SMS` off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return INTERPRETER_SMS
    return _cuda_sms(torch.cuda.current_device() if device.index is None else device.index)


class SplitCounters:
    """Zeroed int32 arrival counters for split-merging kernels on one device.

    Launches that share an instance must not overlap (one stream, or separate instances). :meth:`take` grows
    the buffer when asked for more; an outgrown buffer is kept alive, since a captured CUDA graph may still
    point at it. Take what a graph needs before capturing it, so the capture allocates nothing.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = _normalized(device)
        self._buf: torch.Tensor | None = None
        self._outgrown: list[torch.Tensor] = []

    def take(self, n: int) -> torch.Tensor:
        """At least ``n`` zero counters (the first ``n`` of the buffer)."""
        if self._buf is None or self._buf.numel() < n:
            if self._buf is not None:
                self._outgrown.append(self._buf)
            self._buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=self.device)
        return self._buf[:n]


def counters_for(counters: SplitCounters | None, device: torch.device, n: int) -> torch.Tensor:
    """``n`` zero counters from ``counters``, or freshly allocated zeros when the caller keeps none."""
    if counters is None:
        return torch.zeros(max(n, 1), dtype=torch.int32, device=device)
    if counters.device != _normalized(device):
        raise ValueError(f"split counters live on {counters.device}, the launch runs on {device}")
    return counters.take(n)


def _normalized(device: torch.device | str) -> torch.device:
    """``cuda`` and ``cuda:<current>`` are one device: give CUDA devices their index."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
