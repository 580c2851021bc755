"""A center's processes in its index: which are alive (issue 14, part 3).

The processes of one center (``[node] shared_store``) may run on several
machines that share a PostgreSQL index and a bucket; the store folder's
``flock`` (gateway/node.py) says only who runs on *this* machine.  So each
process upserts its row in ``processes`` every ``node.heartbeat_s``, and a
process is dead when

* its row was not refreshed for ``node.process_lease_s`` as the watching process
  counts it (a machine that died, a process that hangs; :class:`Watch`), or
* it ran on this machine, in this PID namespace, and its pid is gone (``kill -9``
  seen at once, without waiting out the lease).

Work a process holds in the index under its owner name (an outbox job's
``lease_owner``) is then handed on by whichever live process notices first
(:class:`Heartbeat`'s ``on_dead``), not after the job's own lease.  A live
process wrongly counted dead (stalled longer than the lease) loses no more
than its lease: the next renewal of the job fails and it stops sending.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fenji.gateway.store.index import Index

log = logging.getLogger(__name__)


def host_id() -> str:
    """This machine and PID namespace, ``hostname/pidns``: pids are compared only
    within one (two containers with one host name have different namespaces)."""
    ns = "0"
    with contextlib.suppress(OSError):
        ns = str(os.stat("/proc/self/ns/pid").st_ino)
    return f"{socket.gethostname()}/{ns}"


def owner_name(node: str, host: str | None = None, pid: int | None = None) -> str:
    """The name a process leases work under: node, machine and pid (a pid alone
    repeats across machines)."""
    return f"{node}@{host or host_id()}:{os.getpid() if pid is None else pid}"


def pid_running(pid: int) -> bool:
    """Whether ``pid`` exists on this machine (a zombie counts as gone)."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError, ValueError):
        return False
    return state not in (b"Z", b"X")


class Watch:
    """Which processes are dead, judged by what this process saw.

    A row is stale when its ``seen_at`` has not changed for ``lease_s`` of *this*
    process's monotonic clock: the machines' wall clocks are never compared, so
    one running late is not taken for dead.  A process that starts watching
    waits a whole lease before it calls another machine's process dead; one on
    this machine whose pid is gone is dead at once.
    """

    def __init__(self, host: str, lease_s: float,
                 running: Callable[[int], bool] = pid_running) -> None:
        self.host = host
        self.lease_s = lease_s
        self.running = running
        self._seen: dict[str, tuple[float, float]] = {}  # owner -> (seen_at, changed at)

    def dead(self, rows: Iterable[dict[str, Any]], mono_now: float) -> list[dict[str, Any]]:
        """The rows (``processes``: owner, host, pid, seen_at) that are dead now."""
        out, present = [], set()
        for r in rows:
            owner, seen_at = str(r["owner"]), float(r["seen_at"])
            present.add(owner)
            prev = self._seen.get(owner)
            if prev is None or prev[0] != seen_at:
                self._seen[owner] = prev = (seen_at, mono_now)
            if mono_now - prev[1] > self.lease_s or (
                    r["host"] == self.host and not self.running(int(r["pid"]))):
                out.append(dict(r))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return out


def beat(index: Index, owner: str, host: str, pid: int, started_at: float, now: float) -> None:
    """Say ``owner`` is alive (``now``: any value that changes at every beat)."""
    with index.atomic() as con:
        con.execute("INSERT INTO processes(owner, host, pid, started_at, seen_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(owner) DO UPDATE SET "
                    "seen_at = excluded.seen_at", (owner, host, int(pid), started_at, now))


def rows(index: Index) -> list[dict[str, Any]]:
    return [dict(r) for r in index.reader().execute(
        "SELECT owner, host, pid, seen_at FROM processes ORDER BY owner")]


def forget(index: Index, dead_rows: Iterable[dict[str, Any]]) -> None:
    """Remove the rows of dead processes whose work was handed on; a row beaten
    again meanwhile (its ``seen_at`` moved: the process came back) stays."""
    with index.atomic() as con:
        for r in dead_rows:
            con.execute("DELETE FROM processes WHERE owner = ? AND seen_at = ?",
                        (r["owner"], r["seen_at"]))


def local_dead(index: Index, host: str,
               running: Callable[[int], bool] = pid_running) -> list[str]:
    """The registered processes of this machine whose pid is gone (at start-up:
    certain without watching, unlike another machine's)."""
    return [str(r["owner"]) for r in rows(index)
            if r["host"] == host and not running(int(r["pid"]))]


@dataclass
class Heartbeat:
    """A thread that keeps ``owner`` alive in the index and hands on the dead's work.

    ``on_dead(owners, now)`` is called with the owners found dead at a beat; when
    it returns, their rows are removed.  It must be idempotent (several live
    processes may see the same death at once): conditional updates in the index.
    """

    index: Index
    owner: str
    host: str
    interval_s: float
    lease_s: float
    on_dead: Callable[[list[str], float], None]
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.started_at = self.clock()
        self.watch = Watch(self.host, self.lease_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> list[str]:
        """One beat: this process alive, the dead's work handed on; the dead owners."""
        beat(self.index, self.owner, self.host, os.getpid(), self.started_at, self.clock())
        gone = [r for r in self.watch.dead(rows(self.index), self.monotonic())
                if r["owner"] != self.owner]
        if gone:
            owners = [str(r["owner"]) for r in gone]
            self.on_dead(owners, self.clock())
            forget(self.index, gone)
            log.info("processes dead=%s: their work handed on (node.process_lease_s=%g)",
                     ",".join(owners), self.lease_s)
        return [str(r["owner"]) for r in gone]

    def start(self) -> None:
        self.step()  # registered before the node says it is ready
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except self.index.errors as exc:  # the index is away: try at the next beat
                log.warning("heartbeat owner=%s failed: %s", self.owner, exc)

    def stop(self) -> None:
        """Stop beating and leave the table (a clean stop is not a death to handle)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 30)
        with contextlib.suppress(*self.index.errors):
            with self.index.atomic() as con:
                con.execute("DELETE FROM processes WHERE owner = ?", (self.owner,))
