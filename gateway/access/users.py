"""Who is asking: user tokens and roles on the HTTP API (DESIGN.md §11).

Users are ``[[users]]`` in the config: a name, a role (technician, reader,
physician, operator) and the SHA-256 of their token; the token itself is
shown once by ``fenji user add`` and never stored.  A request carries it as
``Authorization: Bearer TOKEN`` or as the password of HTTP Basic auth (the
user name is not trusted: the token alone identifies the user), which is what
DICOMweb viewers such as Orthanc can be configured to send.

Everything under ``/api/`` (except ``/api/health`` and ``/api/ready``) and ``/dicom-web/`` needs a
valid token: an anonymous request reads nothing.  ``/transfer/`` is for nodes,
which authenticate every request with their Ed25519 signature instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fenji.gateway.config import Config, UserSection

PROTECTED = ("/api/", "/dicom-web/")
OPEN = ("/api/health", "/api/ready")


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    services: tuple[str, ...] = ()
    display_name: str = ""

    @classmethod
    def of(cls, u: UserSection) -> User:
        return cls(u.name, u.role, tuple(u.services), u.display_name or u.name)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe): shown once, stored only as its hash."""
    return "fj_" + secrets.token_urlsafe(32)


def token_of(request: web.BaseRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            _, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password or None
    return None


def authenticate(cfg: Config, token: str | None) -> User | None:
    if not token:
        return None
    digest = hash_token(token)
    for u in cfg.users:
        if hmac.compare_digest(u.token_sha256, digest):
            return User.of(u)
    return None


def _unauthorized(message: str) -> web.Response:
    return web.json_response({"status": 401, "error": "unauthorized", "message": message},
                             status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="fenji", '
                                                          'Basic realm="fenji"'})


def middleware(live_config: Callable[[], Config]) -> Any:
    """Token authentication against the users of the config as it is now
    (``fenji user add`` makes a running node read it again: SIGHUP)."""

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if isinstance(request.get("user"), User):
            return await handler(request)  # a console session vouched (web/console/session.py)
        if path.startswith(PROTECTED) and path not in OPEN:
            user = authenticate(live_config(), token_of(request))
            if user is None:
                why = ("no token: send 'Authorization: Bearer TOKEN' (fenji user add makes one)"
                       if token_of(request) is None else "unknown or revoked token")
                return _unauthorized(why)
            request["user"] = user
        return await handler(request)

    return auth


def user_of(request: web.Request) -> User:
    user = request.get("user")
    if not isinstance(user, User):
        raise web.HTTPUnauthorized(text="not authenticated")
    return user


def require(request: web.Request, *roles: str, action: str = "do this") -> User:
    """The request's user, if their role is one of ``roles``; 403 naming the role otherwise."""
    user = user_of(request)
    if user.role not in roles:
        raise web.HTTPForbidden(
            text=f"user {user.name!r} has role {user.role!r}, which may not {action} "
                 f"(allowed: {', '.join(roles)})")
    return user


def peer_address(request: web.BaseRequest) -> str:
    return str(request.remote or "")
