"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie, kept server-side.

A session holds who signed in (their user name and the hash of the token they
signed in with), when, and when last used; the CSRF token its forms carry is
derived from its id.  It ends after ``web.session_idle_s`` unused,
``web.session_max_s`` after sign-in, on ``POST /logout``, or when the user's token
is revoked or rotated in the config (checked on every request).  At most
``web.max_sessions`` live at once; beyond that the least recently used goes.

Sessions live in the store's index (table ``console_sessions``, the id only as its
SHA-256): every process of a center behind a balancer knows every session, a
sign-out on one ends it on all, and a restart signs nobody out.  "Last used" is
written at most every :data:`TOUCH_S` (a viewer's frame requests must not each
write the index), so idle expiry is exact to within that.

The session authorises console pages (every method, forms checked for CSRF)
and *reads* on ``/api/`` and ``/dicom-web/`` (GET and HEAD: the key images and
the PDF a page embeds, the OHIF viewer's DICOMweb calls).  Writes to the JSON
API still need the token: a cookie never makes a cross-site write possible.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fenji.gateway.access.users import PROTECTED, User
from fenji.gateway.config import Config
from fenji.gateway.store.db import Store

log = logging.getLogger(__name__)

COOKIE = "fenji_session"  # + "_" + the node's name: browsers key cookies by host, not port,
# so an edge and a center on one machine (the demo, a lab) must not share one.
SAFE_METHODS = ("GET", "HEAD")
# "Last used" is written to the index at most this often per session.
TOUCH_S = 30.0


def _sha(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def csrf_of(sid: str) -> str:
    """The CSRF token of session ``sid``: derived one way, so a page's token never
    reveals the cookie."""
    return hashlib.sha256(b"fenji-console-csrf\0" + sid.encode()).hexdigest()


@dataclass(slots=True)
class Session:
    sid: str
    user: str
    token_sha256: str
    created_at: float
    last_seen: float

    @property
    def csrf(self) -> str:
        return csrf_of(self.sid)


class Sessions:
    """Live sessions in ``store``'s index, bounded in number and in time; ``clock`` is
    injectable for tests.  Blocking (the index): call from a thread in a handler."""

    def __init__(self, store: Store, *, idle_s: float, max_s: float, max_n: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.idle_s, self.max_s, self.max_n = idle_s, max_s, max_n
        self.clock = clock
        self.touch_s = min(TOUCH_S, idle_s / 10)

    def start(self, user: str, token_sha256: str) -> Session:
        now = self.clock()
        s = Session(secrets.token_urlsafe(32), user, token_sha256, now, now)
        with self.store.atomic() as con:
            con.execute("INSERT INTO console_sessions VALUES (?, ?, ?, ?, ?)",
                        (_sha(s.sid), user, token_sha256, now, now))
            # Ended by age: gone for good whatever the count.
            con.execute("DELETE FROM console_sessions WHERE last_seen < ? OR created_at < ?",
                        (now - self.idle_s, now - self.max_s))
            over = con.execute("SELECT COUNT(*) FROM console_sessions").fetchone()[0] \
                - self.max_n
            if over > 0:
                old = con.execute("SELECT sid_sha256, user_name FROM console_sessions "
                                  "ORDER BY last_seen, created_at LIMIT ?", (over,)).fetchall()
                for row in old:
                    con.execute("DELETE FROM console_sessions WHERE sid_sha256 = ?", (row[0],))
                    log.info("session dropped user=%s why=max_sessions", row[1])
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session ``sid``, marked as used now; None when unknown or expired."""
        if not sid or len(sid) > 128:
            return None
        key = _sha(sid)
        row = self.store.query_one("SELECT * FROM console_sessions WHERE sid_sha256 = ?",
                                   (key,))
        if row is None:
            return None
        now = self.clock()
        s = Session(sid, row["user_name"], row["token_sha256"], row["created_at"],
                    row["last_seen"])
        if now - s.last_seen > self.idle_s or now - s.created_at > self.max_s:
            self.end(sid)
            log.info("session expired user=%s why=%s", s.user,
                     "idle" if now - s.last_seen > self.idle_s else "max_age")
            return None
        if now - s.last_seen >= self.touch_s:
            with self.store.atomic() as con:
                con.execute("UPDATE console_sessions SET last_seen = ? WHERE sid_sha256 = ?",
                            (now, key))
            s.last_seen = now
        return s

    def end(self, sid: str | None) -> None:
        if sid:
            with self.store.atomic() as con:
                con.execute("DELETE FROM console_sessions WHERE sid_sha256 = ?", (_sha(sid),))

    def __len__(self) -> int:
        row = self.store.query_one("SELECT COUNT(*) AS n FROM console_sessions")
        return int(row["n"]) if row else 0


SESSIONS = web.AppKey("fenji_sessions", Sessions)


def sessions_of(cfg: Config, store: Store) -> Sessions:
    return Sessions(store, idle_s=cfg.web.session_idle_s, max_s=cfg.web.session_max_s,
                    max_n=cfg.web.max_sessions)


def user_of_session(cfg: Config, s: Session) -> User | None:
    """The session's user as the config has them now: a removed user or a rotated
    token ends the session."""
    for u in cfg.users:
        if u.name == s.user and hmac.compare_digest(u.token_sha256, s.token_sha256):
            return User.of(u)
    return None


def cookie_name(cfg: Config) -> str:
    return COOKIE + "_" + re.sub(r"[^A-Za-z0-9_-]", "_", cfg.node.name)


def secure(request: web.Request, cfg: Config) -> bool:
    """Whether the console's cookies carry Secure: this listener serves HTTPS, or
    ``web.behind_https_proxy`` says an HTTPS proxy in front of it does."""
    return request.secure or cfg.web.behind_https_proxy


def set_cookie(request: web.Request, resp: web.StreamResponse, s: Session, cfg: Config) -> None:
    max_s = cfg.web.session_max_s
    resp.set_cookie(cookie_name(cfg), s.sid, httponly=True, samesite="Strict", path="/",
                    secure=secure(request, cfg), max_age=int(max_s))


def middleware(live_config: Callable[[], Config]) -> Any:
    """Put the session's user on the request (``request["user"]``), as the token
    middleware would, where a session may act: see the module docstring."""

    @web.middleware
    async def session_mw(request: web.Request, handler: Any) -> web.StreamResponse:
        sessions = request.app.get(SESSIONS)
        sid = request.cookies.get(cookie_name(live_config()))
        if sessions is not None and sid:
            s = await asyncio.to_thread(sessions.get, sid)
            if s is not None:
                user = user_of_session(live_config(), s)
                if user is None:
                    await asyncio.to_thread(sessions.end, sid)
                else:
                    request["session"] = s
                    api = request.path.startswith(PROTECTED)
                    if not api or (request.method in SAFE_METHODS
                                   and "Authorization" not in request.headers):
                        request["user"] = user
        return await handler(request)

    return session_mw


def session_of(request: web.Request) -> Session | None:
    s = request.get("session")
    return s if isinstance(s, Session) else None
