"""Link emulator: a fault-injecting TCP proxy on loopback.

`tc netem` does not exist on these machines, so thin links are emulated in
user space.  Every byte between a client and its target passes, per direction,
a token bucket (rate and burst), a delay line (one-way latency = RTT/2 plus
jitter; order preserved), periodic stalls (nothing moves, connections kept),
periodic black-hole outages (nothing moves and new connections are held
unanswered until the link is back), and connection resets after a random
number of bytes (RST, via SO_LINGER 0).  The decisions are made by the pure
core in :mod:`fenji.routing.linkemu.core`; this module is the asyncio shell.

Profiles live in ``conf/links/*.toml`` (satellite, 3g, provincial, lab)::

    python -m fenji.routing.linkemu.proxy --profile satellite --listen 127.0.0.1:0 \\
        --target 127.0.0.1:11112 [--seed N] [--time-scale X]

prints one JSON line when ready (``{"listen": "127.0.0.1:PORT", "target": ...,
"profile": ...}``), logs one INFO line per connection (``conn=3 up=... down=...
s=... outcome=closed|reset-injected|outage|target-refused``), and on SIGTERM
or SIGINT logs the totals (``stats={...}``) and exits 0.  ``--time-scale 10``
makes outages and stalls come and go ten times faster; rates, latency and
jitter are not scaled.

In the same process (tests)::

    async with LinkEmulator(load_profile("3g"), target=("127.0.0.1", port)) as link:
        ...connect to ("127.0.0.1", link.port)...; link.stats()

From another thread (benchmarks beside storescu/storescp)::

    link = LinkEmulator(load_profile("satellite"), ("127.0.0.1", port), seed=1)
    handle = link.start_in_thread()   # .port, .stats(), .stop()
    ...
    handle.stop()

``stats()`` returns ``connections``, ``active``, ``bytes_up`` (client to
target), ``bytes_down``, ``resets_injected``, ``held_in_outage`` (connections
that arrived during an outage), ``blackout_waits`` (pieces held back by an
outage or stall), ``outage_s`` and ``stall_s``
(time the link has spent black so far).  The stats object is also readable by
attribute (``link.stats.bytes_up``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fenji.gateway.errors import ConfigError
from fenji.routing.linkemu.core import (
    RESET_DISTRIBUTIONS,
    Direction,
    Periodic,
    clear_at,
    reset_budget,
)

__all__ = [
    "CONF_DIR", "LinkEmulator", "LinkProfile", "LinkProfileError", "LinkStats", "LinkThread",
    "Periodic", "Schedule", "load_profile", "main", "profile_names",
]

log = logging.getLogger(__name__)


def _find_conf_dir() -> Path:
    """conf/links of the repository this module belongs to.

    A strict editable install runs this file from a link tree under build/, so
    look at the resolved path first, then walk up from the file as installed.
    """
    here = Path(__file__)
    for base in (*here.resolve().parents, *here.absolute().parents):
        cand = base / "conf" / "links"
        if cand.is_dir():
            return cand
    return here.resolve().parents[1] / "conf" / "links"


CONF_DIR = _find_conf_dir()
# Set FENJI_LINK_PROFILES to a directory to resolve names there instead.
_CONF_ENV = "FENJI_LINK_PROFILES"

# Read size of the proxy; pieces are further cut to the bucket's burst.
_CHUNK = 16 * 1024
# Pieces queued in one direction's delay line; with _CHUNK this bounds memory
# per connection (4 MB) well above any profile's bandwidth-delay product.
_LINE_DEPTH = 256


class LinkProfileError(ConfigError, ValueError):
    """A link profile is missing or wrong; the message names the key path."""


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """One emulated link.  "up" is client -> target, "down" target -> client."""

    name: str = "lab"
    description: str = ""
    # Bits per second each way (0: unlimited).  VSAT and 3G are asymmetric.
    rate_up_bps: float = 0.0
    rate_down_bps: float = 0.0
    # Round-trip time; each direction adds half.
    rtt_ms: float = 0.0
    # Extra one-way delay, uniform in [0, jitter_ms]; bytes keep their order.
    jitter_ms: float = 0.0
    # Token-bucket depth: how far a sender may run ahead of the rate.  Small,
    # like a modem's buffer, so that throughput is the rate from the start.
    burst_bytes: int = 16 * 1024
    # Outage (black hole): every `outage_every_s` the link is gone for the
    # last `outage_s` of the period; the first comes one period after start.
    outage_every_s: float = 0.0
    outage_s: float = 0.0
    # Reset a connection (RST) after a random number of bytes (both ways
    # together) with this mean; 0: never.  exponential | uniform | fixed.
    reset_mean_bytes: int = 0
    reset_distribution: str = "exponential"
    # Stall: every `stall_every_s` nothing moves for `stall_s`, connections
    # kept and new ones accepted (a congested hop, not a lost link).  Placed
    # half a period off the outages.
    stall_every_s: float = 0.0
    stall_s: float = 0.0


def profile_names(conf_dir: Path | str | None = None) -> list[str]:
    """Names of the profiles shipped in ``conf/links`` (or ``conf_dir``)."""
    return sorted(p.stem for p in _conf_dir(conf_dir).glob("*.toml"))


def _conf_dir(conf_dir: Path | str | None) -> Path:
    if conf_dir is not None:
        return Path(conf_dir)
    env = os.environ.get(_CONF_ENV)
    return Path(env) if env else CONF_DIR


def _profile_path(name_or_path: str | os.PathLike[str], conf_dir: Path | str | None) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists() or len(p.parts) > 1:
        return p
    return _conf_dir(conf_dir) / f"{p.name}.toml"


def load_profile(name_or_path: str | os.PathLike[str], *,
                 conf_dir: Path | str | None = None) -> LinkProfile:
    """A profile by name (``conf/links/NAME.toml``) or by path.

    Unknown keys, wrong types and negative numbers raise
    :class:`LinkProfileError` naming every bad key path and value.
    """
    path = _profile_path(name_or_path, conf_dir)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        known = ", ".join(profile_names(conf_dir)) or "none"
        raise LinkProfileError([f"link profile {str(name_or_path)!r}: {path}: "
                                f"{exc.strerror or exc} (known profiles: {known})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise LinkProfileError([f"{path}: not valid TOML: {exc}"]) from exc
    errors = [f"{path}: {key}: unknown key (a profile has one [link] table)"
              for key in raw if key != "link"]
    section = raw.get("link", {})
    if not isinstance(section, dict):
        errors.append(f"{path}: link = {section!r} is not a table")
        section = {}
    hints = typing.get_type_hints(LinkProfile)
    kwargs: dict[str, Any] = {}
    for key, value in section.items():
        kp = f"link.{key}"
        if key not in hints:
            errors.append(f"{path}: {kp}: unknown key (known keys: {', '.join(sorted(hints))})")
            continue
        tp = hints[key]
        if isinstance(value, bool) or not (
                isinstance(value, tp) or (tp is float and isinstance(value, int))):
            errors.append(f"{path}: {kp} = {value!r} is not {'a' if tp is not int else 'an'} "
                          f"{tp.__name__}")
            continue
        if tp in (int, float) and value < 0:
            errors.append(f"{path}: {kp} = {value!r} must be >= 0")
            continue
        kwargs[key] = float(value) if tp is float else value
    dist = kwargs.get("reset_distribution", "exponential")
    if dist not in RESET_DISTRIBUTIONS:
        errors.append(f"{path}: link.reset_distribution = {dist!r} is not one of "
                      f"{', '.join(RESET_DISTRIBUTIONS)}")
    for every, length in (("outage_every_s", "outage_s"), ("stall_every_s", "stall_s")):
        if kwargs.get(length, 0) > 0 and not 0 < kwargs.get(length, 0) < kwargs.get(every, 0):
            errors.append(f"{path}: link.{length} = {kwargs[length]!r} needs "
                          f"0 < {length} < {every} (= {kwargs.get(every, 0)!r})")
    if errors:
        raise LinkProfileError(errors)
    kwargs.setdefault("name", path.stem)
    return LinkProfile(**kwargs)


# Kept for callers of the first version; the calendar lives in the core now.
Schedule = Periodic


@dataclass
class LinkStats:
    """Counters of one emulator.  ``stats()`` gives a snapshot as a dict."""

    connections: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    resets_injected: int = 0
    held_in_outage: int = 0
    blackout_waits: int = 0
    _black_s: Callable[[], tuple[float, float]] = field(default=lambda: (0.0, 0.0), repr=False)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)
                               if not f.name.startswith("_")}
        out["outage_s"], out["stall_s"] = (round(x, 3) for x in self._black_s())
        return out

    __call__ = as_dict


class LinkEmulator:
    """A fault-injecting TCP proxy for one link (one listening socket).

    Several emulators may share one event loop.  ``seed`` makes jitter and
    reset points reproducible (one ``random.Random`` per emulator; with
    several concurrent connections the draw order follows their scheduling).
    """

    def __init__(self, profile: LinkProfile, target: tuple[str, int],
                 listen: tuple[str, int] = ("127.0.0.1", 0), seed: int = 0,
                 time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale = {time_scale!r} must be > 0")
        self.profile, self.target, self.listen = profile, target, listen
        self.seed, self.time_scale = seed, time_scale
        self.rng = random.Random(seed)
        self.t0 = time.monotonic()
        p, k = profile, time_scale
        self.outage = Periodic(p.outage_every_s / k, p.outage_s / k)
        self.stall = Periodic(p.stall_every_s / k, p.stall_s / k, offset_s=p.stall_every_s / 2 / k)
        self.stats = LinkStats(_black_s=self._black_time)
        self.server: asyncio.Server | None = None
        self.port = 0
        self._conn_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        """Seconds since the emulator was created (the core's clock)."""
        return time.monotonic() - self.t0

    def _black_time(self) -> tuple[float, float]:
        t = self.now()
        return self.outage.time_active(0.0, t), self.stall.time_active(0.0, t)

    def in_outage(self) -> bool:
        return self.outage.active(self.now())

    async def __aenter__(self) -> LinkEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def held_bytes(self) -> int:
        """What the link may hold toward the target beyond what it is sending: its
        bandwidth-delay product plus the modem buffer (at least one read)."""
        p = self.profile
        bdp = int(p.rate_up_bps / 8 * p.rtt_ms / 1000) if p.rate_up_bps else 1 << 20
        return max(_CHUNK, bdp + p.burst_bytes)

    async def start(self) -> None:
        # The proxy reads from its client only as fast as the link sends, so the
        # kernel's receive buffer is the queue in front of the link.  Left to
        # autotuning on loopback it holds megabytes: seconds on a 1 Mbit/s link,
        # a queue no modem has, that a sender's urgent bytes would wait behind.
        # Cap it to what the emulated link holds (accepted sockets inherit it).
        self.server = await asyncio.start_server(self._handle, self.listen[0], self.listen[1],
                                                 limit=_CHUNK)
        for sock in self.server.sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.held_bytes() // 2)
        self.port = int(self.server.sockets[0].getsockname()[1])
        log.debug("link=%s listening port=%d target=%s:%d", self.profile.name, self.port,
                  *self.target)

    async def stop(self) -> None:
        """Stop listening and abort every connection still open."""
        if self.server is not None:
            self.server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
            self.server = None

    # -- per connection ---------------------------------------------------

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        cid = next(self._conn_ids)
        self.stats.connections += 1
        self.stats.active += 1
        t_start = time.monotonic()
        moved = [0, 0]
        outcome = "closed"
        uw: asyncio.StreamWriter | None = None
        try:
            # A black hole answers nothing: a connection made during an outage
            # is held, unread and not forwarded, until the link is back.
            clear = self.outage.clear_at(self.now())
            if clear > self.now():
                self.stats.held_in_outage += 1
                outcome = "outage"
                await asyncio.sleep(clear - self.now())
                outcome = "closed"
            try:
                ur, uw = await asyncio.open_connection(*self.target)
            except OSError as exc:
                outcome = "target-refused"
                log.debug("link=%s conn=%d target refused: %s", self.profile.name, cid, exc)
                _rst(cw)
                return
            for w in (cw, uw):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            outcome = await self._proxy(cr, cw, ur, uw, moved)
        except asyncio.CancelledError:
            outcome = "stopped"
            _rst(cw)
            if uw is not None:
                _rst(uw)
        finally:
            for end in (cw, uw):
                if end is not None:
                    with contextlib.suppress(Exception):
                        end.close()
            self.stats.active -= 1
            self._tasks.discard(task)
            log.info("link=%s conn=%d up=%d down=%d s=%.2f outcome=%s", self.profile.name, cid,
                     moved[0], moved[1], time.monotonic() - t_start, outcome)

    async def _proxy(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter,
                     ur: asyncio.StreamReader, uw: asyncio.StreamWriter, moved: list[int]) -> str:
        p = self.profile
        black = (self.outage, self.stall)
        now = self.now()
        up = Direction(p.rate_up_bps, p.burst_bytes, p.rtt_ms / 2000, p.jitter_ms / 1000,
                       black, self.rng, now)
        down = Direction(p.rate_down_bps, p.burst_bytes, p.rtt_ms / 2000, p.jitter_ms / 1000,
                         black, self.rng, now)
        budget = [reset_budget(p.reset_mean_bytes, p.reset_distribution, self.rng)]
        reset = asyncio.Event()

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, d: Direction,
                       idx: int) -> None:
            # Two stages, as on a real link: the bucket paces when bytes leave
            # (serialisation); the delay line adds latency without holding up
            # the bytes behind them (propagation).
            line: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(_LINE_DEPTH)

            async def deliver() -> None:
                try:
                    while True:
                        due, data = await line.get()
                        await asyncio.sleep(max(0.0, due - self.now()))
                        if data is None:
                            break
                        if not data:  # the reset point has reached the far end
                            reset.set()
                            return
                        w.write(data)
                        await w.drain()
                        moved[idx] += len(data)
                        if idx == 0:
                            self.stats.bytes_up += len(data)
                        else:
                            self.stats.bytes_down += len(data)
                    with contextlib.suppress(OSError):
                        if w.can_write_eof():
                            w.write_eof()
                except (ConnectionError, OSError):
                    reset.set()

            writer = asyncio.create_task(deliver())
            try:
                while not reset.is_set():
                    data = await r.read(_CHUNK)
                    if not data:
                        break
                    cut = len(data)
                    if budget[0] >= 0:
                        cut = min(cut, budget[0])
                        budget[0] -= cut
                    pos = 0
                    while pos < cut:
                        pushes = d.blackout_pushes
                        n, at = d.grant(cut - pos, self.now())
                        self.stats.blackout_waits += d.blackout_pushes - pushes
                        await asyncio.sleep(max(0.0, at - self.now()))
                        await line.put((d.arrival(at), data[pos:pos + n]))
                        pos += n
                    if cut < len(data):  # the reset point: deliver what came before it
                        budget[0] = -2
                        await line.put((d.arrival(d.grant(0, self.now())[1]), b""))
                        await writer
                        return
                else:
                    return
                await line.put((d.arrival(d.grant(0, self.now())[1]), None))
                await writer
            except (ConnectionError, OSError):
                reset.set()
            finally:
                if not writer.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        if reset.is_set():
                            writer.cancel()
                        await writer

        pumps = [asyncio.create_task(pump(cr, uw, up, 0)),
                 asyncio.create_task(pump(ur, cw, down, 1))]
        waiter = asyncio.create_task(reset.wait())
        try:
            pending = {*pumps, waiter}
            while not reset.is_set() and not all(t.done() for t in pumps):
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            reset.set()  # stopped: take the pumps down with us
            raise
        finally:
            waiter.cancel()
            if reset.is_set():
                for t in pumps:
                    t.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        if budget[0] == -2 and reset.is_set():
            self.stats.resets_injected += 1
            _rst(cw)
            _rst(uw)
            return "reset-injected"
        if reset.is_set():
            _rst(cw)
            _rst(uw)
            return "peer-reset"
        return "closed"

    # -- from another thread ---------------------------------------------

    def start_in_thread(self) -> LinkThread:
        """Run on a private event loop in a daemon thread; returns a handle."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                failed.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"link-{self.profile.name}",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("link emulator thread did not start within 10 s")
        if failed:
            raise failed[0]
        return LinkThread(self)

    def stop_thread(self) -> None:
        """Stop an emulator started by :meth:`start_in_thread` (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        fut = asyncio.run_coroutine_threadsafe(self.stop(), loop)
        with contextlib.suppress(Exception):
            fut.result(15)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._loop = self._thread = None


class LinkThread:
    """Handle on an emulator running in its own thread: ``.port``, ``.stats()``, ``.stop()``."""

    def __init__(self, emulator: LinkEmulator) -> None:
        self.emulator = emulator
        self.port = emulator.port
        self.profile = emulator.profile

    @property
    def stats(self) -> LinkStats:
        """Call it for a snapshot dict (``stats()``) or read counters by attribute."""
        return self.emulator.stats

    def stop(self) -> None:
        self.emulator.stop_thread()

    stop_thread = stop

    def __enter__(self) -> LinkThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _rst(w: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a dropped mobile link looks to TCP."""
    sock = w.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _main_async(args: argparse.Namespace) -> None:
    emu = LinkEmulator(load_profile(args.profile), args.target, args.listen, seed=args.seed,
                       time_scale=args.time_scale)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await emu.start()
    host = emu.listen[0]
    shown = f"[{host}]" if ":" in host else host
    print(json.dumps({"listen": f"{shown}:{emu.port}",
                      "target": "{}:{}".format(*args.target), "profile": emu.profile.name,
                      "seed": args.seed, "time_scale": args.time_scale}), flush=True)
    await stop.wait()
    await emu.stop()
    log.info("link=%s stopped stats=%s", emu.profile.name, json.dumps(emu.stats.as_dict()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fenji.routing.linkemu.proxy",
                                 description="Fault-injecting TCP proxy emulating a thin link.")
    ap.add_argument("--profile", default="lab",
                    help="profile name in conf/links (satellite, 3g, provincial, lab) or a path")
    ap.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0),
                    help="HOST:PORT to listen on (default 127.0.0.1:0)")
    ap.add_argument("--target", type=_hostport, required=True, help="HOST:PORT to forward to")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="make outages and stalls come and go this many times faster")
    ap.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(_main_async(args))
    except (ValueError, OSError) as exc:
        print(f"linkemu: {exc}", file=sys.stderr)
        return 2
    return 0


def stats_dict(emu: LinkEmulator) -> dict[str, Any]:
    return emu.stats.as_dict()


__all__ += ["clear_at"]

if __name__ == "__main__":
    sys.exit(main())
