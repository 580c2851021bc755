"""CSRF protection for every console form (OWASP synchronizer token pattern).

A signed-in form carries its session's token in the hidden field ``csrf``;
the sign-in form, before any session exists, carries a random token that must
equal the one in a short-lived cookie (double submit).  A form POST without the
right token is refused with 403 and changes nothing.  SameSite=Strict on the
session cookie is the second wall, not the only one.
"""

from __future__ import annotations

import hmac
import secrets

from aiohttp import web

from fenji.gateway.web.console.session import session_of

FIELD = "csrf"
LOGIN_COOKIE = "fenji_login_csrf"


class CsrfRefused(web.HTTPForbidden):
    pass


def token_for(request: web.Request) -> str:
    s = session_of(request)
    return s.csrf if s is not None else ""


def login_token() -> str:
    return secrets.token_urlsafe(24)


def check(request: web.Request, form: dict[str, str]) -> None:
    """Raise 403 unless ``form`` carries this session's CSRF token."""
    s = session_of(request)
    sent = form.get(FIELD, "")
    if s is None or not sent or not hmac.compare_digest(sent, s.csrf):
        raise CsrfRefused(text="form refused: missing or wrong CSRF token (field 'csrf'); "
                               "reload the page and submit again")


def check_login(request: web.Request, form: dict[str, str]) -> None:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = form.get(FIELD, "")
    if not cookie or not sent or not hmac.compare_digest(sent, cookie):
        raise CsrfRefused(text="sign-in refused: missing or wrong CSRF token; reload /login")
