"""The link emulator: pure shaping core, and the proxy on real loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fenji.routing.linkemu import (
    CONF_DIR,
    LinkEmulator,
    LinkProfile,
    Schedule,
    TokenBucket,
    load_profile,
)

pytestmark = pytest.mark.timeout(120)


@given(rate=st.floats(1e3, 1e8), burst=st.integers(1, 1 << 20),
       sizes=st.lists(st.tuples(st.integers(1, 65536), st.floats(0, 0.5)), max_size=40))
@settings(max_examples=200)
def test_token_bucket_never_exceeds_rate_plus_burst(rate, burst, sizes) -> None:  # type: ignore[no-untyped-def]
    b = TokenBucket(rate, burst, now=0.0)
    t = 0.0
    sent = 0
    for n, dt in sizes:
        t += dt
        wait = b.delay(n, t)
        assert wait >= 0
        t += wait  # the bytes leave only after the wait
        sent += n
        assert sent <= rate / 8 * t + burst + 1e-9 * sent  # within the envelope (+ float slack)


def test_schedule_windows() -> None:
    s = Schedule(every_s=10.0, length_s=3.0)
    assert not s.active(0.0) and not s.active(6.9)
    assert s.active(7.5) and s.until_clear(7.5) == pytest.approx(2.5)
    assert not s.active(10.1)
    assert not Schedule(0, 0).active(5.0)


def test_every_shipped_profile_loads_and_bad_keys_are_named(tmp_path: Path) -> None:
    names = sorted(p.stem for p in CONF_DIR.glob("*.toml"))
    assert {"satellite", "3g", "provincial", "lab"} <= set(names)
    sat = load_profile("satellite")
    assert sat.rate_up_bps == 1_000_000 and sat.rtt_ms == 600 and sat.outage_s == 30
    bad = tmp_path / "bad.toml"
    bad.write_text('[link]\nrate_up_bps = "fast"\nwarp = 9\n')
    with pytest.raises(ValueError) as info:
        load_profile(str(bad))
    assert "link.rate_up_bps = 'fast'" in str(info.value) and "link.warp" in str(info.value)
    with pytest.raises(ValueError, match="known"):
        load_profile("moon")


async def _echo_server() -> tuple[asyncio.base_events.Server, int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, int(srv.sockets[0].getsockname()[1])


async def _roundtrip(profile: LinkProfile, payload: bytes, **kw: float) -> tuple[bytes, dict]:  # type: ignore[type-arg]
    srv, port = await _echo_server()
    async with srv, LinkEmulator(profile, ("127.0.0.1", port), seed=3, **kw) as link:  # type: ignore[arg-type]
        r, w = await asyncio.open_connection("127.0.0.1", link.port)
        got = bytearray()

        async def reader() -> None:
            while len(got) < len(payload):
                chunk = await r.read(65536)
                if not chunk:
                    break
                got.extend(chunk)

        task = asyncio.create_task(reader())
        try:
            for i in range(0, len(payload), 8192):
                w.write(payload[i:i + 8192])
                await w.drain()
            await asyncio.wait_for(task, 60)
        except ConnectionError:
            pass
        w.close()
        return bytes(got), link.stats.as_dict()


def test_bytes_arrive_intact_and_in_order_under_jitter() -> None:
    payload = os.urandom(300_000)
    prof = LinkProfile(name="t", rate_up_bps=8e6, rate_down_bps=8e6, rtt_ms=20, jitter_ms=15)
    got, stats = asyncio.run(_roundtrip(prof, payload))
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert stats["bytes_up"] == stats["bytes_down"] == len(payload)
    assert stats["connections"] == 1 and stats["resets_injected"] == 0


def test_resets_are_injected() -> None:
    prof = LinkProfile(name="t", reset_mean_bytes=50_000)
    got, stats = asyncio.run(_roundtrip(prof, os.urandom(2_000_000)))
    assert stats["resets_injected"] == 1 and len(got) < 2_000_000


def test_outage_stalls_then_recovers() -> None:
    prof = LinkProfile(name="t", rate_up_bps=4e6, rate_down_bps=4e6, outage_every_s=10,
                       outage_s=4)
    payload = os.urandom(400_000)
    got, stats = asyncio.run(_roundtrip(prof, payload, time_scale=20.0))  # 0.5 s / 0.2 s
    assert got == payload and stats["outage_waits"] >= 1


def test_cli_prints_ready_line_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "fenji.routing.linkemu", "--profile", "3g",
                             "--target", "127.0.0.1:9"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    assert info["profile"] == "3g" and info["listen"].startswith("127.0.0.1:")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
