"""Bounded parsing of what an HTTP client sends (issue 17: never a 500, every
resource bounded).

aiohttp's multipart parser raises a bare ``ValueError`` for an empty, missing
or over-long boundary and for a body that ends before its closing delimiter;
left alone those became 500s.  :func:`multipart_parts` turns them into a 400
naming the fault and stops a request at ``max_parts`` parts with a 413.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


async def multipart_parts(request: web.Request, max_parts: int, *,
                          key: str = "limits.max_multipart_parts") -> AsyncIterator[Any]:
    """The parts of a multipart body, at most ``max_parts`` of them.

    Raises ``HTTPBadRequest`` (400) for a malformed body and
    ``HTTPRequestEntityTooLarge`` (413) past the cap; the error middleware
    answers both as JSON.
    """
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:  # aiohttp asserts on a missing type
        raise web.HTTPBadRequest(text=f"malformed multipart body: {exc}") from None
    n = 0
    while True:
        try:
            part = await reader.next()
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"malformed multipart body after {n} parts: "
                                          f"{exc}") from None
        if part is None:
            return
        n += 1
        if n > max_parts:
            raise web.HTTPRequestEntityTooLarge(
                max_size=max_parts, actual_size=n,
                text=f"more than {key} = {max_parts} parts in one request; send the rest in "
                     "another request")
        yield part


def upload_slots(max_per_user: int) -> Any:
    """Middleware: at most ``max_per_user`` uploads (POST, PUT, PATCH under ``/api/``
    and ``/dicom-web/``) in flight per authenticated user; more get 429.

    Runs after the auth middleware (it needs ``request["user"]``).  Node-to-node
    uploads (``/transfer/``) are bounded per peer by the receiver itself.
    """
    in_flight: dict[str, int] = {}

    @web.middleware
    async def limit(request: web.Request, handler: Any) -> web.StreamResponse:
        user = request.get("user")
        if (user is None or request.method not in ("POST", "PUT", "PATCH")
                or not request.path.startswith(("/api/", "/dicom-web/"))):
            return await handler(request)
        name = str(getattr(user, "name", ""))
        if in_flight.get(name, 0) >= max_per_user:
            return web.json_response(
                {"status": 429, "error": "too_many_uploads",
                 "message": f"user {name!r} has {in_flight[name]} uploads in flight, "
                            f"limits.max_uploads_per_user = {max_per_user}; wait for one"},
                status=429, headers={"Retry-After": "5"})
        in_flight[name] = in_flight.get(name, 0) + 1
        try:
            return await handler(request)
        finally:
            left = in_flight[name] - 1
            if left:
                in_flight[name] = left
            else:
                del in_flight[name]

    return limit
