"""The OHIF Viewer built in: ``/viewer/`` on the same origin as ``/dicom-web``.

The ``@ohif/app`` 3.13.2 build (its ``dist/``) has its webpack public path fixed
at ``/`` (``__webpack_require__.p = "/"`` in ``app.bundle.*.js``) and loads its
chunks, styles, workers and WASM from the root; ``window.PUBLIC_URL`` moves only
some of its paths.  So its files are served at the root, by exact name from
the build (nothing else of the root is taken), and ``/viewer`` is its own
``viewer`` route: ``/viewer/?StudyInstanceUIDs=UID`` opens that study.  Its
``app-config.js`` is generated per request, pointing at the origin the browser
used; the session cookie authorises its DICOMweb reads (session.py).

Also here: CORS for viewers on other origins (``web.cors_origins``) and one
log line per DICOMweb read.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from fenji.gateway.config import Config

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
DEFAULT_VENDOR = REPO / "vendor"
VIEWER_DIR = web.AppKey("fenji_viewer_dir", Path)
_FORBIDDEN_NAMES = {"index.html", "app-config.js"}
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")


def viewer_dir(cfg: Config) -> Path:
    return cfg.resolve(cfg.web.viewer_dir) if cfg.web.viewer_dir else DEFAULT_VENDOR / "ohif"


def app_config(origin: str) -> str:
    """OHIF's configuration for a fenji center at ``origin`` (``window.config``)."""
    root = origin + "/dicom-web"
    config = {
        "routerBasename": "/",
        "extensions": [], "modes": [], "customizationService": {},
        "showStudyList": True, "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": True,
        "showLoadingIndicator": True, "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "fenji",
        "investigationalUseDialog": {"option": "never"},
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "fenji",
            "configuration": {
                "friendlyName": "fenji", "name": "fenji",
                "wadoUriRoot": root, "qidoRoot": root, "wadoRoot": root,
                "qidoSupportsIncludeField": False, "imageRendering": "wadors",
                "thumbnailRendering": "wadors", "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": False, "supportsWildcard": True,
                "staticWado": False, "singlepart": "bulkdata,video",
                "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                "omitQuotationForMultipartRequest": True,
                # The session cookie goes with every request (same origin).
                "requestOptions": {"requestCredentials": "same-origin"},
            },
        }],
    }
    return "window.config = " + json.dumps(config, indent=1) + ";\n"


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def get_app_config(request: web.Request) -> web.Response:
    return web.Response(text=app_config(_origin(request)), content_type="text/javascript",
                        headers={"Cache-Control": "no-store"})


def _missing(folder: Path) -> web.Response:
    return web.json_response(
        {"status": 404, "error": "viewer_not_installed",
         "message": f"the OHIF viewer is not installed at {folder}: run `make` in the source "
                    f"tree (it installs @ohif/app from npm) or set web.viewer_dir"}, status=404)


async def get_viewer(request: web.Request) -> web.StreamResponse:
    """The viewer's page for any of its routes (/viewer, /viewer/, /viewer?...)."""
    from urllib.parse import quote

    from fenji.gateway.access.users import User

    if not isinstance(request.get("user"), User):  # no session: sign in first, then back
        raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs)}")
    folder = request.app[VIEWER_DIR]
    index = folder / "index.html"
    if not index.is_file():
        return _missing(folder)
    return web.FileResponse(index, headers={"Cache-Control": "no-store"})


async def get_asset(request: web.Request) -> web.StreamResponse:
    """One file of the build, at the root, by its exact name; anything else 404."""
    folder = request.app[VIEWER_DIR]
    rel = request.match_info["name"]
    parts = rel.split("/")
    if (not parts or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
            or rel in _FORBIDDEN_NAMES):
        raise web.HTTPNotFound(text=f"no file {rel!r}")
    path = folder.joinpath(*parts)
    if not path.is_file():
        raise web.HTTPNotFound(text=f"no file {rel!r}")
    ctype, _ = mimetypes.guess_type(path.name)
    return web.FileResponse(path, headers={"Content-Type": ctype or "application/octet-stream",
                                           "Cache-Control": "public, max-age=86400"})


def add_routes(app: web.Application, cfg: Config) -> None:
    folder = viewer_dir(cfg)
    app[VIEWER_DIR] = folder
    r = app.router
    r.add_get("/app-config.js", get_app_config)
    r.add_get("/viewer", get_viewer)
    r.add_get("/viewer/{tail:.*}", get_viewer)
    # The build's own files, at the root where its public path puts them.  Only
    # names that exist in the build are answered (get_asset); the console's and
    # the API's routes are matched first (added before this one).
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    for name in names:
        if name in _FORBIDDEN_NAMES:
            continue
        if (folder / name).is_dir():
            r.add_get(f"/{{name:{_re(name)}/.+}}", get_asset)
        else:
            r.add_get(f"/{{name:{_re(name)}}}", get_asset)


def _re(name: str) -> str:
    import re

    return re.escape(name).replace("{", r"\{").replace("}", r"\}")


# ---------------------------------------------------------------------------
# CORS and the DICOMweb access log
# ---------------------------------------------------------------------------

_CORS_METHODS = "GET, HEAD, POST, OPTIONS"
_CORS_HEADERS = "Authorization, Accept, Content-Type"


def cors_middleware(cfg: Config) -> Any:
    """Preflights and CORS headers for exactly ``web.cors_origins`` on /dicom-web/.

    Never ``Access-Control-Allow-Credentials``: a viewer on another origin sends
    its own token (Authorization), never the console's session cookie.  Other
    origins get no ``Access-Control-*`` header at all, so the browser blocks them.
    """
    allowed = frozenset(cfg.web.cors_origins)

    @web.middleware
    async def cors(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/dicom-web/") and request.path != "/dicom-web":
            return await handler(request)
        origin = request.headers.get("Origin")
        ok = origin is not None and origin in allowed
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not ok:
                return web.json_response(
                    {"status": 403, "error": "cors_refused",
                     "message": f"origin {origin!r} is not in web.cors_origins"}, status=403)
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": str(origin),
                "Access-Control-Allow-Methods": _CORS_METHODS,
                "Access-Control-Allow-Headers": _CORS_HEADERS,
                "Access-Control-Max-Age": "600", "Vary": "Origin"})
        resp = await handler(request)
        if ok:
            resp.headers["Access-Control-Allow-Origin"] = str(origin)
            resp.headers["Vary"] = "Origin"
        return resp

    return cors


@web.middleware
async def dicomweb_log(request: web.Request, handler: Any) -> web.StreamResponse:
    """One INFO line per DICOMweb read: user, route, study, status, bytes."""
    if not request.path.startswith("/dicom-web/") or request.method == "OPTIONS":
        return await handler(request)
    t0 = time.monotonic()
    status, nbytes = 500, 0
    try:
        resp = await handler(request)
        status = resp.status
        body = getattr(resp, "body", None)
        nbytes = int(resp.body_length or resp.content_length
                     or (len(body) if isinstance(body, bytes | bytearray) else 0))
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        user = request.get("user")
        route = request.match_info.route.resource
        log.info("dicomweb user=%s method=%s route=%s study=%s status=%d bytes=%d ms=%.0f",
                 getattr(user, "name", "-"), request.method,
                 route.canonical if route is not None else request.path,
                 request.match_info.get("study", "-"), status, nbytes,
                 (time.monotonic() - t0) * 1000)
