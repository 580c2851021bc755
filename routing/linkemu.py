"""Link emulator: a fault-injecting TCP proxy on loopback.

`tc netem` does not exist on these machines, so thin links are emulated in
user space: every byte between a client and its target passes a token bucket
(rate), a delay line (one-way latency plus jitter, order preserved), and
fault injection: connection resets after a random number of bytes, stalls,
and periodic black-hole outages (nothing passes, new connections hang).

Profiles live in ``conf/links/*.toml`` (satellite, 3g, provincial, lab)::

    python -m fenji.routing.linkemu --profile satellite --listen 127.0.0.1:0 \\
        --target 127.0.0.1:8042 [--seed N] [--time-scale X]

prints one JSON line when ready (``{"listen": "127.0.0.1:PORT", ...}``), logs a
line per connection, and exits on SIGTERM.  ``--time-scale 10`` makes outages
and stalls come and go ten times faster (rates are not scaled).

The shaping logic (:class:`TokenBucket`, :class:`Schedule`) is pure and takes
``now``; the asyncio shell around it does the sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import socket
import struct
import sys
import threading
import time
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fenji.routing.shaping import TokenBucket

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "links"


@dataclass(frozen=True, slots=True)
class LinkProfile:
    name: str = "lab"
    # Bits per second each way (0: unlimited).
    rate_up_bps: float = 0.0
    rate_down_bps: float = 0.0
    # Round-trip time; each direction gets half.
    rtt_ms: float = 0.0
    # Extra one-way delay, uniform in [0, jitter_ms]; order is preserved.
    jitter_ms: float = 0.0
    # Token-bucket depth: how far a sender may burst above the rate.
    burst_bytes: int = 16 * 1024
    # Outage: every `outage_every_s` the link goes black for `outage_s`.
    outage_every_s: float = 0.0
    outage_s: float = 0.0
    # Reset a connection after an exponentially distributed number of bytes
    # with this mean (0: never).
    reset_mean_bytes: int = 0
    # Stall (connection kept, nothing moves) every `stall_every_s` for `stall_s`.
    stall_every_s: float = 0.0
    stall_s: float = 0.0


def _profile_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    return CONF_DIR / f"{name_or_path}.toml"


def load_profile(name_or_path: str) -> LinkProfile:
    """A profile by name (conf/links/NAME.toml) or path; key-path errors."""
    path = _profile_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        known = sorted(q.stem for q in CONF_DIR.glob("*.toml"))
        raise ValueError(f"link profile {name_or_path!r}: {exc.strerror} (known: "
                         f"{', '.join(known)})") from exc
    section = raw.get("link", raw)
    hints = typing.get_type_hints(LinkProfile)
    errors, kwargs = [], {}
    for key, value in section.items():
        if key not in hints:
            errors.append(f"link.{key}: unknown key (known: {', '.join(sorted(hints))})")
            continue
        tp = hints[key]
        if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, tp) or isinstance(value, bool):
            errors.append(f"link.{key} = {value!r} is not {tp.__name__}")
            continue
        if isinstance(value, int | float) and value < 0:
            errors.append(f"link.{key} = {value!r} must be >= 0")
            continue
        kwargs[key] = value
    if errors:
        raise ValueError(f"{path}: " + "; ".join(errors))
    kwargs.setdefault("name", path.stem)
    return LinkProfile(**kwargs)


@dataclass
class Schedule:
    """Pure outage/stall calendar (scaled by time_scale)."""

    every_s: float
    length_s: float
    offset_s: float = 0.0

    def active(self, t: float) -> bool:
        if self.every_s <= 0 or self.length_s <= 0:
            return False
        phase = (t - self.offset_s) % self.every_s
        return phase >= self.every_s - self.length_s

    def until_clear(self, t: float) -> float:
        if not self.active(t):
            return 0.0
        phase = (t - self.offset_s) % self.every_s
        return self.every_s - phase


@dataclass
class LinkStats:
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    resets_injected: int = 0
    outage_waits: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class LinkEmulator:
    profile: LinkProfile
    target: tuple[str, int]
    listen: tuple[str, int] = ("127.0.0.1", 0)
    seed: int = 0
    time_scale: float = 1.0
    stats: LinkStats = field(default_factory=LinkStats)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.t0 = time.monotonic()
        p, k = self.profile, max(self.time_scale, 1e-9)
        # The first outage comes one period in, not at start-up.
        self.outage = Schedule(p.outage_every_s / k, p.outage_s / k)
        self.stall = Schedule(p.stall_every_s / k, p.stall_s / k, offset_s=p.stall_every_s / 2 / k)
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def __aenter__(self) -> LinkEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.listen[0], self.listen[1])
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _wait_blackout(self) -> None:
        waited = False
        while True:
            d = max(self.outage.until_clear(self.now()), self.stall.until_clear(self.now()))
            if d <= 0:
                break
            waited = True
            await asyncio.sleep(min(d, 1.0))
        if waited:
            self.stats.outage_waits += 1

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        t_start = time.monotonic()
        await self._wait_blackout()  # during an outage a new connection just hangs
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError as exc:
            log.info("link=%s conn outcome=target-refused reason=%s", self.profile.name, exc)
            cw.close()
            return
        for w in (cw, uw):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        p = self.profile
        budget = [int(self.rng.expovariate(1 / p.reset_mean_bytes))
                  if p.reset_mean_bytes else -1]
        outcome = ["closed"]

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, rate: float,
                       up: bool) -> None:
            # Two stages, as on a real link: the rate paces when bytes *leave*
            # (serialisation), the delay line adds latency without holding up the
            # bytes behind them (propagation).  A bounded queue between them keeps
            # memory flat.
            bucket = TokenBucket(rate, p.burst_bytes, time.monotonic())
            one_way = p.rtt_ms / 2000.0
            line: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=256)

            async def deliver() -> None:
                try:
                    while (item := await line.get()) is not None:
                        due, data = item
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                        w.write(data)
                        await w.drain()
                        if up:
                            self.stats.bytes_up += len(data)
                        else:
                            self.stats.bytes_down += len(data)
                except (ConnectionError, OSError):
                    pass
                finally:
                    with contextlib.suppress(Exception):
                        if w.can_write_eof():
                            w.write_eof()

            writer = asyncio.create_task(deliver())
            last_due = 0.0
            try:
                while True:
                    data = await r.read(16384)
                    if not data:
                        break
                    await self._wait_blackout()
                    if budget[0] >= 0:
                        budget[0] -= len(data)
                        if budget[0] < 0:
                            outcome[0] = "reset-injected"
                            self.stats.resets_injected += 1
                            writer.cancel()
                            _rst(cw)
                            _rst(uw)
                            return
                    await asyncio.sleep(bucket.delay(len(data), time.monotonic()))
                    due = time.monotonic() + one_way + self.rng.uniform(0, p.jitter_ms / 1000)
                    last_due = due = max(due, last_due)  # never reorder
                    await line.put((due, data))
            except (ConnectionError, OSError):
                pass
            finally:
                if not writer.done():
                    with contextlib.suppress(asyncio.QueueFull):
                        await line.put(None)
                    with contextlib.suppress(Exception):
                        await writer

        await asyncio.gather(pump(cr, uw, p.rate_up_bps, True),
                             pump(ur, cw, p.rate_down_bps, False))
        for w in (cw, uw):
            with contextlib.suppress(Exception):
                w.close()
        log.info("link=%s conn up=%d down=%d s=%.1f outcome=%s", p.name, self.stats.bytes_up,
                 self.stats.bytes_down, time.monotonic() - t_start, outcome[0])

    def start_in_thread(self) -> LinkEmulator:
        """Run on a private event loop thread (for benchmarks and tests)."""
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"link-{self.profile.name}",
                                        daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop_thread(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.stop(), self._loop)
        with contextlib.suppress(Exception):
            fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _rst(w: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a dropped mobile link looks to TCP."""
    sock = w.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _main_async(args: argparse.Namespace) -> None:
    emu = LinkEmulator(load_profile(args.profile), _hostport(args.target),
                       _hostport(args.listen), seed=args.seed, time_scale=args.time_scale)
    await emu.start()
    print(json.dumps({"listen": f"{emu.listen[0]}:{emu.port}", "target": args.target,
                      "profile": emu.profile.name}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await emu.stop()
    log.info("link=%s stopped stats=%s", emu.profile.name, emu.stats.as_dict())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fenji.routing.linkemu",
                                 description="Fault-injecting TCP proxy emulating a thin link.")
    ap.add_argument("--profile", default="lab",
                    help="profile name in conf/links (satellite, 3g, provincial, lab) or a path")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default 127.0.0.1:0)")
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="speed up outages and stalls by this factor")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(_main_async(args))
    except ValueError as exc:
        print(f"linkemu: {exc}", file=sys.stderr)
        return 2
    return 0


def stats_dict(emu: LinkEmulator) -> dict[str, Any]:
    return emu.stats.as_dict()


if __name__ == "__main__":
    sys.exit(main())
