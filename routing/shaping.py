"""Bandwidth shaping: fenji must never starve a hospital's only link.

Each peer may have a link capacity (``rate_bps``) and a time-of-day schedule
of the share fenji may use, e.g. ``["08:00-18:00=30%", "18:00-08:00=100%"]``:
during clinic hours the hospital's own traffic keeps 70 %.  Pure functions
and a pacer; the sender sleeps what :meth:`Pacer.delay` says before each chunk.

>>> s = parse_schedule(["08:00-18:00=30%"])
>>> fraction_at(s, 9 * 60), fraction_at(s, 20 * 60)
(0.3, 1.0)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENTRY = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*=\s*(\d{1,3}(?:\.\d+)?)%\s*$")


@dataclass(frozen=True, slots=True)
class Window:
    start_min: int  # minutes after local midnight, inclusive
    end_min: int  # exclusive; may be <= start (window crosses midnight)
    fraction: float

    def contains(self, minute: int) -> bool:
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min


def parse_schedule(entries: tuple[str, ...] | list[str]) -> list[Window]:
    """``"HH:MM-HH:MM=NN%"`` entries; raises ValueError naming the bad entry."""
    out = []
    for i, e in enumerate(entries):
        m = _ENTRY.match(e)
        if not m:
            raise ValueError(f"schedule[{i}] = {e!r} is not HH:MM-HH:MM=NN%")
        h1, m1, h2, m2, pct = m.groups()
        a, b = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
        if not (0 <= a < 1440 and 0 <= b <= 1440 and int(m1) < 60 and int(m2) < 60):
            raise ValueError(f"schedule[{i}] = {e!r}: times must be 00:00-24:00")
        f = float(pct) / 100
        if not 0 < f <= 1:
            raise ValueError(f"schedule[{i}] = {e!r}: share must be in (0, 100]%")
        out.append(Window(a, b % 1440 if b == 1440 else b, f))
    return out


def fraction_at(schedule: list[Window], minute_of_day: int) -> float:
    """The share of the link fenji may use now (first matching window; else all)."""
    for w in schedule:
        if w.contains(minute_of_day):
            return w.fraction
    return 1.0


class TokenBucket:
    """Pure rate limiter: how long to wait before ``n`` bytes may pass."""

    def __init__(self, rate_bps: float, burst_bytes: int, now: float) -> None:
        self.rate_Bps = rate_bps / 8.0
        self.capacity = float(max(1, burst_bytes))
        self.tokens = self.capacity
        self.t = now

    def set_rate(self, rate_bps: float) -> None:
        self.rate_Bps = rate_bps / 8.0

    def delay(self, n: int, now: float) -> float:
        """Reserve ``n`` bytes; return seconds to wait before sending them."""
        if self.rate_Bps <= 0:
            return 0.0
        self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate_Bps)
        self.t = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate_Bps


class Pacer:
    """Paces one destination at ``rate_bps`` x the schedule's share (0: unlimited)."""

    def __init__(self, rate_bps: float, schedule: list[Window], now: float) -> None:
        self.rate_bps = rate_bps
        self.schedule = schedule
        self.bucket = TokenBucket(rate_bps, 64 * 1024, now)

    def allowed_bps(self, minute_of_day: int) -> float:
        return self.rate_bps * fraction_at(self.schedule, minute_of_day)

    def delay(self, n: int, now: float, minute_of_day: int) -> float:
        if self.rate_bps <= 0:
            return 0.0
        self.bucket.set_rate(self.allowed_bps(minute_of_day))
        return self.bucket.delay(n, now)


@dataclass
class LinkMeter:
    """Measured throughput, round-trip time and error rate of one link (EWMA)."""

    throughput_bps: float = 0.0
    rtt_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    alpha: float = 0.3

    def chunk(self, nbytes: int, seconds: float) -> None:
        if seconds > 0:
            bps = nbytes * 8 / seconds
            self.throughput_bps = bps if not self.throughput_bps else \
                self.alpha * bps + (1 - self.alpha) * self.throughput_bps
        self.requests += 1

    def rtt(self, seconds: float) -> None:
        ms = seconds * 1000
        self.rtt_ms = ms if not self.rtt_ms else self.alpha * ms + (1 - self.alpha) * self.rtt_ms

    def error(self) -> None:
        self.errors += 1
        self.requests += 1

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0
