"""The web console without a browser: sessions, CSRF, cookie flags, languages, config,
ECG paper scale (issue 13).  The browser tests are in test_console_browser.py."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from fenji.gateway import config as config_mod
from fenji.gateway.cli.init import init_node
from fenji.gateway.cli.user import add_user
from fenji.gateway.errors import ConfigError
from fenji.gateway.store.db import Store
from fenji.gateway.web.app import build_app
from fenji.gateway.web.console import i18n, svg
from fenji.gateway.web.console.session import Sessions


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_sessions_end_when_idle_or_too_old_and_are_bounded(tmp_path: Path,
                                                           index_url: str) -> None:
    clock = Clock()
    store = Store(tmp_path / "store", index_url=index_url)
    ss = Sessions(store, idle_s=60, max_s=300, max_n=2, clock=clock)

    def user(sid: str) -> str | None:
        s = ss.get(sid)
        return s.user if s is not None else None

    a = ss.start("a", "h")
    clock.t += 59
    assert user(a.sid) == "a"  # used: the idle clock restarts
    clock.t += 59
    assert user(a.sid) == "a"
    clock.t += 61
    assert user(a.sid) is None  # idle too long
    b = ss.start("b", "h")
    for _ in range(5):
        clock.t += 55
        assert user(b.sid) == "b"
    clock.t += 55
    assert user(b.sid) is None  # 330 s after sign-in > max_s, though never idle
    c, d, e = ss.start("c", "h"), ss.start("d", "h"), ss.start("e", "h")
    assert len(ss) == 2 and user(c.sid) is None and user(d.sid) and user(e.sid)
    assert user("") is None and user("forged") is None and user("x" * 10_000) is None
    # The index holds no session id, only its hash; the CSRF token is not the id either.
    rows = store.query("SELECT * FROM console_sessions")
    assert rows and all(d.sid not in str(r) and e.sid not in str(r) for r in rows)
    assert d.csrf != d.sid and d.csrf == ss.get(d.sid).csrf  # type: ignore[union-attr]
    store.close()


def test_a_session_is_known_to_every_process_and_outlives_a_restart(tmp_path: Path) -> None:
    """Two processes of a center share the store (behind a balancer a browser's
    requests alternate between them): one sign-in serves both, one sign-out ends
    it on both, and a restart signs nobody out."""
    cfg, store, reader, _ = _node(tmp_path)
    other = Store(cfg.data_dir / "store")  # the second process's own connection
    name = "fenji_session_c-1"

    async def run() -> None:
        async with TestClient(TestServer(build_app(cfg, store))) as a, \
                TestClient(TestServer(build_app(cfg, other))) as b:
            page = await (await a.get("/login")).text()
            token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            r = await a.post("/login", data={"csrf": token, "token": reader},
                             allow_redirects=False)
            assert r.status == 303
            sid = r.cookies[name].value
            jar = {name: sid}
            r = await b.get("/console/reader", cookies=jar, allow_redirects=False)
            assert r.status == 200 and "dr.wang" in await r.text()
            # A third app on the same store, as after a restart: still signed in.
            async with TestClient(TestServer(build_app(cfg, store))) as again:
                r = await again.get("/console/reader", cookies=jar, allow_redirects=False)
                assert r.status == 200
                page = await r.text()
            csrf_token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            r = await b.post("/logout", data={"csrf": csrf_token}, cookies=jar,
                             allow_redirects=False)
            assert r.status == 303
            r = await a.get("/console/reader", cookies=jar, allow_redirects=False)
            assert r.status == 303  # signed out on b: gone on a too

    asyncio.run(run())
    other.close()
    store.close()


def test_language_follows_the_browser_and_the_users_choice() -> None:
    from aiohttp.test_utils import make_mocked_request

    def lang(headers: dict[str, str], path: str = "/login") -> str:
        return i18n.choose(make_mocked_request("GET", path, headers=headers))

    assert lang({"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}) == "zh-CN"
    assert lang({"Accept-Language": "en-US,en;q=0.9,zh;q=0.5"}) == "en"
    assert lang({"Accept-Language": "fr;q=1, en;q=0.4, zh-TW;q=0.6"}) == "zh-CN"
    assert lang({}) == "zh-CN"  # hospitals in China
    assert lang({"Accept-Language": "zh-CN"}, "/login?lang=en") == "en"
    assert set(i18n.words("en")) == set(i18n.words("zh-CN"))


@pytest.mark.parametrize("key, value, needle", [
    ("session_idle_s", "0", "web.session_idle_s = 0.0 must be"),
    ("session_max_s", "-5", "web.session_max_s = -5"),
    ("max_sessions", "0", "web.max_sessions = 0"),
    ("cors_origins", '["https://ok.example", "*"]', "web.cors_origins[1] = '*'"),
    ("cors_origins", '["https://x.example/path"]', "web.cors_origins[0]"),
])
def test_bad_web_keys_are_named(tmp_path: Path, key: str, value: str, needle: str) -> None:
    init_node(tmp_path, role="center", name="c", allow_ae=["*"])
    cfg = tmp_path / "fenji.toml"
    cfg.write_text(cfg.read_text() + f"\n[web]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=re.escape(needle)):
        config_mod.load(cfg, env={})


def test_ecg_paper_is_25_mm_per_s_and_10_mm_per_mv() -> None:
    fs = 500.0
    t = np.arange(int(10 * fs)) / fs
    mv = np.sin(2 * np.pi * 1.0 * t)[:, None]  # ±1 mV at 1 Hz
    out = svg.ecg_svg(["II"], mv, fs, row_mm=40.0)
    assert 'viewBox="0 0 250.0 40.0"' in out  # 10 s x 25 mm/s
    pts = re.search(r'<polyline class="w" points="([^"]+)"', out)
    assert pts
    xy = np.array([[float(v) for v in p.split(",")] for p in pts.group(1).split()])
    assert xy[:, 0].max() == pytest.approx(250.0, abs=0.2)
    assert np.ptp(xy[:, 1]) == pytest.approx(20.0, abs=0.2)  # 2 mV peak to peak: 20 mm
    # The top of the wave in each 25 mm (1 s) window: 25 mm apart.
    tops = [xy[(xy[:, 0] >= k * 25) & (xy[:, 0] < (k + 1) * 25)] for k in range(3)]
    xs = [w[np.argmin(w[:, 1]), 0] for w in tops]
    assert np.diff(xs) == pytest.approx([25.0, 25.0], abs=0.3)


def _node(tmp_path: Path) -> tuple[config_mod.Config, Store, str, str]:
    init_node(tmp_path, role="center", name="c-1", allow_ae=["*"])
    path = tmp_path / "fenji.toml"
    reader = add_user(path, "dr.wang", "reader", services=("imaging",))
    ops = add_user(path, "ops", "operator")
    cfg = config_mod.load(path, env={})
    return cfg, Store(cfg.data_dir / "store"), reader, ops


def test_sign_in_cookie_csrf_and_sign_out_in_process(tmp_path: Path) -> None:
    cfg, store, reader, ops = _node(tmp_path)

    async def run() -> None:
        async with TestClient(TestServer(build_app(cfg, store))) as c:
            r = await c.get("/console/reader", allow_redirects=False)
            assert r.status == 303 and r.headers["Location"] == "/login?next=/console/reader"
            page = await (await c.get("/login")).text()
            token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            r = await c.post("/login", data={"token": reader}, allow_redirects=False)
            assert r.status == 403  # the sign-in form needs its CSRF token too
            r = await c.post("/login", data={"csrf": token, "token": "fj_wrong"},
                             allow_redirects=False)
            assert r.status == 401
            r = await c.post("/login", data={"csrf": token, "token": reader},
                             allow_redirects=False)
            assert r.status == 303 and r.headers["Location"] == "/console/reader"
            cookie = next(v for k, v in r.headers.items() if k == "Set-Cookie"
                          and v.startswith("fenji_session_c-1="))
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
            page = await (await c.get("/console/reader")).text()
            assert "dr.wang" in page
            assert (await c.get("/console/operator")).status == 403
            # The session reads DICOMweb (OHIF), but never writes to the JSON API.
            assert (await c.get("/dicom-web/studies")).status == 200
            assert (await c.post("/api/worklist/x/claim")).status == 401
            csrf_token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            assert (await c.post("/logout", data={}, allow_redirects=False)).status == 403
            r = await c.post("/logout", data={"csrf": csrf_token}, allow_redirects=False)
            assert r.status == 303
            r = await c.get("/console/reader", allow_redirects=False)
            assert r.status == 303  # signed out: back to /login
            assert (await c.get("/dicom-web/studies")).status == 401

    asyncio.run(run())
    store.close()


@pytest.mark.parametrize("behind", [False, True])
def test_cookies_are_secure_behind_an_https_proxy(tmp_path: Path, behind: bool) -> None:
    """TLS ended at a reverse proxy: the request here is plain HTTP, yet the browser
    talks HTTPS, so the session and sign-in cookies must carry Secure."""
    cfg, store, reader, _ = _node(tmp_path)
    if behind:
        path = tmp_path / "fenji.toml"
        path.write_text(path.read_text() + "\n[web]\nbehind_https_proxy = true\n")
        cfg = config_mod.load(path, env={})
    assert cfg.web.behind_https_proxy is behind

    async def run() -> list[str]:
        async with TestClient(TestServer(build_app(cfg, store))) as c:
            r = await c.get("/login")
            page = await r.text()
            cookies = [v for k, v in r.headers.items() if k == "Set-Cookie"]
            token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            # A Secure cookie does not come back over this plain-HTTP test client:
            # send it as the browser (on HTTPS at the proxy) would.
            r = await c.post("/login", data={"csrf": token, "token": reader},
                             headers={"Cookie": f"fenji_login_csrf={token}"},
                             allow_redirects=False)
            assert r.status == 303
            cookies += [v for k, v in r.headers.items() if k == "Set-Cookie"]
            return cookies

    cookies = asyncio.run(run())
    store.close()
    named = [c for c in cookies if c.startswith(("fenji_session_c-1=", "fenji_login"))]
    assert len(named) >= 2, cookies
    assert all(("; Secure" in c) is behind for c in named), named


def test_viewer_config_points_at_the_origin_the_browser_used(tmp_path: Path) -> None:
    cfg, store, reader, ops = _node(tmp_path)

    async def run() -> None:
        async with TestClient(TestServer(build_app(cfg, store))) as c:
            js = await (await c.get("/app-config.js")).text()
            root = f"http://{c.host}:{c.port}/dicom-web"
            assert f'"wadoRoot": "{root}"' in js and f'"qidoRoot": "{root}"' in js
            r = await c.get("/viewer/?StudyInstanceUIDs=1.2.3", allow_redirects=False)
            assert r.status == 303 and r.headers["Location"].startswith("/login?next=")
            assert (await c.get("/../fenji.toml")).status == 404
            assert (await c.get("/index.html")).status == 404  # only via /viewer/

    asyncio.run(run())
    store.close()


def _grids(page: str) -> list[tuple[str, int, list[str]]]:
    """Each grid table of a page: (its id, the columns its header has, the colspans of
    its "Nothing yet." rows)."""
    out = []
    for m in re.finditer(r'<table class="grid"(?: id="([^"]*)")?>(.*?)</table>', page, re.S):
        head = re.search(r"<thead>(.*?)</thead>", m.group(2), re.S)
        assert head, f"grid table {m.group(1)!r} has no header"
        empty = re.findall(r'<td colspan="(\d+)" class="muted">Nothing yet\.</td>', m.group(2))
        out.append((m.group(1) or "", head.group(1).count("<th"), empty))
    return out


def test_empty_lists_say_so_once_across_all_columns(tmp_path: Path) -> None:
    """A node with nothing yet: each list on each console page says so once, and a grid's
    empty row spans every column its header has (the shared macros in _macros.html)."""
    cfg, store, _reader, ops = _node(tmp_path)
    en = {"Accept-Language": "en"}

    async def run() -> dict[str, str]:
        async with TestClient(TestServer(build_app(cfg, store))) as c:
            page = await (await c.get("/login", headers=en)).text()
            token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            r = await c.post("/login", data={"csrf": token, "token": ops}, headers=en,
                             allow_redirects=False)
            assert r.status == 303
            out = {}
            for name in ("technician", "reader", "physician", "operator"):
                r = await c.get(f"/console/{name}", headers=en)
                assert r.status == 200, (name, r.status)
                out[name] = await r.text()
            return out

    pages = asyncio.run(run())
    store.close()
    grids = {name: _grids(page) for name, page in pages.items()}
    assert [g[0] for g in grids["operator"]] == ["peers", "op-cases", "fees"]
    assert len(grids["reader"]) == len(grids["technician"]) == 1 and grids["physician"] == []
    for name, tables in grids.items():
        for table_id, columns, empty in tables:
            assert empty == [str(columns)], (name, table_id, columns, empty)
    cards = {name: page.count('<p class="muted">Nothing yet.</p>') for name, page in pages.items()}
    assert cards == {"technician": 1, "reader": 0, "physician": 1, "operator": 0}
