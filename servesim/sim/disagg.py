"""Prefill/decode disaggregation: a prefill pool and a decode pool of replicas, and the KV link between them.

A request arrives at a prefill replica (the prefill router picks it), which runs the prompt and emits the
first token as any replica would; the prefill replica's scheduler sees a one-token request. Its KV then
crosses to a decode replica (the decode router picks it when the prefill ends):

- bytes: the model's KV bytes per token × prompt tokens (hwmodels ``kv_bytes_per_token``: K and V of
  every KV head, or MLA's latent), each decode GPU receiving its share and each prefill GPU sending an
  even part of the total over its own lane of the link (hwmodels.links);
- each replica's lane carries one transfer at a time; a decode replica starts the transfers sent to it in
  the order their prefills ended, each once both lanes are free and it has the blocks for the prompt and
  a free sequence slot, which it holds from then on; the prefill replica keeps the prompt's blocks until
  the transfer ends;
- ``kv_overlap``: each layer's KV leaves as soon as the last prefill step computed it, so the transfer
  ends at max(start + transfer, prefill end + one layer's share) (the decode replica's blocks, when free
  at the prefill's end, are taken as free from the transfer's start).

At the end of the transfer the request joins the decode replica's running requests with its first token
already emitted (its next step decodes), so a free transfer between two one-replica pools at light load
gives exactly the timestamps of colocated serving. The pools are ordinary replicas of the simulator, each
with its own deployment (GPU, TP, EP, limits); the records name the decode replica in ``replica`` and add
``prefill_replica``, ``kv_transfer_bytes``, ``kv_transfer_s`` (the link time) and ``kv_ready_s`` (when
the KV was complete on the decode replica).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from servesim.errors import ConfigError
from servesim.hwmodels.links import KVLink, kv_link
from servesim.sim.config import PD_POOL_FIELDS, Scenario
from servesim.sim.deployment import Deployment, build_deployment
from servesim.sim.metrics import latency_stats, summarize_timeline
from servesim.sim.request import Request, State
from servesim.sim.result import ideal_e2el
from servesim.sim.router import ROUTERS
from servesim.sim.simulator import Replica, ReplicaProcess, Simulation
from servesim.sim.workload import Workload

POOLS = ("prefill", "decode")


@dataclass(frozen=True)
class PDDeployment:
    """Two pools of identical replicas each, and the lane a KV transfer takes per GPU."""

    prefill: Deployment
    decode: Deployment
    link: KVLink
    overlap: bool
    kv_dtype: str

    @property
    def gpus_total(self) -> int:
        return self.prefill.gpus_total + self.decode.gpus_total

    @property
    def cost(self):
        """The decode pool's cost model, for the run's profile id (both pools price their steps alike)."""
        return self.decode.cost

    @property
    def num_blocks(self) -> int:
        """KV blocks per decode replica (the run's metadata; the summary's ``pd`` has both pools')."""
        return self.decode.num_blocks

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(f"{pool} pool: {w}" for pool, d in zip(POOLS, (self.prefill, self.decode)) for w in d.warnings)

    @property
    def usd_per_gpu_hour(self) -> float:
        """The fleet's price per GPU-hour, averaged over both pools."""
        fleet = sum(d.gpus_total * d.usd_per_gpu_hour for d in (self.prefill, self.decode))
        return fleet / self.gpus_total

    def kv_transfer(self, prompt_tokens: int) -> tuple[int, float]:
        """(bytes, seconds) to move a prompt's KV: every decode GPU receives its share while every prefill GPU
        sends an even part of what they receive, each over its own lane."""
        d = self.decode
        nbytes = d.model.kv_bytes_per_token(self.kv_dtype) * prompt_tokens
        recv = d.memory.kv_bytes_per_token * prompt_tokens  # per decode GPU (fullest stage)
        send = recv * d.tp * d.pp / (self.prefill.tp * self.prefill.pp)
        return nbytes, self.link.transfer_s(max(recv, send))


def pool_scenario(s: Scenario, pool: str) -> Scenario:
    """The scenario of one pool: ``<pool>_<field>`` where given, else the shared field, as one colocated fleet
    of ``replicas`` × ``<pool>_replicas`` replicas (``replicas`` copies of the P:D unit)."""
    update = {f: getattr(s, f"{pool}_{f}") for f in PD_POOL_FIELDS if getattr(s, f"{pool}_{f}") is not None}
    update["replicas"] = s.replicas * getattr(s, f"{pool}_replicas")
    return s.model_copy(update={**update, "prefill_replicas": 0, "decode_replicas": 0})


def deployment_of(s: Scenario) -> Deployment | PDDeployment:
    """``s``'s deployment: one pool of replicas, or under P/D two pools and a link. Both give ``gpus_total``,
    ``usd_per_gpu_hour``, ``num_blocks``, ``cost.profile_id`` and ``warnings``; ``gpus_total / s.replicas``
    is the GPUs of one replica (of one P:D unit)."""
    return build_pd(s) if s.disaggregated else build_deployment(s)


def build_pd(s: Scenario) -> PDDeployment:
    """Resolve a P/D scenario into its two pools and link, or raise a ConfigError naming the field."""
    pools = {}
    for pool in POOLS:
        try:
            pools[pool] = build_deployment(pool_scenario(s, pool))
        except ConfigError as exc:
            fld = f"{pool}_{exc.field}" if exc.field in PD_POOL_FIELDS else exc.field
            raise ConfigError(f"{pool} pool: {exc.problem}", file=exc.file, field=fld) from None
    p, d = pools["prefill"], pools["decode"]
    link = kv_link(s.kv_link, p.gpu, d.gpu, gbps=s.kv_link_gbps, latency_us=s.kv_link_latency_us,
                   efficiency=s.kv_link_efficiency)
    return PDDeployment(p, d, link, s.kv_overlap, s.kv_dtype)


@dataclass(slots=True)
class _Transfer:
    request: Request
    twin: Request  # the one-token request the prefill replica ran, holding its blocks until the transfer ends
    src: PrefillReplica
    src_engine: ReplicaProcess
    ready_s: float  # earliest start: the prefill's end, or its last step's first layer with overlap
    prefill_end_s: float
    nbytes: int
    link_s: float


class PrefillReplica(Replica):
    """A replica of the prefill pool: what it finishes is handed to the decode pool, not recorded."""

    may_stall = True  # its blocks may all be held by prompts waiting to be sent

    def __init__(self, sim: PDSimulation, index: int, dep: Deployment) -> None:
        super().__init__(sim, index, dep)
        self.link_free_s = 0.0

    def collect(self, sched) -> None:
        if not sched.finished:
            return
        engine = next(e for e in self.engines if e.sched is sched)
        for twin in sched.finished:
            self.outstanding -= 1
            self.sim.prefilled(twin, self, engine)
        sched.finished.clear()


class DecodeReplica(Replica):
    """A replica of the decode pool, with the transfers waiting for its memory in order of their prefill's end."""

    def __init__(self, sim: PDSimulation, index: int, dep: Deployment) -> None:
        super().__init__(sim, index, dep)
        self.link_free_s = 0.0
        self.pending: deque[_Transfer] = deque()
        self.in_flight = {id(e): 0 for e in self.engines}
        self.retry_s = math.inf  # when the first waiting transfer's lanes free (a retry is scheduled then)

    def collect(self, sched) -> None:
        super().collect(sched)
        if self.pending:  # blocks or sequence slots may have freed
            self.sim.start_transfers(self)


@dataclass
class _Records:
    """Per-request P/D columns, by request id."""

    prefill_replica: dict[int, int] = field(default_factory=dict)
    transfer: dict[int, tuple[int, float, float]] = field(default_factory=dict)  # bytes, link s, KV ready s


class PDSimulation(Simulation):
    """A simulation whose replicas form a prefill pool (indices first) and a decode pool."""

    def __init__(self, pd: PDDeployment, workload: Workload, **kw) -> None:
        self.pd = pd
        super().__init__(pd.decode, workload, **kw)
        self.chunk_runs = False  # a prefill engine's step ends bound every engine's horizon: runs of decode steps only
        if self._closed is not None:  # a finish issues an arrival mid-run: no engine knows its next one ahead
            self.fast_forward = False
        self.prefill_router = ROUTERS[pd.prefill.router]()
        self.decode_router = ROUTERS[pd.decode.router]()
        self._twins: dict[int, Request] = {}
        self._in_flight_ends: list[float] = []  # heap: when the transfers under way end
        self.records = _Records()

    def _make_replicas(self) -> list[Replica]:
        pd = self.pd
        self.prefill_pool = [PrefillReplica(self, i, pd.prefill) for i in range(pd.prefill.replicas)]
        n = len(self.prefill_pool)
        self.decode_pool = [DecodeReplica(self, n + j, pd.decode) for j in range(pd.decode.replicas)]
        return [*self.prefill_pool, *self.decode_pool]

    # -- arrivals: to the prefill pool ----------------------------------------------------------
    def _route(self, r: Request) -> None:
        probe = self.decode_pool[0].engines[0].sched
        if probe._reject_reason(r):  # could never decode: the decode pool refuses it at once, with its reason
            self.decode_pool[self.decode_router(r, self.decode_pool, self.rng)].submit(r)
            return
        twin = Request(r.request_id, r.arrival_s, r.prompt_tokens, 1, r.hash_ids, r.hash_block_tokens,
                       r.priority, r.deadline_s)
        self._twins[r.request_id] = r
        self.prefill_pool[self.prefill_router(twin, self.prefill_pool, self.rng)].submit(twin)

    def next_arrival_s(self) -> float:
        """The earliest time a request may reach any engine: an arrival, a transfer's end, or the end of a
        prefill step under way (its prompts are sent no earlier); now, while a prefill engine waits to run."""
        t = super().next_arrival_s()
        if self._in_flight_ends:
            t = min(t, self._in_flight_ends[0])
        for rep in self.decode_pool:  # transfers waiting for a lane start (and end) no earlier than it frees
            t = min(t, rep.retry_s)
        now = self.env.now
        for rep in self.prefill_pool:
            for e in rep.engines:
                end = e.step_span[1]
                if end >= now:
                    t = min(t, end)
                elif e.inbox or e.sched.has_work:
                    t = min(t, now)
        return t

    # -- the handoff ------------------------------------------------------------------------------
    def prefilled(self, twin: Request, src: PrefillReplica, engine: ReplicaProcess) -> None:
        """The prefill replica finished (or refused) ``twin``: record it, or send its KV to a decode replica."""
        r = self._twins.pop(twin.request_id)
        self.records.prefill_replica[r.request_id] = src.index
        r.first_scheduled_s, r.num_preemptions, r.cached_tokens = (
            twin.first_scheduled_s, twin.num_preemptions, twin.cached_tokens)
        r.token_times_s = twin.token_times_s
        if twin.rejected_reason:
            r.state, r.rejected_reason, r.finish_s = State.REJECTED, twin.rejected_reason, twin.finish_s
            r.replica = src.index
            self.done(r)
            return
        r.first_token_s = r.last_token_s = twin.first_token_s
        r.num_computed, r.generated = r.prompt_tokens, 1
        if r.output_tokens <= 1:  # nothing to decode
            r.state, r.finish_s, r.replica = State.FINISHED, twin.finish_s, src.index
            self.done(r)
            return
        kv = engine.sched.kv
        kv.grow(twin, kv.blocks_for(r.prompt_tokens))  # the prompt's KV stays on the prefill GPU until sent
        start, end = engine.step_span
        nbytes, link_s = self.pd.kv_transfer(r.prompt_tokens)
        ready = start + (end - start) / self.pd.prefill.model.num_layers if self.pd.overlap else end
        dst = self.decode_pool[self.decode_router(r, self.decode_pool, self.rng)]
        r.replica = dst.index
        dst.outstanding += 1
        dst.pending.append(_Transfer(r, twin, src, engine, ready, end, nbytes, link_s))
        self.start_transfers(dst)

    def start_transfers(self, dst: DecodeReplica) -> None:
        """Start the transfers waiting for ``dst``, in order, while both lanes are free and an engine has the
        blocks and a sequence slot; a transfer waiting for a lane is retried when the lane frees."""
        env, limit = self.env, self.pd.decode.scheduler.max_num_seqs
        while dst.pending:
            tr = dst.pending[0]
            lane_s = max(tr.src.link_free_s, dst.link_free_s)
            if lane_s > env.now:
                if dst.retry_s != lane_s:
                    dst.retry_s = lane_s
                    env.timeout(lane_s - env.now).callbacks.append(lambda _ev, at=lane_s: self._retry(dst, at))
                return
            engine = min(dst.engines, key=lambda e: e.sched.num_running + len(e.inbox) + dst.in_flight[id(e)])
            kv = engine.sched.kv
            need = kv.blocks_for(tr.request.prompt_tokens)
            seats = limit - engine.sched.num_running - dst.in_flight[id(engine)]
            if seats <= 0 or not kv.can_allocate(need, watermark=True):
                return
            dst.pending.popleft()
            kv.grow(tr.request, need)  # the decode replica's memory is the transfer's from its start
            start = max(env.now if env.now > tr.prefill_end_s else tr.ready_s, lane_s)
            end = start + tr.link_s
            if self.pd.overlap:  # the last layer's KV leaves when the prefill's last step ends
                end = max(end, tr.prefill_end_s + tr.link_s / self.pd.prefill.model.num_layers)
            tr.src.link_free_s = dst.link_free_s = end
            dst.in_flight[id(engine)] += 1
            heapq.heappush(self._in_flight_ends, end)
            env.timeout(end - env.now).callbacks.append(
                lambda _ev, tr=tr, engine=engine, end=end: self._arrive(tr, dst, engine, end))

    def _retry(self, dst: DecodeReplica, at_s: float) -> None:
        if dst.retry_s == at_s:
            dst.retry_s = math.inf
            self.start_transfers(dst)

    def _arrive(self, tr: _Transfer, dst: DecodeReplica, engine: ReplicaProcess, end: float) -> None:
        """The KV is on the decode replica: free the prefill blocks, and let the request decode."""
        heapq.heappop(self._in_flight_ends)
        dst.in_flight[id(engine)] -= 1
        tr.src_engine.sched.kv.free(tr.twin)
        tr.src_engine.wake_up()  # it may be waiting for these blocks
        self.records.transfer[tr.request.request_id] = (tr.nbytes, tr.link_s, end)
        engine.submit(tr.request)

    # -- results ------------------------------------------------------------------------------------
    def request_table(self) -> pd.DataFrame:
        """The requests table with the P/D columns; ``ideal_e2el_s`` alone on idle pools with a free link lane."""
        requests = self.requests.frame()
        pd_ = self.pd
        requests["ideal_e2el_s"] = ideal_e2el(pd_.prefill, requests, pd_.decode, lambda p: pd_.kv_transfer(p)[1])
        ids = requests["request_id"].tolist()
        pre, xfer = self.records.prefill_replica, self.records.transfer
        none = (0, math.nan, math.nan)
        requests["prefill_replica"] = np.array([pre.get(i, -1) for i in ids], dtype=np.int64)
        cols = np.array([xfer.get(i, none) for i in ids], dtype=np.float64).reshape(len(ids), 3)
        requests["kv_transfer_bytes"] = cols[:, 0].astype(np.int64)
        requests["kv_transfer_s"] = cols[:, 1]
        requests["kv_ready_s"] = cols[:, 2]
        return requests

    def pool_summary(self, requests: pd.DataFrame, timeline: pd.DataFrame, duration_s: float) -> dict:
        """Per pool: size, GPUs, busy fraction and the timeline aggregates; per transfer: bytes, link time and
        the wait from a prefill's end to its KV on the decode replica."""
        out: dict[str, object] = {}
        for pool, dep, reps in (("prefill", self.pd.prefill, self.prefill_pool),
                                ("decode", self.pd.decode, self.decode_pool)):
            rows = timeline[timeline["replica"].isin([r.index for r in reps])]
            agg = summarize_timeline(rows)
            out[pool] = {
                "replicas": dep.replicas, "gpu": dep.gpu.name, "tp": dep.tp, "pp": dep.pp, "ep": dep.cost.placement.ep,
                "gpus": dep.gpus_total, "kv_blocks_per_replica": dep.num_blocks, "profile_id": dep.cost.profile_id,
                "busy_fraction": agg["busy_time_s"] / (duration_s * dep.replicas) if duration_s > 0 else math.nan,
                **agg,
            }
        sent = requests["kv_transfer_s"].notna().to_numpy()
        wait = (requests["kv_ready_s"] - requests["first_token_s"]).to_numpy()[sent]
        out["kv_transfer"] = {
            "link": self.pd.link.name, "link_gb_per_s": self.pd.link.bytes_per_s / 1e9,
            "transfers": int(sent.sum()), "total_bytes": int(requests["kv_transfer_bytes"].sum()),
            **latency_stats("kv_transfer", requests["kv_transfer_s"].to_numpy()[sent]),
            **latency_stats("kv_wait", wait),
        }
        return {"pd": out}
