"""Bandwidth shaping: time-of-day share of the link, pacer, link meter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fenji.gateway import config
from fenji.gateway.errors import ConfigError
from fenji.routing.shaping import LinkMeter, Pacer, fraction_at, parse_schedule


def test_schedule_windows_including_midnight() -> None:
    s = parse_schedule(["08:00-18:00=30%", "22:00-06:00=100%", "18:00-22:00=60%"])
    assert fraction_at(s, 8 * 60) == 0.3 and fraction_at(s, 17 * 60 + 59) == 0.3
    assert fraction_at(s, 19 * 60) == 0.6
    assert fraction_at(s, 23 * 60) == 1.0 and fraction_at(s, 3 * 60) == 1.0
    assert fraction_at(s, 7 * 60) == 1.0  # outside every window: all of it


@pytest.mark.parametrize("bad", ["8-18=30%", "08:00-18:00=0%", "08:00-25:00=30%",
                                 "08:00-18:00=130%", "08:00-18:00"])
def test_bad_entries_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="schedule\\[0\\]"):
        parse_schedule([bad])


def test_config_reports_a_bad_schedule_with_its_key_path() -> None:
    raw = {"dicom": {"allow_ae": ["A"]}, "transfer": {"allow_plain_http": True},
           "peers": [{"name": "c", "url": "http://127.0.0.1:1", "public_key": "00" * 32,
                      "rate_bps": 1000000, "schedule": ["08:00-18:00=300%"]}]}
    with pytest.raises(ConfigError, match=r"peers\[0\]\.schedule\[0\]"):
        config.from_mapping(raw, env={})


@given(sizes=st.lists(st.integers(1, 1 << 20), min_size=1, max_size=50),
       minute=st.integers(0, 1439))
def test_pacer_keeps_to_the_allowed_share(sizes: list[int], minute: int) -> None:
    sched = parse_schedule(["08:00-18:00=30%"])
    p = Pacer(1_000_000, sched, now=0.0)
    t = 0.0
    for n in sizes:
        t += p.delay(n, t, minute)
    allowed = p.allowed_bps(minute)
    assert sum(sizes) <= allowed / 8 * t + 64 * 1024 + 1e-6 * sum(sizes)


def test_meter_tracks_throughput_rtt_errors() -> None:
    m = LinkMeter()
    m.chunk(125_000, 1.0)
    m.rtt(0.6)
    m.error()
    assert m.throughput_bps == pytest.approx(1e6) and m.rtt_ms == pytest.approx(600)
    assert m.error_rate == pytest.approx(0.5)


def test_chunk_size_halves_after_a_dropped_chunk_and_grows_back() -> None:
    from fenji.routing.transfer_client import ChunkSizer

    s = ChunkSizer(256 * 1024, 16 * 1024, 1024 * 1024)
    for _ in range(10):
        s.failed()
    assert s.size == 16 * 1024  # never below the floor
    s.update(16 * 1024, 0.5)
    assert s.size == 32 * 1024
