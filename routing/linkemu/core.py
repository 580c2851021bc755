"""Sans-I/O core of the link emulator: what a thin link lets through, and when.

Nothing here touches a socket or a clock; every method takes ``now`` (seconds
on any monotonic scale) and answers with times on the same scale.  The asyncio
shell in :mod:`fenji.routing.linkemu.proxy` sleeps until those times and moves the
bytes.  One :class:`Direction` per direction of a connection:

* :meth:`Direction.grant` -- a token bucket (``rate_bps``, ``burst_bytes``):
  how many bytes of a pending chunk may leave, and when.  Departures never fall
  inside a black-out window (outage or stall); they are pushed to its end.
* :meth:`Direction.arrival` -- when bytes that left at ``t`` reach the far end:
  one-way latency plus uniform jitter, never before bytes sent earlier (TCP
  delivers in order, so a delayed segment holds up the ones behind it), and
  never inside a black-out (bytes in flight when the link drops are, to TCP,
  retransmitted once it is back).

>>> d = Direction(rate_bps=8000, burst_bytes=100, one_way_s=0.5)
>>> d.grant(250, now=0.0)        # the burst goes at once
(100, 0.0)
>>> d.grant(150, now=0.0)        # then 1000 B/s
(100, 0.1)
>>> d.arrival(0.1)
0.6
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

# A departure pushed out of one window may land in another (stall right after
# an outage); a handful of hops settles any sane calendar.
_MAX_WINDOW_HOPS = 16


@dataclass(frozen=True, slots=True)
class Periodic:
    """A window of ``length_s`` at the end of every ``every_s`` period.

    The first window starts at ``offset_s + every_s - length_s``: a link comes
    up healthy and fails later, as a freshly started test expects.
    """

    every_s: float
    length_s: float
    offset_s: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.every_s > 0 and self.length_s > 0

    def active(self, t: float) -> bool:
        if not self.enabled:
            return False
        if self.length_s >= self.every_s:
            return True  # always black: a dead link
        phase = (t - self.offset_s) % self.every_s
        return phase >= self.every_s - self.length_s

    def clear_at(self, t: float) -> float:
        """The first time >= t outside the window (t itself when not in one)."""
        if not self.active(t):
            return t
        if self.length_s >= self.every_s:
            return math.inf
        phase = (t - self.offset_s) % self.every_s
        return t + (self.every_s - phase)

    def time_active(self, t0: float, t1: float) -> float:
        """Seconds of window within [t0, t1] (for the time-in-outage counter)."""
        if not self.enabled or t1 <= t0:
            return 0.0
        if self.length_s >= self.every_s:
            return t1 - t0

        def cum(t: float) -> float:  # window time in [offset, t]
            k, phase = divmod(t - self.offset_s, self.every_s)
            return k * self.length_s + max(0.0, phase - (self.every_s - self.length_s))

        return cum(t1) - cum(t0)


def clear_at(windows: Sequence[Periodic], t: float) -> float:
    """The first time >= t outside every window."""
    for _ in range(_MAX_WINDOW_HOPS):
        nxt = max((w.clear_at(t) for w in windows), default=t)
        if nxt == t:
            return t
        t = nxt
    return t


class Direction:
    """One direction of one connection: token bucket, delay line, black-outs.

    Parameters
    ----------
    rate_bps : bits per second (0: unlimited).
    burst_bytes : bucket depth; also the largest piece granted at once, so the
        envelope ``bytes out in any [t0, t1] <= rate * (t1 - t0) + burst`` holds.
    one_way_s, jitter_s : latency added after departure (jitter uniform in
        [0, jitter_s], drawn from ``rng``).
    blackouts : windows in which nothing leaves or arrives.
    """

    def __init__(self, rate_bps: float = 0.0, burst_bytes: int = 16384, one_way_s: float = 0.0,
                 jitter_s: float = 0.0, blackouts: Sequence[Periodic] = (),
                 rng: random.Random | None = None, now: float = 0.0) -> None:
        self.rate_Bps = max(0.0, rate_bps) / 8.0
        self.burst = max(1, int(burst_bytes))
        self.one_way_s = max(0.0, one_way_s)
        self.jitter_s = max(0.0, jitter_s)
        self.blackouts = tuple(w for w in blackouts if w.enabled)
        self.rng = rng or random.Random(0)
        self.tokens = float(self.burst)
        self.t = now  # time of the last departure (bucket clock)
        self.last_arrival = -math.inf
        self.blackout_pushes = 0  # grants held back by a black-out (a counter)

    def grant(self, want: int, now: float) -> tuple[int, float]:
        """How many of ``want`` bytes may leave, and at what time (>= now).

        The caller sends that many at that time and asks again for the rest.
        Departures are monotone: a grant never precedes an earlier one.
        """
        if want <= 0:
            return 0, max(now, self.t)
        t = max(now, self.t)
        if self.rate_Bps <= 0:
            at = clear_at(self.blackouts, t)
            self.blackout_pushes += at != t
            self.t = at
            return want, at
        n = min(want, self.burst)
        tokens = min(float(self.burst), self.tokens + (t - self.t) * self.rate_Bps)
        at = t + max(0.0, (n - tokens) / self.rate_Bps)
        if (cleared := clear_at(self.blackouts, at)) != at:
            self.blackout_pushes += 1
            at = cleared
        # Tokens at departure: what had accrued by then (capped), less the piece.
        self.tokens = max(0.0, min(float(self.burst), tokens + (at - t) * self.rate_Bps) - n)
        self.t = at
        return n, at

    def arrival(self, departed: float) -> float:
        """When bytes that left at ``departed`` are delivered at the far end."""
        due = departed + self.one_way_s
        if self.jitter_s:
            due += self.rng.uniform(0.0, self.jitter_s)
        due = clear_at(self.blackouts, max(due, self.last_arrival))
        self.last_arrival = due
        return due


def reset_budget(mean_bytes: int, distribution: str, rng: random.Random) -> int:
    """Bytes a connection carries before an injected reset (-1: never).

    ``exponential`` (memoryless, like handovers), ``uniform`` in [0, 2*mean],
    or ``fixed`` (exactly ``mean_bytes``: for tests).
    """
    if mean_bytes <= 0:
        return -1
    if distribution == "fixed":
        return mean_bytes
    if distribution == "uniform":
        return rng.randint(0, 2 * mean_bytes)
    return int(rng.expovariate(1.0 / mean_bytes))


RESET_DISTRIBUTIONS = ("exponential", "uniform", "fixed")
