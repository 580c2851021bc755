"""What every route module of the web app shares: the app's keys and its two lookups.

The routes live in several modules (app, reading_routes, dicomweb); they meet here,
not in each other, so no route module imports another.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from fenji.gateway.config import Config
from fenji.gateway.store.db import Store

STORE = web.AppKey("store", Store)
CONFIG = web.AppKey("config", Config)
ON_RELEASE = web.AppKey("on_release", object)
LIVE_CONFIG = web.AppKey("live_config", list)  # [Config]: the one a reload (SIGHUP) swaps
WAKE = web.AppKey("fenji_wake_sender", object)  # wakes the sender after a report is signed


def app_of(request: web.Request) -> tuple[Config, Store]:
    """The node's configuration as it is now (its [[peers]] and [[users]] are read
    again on SIGHUP) and its store."""
    return request.app[LIVE_CONFIG][0], request.app[STORE]


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, else 400 saying what was wrong."""
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="request body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="request body must be a JSON object")
    return body
