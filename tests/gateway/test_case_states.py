"""The case state table: the pure transition function, and the one writer on a real store."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fenji.gateway.cases import states
from fenji.gateway.cases.case import set_state
from fenji.gateway.cases.states import READ, STATE, IllegalMove, UnknownState, transition
from fenji.gateway.store.db import Store

ROLES = sorted(states.WHO)


def test_the_happy_paths_of_both_columns() -> None:
    edge = [("release", "technician"), ("send", "node"), ("receipt", "node"),
            ("report", "node"), ("acknowledge", "physician"), ("amend", "node"),
            ("acknowledge", "physician")]
    s = None
    seen = []
    for event, who in edge:
        s = transition(STATE, s, event, who)
        seen.append(s)
    assert seen == ["released", "sent", "delivered", "reported", "acknowledged", "amended",
                    "acknowledged"]
    r = None
    seen = []
    for event, who in [("list", "node"), ("claim", "reader"), ("sign", "reader"),
                       ("claim", "reader"), ("amend", "reader")]:
        r = transition(READ, r, event, who)
        seen.append(r)
    assert seen == ["new", "claimed", "reported", "reported", "amended"]


def test_held_cases_and_relays() -> None:
    assert transition(STATE, None, "hold", "node") == "held"
    assert transition(STATE, "held", "override", "operator") == "released"
    assert transition(STATE, "held", "supersede", "node") == "superseded"
    assert transition(STATE, None, "preview", "node") == "preview"
    assert transition(STATE, "preview", "arrive", "node") == "received"
    assert transition(STATE, "preview", "pass", "node") == "forwarding"
    assert transition(STATE, "forwarding", "receipt", "node") == "delivered"


def test_late_and_duplicate_events_change_nothing() -> None:
    # A receipt after the report came back (a center restarted mid-way) never moves back.
    for s in ("delivered", "reported", "amended", "acknowledged"):
        assert transition(STATE, s, "receipt", "node") == s
    assert transition(STATE, "received", "arrive", "node") == "received"
    assert transition(STATE, "received", "preview", "node") == "received"  # preview came late
    assert transition(READ, "claimed", "list", "node") == "claimed"


def test_illegal_moves_name_both_states_the_event_and_who() -> None:
    with pytest.raises(IllegalMove, match=r"state 'held' -> 'delivered' \('receipt' by node\)"):
        transition(STATE, "held", "receipt", "node")
    with pytest.raises(IllegalMove, match="only operator, physician, technician may"):
        transition(STATE, "reported", "acknowledge", "reader")
    with pytest.raises(IllegalMove, match="only reader may"):
        transition(READ, "new", "claim", "technician")
    with pytest.raises(IllegalMove, match="'superseded' -> 'released'"):
        transition(STATE, "superseded", "override", "operator")
    with pytest.raises(IllegalMove, match="no event 'fly'"):
        transition(STATE, "released", "fly", "node")
    with pytest.raises(UnknownState, match="state = 'limbo' is not a case state"):
        transition(STATE, "limbo", "receipt", "node")
    with pytest.raises(UnknownState):
        transition("colour", None, "release", "node")


def test_every_state_is_reachable_from_no_state() -> None:
    for column in states.COLUMNS:
        reached: set[str | None] = {None}
        while True:
            more = {m.target for m in states.TABLE if m.column == column
                    and reached & m.sources} - reached
            if not more:
                break
            reached |= more
        assert reached - {None} == states.STATES[column], column


@given(st.sampled_from(states.COLUMNS),
       st.lists(st.tuples(st.sampled_from(sorted({m.event for m in states.TABLE})),
                          st.sampled_from(ROLES)), max_size=12))
def test_any_sequence_of_events_stays_inside_the_table(column: str,
                                                        events: list[tuple[str, str]]) -> None:
    s: str | None = None
    for event, who in events:
        try:
            after = transition(column, s, event, who)
        except IllegalMove:
            continue
        assert after in states.STATES[column]
        move = next(m for m in states.TABLE if (m.column, m.event) == (column, event))
        assert who in move.who
        assert after == s or (s in move.sources and after == move.target)
        s = after


def test_the_table_holds_every_old_string() -> None:
    """Stored values stay valid: no migration is needed (docs/architecture.md)."""
    old_state = {"held", "superseded", "released", "delivered", "reported", "received",
                 "forwarding", "preview"}
    old_read = {"new", "claimed", "reported", "amended"}
    assert old_state <= states.STATES[STATE] and old_read <= states.STATES[READ]
    assert set(itertools.chain(*states.STATES.values())) >= {
        "new", "held", "released", "sent", "delivered", "claimed", "reported", "amended",
        "acknowledged"}


def _store_with_case(tmp_path: Path, state: str) -> Store:
    s = Store(tmp_path / "s")
    with s.atomic() as con:
        con.execute("INSERT INTO cases(case_id, study_instance_uid, kind, priority, service, "
                    "destination, state, created_at, updated_at) VALUES "
                    "('c1', '1.2.3', 'case', 'routine', 'imaging', 'center', ?, 0, 0)",
                    (state,))
    return s


def test_set_state_writes_what_the_table_returns(tmp_path: Path) -> None:
    s = _store_with_case(tmp_path, "released")
    assert set_state(s, "c1", "sent", who="node", now=5.0) == "sent"
    row = s.query_one("SELECT state, updated_at FROM cases WHERE case_id = 'c1'")
    assert row == {"state": "sent", "updated_at": 5.0}
    with pytest.raises(IllegalMove, match="'sent' -> 'held'"):
        set_state(s, "c1", "held", who="node")
    with pytest.raises(UnknownState, match="'teleported'"):
        set_state(s, "c1", "teleported", who="node")
    with pytest.raises(states.NoSuchCase):
        set_state(s, "nope", "sent", who="node")
    assert s.query_one("SELECT state FROM cases WHERE case_id = 'c1'") == {"state": "sent"}
    s.close()


def test_move_checks_inside_the_callers_transaction(tmp_path: Path) -> None:
    s = _store_with_case(tmp_path, "held")
    with pytest.raises(IllegalMove), s.atomic() as con:
        states.move(con, "c1", "supersede", who="node", now=1.0)
        states.move(con, "c1", "override", who="operator", now=1.0)  # superseded: refused
    # The whole transaction rolled back: still held.
    assert s.query_one("SELECT state FROM cases WHERE case_id = 'c1'") == {"state": "held"}
    with s.atomic() as con:
        assert states.move(con, "c1", "override", who="operator", now=2.0,
                           also={"released_at": 2.0}) == "released"
    assert s.query_one("SELECT state, released_at FROM cases WHERE case_id = 'c1'") == {
        "state": "released", "released_at": 2.0}
    with pytest.raises(ValueError, match="cannot set"), s.atomic() as con:
        states.move(con, "c1", "send", who="node", now=3.0, also={"manifest_sha256": "x"})
    s.close()


def test_nothing_but_the_table_writes_a_case_state() -> None:
    """Every ``UPDATE cases SET … state`` in gateway/ and routing/ goes through states.move."""
    import re

    repo = Path(__file__).resolve().parents[2]
    raw = re.compile(r"UPDATE\s+cases\s+SET[^\"']*\b(read_)?state\s*=", re.IGNORECASE)
    offenders = []
    for folder in ("gateway", "routing"):
        for p in (repo / folder).rglob("*.py"):
            if p.name == "states.py" and p.parent.name == "cases":
                continue
            text = " ".join(p.read_text().split())  # SQL split over string literals
            text = re.sub(r"\"\s*\"", "", text)
            offenders += [f"{p.relative_to(repo)}: {m.group(0)}" for m in raw.finditer(text)]
    assert not offenders, offenders
