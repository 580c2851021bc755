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
