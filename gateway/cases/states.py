"""The one table of case states: who may move a case from which state to which, by which event.

A case has two states at a node, in two columns of ``cases``, and both are moved
by the one table below (docs/architecture.md, "Case states"):

* ``state`` -- where the case is in its journey, at this node.  At the sending
  hospital: held, superseded, released (or releasing, then released or failed, when
  a STAT preview goes first), sent, delivered, then reported, amended, acknowledged
  as the report comes back and is read.  At a receiving node:
  preview, then received (this node is its destination) or forwarding (a relay),
  and a relay's forwarding case becomes delivered when the next hop's receipt comes;
  a preview whose full bundle will never come (its release failed) is withdrawn.
* ``read_state`` -- the reading at the center: NULL (not on the worklist), new,
  claimed, reported, amended.

:func:`transition` is pure (no I/O, as h11's ``_state.py``): it takes the
current state, an event and who causes it, and returns the state after it or
raises.  :func:`move` is the one writer: inside the caller's transaction it
reads the current state, asks :func:`transition`, and writes what it returned.
Nothing else in the gateway writes either column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fenji.gateway.errors import PeerError

# A case's priority (the outbox's number: lower goes first) and its service.  Here,
# beside the states, so a command can name them without loading the release code.
PRIORITIES = {"stat": 0, "urgent": 1, "routine": 2}
SERVICES = ("imaging", "ecg")

STATE = "state"
READ = "read_state"
COLUMNS = (STATE, READ)

# Who causes an event.  People by their role (config.USER_ROLES); the node itself
# (quality gate, stable-study timer, sender, receiver, claim clock) as "node".
NODE = "node"
PEOPLE = frozenset({"technician", "reader", "physician", "operator"})
WHO = PEOPLE | {NODE}

_RELEASERS = frozenset({"technician", "operator", NODE})  # NODE: the stable-study timer
_EDGE_STAFF = frozenset({"technician", "operator"})
_ACKNOWLEDGERS = frozenset({"physician", "technician", "operator"})
_READER = frozenset({"reader"})
_NODE = frozenset({NODE})


@dataclass(frozen=True, slots=True)
class Move:
    """One row of the table: ``event`` by one of ``who`` moves ``column`` from any of
    ``sources`` to ``target``; in a state of ``stays`` it is allowed and changes nothing
    (a duplicate, or a late event that must never move a case back)."""

    column: str
    event: str
    sources: frozenset[str | None]
    target: str
    who: frozenset[str]
    stays: frozenset[str] = frozenset()


def _s(*names: str | None) -> frozenset[str | None]:
    return frozenset(names)


_AFTER_DELIVERY = frozenset({"delivered", "reported", "amended", "acknowledged"})

TABLE: tuple[Move, ...] = (
    # -- the sending hospital -------------------------------------------------
    Move(STATE, "hold", _s(None), "held", _NODE),  # the quality gate said unacceptable
    Move(STATE, "release", _s(None, "releasing"), "released", _RELEASERS),
    # A STAT/urgent preview queued before the full bundle is encoded (case.py): the
    # case is "releasing" until the full bundle is recorded, or "failed" if it cannot
    # be (its instances free for the next release).
    Move(STATE, "begin_release", _s(None), "releasing", _RELEASERS),
    Move(STATE, "release_failed", _s("releasing"), "failed", _NODE),
    Move(STATE, "override", _s("held"), "released", _EDGE_STAFF),
    Move(STATE, "supersede", _s("held"), "superseded", _NODE),  # a newer release replaces it
    Move(STATE, "send", _s("released"), "sent", _NODE,
         stays=frozenset({"sent", "forwarding", "releasing", "failed"}) | _AFTER_DELIVERY),
    Move(STATE, "receipt", _s("released", "sent", "forwarding"), "delivered", _NODE,
         stays=_AFTER_DELIVERY),
    Move(STATE, "report", _s("released", "sent", "delivered"), "reported", _NODE,
         stays=frozenset({"reported", "amended", "acknowledged"})),
    Move(STATE, "amend", _s("released", "sent", "delivered", "reported", "acknowledged"),
         "amended", _NODE, stays=frozenset({"amended"})),
    Move(STATE, "acknowledge", _s("reported", "amended"), "acknowledged", _ACKNOWLEDGERS,
         stays=frozenset({"acknowledged"})),
    # -- a receiving node (relay or center) -----------------------------------
    Move(STATE, "preview", _s(None), "preview", _NODE,
         stays=frozenset({"preview", "received", "forwarding", "delivered", "withdrawn"})),
    # The sender's release failed after its preview went (case.py _fail_release): its
    # signed withdrawal says the full bundle will never come.  It may overtake the
    # preview (a retried job): the case is then withdrawn first and a late preview
    # leaves it so.  A case whose full bundle is here keeps it.
    Move(STATE, "withdraw", _s(None, "preview"), "withdrawn", _NODE,
         stays=frozenset({"withdrawn", "received", "forwarding", "delivered"})),
    Move(STATE, "arrive", _s(None, "preview"), "received", _NODE, stays=frozenset({"received"})),
    # A bundle passing through (a case, or a report on its way back down).
    Move(STATE, "pass", _s(None, "preview"), "forwarding", _NODE,
         stays=frozenset({"forwarding", "received"}) | _AFTER_DELIVERY),
    # -- the reading at the center --------------------------------------------
    Move(READ, "list", _s(None), "new", _NODE,
         stays=frozenset({"new", "claimed", "reported", "amended"})),
    Move(READ, "claim", _s("new", "claimed"), "claimed", _READER,
         stays=frozenset({"reported", "amended"})),  # claimed again to amend
    Move(READ, "unclaim", _s("claimed"), "new", _READER),
    Move(READ, "expire", _s("claimed"), "new", _NODE),
    Move(READ, "sign", _s("claimed"), "reported", _READER),
    Move(READ, "amend", _s("reported", "amended"), "amended", _READER),
)

STATES: dict[str, frozenset[str]] = {
    c: frozenset(m.target for m in TABLE if m.column == c) for c in COLUMNS}
# A case whose report came back and verified (the edge's view).
HAS_REPORT = frozenset({"reported", "amended", "acknowledged"})
_BY_EVENT: dict[tuple[str, str], Move] = {(m.column, m.event): m for m in TABLE}
assert len(_BY_EVENT) == len(TABLE), "an event appears twice in one column"


class CaseStateError(PeerError):
    """A state, event or move the case state table does not allow."""

    http_status = 409


class UnknownState(CaseStateError):
    http_status = 400

    def __init__(self, column: str, state: object) -> None:
        self.column, self.state = column, state
        known = ", ".join(sorted(STATES.get(column, ()))) or "none"
        super().__init__(f"{column} = {state!r} is not a case state (known: {known})")


class IllegalMove(CaseStateError):
    """The table has no such move: names both states, the event and who tried."""

    def __init__(self, column: str, current: str | None, target: str | None, event: str,
                 who: str, case_id: str | None = None, why: str = "") -> None:
        self.column, self.current, self.target = column, current, target
        self.event, self.who, self.case_id = event, who, case_id
        what = f"case {case_id}: " if case_id else ""
        super().__init__(f"{what}{column} {current!r} -> {target!r} ({event!r} by {who}) is "
                         f"not allowed{': ' + why if why else ''}")


class NoSuchCase(CaseStateError):
    http_status = 404


def _check_state(column: str, state: str | None) -> None:
    if column not in COLUMNS:
        raise UnknownState(column, state)
    if state is not None and state not in STATES[column]:
        raise UnknownState(column, state)


def transition(column: str, current: str | None, event: str, who: str, *,
               case_id: str | None = None) -> str:
    """The state ``column`` is in after ``event`` by ``who`` from ``current``.

    Pure.  Returns ``current`` itself for an event the table lets a state ignore
    (a duplicate arrival, a late receipt).  Raises :class:`UnknownState` for a
    state outside the table and :class:`IllegalMove` for anything else it lacks.

    >>> transition("state", "held", "override", "operator")
    'released'
    """
    _check_state(column, current)
    move = _BY_EVENT.get((column, event))
    if move is None:
        known = ", ".join(sorted(e for c, e in _BY_EVENT if c == column))
        raise IllegalMove(column, current, None, event, who, case_id,
                          f"no event {event!r} on {column} (events: {known})")
    if who not in move.who:
        raise IllegalMove(column, current, move.target, event, who, case_id,
                          f"only {', '.join(sorted(move.who))} may")
    if current in move.stays:
        return current  # type: ignore[return-value]  # stays holds no None
    if current not in move.sources:
        allowed = ", ".join(sorted(repr(s) for s in move.sources))
        raise IllegalMove(column, current, move.target, event, who, case_id,
                          f"{event!r} moves only from {allowed}")
    return move.target


def event_for(column: str, current: str | None, target: str, who: str, *,
              case_id: str | None = None) -> str:
    """The event by ``who`` that moves ``column`` from ``current`` to ``target``."""
    _check_state(column, current)
    _check_state(column, target)
    found = [m.event for m in TABLE if m.column == column and m.target == target
             and current in m.sources and who in m.who]
    if not found:
        raise IllegalMove(column, current, target, "set", who, case_id,
                          "the table has no such move for this role")
    return found[0]


# Columns a move may set along with the state, in the same UPDATE.
_ALSO = frozenset({"claimed_by", "claimed_until", "released_at"})


def move(con: Any, case_id: str, event: str, *, who: str, now: float, column: str = STATE,
         also: Mapping[str, Any] | None = None) -> str:
    """The one writer of ``cases.state`` and ``cases.read_state``.

    Runs inside the caller's transaction (``store.atomic()``): reads the case's
    current state, asks :func:`transition`, writes what it returned (with
    ``also``, e.g. the claim's holder) and returns it.  Raises before writing.
    """
    if not getattr(con, "in_transaction", True):
        raise RuntimeError("states.move needs the caller's store.atomic() transaction")
    if column not in COLUMNS:
        raise UnknownState(column, None)
    row = con.execute(f"SELECT {column} FROM cases WHERE case_id = ?", (case_id,)).fetchone()
    if row is None:
        raise NoSuchCase(f"no case {case_id!r} at this node")
    current = row[0]
    new = transition(column, current, event, who, case_id=case_id)
    extra = dict(also or {})
    bad = set(extra) - _ALSO
    if bad:
        raise ValueError(f"states.move cannot set {sorted(bad)}")
    if new == current and not extra:
        return new
    cols = {column: new, "updated_at": now, **extra}
    con.execute("UPDATE cases SET " + ", ".join(f"{k} = ?" for k in cols)
                + " WHERE case_id = ?", (*cols.values(), case_id))
    return new


def initial(event: str, who: str, column: str = STATE) -> str:
    """The state a new case row is inserted with (``event`` from no state)."""
    return transition(column, None, event, who)
