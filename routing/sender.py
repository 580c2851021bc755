"""The sending shell: claims outbox jobs and moves their bundles to peers.

Runs as an asyncio task in the node's supervisor process.  For each claimed
job it sends the bundle with :func:`fenji.routing.transfer_client.send_bundle`,
verifies the receipt, keeps it, marks the case delivered, and completes the
job; on failure the outbox core decides (retry with backoff and jitter, or
dead-letter with the reason).  While a bundle moves, the loop checks whether a
job of a higher priority became ready for the same destination (at once on a
wake-up): if so the current upload yields at its next frame (its lease is
released without counting an attempt) and finishes that request on its own
connection while the STAT case starts at once on another; the routine one
resumes later at the receiver's offset.

One INFO line per transfer attempt: job, case, destination, bytes, seconds,
outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from fenji.gateway.config import Config
from fenji.gateway.keys import load_private, public_from_config
from fenji.gateway.store import processes
from fenji.gateway.store.db import Store
from fenji.gateway.store.index import Con
from fenji.routing import encoding, outbox_db, relay, upload, wakeup
from fenji.routing.outbox import DeadLetter, OutboxPolicy, Wait
from fenji.routing.shaping import LinkMeter, Pacer, parse_schedule
from fenji.routing.transfer_client import (
    WAITING_FOR_PEER_RETRY_S,
    ChunkSizer,
    Delivered,
    Pipeline,
    ResumingContext,
    Sender,
    TransferError,
    manifest_of,
    send_bundle,
)

log = logging.getLogger(__name__)


# Even with nothing to wait for, the sender looks at its outbox this often: a
# safety net for a wake-up lost to a full disk or a crashed poker, not a poll
# (every enqueue wakes it at once, in any process: routing/wakeup.py).
IDLE_RECHECK_S = 60.0
# While a bundle moves, the outbox is asked at most this often whether a job of
# higher priority became ready by time alone (a wake-up asks at once).
OUTRANK_CHECK_S = 1.0


# Unsent bytes the kernel may hold per connection (TCP_NOTSENT_LOWAT): without a
# cap it queues megabytes ahead of a thin link, and a STAT case waits behind
# them (128 KiB: 1 s of a 1 Mbit/s link).  The bytes in flight keep the link
# busy; this only bounds the queue behind them.
NOTSENT_LOWAT_BYTES = 16 * 1024


def _socket(addr_info: Any) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    if hasattr(socket, "TCP_NOTSENT_LOWAT") and family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT_BYTES)
    return sock


class SenderEvents(Protocol):
    """What the sender tells the node it serves (the audit trail, case and report states).

    Routing moves bundles; what a delivery *means* belongs to the gateway
    (gateway/reading/delivery.py).  Each method runs in a worker thread.
    """

    def receipt(self, con: Con, job: dict[str, Any], out: Delivered,
                fresh: bool, now: float) -> None:
        """A signed receipt came back; called inside the transaction that keeps it."""

    def sent(self, job: dict[str, Any], now: float, bytes_total: int) -> None:
        """A bundle went on the wire to its next hop (a resumed upload: again)."""

    def dead(self, job: dict[str, Any], reason: str, now: float) -> None:
        """A bundle was dead-lettered: someone must see it and act."""

    def egress_delivered(self, job: dict[str, Any], target: str, now: float) -> None:
        """A case (or report) was handed to a non-fenji egress target."""


class NoEvents:
    """A sender that tells nobody (tests of the transfer alone)."""

    def receipt(self, con: Con, job: dict[str, Any], out: Delivered,
                fresh: bool, now: float) -> None:
        pass

    def sent(self, job: dict[str, Any], now: float, bytes_total: int) -> None:
        pass

    def dead(self, job: dict[str, Any], reason: str, now: float) -> None:
        pass

    def egress_delivered(self, job: dict[str, Any], target: str, now: float) -> None:
        pass


def keep_receipt(store: Store, job: dict[str, Any], out: Delivered, now: float,
                 events: SenderEvents) -> None:
    """Keep the receiver's signed receipt (once per bundle) and tell the node."""
    with store.atomic() as con:
        fresh = con.execute("SELECT 1 FROM receipts WHERE bundle_id = ?",
                            (job["bundle_id"],)).fetchone() is None
        events.receipt(con, job, out, fresh, now)
        con.execute("INSERT OR IGNORE INTO receipts(bundle_id, case_id, destination, "
                    "receipt_json, signature, signer, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job["bundle_id"], job["case_id"], job["destination"],
                     json.dumps(out.receipt, sort_keys=True), out.signature, out.signer, now))


class SenderLoop:
    def __init__(self, cfg: Config, store: Store, *, clock: Callable[[], float] = time.time,
                 policy: OutboxPolicy | None = None, seed: int | None = None,
                 events: SenderEvents | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.events: SenderEvents = events or NoEvents()
        self.clock = clock
        self.policy = policy or cfg.outbox
        self.rng = random.Random(seed)
        # node@machine:pid, the name the process beats under (gateway/store/processes.py):
        # its leases are handed on when it dies, on this machine or another.
        self.owner = processes.owner_name(cfg.node.name)
        self.sender = Sender(cfg.node.name, load_private(cfg.resolve(cfg.keys.private_key)))
        self.peer_keys = {p.name: public_from_config(p.public_key, cfg.data_dir)
                          for p in cfg.peers}
        self.sizers: dict[str, ChunkSizer] = {}
        self.meters: dict[str, LinkMeter] = {}
        self.pacers: dict[str, Pacer] = {}
        self._ssl_ctx: dict[str, Any] = {}
        self.wake = asyncio.Event()
        self.index_wakeups = 0  # wake-ups that came through the index (other machines)
        # Set while the loop sleeps with nothing to send (for tests and the status page).
        self.asleep = threading.Event()

    def _ssl(self, dest: str) -> Any:
        """Mutual TLS to ``dest`` when its URL is https (its certificate pinned)."""
        peer = self.cfg.peer(dest)
        if peer is None or not peer.url.startswith("https://"):
            return None
        if dest not in self._ssl_ctx:
            from fenji.gateway.keys import client_ssl_context

            k = self.cfg.keys
            self._ssl_ctx[dest] = client_ssl_context(
                self.cfg.resolve(k.certificate), self.cfg.resolve(k.private_key),
                self.cfg.resolve(peer.cert), context_class=ResumingContext)
        return self._ssl_ctx[dest]

    def _pace(self, dest: str) -> Callable[[int], float]:
        peer = self.cfg.peer(dest)
        if peer is None or not peer.rate_bps:
            return lambda n: 0.0
        pacer = self.pacers.setdefault(dest, Pacer(peer.rate_bps, parse_schedule(peer.schedule),
                                                   time.monotonic()))

        def pace(n: int) -> float:
            lt = time.localtime(self.clock())
            return pacer.delay(n, time.monotonic(), lt.tm_hour * 60 + lt.tm_min)

        return pace

    def _save_meter(self, dest: str) -> None:
        m = self.meters.get(dest)
        if m is None:
            return
        peer = self.cfg.peer(dest)
        allowed = None
        if peer is not None and peer.rate_bps:
            lt = time.localtime(self.clock())
            allowed = self.pacers[dest].allowed_bps(lt.tm_hour * 60 + lt.tm_min) \
                if dest in self.pacers else float(peer.rate_bps)
        with self.store.atomic() as con:
            con.execute("UPDATE destinations SET throughput_bps = ?, rtt_ms = ?, requests = ?, "
                        "errors = ?, allowed_bps = ? WHERE name = ?",
                        (m.throughput_bps, m.rtt_ms, m.requests, m.errors, allowed, dest))

    def _sizer(self, dest: str) -> ChunkSizer:
        t = self.cfg.transfer
        return self.sizers.setdefault(dest, ChunkSizer(t.chunk_bytes, t.min_chunk_bytes,
                                                       t.max_chunk_bytes))

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop``; between jobs sleep until the core's ``Wait(until)``, a
        wake-up (an enqueue in this process or another) or ``stop``."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30,
                                        sock_read=self.cfg.transfer.request_timeout_s)
        # Per peer: the active attempt, one or two that yielded finishing their last
        # request, and a spare.
        connector = aiohttp.TCPConnector(limit_per_host=4, socket_factory=_socket)
        loop = asyncio.get_running_loop()
        fifo: wakeup.WakeFifo | None = None
        try:
            fifo = wakeup.WakeFifo(wakeup.fifo_path(self.store.root))
        except OSError as exc:  # wake-ups from other processes come at the recheck
            log.warning("sender wake-up FIFO unavailable (%s); other processes' releases "
                        "are seen within %.0f s", exc, IDLE_RECHECK_S)
        if fifo is not None:
            loop.add_reader(fifo.fileno(), self._woken, fifo)
        # The center's processes on other machines wake it through the index (NOTIFY).
        listener = self.store.index.listen(wakeup.CHANNEL,
                                           lambda: self._notified_from_thread(loop))
        stopping = asyncio.ensure_future(stop.wait())
        # One attempt is active.  When a job of higher priority is ready (asked at once
        # on a wake-up, else every OUTRANK_CHECK_S) it is told to yield and set aside
        # to finish its last request on its own connection (its frame in flight, the
        # answer, the lease given back), and the other job starts at once on another:
        # its first byte waits neither for that round trip nor for a write the link
        # holds up.
        active: tuple[asyncio.Task[None], dict[str, Any], asyncio.Event] | None = None
        draining: set[asyncio.Task[None]] = set()
        try:
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                while not stop.is_set():
                    if active is not None:
                        task, job, preempt = active
                        woken = asyncio.ensure_future(self.wake.wait())
                        await asyncio.wait({task, woken, stopping}, timeout=OUTRANK_CHECK_S,
                                           return_when=asyncio.FIRST_COMPLETED)
                        woken.cancel()
                        if task.done():
                            active = None
                            task.result()  # an unexpected error ends the loop, as it did
                        elif not stop.is_set() and await self._outranked(job):
                            preempt.set()
                            draining.add(task)
                            task.add_done_callback(lambda t: self._drained(t, draining))
                            active = None
                        continue
                    self.wake.clear()  # before looking: a wake-up after this is kept
                    step = await asyncio.to_thread(outbox_db.next_step, self.store, self.owner,
                                                   self.clock(), self.policy)
                    if isinstance(step, dict):
                        preempt = asyncio.Event()
                        active = (asyncio.create_task(self._attempt(session, step, preempt)),
                                  step, preempt)
                        continue
                    sleep_s = IDLE_RECHECK_S
                    if isinstance(step, Wait):
                        sleep_s = min(sleep_s, max(0.0, step.until - self.clock()))
                    woken = asyncio.ensure_future(self.wake.wait())
                    self.asleep.set()
                    await asyncio.wait({woken, stopping}, timeout=sleep_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                    self.asleep.clear()
                    woken.cancel()
                # Stopping: what is in flight ends as before (an attempt is not cut).
                await asyncio.gather(*draining, *([active[0]] if active else []),
                                     return_exceptions=True)
        finally:
            stopping.cancel()
            listener.close()
            if fifo is not None:
                loop.remove_reader(fifo.fileno())
                fifo.close()

    async def _outranked(self, job: dict[str, Any]) -> bool:
        self.wake.clear()  # before looking: a wake-up after this is kept
        return await asyncio.to_thread(outbox_db.outranked, self.store, job, self.clock(),
                                       self.policy)

    def _drained(self, task: asyncio.Task[None], draining: set[asyncio.Task[None]]) -> None:
        """A yielded attempt ended (its job queued again): look at the outbox again."""
        draining.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a yielded transfer attempt failed", exc_info=task.exception())
        self.wake.set()

    def _woken(self, fifo: wakeup.WakeFifo) -> None:
        fifo.drain()
        self.wake.set()

    def _notified_from_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        """A wake-up through the index (another machine's enqueue), on its thread."""
        self.index_wakeups += 1
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to wake
            loop.call_soon_threadsafe(self.wake.set)

    async def _egress(self, j: dict[str, Any], target: Any) -> None:
        from fenji.routing import egress

        t0 = time.monotonic()
        beat = asyncio.create_task(self._keep_lease(j))
        try:
            n = await asyncio.to_thread(egress.send_case, self.cfg, self.store, target,
                                        j["case_id"])
        except egress.EgressError as exc:
            await asyncio.to_thread(outbox_db.fail, self.store, j["job_id"], self.owner,
                                    str(exc), self.clock(), self.policy, self.rng,
                                    retryable=exc.retryable)
            log.warning("egress job=%s case=%s dest=%s ms=%.0f outcome=failed reason=%s",
                        j["job_id"], j["case_id"], target.name, (time.monotonic() - t0) * 1000,
                        exc)
            return
        finally:
            beat.cancel()
        await asyncio.to_thread(outbox_db.complete, self.store, j["job_id"], self.owner,
                                self.clock())
        await asyncio.to_thread(self.events.egress_delivered, j, target.name, self.clock())
        log.info("egress job=%s case=%s dest=%s (%s) instances=%d ms=%.0f outcome=delivered",
                 j["job_id"], j["case_id"], target.name, egress.describe(target), n,
                 (time.monotonic() - t0) * 1000)

    async def _keep_lease(self, j: dict[str, Any]) -> None:
        """Extend the job's lease while a hand-over with no progress of its own runs (a
        large case's C-STORE to an archive): past ``outbox.lease_s`` another process of a
        center would take the job and send the case a second time."""
        while True:
            await asyncio.sleep(self.policy.lease_s / 3)
            if not await asyncio.to_thread(outbox_db.progress, self.store, j["job_id"],
                                           self.owner, int(j.get("bytes_sent") or 0),
                                           self.clock(), self.policy):
                return

    async def _attempt(self, session: aiohttp.ClientSession, job: Any,
                       preempt: asyncio.Event | None = None) -> None:
        """Send one job; it yields at its next frame or chunk once ``preempt`` is set
        (the loop found a job of higher priority) or its lease was lost."""
        j = job if isinstance(job, dict) else job.__dict__
        dest = j["destination"]
        target = self.cfg.egress_target(dest)
        if target is not None:
            await self._egress(j, target)
            return
        peer = self.cfg.peer(dest)
        path = self.store.root / "bundles" / f"{j['bundle_id']}.fbundle"
        t0 = time.monotonic()
        # A bundle its release still encodes: sent as it is written (routing/encoding.py).
        encoding_now = encoding.encoding(j)
        if peer is None or not (path.exists() or encoding_now):
            reason = (f"destination {dest!r} is not a configured peer" if peer is None
                      else f"bundle file {path} is missing")
            await asyncio.to_thread(outbox_db.fail, self.store, j["job_id"], self.owner,
                                    reason, self.clock(), self.policy, self.rng, retryable=False)
            await asyncio.to_thread(self.events.dead, j, reason, self.clock())
            log.error("transfer job=%s case=%s dest=%s outcome=dead reason=%s", j["job_id"],
                      j["case_id"], dest, reason)
            return
        last_progress = [time.monotonic()]
        moved = [False]
        lost = [False]

        async def progress(offset: int, total: int) -> None:
            moved[0] = True
            now = time.monotonic()
            if now - last_progress[0] >= 1.0 or offset == total:
                last_progress[0] = now
                # An fsynced commit: off the event loop, which also serves DICOMweb.
                if not await asyncio.to_thread(outbox_db.progress, self.store, j["job_id"],
                                               self.owner, offset, self.clock(), self.policy):
                    lost[0] = True  # another sender holds the job now: stop sending it

        async def should_yield() -> bool:
            """Lost the lease, or the loop found a job of higher priority ready."""
            return lost[0] or (preempt is not None and preempt.is_set())

        # A bundle this node is still receiving (a relay forwarding a STAT bundle cut-through,
        # routing/relay.py): send what is committed, wait for the rest.
        inc = await asyncio.to_thread(relay.incoming, self.store, j["bundle_id"])
        growing: relay.Growing | encoding.Encoding | None = (
            relay.Growing(self.store, j["bundle_id"], inc.length)
            if inc is not None and inc.state == upload.RECEIVING else
            encoding.Encoding(self.store, j["bundle_id"]) if encoding_now else None)
        try:
            # A bundle still encoded: its manifest is read once it is whole.
            manifest = (None if isinstance(growing, encoding.Encoding)
                        else await asyncio.to_thread(manifest_of, path))
            await asyncio.to_thread(self.events.sent, j, self.clock(),
                                    (growing.length or 0) if growing else path.stat().st_size)
            t = self.cfg.transfer
            pipeline = Pipeline(single_request_bytes=t.single_request_bytes,
                                frame_bytes=t.frame_bytes)
            out = await send_bundle(session, peer.url, self.sender, self.peer_keys[dest], path,
                                    j["bundle_id"], receiver=dest, sizer=self._sizer(dest),
                                    manifest=manifest,
                                    should_yield=should_yield, on_progress=progress,
                                    ssl=self._ssl(dest), pace=self._pace(dest),
                                    meter=self.meters.setdefault(dest, LinkMeter()),
                                    pipeline=pipeline, growing=growing,
                                    fresh=int(j.get("bytes_sent") or 0) == 0)
        except TransferError as exc:
            await asyncio.to_thread(self._save_meter, dest)
            if isinstance(growing, encoding.Encoding) and growing.dropped:
                log.warning("transfer job=%s case=%s dest=%s outcome=dropped reason=%s",
                            j["job_id"], j["case_id"], dest, exc)
                return  # the failed release removed the job: nothing to retry
            decision = await asyncio.to_thread(
                outbox_db.fail, self.store, j["job_id"], self.owner, str(exc), self.clock(),
                self.policy, self.rng, retryable=exc.retryable, progressed=moved[0],
                max_delay_s=WAITING_FOR_PEER_RETRY_S if exc.waiting_for_peer else None)
            if isinstance(decision, DeadLetter):
                await asyncio.to_thread(self.events.dead, j, decision.reason, self.clock())
            log.warning("transfer job=%s case=%s dest=%s ms=%.0f outcome=failed reason=%s",
                        j["job_id"], j["case_id"], dest, (time.monotonic() - t0) * 1000, exc)
            return
        finally:
            if growing is not None:
                growing.done()
        await asyncio.to_thread(self._save_meter, dest)
        if isinstance(out, Delivered):
            now = self.clock()
            await asyncio.to_thread(keep_receipt, self.store, j, out, now, self.events)
            await asyncio.to_thread(outbox_db.complete, self.store, j["job_id"], self.owner, now)
            ctx = self._ssl(dest)
            resumed = ctx.handshakes() if isinstance(ctx, ResumingContext) else []
            log.info("transfer job=%s case=%s dest=%s bytes=%d ms=%.0f outcome=delivered "
                     "instances=%d cut_through=%s tls_resumed=%d/%d", j["job_id"],
                     j["case_id"], dest, out.bytes_sent, out.seconds * 1000,
                     len(out.receipt["instances"]), "yes" if growing else "no", sum(resumed),
                     len(resumed))
        else:
            if lost[0] and isinstance(growing, encoding.Encoding) and await asyncio.to_thread(
                    encoding.gone, self.store, j["bundle_id"]):
                log.warning("transfer job=%s case=%s dest=%s outcome=dropped reason=its "
                            "release failed", j["job_id"], j["case_id"], dest)
                return
            await asyncio.to_thread(outbox_db.release, self.store, j["job_id"], self.owner,
                                    self.clock())
            log.info("transfer job=%s case=%s dest=%s bytes=%d offset=%d outcome=yielded "
                     "reason=higher-priority-ready", j["job_id"], j["case_id"], dest,
                     out.bytes_sent, out.offset)
