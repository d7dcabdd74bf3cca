"""Links a KV cache crosses between GPUs (prefill to decode): bandwidth per GPU, fixed cost per transfer.

Each GPU sends or receives over its own lane, in one direction:

==========  ==================================================  ==========  ==========
link        bandwidth per GPU, one direction                    latency     efficiency
==========  ==================================================  ==========  ==========
nvlink      half the catalog's NVLink/xGMI figure (both ways)    10 µs       0.80
pcie        half the catalog's PCIe figure (through the host)    10 µs       0.80
ib          400 Gb/s = 50 GB/s: one ConnectX-7 NDR NIC per GPU   30 µs       0.80
roce        400 GbE = 50 GB/s: one NIC per GPU                   50 µs       0.70
==========  ==================================================  ==========  ==========

The NIC figures are those of a DGX/HGX H100 node (eight 400 Gb/s NICs, one per GPU); the catalog does
not list NICs, so ``kv_link_gbps`` overrides them for other fabrics. The latency stands for what a
transfer engine (NIXL, Mooncake) adds per request: registration, a handshake, the completion notice.
A transfer between two different GPUs runs at the slower GPU's lane.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from servesim.errors import ConfigError
from servesim.hwmodels.gpus import GPU

NIC_400G_BYTES_PER_S = 400e9 / 8

# link -> (bandwidth per GPU and direction from the GPU's catalog entry, latency s, efficiency)
LINKS: dict[str, tuple[Callable[[GPU], float], float, float]] = {
    "nvlink": (lambda g: g.interconnect_bytes_per_s / 2, 10e-6, 0.80),
    "pcie": (lambda g: g.pcie_bytes_per_s / 2, 10e-6, 0.80),
    "ib": (lambda g: NIC_400G_BYTES_PER_S, 30e-6, 0.80),
    "roce": (lambda g: NIC_400G_BYTES_PER_S, 50e-6, 0.70),
}


@dataclass(frozen=True, slots=True)
class KVLink:
    """One GPU's lane for KV transfers: ``transfer_s(bytes)`` = latency + bytes / achieved bandwidth."""

    name: str
    bytes_per_s: float  # achieved, one direction, per GPU
    latency_s: float

    def transfer_s(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bytes_per_s


def kv_link(
    kind: str,
    src: GPU,
    dst: GPU,
    *,
    gbps: float | None = None,
    latency_us: float | None = None,
    efficiency: float | None = None,
) -> KVLink:
    """The lane between ``src`` and ``dst`` GPUs over link ``kind``; overrides in GB/s, µs and a fraction."""
    if kind not in LINKS:
        raise ConfigError(f"unknown link '{kind}'; known: {', '.join(LINKS)}", field="kv_link")
    bandwidth, latency_s, eff = LINKS[kind]
    peak = gbps * 1e9 if gbps is not None else min(bandwidth(src), bandwidth(dst))
    eff = eff if efficiency is None else efficiency
    return KVLink(kind, peak * eff, latency_s if latency_us is None else latency_us * 1e-6)
