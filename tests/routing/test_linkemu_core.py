"""The link emulator's sans-I/O core: token bucket envelope, order, black-outs."""

from __future__ import annotations

import doctest
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fenji.routing.linkemu import core as linkemu_core
from fenji.routing.linkemu.core import Direction, Periodic, clear_at, reset_budget

windows = st.builds(Periodic, every_s=st.floats(0.5, 20), length_s=st.floats(0.01, 0.4),
                    offset_s=st.floats(0, 5)).filter(lambda w: w.length_s < w.every_s)
steps = st.lists(st.tuples(st.integers(1, 40_000), st.floats(0, 0.5)), min_size=1, max_size=20)


def test_doctests() -> None:
    assert doctest.testmod(linkemu_core).failed == 0


@given(rate=st.floats(8e3, 1e8), burst=st.integers(256, 1 << 18), steps=steps,
       black=st.lists(windows, max_size=2))
@settings(max_examples=150, deadline=None)
def test_grants_stay_in_the_envelope(rate: float, burst: int, steps: list[tuple[int, float]],
                                     black: list[Periodic]) -> None:
    """Bytes out in any [t_i, t_j] <= rate*(t_j - t_i) + burst; grants in order, never black."""
    d = Direction(rate, burst, blackouts=black)
    now, out = 0.0, []
    for want, dt in steps:
        now += dt
        left = want
        for _ in range(want + 1):  # each grant passes >= 1 byte
            if not left:
                break
            n, at = d.grant(left, now)
            assert 1 <= n <= min(left, burst) and at >= now
            assert clear_at(black, at) == at  # nothing leaves inside an outage or stall
            out.append((at, n))
            left -= n
            now = at  # the shell sleeps until then
    times = [t for t, _ in out]
    assert times == sorted(times)
    # max over i <= j of sum(n_i..n_j) - rate*(t_j - t_i), in one pass
    rate_Bps = rate / 8
    best_start, cum = -float("inf"), 0
    for t, n in out:
        best_start = max(best_start, rate_Bps * t - cum)
        cum += n
        slack = 1e-6 * max(1.0, t) * rate_Bps
        assert cum - rate_Bps * t + best_start <= burst + slack


@given(rate=st.floats(8e3, 1e8), burst=st.integers(256, 1 << 18), steps=steps)
@settings(max_examples=100, deadline=None)
def test_a_busy_sender_gets_the_rate(rate: float, burst: int,
                                     steps: list[tuple[int, float]]) -> None:
    """The bucket is work-conserving: a sender that never pauses gets rate, not less."""
    d = Direction(rate, burst)
    total = sum(w for w, _ in steps)
    sent, at = 0, 0.0
    while sent < total:
        n, at = d.grant(total - sent, at)
        sent += n
    assert at <= max(0.0, (total - burst) * 8 / rate) * (1 + 1e-9) + 1e-9


@given(one_way=st.floats(0, 1), jitter=st.floats(0, 0.5), seed=st.integers(0, 2**32),
       departs=st.lists(st.floats(0, 100), min_size=1, max_size=60),
       black=st.lists(windows, max_size=2))
@settings(max_examples=200, deadline=None)
def test_arrivals_keep_order_and_latency(one_way: float, jitter: float, seed: int,
                                         departs: list[float], black: list[Periodic]) -> None:
    d = Direction(one_way_s=one_way, jitter_s=jitter, blackouts=black, rng=random.Random(seed))
    arrivals = []
    for t in sorted(departs):
        a = d.arrival(t)
        assert a >= t + one_way
        assert clear_at(black, a) == a
        arrivals.append(a)
    assert arrivals == sorted(arrivals)  # a delayed segment never overtakes an earlier one


def test_jitter_is_seeded() -> None:
    def run(seed: int) -> list[float]:
        d = Direction(one_way_s=0.3, jitter_s=0.04, rng=random.Random(seed))
        return [d.arrival(i * 0.1) for i in range(50)]

    assert run(7) == run(7) != run(8)


@given(w=windows, t0=st.floats(0, 50), span=st.floats(0, 50))
@settings(max_examples=200, deadline=None)
def test_time_active_integrates_the_window(w: Periodic, t0: float, span: float) -> None:
    n = 4000
    dt = span / n
    approx = sum(dt for i in range(n) if w.active(t0 + (i + 0.5) * dt))
    tol = 2 * dt * (span / w.every_s + 2) + 1e-9
    assert w.time_active(t0, t0 + span) == pytest.approx(approx, abs=tol)


def test_periodic_window_and_clear() -> None:
    s = Periodic(every_s=10.0, length_s=3.0)
    assert not s.active(0.0) and not s.active(6.9)
    assert s.active(7.5) and s.clear_at(7.5) == pytest.approx(10.0)
    assert s.clear_at(5.0) == 5.0 and not s.active(10.1)
    assert not Periodic(0, 0).active(5.0)
    # a stall right after an outage: clear of both
    assert clear_at([s, Periodic(10.0, 1.0, offset_s=1.0)], 8.0) == pytest.approx(11.0)


def test_reset_budgets() -> None:
    rng = random.Random(1)
    assert reset_budget(0, "exponential", rng) == -1
    assert reset_budget(5000, "fixed", rng) == 5000
    assert all(0 <= reset_budget(5000, "uniform", rng) <= 10000 for _ in range(100))
    draws = [reset_budget(5000, "exponential", random.Random(s)) for s in range(2000)]
    assert 4000 < sum(draws) / len(draws) < 6000
    assert reset_budget(5000, "exponential", random.Random(3)) == draws[3]
