"""The link emulator on real loopback sockets, its profiles and its CLI.

No wall-clock assertions beyond what the configured profile makes impossible
(a transfer of X bytes at R bit/s cannot finish before (X - burst)*8/R); the
rest is the emulator's own accounting and what arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fenji.routing.linkemu.proxy import (
    CONF_DIR,
    LinkEmulator,
    LinkProfile,
    LinkProfileError,
    load_profile,
    profile_names,
)

pytestmark = pytest.mark.timeout(60)


class Sink:
    """A target that hashes what it receives and notes when connections arrive."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.hashes: list[str] = []
        self.received: list[int] = []
        self.accepted_at: list[float] = []
        self.errors: list[str] = []
        self.done = asyncio.Event()

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted_at.append(time.monotonic())
        h, n = hashlib.sha256(), 0
        try:
            while data := await r.read(65536):
                h.update(data)
                n += len(data)
                if self.echo:
                    w.write(data)
                    await w.drain()
        except ConnectionError as exc:
            self.errors.append(type(exc).__name__)
        finally:
            self.hashes.append(h.hexdigest())
            self.received.append(n)
            w.close()
            self.done.set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


async def _send(port: int, payload: bytes, piece: int = 8192) -> float:
    """Send payload and half-close; returns seconds until the far end had it all."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    for i in range(0, len(payload), piece):
        w.write(payload[i:i + piece])
        await w.drain()
    w.write_eof()
    await asyncio.wait_for(r.read(), 30)  # the proxy closes once the target has it all
    w.close()
    return time.monotonic() - t0


def _prof(**kw: object) -> LinkProfile:
    return LinkProfile(name="t", **kw)  # type: ignore[arg-type]


def test_throughput_follows_the_configured_rate_on_two_links_at_once() -> None:
    """1 Mbit/s and 3 Mbit/s links in one event loop: rate bounds and accounting."""
    cases = {1e6: 120_000, 3e6: 360_000}  # ~1 s each at the configured rate
    burst = 16384

    async def one(rate: float, size: int) -> tuple[float, dict[str, int], Sink, bytes]:
        sink = Sink()
        port = await sink.start()
        payload = os.urandom(size)
        prof = _prof(rate_up_bps=rate, rate_down_bps=rate, rtt_ms=40, burst_bytes=burst)
        async with sink.server, LinkEmulator(prof, ("127.0.0.1", port), seed=1) as link:
            seconds = await _send(link.port, payload)
            await asyncio.wait_for(sink.done.wait(), 30)
            return seconds, link.stats(), sink, payload

    async def both() -> list[tuple[float, dict[str, int], Sink, bytes]]:
        return await asyncio.gather(*(one(r, n) for r, n in cases.items()))

    for (rate, size), (seconds, stats, sink, payload) in zip(cases.items(), asyncio.run(both()),
                                                             strict=True):
        assert stats["bytes_up"] == size and stats["connections"] == 1
        assert sink.hashes == [hashlib.sha256(payload).hexdigest()]
        floor = (size - burst) * 8 / rate  # the bucket cannot let it through faster
        assert seconds >= floor * 0.9, (rate, seconds, floor)
        assert seconds < floor * 4 + 5, (rate, seconds, floor)  # generous: 2 shared cores
        print(f"rate {rate / 1e6:g} Mbit/s: {size * 8 / seconds / 1e6:.3f} Mbit/s measured")


def test_latency_is_at_least_the_configured_rtt() -> None:
    async def run() -> list[float]:
        sink = Sink(echo=True)
        port = await sink.start()
        prof = _prof(rtt_ms=200, jitter_ms=20)
        async with sink.server, LinkEmulator(prof, ("127.0.0.1", port), seed=2) as link:
            r, w = await asyncio.open_connection("127.0.0.1", link.port)
            rtts = []
            for _ in range(5):
                t0 = time.monotonic()
                w.write(b"ping")
                await w.drain()
                assert await asyncio.wait_for(r.readexactly(4), 10) == b"ping"
                rtts.append(time.monotonic() - t0)
            w.close()
            return rtts

    rtts = asyncio.run(run())
    assert min(rtts) >= 0.2 * 0.95  # two one-way delays of 100 ms, jitter only adds
    print(f"rtt 200 ms configured: median {sorted(rtts)[2] * 1000:.0f} ms measured")


def test_bytes_arrive_intact_and_in_order_under_jitter() -> None:
    async def run() -> tuple[bytes, bytes, dict[str, int]]:
        sink = Sink(echo=True)
        port = await sink.start()
        payload = os.urandom(300_000)
        prof = _prof(rate_up_bps=16e6, rate_down_bps=16e6, rtt_ms=20, jitter_ms=30,
                     burst_bytes=4096)  # small pieces: many chances to reorder
        async with sink.server, LinkEmulator(prof, ("127.0.0.1", port), seed=3) as link:
            r, w = await asyncio.open_connection("127.0.0.1", link.port)

            async def write() -> None:
                for i in range(0, len(payload), 8192):
                    w.write(payload[i:i + 8192])
                    await w.drain()
                w.write_eof()

            writer = asyncio.create_task(write())
            got = await asyncio.wait_for(r.read(), 30)
            await writer
            w.close()
            return payload, got, link.stats()

    payload, got, stats = asyncio.run(run())
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert stats["bytes_up"] == stats["bytes_down"] == len(payload)
    assert stats["resets_injected"] == 0


def test_a_reset_after_n_bytes_resets_both_ends() -> None:
    async def run() -> tuple[str, dict[str, int], Sink]:
        sink = Sink()
        port = await sink.start()
        prof = _prof(reset_mean_bytes=50_000, reset_distribution="fixed")
        async with sink.server, LinkEmulator(prof, ("127.0.0.1", port)) as link:
            r, w = await asyncio.open_connection("127.0.0.1", link.port)
            outcome = "no error"
            try:
                for _ in range(100):  # 800 kB at most, far past the reset point
                    w.write(os.urandom(8192))
                    await w.drain()
                await asyncio.wait_for(r.read(), 10)
            except ConnectionResetError:
                outcome = "reset"
            except (BrokenPipeError, ConnectionError) as exc:
                outcome = type(exc).__name__
            w.close()
            await asyncio.wait_for(sink.done.wait(), 10)
            return outcome, link.stats(), sink

    outcome, stats, sink = asyncio.run(run())
    assert outcome in ("reset", "BrokenPipeError"), outcome
    assert stats["resets_injected"] == 1
    assert stats["bytes_up"] == 50_000  # exactly N bytes passed, then RST
    assert sink.received[0] <= 50_000


def test_outage_holds_new_connections_and_stalls_open_ones_then_recovers() -> None:
    # 10 s period with a 4 s outage at 20x: a 0.2 s black-out every 0.5 s.
    prof = _prof(rate_up_bps=2e6, rate_down_bps=2e6, outage_every_s=10, outage_s=4)

    async def run() -> tuple[dict[str, int], Sink, bytes, float, float]:
        sink = Sink()
        port = await sink.start()
        payload = os.urandom(200_000)  # 0.8 s at 2 Mbit/s: spans black-outs
        async with sink.server, LinkEmulator(prof, ("127.0.0.1", port),
                                             time_scale=20.0) as link:
            await _send(link.port, payload)
            await asyncio.wait_for(sink.done.wait(), 30)
            sink.done.clear()
            for _ in range(200):  # wait for the next outage, bounded (<= 1 s)
                if link.in_outage():
                    break
                await asyncio.sleep(0.005)
            assert link.in_outage()
            t_connect = link.now()
            clear = link.outage.clear_at(t_connect)
            await _send(link.port, b"after the outage")
            await asyncio.wait_for(sink.done.wait(), 30)
            accepted = sink.accepted_at[-1] - link.t0  # on the emulator's clock
            return link.stats(), sink, payload, accepted, clear

    stats, sink, payload, accepted, clear = asyncio.run(run())
    assert sink.hashes[0] == hashlib.sha256(payload).hexdigest()
    assert stats["blackout_waits"] >= 1 and stats["outage_s"] > 0
    assert stats["held_in_outage"] == 1
    assert accepted >= clear - 0.01  # not forwarded before the link was back
    assert sink.hashes[1] == hashlib.sha256(b"after the outage").hexdigest()


def test_thread_handle_from_synchronous_code() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    handle = LinkEmulator(_prof(rate_up_bps=8e6), ("127.0.0.1", port), seed=4).start_in_thread()
    try:
        with socket.create_connection(("127.0.0.1", handle.port), timeout=10) as c:
            c.sendall(b"x" * 10_000)
            c.shutdown(socket.SHUT_WR)
            srv.settimeout(10)
            conn, _ = srv.accept()
            got = b""
            conn.settimeout(10)
            while chunk := conn.recv(65536):
                got += chunk
            conn.close()
        assert got == b"x" * 10_000
        assert handle.stats()["bytes_up"] == 10_000 and handle.stats.connections == 1
    finally:
        handle.stop()
        srv.close()
    handle.stop()  # idempotent


def test_shipped_profiles_load() -> None:
    assert {"satellite", "3g", "provincial", "lab"} <= set(profile_names())
    sat = load_profile("satellite")
    assert sat.rate_up_bps == 1e6 and sat.rtt_ms == 600 and sat.outage_s == 30
    assert 60 <= sat.outage_every_s <= 600
    g3 = load_profile("3g")
    assert g3.rate_up_bps == 3e6 and g3.rtt_ms == 150 and g3.reset_mean_bytes > 0
    prov = load_profile(CONF_DIR / "provincial.toml")
    assert prov.rate_up_bps == 20e6 and prov.rtt_ms == 20
    assert load_profile("lab").rate_up_bps == 0


def test_bad_profiles_name_the_key_path_and_value(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[link]\nrate_up_bps = "fast"\nwarp = 9\nrtt_ms = -1\nburst_bytes = 1.5\n'
                   'reset_distribution = "poisson"\noutage_every_s = 10\noutage_s = 30\n'
                   '[extra]\n')
    with pytest.raises(LinkProfileError) as info:
        load_profile(bad)
    msg = str(info.value)
    for part in ("link.rate_up_bps = 'fast' is not a float", "link.warp: unknown key",
                 "link.rtt_ms = -1 must be >= 0", "link.burst_bytes = 1.5 is not an int",
                 "link.reset_distribution = 'poisson'", "link.outage_s = 30.0 needs",
                 "extra: unknown key"):
        assert part in msg
    with pytest.raises(ValueError, match="known profiles: .*satellite"):
        load_profile("moon")
    (tmp_path / "mine.toml").write_text("[link]\nrtt_ms = 5\n")
    assert load_profile("mine", conf_dir=tmp_path).rtt_ms == 5


def test_cli_prints_ready_line_logs_connections_and_stops_on_sigterm() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fenji.routing.linkemu.proxy", "--profile",
                             "provincial", "--target", f"127.0.0.1:{port}", "--seed", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["profile"] == "provincial" and info["listen"].startswith("127.0.0.1:")
        lport = int(info["listen"].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", lport), timeout=10) as c:
            c.sendall(b"hello")
            c.shutdown(socket.SHUT_WR)
            srv.settimeout(10)
            conn, _ = srv.accept()
            conn.settimeout(10)
            assert conn.recv(100) == b"hello"
            conn.close()
            c.settimeout(10)
            assert c.recv(100) == b""  # the proxy closes after the target
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read() if proc.stderr else ""
        # SIGTERM may land while the proxy is still closing its two ends
        assert "conn=1 up=5 down=0" in err
        assert "outcome=closed" in err or "outcome=stopped" in err
        assert '"bytes_up": 5' in err.split("stats=", 1)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        srv.close()
