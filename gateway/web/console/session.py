"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie, kept server-side.

A session holds who signed in (their user name and the hash of the token they
signed in with), when, when last used, and the CSRF token its forms carry.  It
ends after ``web.session_idle_s`` unused, ``web.session_max_s`` after sign-in,
on ``POST /logout``, or when the user's token is revoked or rotated in the
config (checked on every request).  At most ``web.max_sessions`` live at once;
beyond that the least recently used goes.  Sessions live in the node's memory:
a restart signs everyone out, which is the safe direction.

The session authorises console pages (every method, forms checked for CSRF)
and *reads* on ``/api/`` and ``/dicom-web/`` (GET and HEAD: the key images and
the PDF a page embeds, the OHIF viewer's DICOMweb calls).  Writes to the JSON
API still need the token: a cookie never makes a cross-site write possible.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fenji.gateway.access.users import PROTECTED, User
from fenji.gateway.config import Config

log = logging.getLogger(__name__)

COOKIE = "fenji_session"  # + "_" + the node's name: browsers key cookies by host, not port,
# so an edge and a center on one machine (the demo, a lab) must not share one.
SAFE_METHODS = ("GET", "HEAD")


@dataclass(slots=True)
class Session:
    sid: str
    user: str
    token_sha256: str
    created_at: float
    last_seen: float
    csrf: str


class Sessions:
    """Live sessions, bounded in number and in time; ``clock`` is injectable for tests."""

    def __init__(self, *, idle_s: float, max_s: float, max_n: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.idle_s, self.max_s, self.max_n = idle_s, max_s, max_n
        self.clock = clock
        self._live: OrderedDict[str, Session] = OrderedDict()

    def start(self, user: str, token_sha256: str) -> Session:
        now = self.clock()
        s = Session(secrets.token_urlsafe(32), user, token_sha256, now, now,
                    secrets.token_urlsafe(32))
        self._live[s.sid] = s
        while len(self._live) > self.max_n:
            old_sid, old = self._live.popitem(last=False)
            log.info("session dropped user=%s why=max_sessions", old.user)
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session ``sid``, marked as used now; None when unknown or expired."""
        if not sid:
            return None
        s = self._live.get(sid)
        if s is None:
            return None
        now = self.clock()
        if now - s.last_seen > self.idle_s or now - s.created_at > self.max_s:
            del self._live[sid]
            log.info("session expired user=%s why=%s", s.user,
                     "idle" if now - s.last_seen > self.idle_s else "max_age")
            return None
        s.last_seen = now
        self._live.move_to_end(sid)
        return s

    def end(self, sid: str | None) -> None:
        if sid:
            self._live.pop(sid, None)

    def __len__(self) -> int:
        return len(self._live)


SESSIONS = web.AppKey("fenji_sessions", Sessions)


def sessions_of(cfg: Config) -> Sessions:
    return Sessions(idle_s=cfg.web.session_idle_s, max_s=cfg.web.session_max_s,
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
            s = sessions.get(sid)
            if s is not None:
                user = user_of_session(live_config(), s)
                if user is None:
                    sessions.end(sid)
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
