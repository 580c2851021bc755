"""The web console in a real browser (issue 13): Debian's headless chromium, driven by
Selenium through chromium-driver, against a real edge and a real center.

One edge and one center for the module; the tests run in order as the day goes:
the technician releases a held CT with an override, the reader claims it, opens
it in the built-in OHIF viewer and signs a report in Chinese, the physician
acknowledges it at the edge, the operator reads the verified audit trail.  A
screenshot of the page is saved when a browser step fails (into the test's
tmp dir; also into ``$FENJI_SCREENS`` when set, success or not).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from _data import DICOM_DIR, ct_series
from _wait import until

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.lab.synth import derive

pytestmark = pytest.mark.timeout(600)

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PATIENT = "Wang^XiaoDong=王^小东"
QUESTION = "头痛，跌倒：出血？"
FINDINGS = "右侧额颞部硬膜下新月形高密度影，最厚约8 mm。"
IMPRESSION = "急性右侧硬膜下血肿，建议神经外科急会诊。"
OTHER_ORIGIN = "http://viewer.example:8080"
# A CT slice drawn on OHIF's canvas has bone, brain and air: its grey levels vary
# by hundreds; an empty (black) or error canvas varies by ~0.
MIN_CANVAS_VARIANCE = 50.0


def _screens() -> Path | None:
    d = os.environ.get("FENJI_SCREENS")
    return Path(d) if d else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    for tool in (CHROMIUM, DRIVER):
        assert Path(tool).exists(), f"{tool} missing: `make debs` installs chromium-driver"
    tmp = tmp_path_factory.mktemp("console")
    files = derive(ct_series(), tmp / "ct", 28, prefix="ct")
    for i, f in enumerate(files):  # a township CT: Chinese name; slice 17 came out blank
        ds = pydicom.dcmread(f)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID = PATIENT, "TS-0001"
        if i == 16:
            arr = ds.pixel_array.copy()
            arr[:] = arr.min()
            ds.PixelData = arr.tobytes()
        ds.save_as(f)
    ecg = derive([DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm"], tmp / "ecg", 1, prefix="ecg")
    edge = NodeProcess(tmp / "edge", name="township-edge", allow_ae=["CT1"], workers=1,
                       users={"tech.zhang": "technician", "dr.ma": "physician",
                              "ops": "operator"})
    center = NodeProcess(tmp / "center", name="regional-center", role="center", workers=1,
                         users={"ops": "operator"})
    center.add_user("dr.wang", "reader", services=("imaging", "ecg"),
                    display_name="王医生 (Dr. Wang)")
    center.enable_web()
    center._merge_toml(f'[web]\ncors_origins = ["{OTHER_ORIGIN}"]\n')
    edge.add_peer(center, default=True)
    center.add_peer(edge)
    with edge, center:
        assert len(storescu(files + ecg, edge.dicom_port, calling="CT1").sent) == 29
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        ecg_study = str(pydicom.dcmread(ecg[0], stop_before_pixels=True).StudyInstanceUID)
        driver = _browser()
        try:
            yield {"edge": edge, "center": center, "study": study, "ecg_study": ecg_study,
                   "driver": driver, "tmp": tmp, "state": {}}
        finally:
            driver.quit()


def _browser() -> Any:
    from selenium import webdriver

    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--enable-unsafe-swiftshader",
                "--use-angle=swiftshader", "--lang=zh-CN", "--disable-extensions",
                "--no-first-run", "--disable-background-networking"):
        o.add_argument(arg)
    o.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # A township workstation's browser: Chinese first (the pages follow Accept-Language).
    o.add_experimental_option("prefs", {"intl.accept_languages": "zh-CN,zh,en"})
    d = webdriver.Chrome(options=o, service=webdriver.ChromeService(DRIVER))
    # A release or an override answers after the gate and the bundle: minutes on a
    # loaded 2-core machine, so page loads get a generous deadline.
    d.set_page_load_timeout(300)
    return d


@contextlib.contextmanager
def shot(lab: dict[str, Any], name: str) -> Iterator[None]:
    """Save a screenshot of the page on failure (and always into $FENJI_SCREENS)."""
    d = lab["driver"]
    try:
        yield
    except BaseException:
        path = lab["tmp"] / f"FAILED-{name}.png"
        with contextlib.suppress(Exception):
            d.save_screenshot(str(path))
            print(f"screenshot of the failing page: {path} (url {d.current_url})")
        raise
    finally:
        if _screens() is not None:
            _screens().mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            with contextlib.suppress(Exception):
                d.save_screenshot(str(_screens() / f"{name}.png"))  # type: ignore[operator]


def snap(lab: dict[str, Any], name: str) -> None:
    """A screenshot of the page as it is now, into $FENJI_SCREENS when set."""
    if _screens() is not None:
        _screens().mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        lab["driver"].save_screenshot(str(_screens() / f"{name}.png"))  # type: ignore[operator]


def _sign_in(lab: dict[str, Any], node: NodeProcess, user: str, path: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = lab["driver"]
    d.delete_all_cookies()
    d.get(node.web_url + path)
    WebDriverWait(d, 30).until(lambda d: "/login" in d.current_url)
    d.find_element(By.ID, "token").send_keys(node.tokens[user])
    d.find_element(By.ID, "sign-in").click()
    WebDriverWait(d, 30).until(lambda d: d.current_url.split("/", 3)[3].startswith(
        path.lstrip("/").split("?")[0]))


def _held_case(lab: dict[str, Any]) -> str:
    """The CT case the technician released with an override: the reader, physician
    and operator steps follow that one case through the day, in module order."""
    case_id = lab["state"].get("case_id")
    assert case_id, ("the technician's step did not release the CT case; the reader, "
                     "physician and operator steps follow it: run the module whole")
    return str(case_id)


def _release_ecg(lab: dict[str, Any]) -> None:
    """The ECG goes as an urgent case (by the JSON API: the console and the API
    release alike); refused, saying so, when an earlier step released it already."""
    edge = lab["edge"]
    r = requests.post(edge.web_url + "/api/cases", headers=edge.auth("tech.zhang"), timeout=60,
                      json={"study_instance_uid": lab["ecg_study"], "priority": "urgent",
                            "clinical_question": "心悸 palpitations",
                            "requesting_physician": "dr.ma"})
    assert r.status_code == 201 or (r.status_code == 400 and "already released" in r.text), \
        r.text


def _http(node: NodeProcess, user: str) -> requests.Session:
    """A signed-in console session outside the browser (for status codes)."""
    s = requests.Session()
    page = s.get(node.web_url + "/login", timeout=30).text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token, page[:500]
    r = s.post(node.web_url + "/login", data={"csrf": token.group(1),
                                               "token": node.tokens[user]},
               allow_redirects=False, timeout=30)
    assert r.status_code == 303, r.text[:300]
    return s


def _api(node: NodeProcess, user: str, path: str) -> Any:
    r = requests.get(node.web_url + path, headers=node.auth(user), timeout=30)
    r.raise_for_status()
    return r.json()


def _wait_css(d: Any, css: str, timeout: float = 60) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout).until(lambda d: d.find_element(By.CSS_SELECTOR, css))


def test_anonymous_goes_to_login_and_a_wrong_role_gets_403(lab: dict[str, Any]) -> None:
    edge, center = lab["edge"], lab["center"]
    r = requests.get(edge.web_url + "/console/technician", allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["Location"].startswith("/login?next=")
    r = requests.get(center.web_url + f"/viewer/?StudyInstanceUIDs={lab['study']}",
                     allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["Location"].startswith("/login")
    assert requests.get(center.web_url + "/dicom-web/studies", timeout=30).status_code == 401
    physician = _http(edge, "dr.ma")
    r = physician.get(edge.web_url + "/console/technician", timeout=30)
    assert r.status_code == 403 and "physician" in r.text  # the API's reason, as a page
    assert physician.get(edge.web_url + "/console/operator", timeout=30).status_code == 403
    reader = _http(center, "dr.wang")
    assert reader.get(center.web_url + "/console/operator", timeout=30).status_code == 403
    # The same refusal as the JSON API gives that user for the same action.
    api = requests.get(center.web_url + "/api/worklist", headers=center.auth("ops"), timeout=30)
    assert api.status_code == 200
    from selenium.webdriver.common.by import By

    with shot(lab, "403-physician-on-technician-page"):
        _sign_in(lab, edge, "dr.ma", "/console/physician")
        lab["driver"].get(edge.web_url + "/console/technician")
        assert lab["driver"].find_element(By.ID, "error-status").text.startswith("403")


def test_a_form_post_without_its_csrf_token_is_refused(lab: dict[str, Any]) -> None:
    edge = lab["edge"]
    tech = _http(edge, "tech.zhang")
    page = tech.get(edge.web_url + "/console/technician", timeout=30)
    assert page.status_code == 200 and lab["study"] in page.text
    form = {"study_instance_uid": lab["study"], "priority": "stat"}
    for sent in (form, {**form, "csrf": "not-the-token"}):
        r = tech.post(edge.web_url + "/console/technician/release", data=sent,
                      allow_redirects=False, timeout=30)
        assert r.status_code == 403 and "CSRF" in r.text
    assert _api(edge, "ops", "/api/cases") == []  # nothing was released or held
    r = tech.post(edge.web_url + "/logout", data={}, allow_redirects=False, timeout=30)
    assert r.status_code == 403  # signing out is a form too
    # A session cookie never makes a JSON API write possible (token only).
    r = tech.post(edge.web_url + "/api/cases", json={"study_instance_uid": lab["study"]},
                  timeout=30)
    assert r.status_code == 401


def test_technician_releases_a_held_case_with_an_override(lab: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    edge, center, study = lab["edge"], lab["center"], lab["study"]
    d = lab["driver"]
    with shot(lab, "technician"):
        _sign_in(lab, edge, "tech.zhang", "/console/technician")
        card = _wait_css(d, f"[id='study-{study}']")
        # A study that arrives now shows up without a reload (htmx polling).
        cr = DICOM_DIR / "cr" / "RG3_UNC.dcm"
        assert len(storescu([cr], edge.dicom_port, calling="CT1").sent) == 1
        cr_study = str(pydicom.dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
        until(lambda: d.find_elements(By.CSS_SELECTOR, f"[id='study-{cr_study}']"), 60,
              "the arriving CR to appear on the open page")
        card = _wait_css(d, f"[id='study-{study}']")  # the list was redrawn
        assert "王 小东" in card.text  # the name as written, Chinese group included
        img = card.find_element(By.CSS_SELECTOR, ".thumb img")
        assert d.execute_script("return arguments[0].naturalWidth", img) > 0
        Select(card.find_element(By.NAME, "priority")).select_by_value("stat")
        card.find_element(By.NAME, "clinical_question").send_keys(QUESTION)
        card.find_element(By.NAME, "requesting_physician").send_keys("dr.ma")
        card.find_element(By.NAME, "consent_ref").send_keys("知情同意-0001")
        card.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        row = _wait_css(d, "tr.state-held")
        assert "blank" in row.text, row.text  # the gate's reason, in words
        snap(lab, "technician-held")
        case_id = row.get_attribute("id").removeprefix("case-")
        lab["state"]["case_id"] = case_id
        row.find_element(By.NAME, "reason").send_keys("第17层空白，其余可诊断 (slice 17 blank)")
        row.find_element(By.CSS_SELECTOR, "form.override button").click()
        until(lambda: d.find_elements(By.CSS_SELECTOR, f"#case-{case_id}:not(.state-held)"),
              240, "the overridden case to leave 'held' on the page")
        # The ECG that arrived too shows its strip on 25 mm/s, 10 mm/mV paper.
        strip = d.find_element(By.CSS_SELECTOR, "img.ecg-strip")
        assert d.execute_script("return arguments[0].naturalWidth", strip) > 0
    svg = requests.get(edge.web_url + f"/console/studies/{lab['ecg_study']}/ecg.svg?leads=II",
                       cookies={c["name"]: c["value"] for c in d.get_cookies()}, timeout=30)
    assert svg.status_code == 200 and 'data-mm-per-s="25.0"' in svg.text
    assert 'data-mm-per-mv="10.0"' in svg.text and "<polyline" in svg.text
    case = _api(edge, "ops", f"/api/cases/{case_id}")
    att = case["quality"]["attestation"]
    assert att["operator"] == "tech.zhang" and att["override"]["reason"].startswith("第17层")
    assert case["priority"] == "stat" and case["clinical_question"] == QUESTION
    _release_ecg(lab)  # the ECG goes too
    until(lambda: any(c["case_id"] == case_id for c in
                      _api(center, "ops", "/api/worklist")), 300, "the CT at the center")


def _network(d: Any) -> tuple[int, list[str]]:
    n, bad = 0, []
    for entry in d.get_log("performance"):
        m = json.loads(entry["message"])["message"]
        p = m.get("params", {})
        if m["method"] == "Network.responseReceived" and "/dicom-web" in p["response"]["url"]:
            n += 1
            if p["response"]["status"] >= 400:
                bad.append(f"{p['response']['status']} {p['response']['url']}")
        if m["method"] == "Network.loadingFailed" and not p.get("canceled"):
            bad.append(f"failed {p.get('errorText')} {p.get('requestId')}")
    return n, bad


def _canvas_variance(d: Any) -> float:
    """The largest grey-level variance of a viewport-sized canvas; 0 while OHIF is still
    building its layout (it replaces canvases as it goes, so a canvas found a moment ago
    may be gone: that counts as "not drawn yet", and the caller polls again)."""
    from PIL import Image
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    best = 0.0
    for c in d.find_elements(By.CSS_SELECTOR, "canvas"):
        try:
            if c.size["width"] < 200 or c.size["height"] < 200:
                continue
            png = c.screenshot_as_png
        except StaleElementReferenceException:
            continue
        arr = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
        best = max(best, float(arr.var()))
    return best


def test_reader_claims_opens_the_ct_in_ohif_and_signs_in_chinese(lab: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    center, case_id, study = lab["center"], _held_case(lab), lab["study"]
    d = lab["driver"]
    with shot(lab, "reader-case"):
        _sign_in(lab, center, "dr.wang", "/console/reader")
        row = _wait_css(d, f"#wl-{case_id}")
        first = d.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")[0]
        assert first.get_attribute("id") == f"wl-{case_id}"  # STAT first
        assert QUESTION in row.text and "township-edge" in row.text and "tech.zhang" in row.text
        snap(lab, "reader-worklist")
        row.find_element(By.CSS_SELECTOR, "button.claim").click()
        link = _wait_css(d, "#open-images")
        href = link.get_attribute("href")
        assert href.endswith(f"/viewer/?StudyInstanceUIDs={study}")
    d.get_log("performance")  # start the network log afresh for the viewer
    with shot(lab, "ohif-ct"):
        d.get(href)
        variance = until(lambda: (lambda v: v if v > MIN_CANVAS_VARIANCE else 0)(
            _canvas_variance(d)), 120, "OHIF to draw the CT on its canvas")
        print(f"OHIF canvas grey-level variance: {variance:.0f}")
        n, bad = _network(d)
        assert n > 0 and not bad, (n, bad)
    log = (center.directory / "node.log").read_text(encoding="utf-8", errors="replace")
    reads = [ln for ln in log.splitlines() if "dicomweb user=dr.wang" in ln]
    assert reads and all(f"study={study}" in ln or "study=-" in ln for ln in reads)
    assert any(re.search(r"status=200 bytes=[1-9]\d*", ln) for ln in reads)
    with shot(lab, "reader-report"):
        d.get(center.web_url + f"/console/reader/cases/{case_id}")
        d.find_element(By.ID, "findings").send_keys(FINDINGS)
        d.find_element(By.ID, "impression").send_keys(IMPRESSION)
        d.find_element(By.ID, "critical").click()
        d.find_element(By.ID, "sign").click()
        v1 = _wait_css(d, "#report-v1")
        assert FINDINGS in v1.text and IMPRESSION in v1.text
        reason = d.find_element(By.ID, "amendment_reason")
        reason.send_keys("补充：中线移位约4 mm")
        imp = d.find_element(By.ID, "impression")
        imp.clear()
        imp.send_keys(IMPRESSION + " 中线左移约4 mm。")
        d.find_element(By.ID, "sign").click()
        v2 = _wait_css(d, "#report-v2")
        assert "中线左移" in v2.text and "补充" in v2.text
        assert len(d.find_elements(By.CSS_SELECTOR, "article.report")) == 2
    reps = _api(center, "ops", f"/api/cases/{case_id}/reports")
    assert [r["version"] for r in reps] == [2, 1] and reps[1]["status"] == "superseded"
    assert reps[1]["findings"] == FINDINGS and reps[0]["critical"]


def test_reader_opens_the_ecg_case_in_the_12_lead_view(lab: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    center = lab["center"]
    _release_ecg(lab)  # done by the technician's step already when the module runs whole
    until(lambda: any(c["study_instance_uid"] == lab["ecg_study"] for c in
                      _api(center, "ops", "/api/worklist")), 120, "the ECG at the center")
    ecg_case = next(c["case_id"] for c in _api(center, "ops", "/api/worklist")
                    if c["study_instance_uid"] == lab["ecg_study"])
    d = lab["driver"]
    with shot(lab, "reader-ecg"):
        _sign_in(lab, center, "dr.wang", f"/console/reader/cases/{ecg_case}")
        assert not d.find_elements(By.ID, "open-images")  # OHIF has no ECG view
        d.find_element(By.ID, "open-ecg").click()
        img = _wait_css(d, "#ecg12")
        until(lambda: d.execute_script("return arguments[0].naturalWidth", img), 30,
              "the 12-lead SVG to load")
    cookies = {c["name"]: c["value"] for c in d.get_cookies()}
    body = requests.get(center.web_url + f"/console/studies/{lab['ecg_study']}/ecg.svg",
                        cookies=cookies, timeout=30).text
    assert body.count("<polyline") == 12


def test_physician_reads_the_critical_report_and_acknowledges(lab: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    edge, case_id = lab["edge"], _held_case(lab)
    until(lambda: any(r.get("received_at") and r["version"] == 2 for r in
                      _api(edge, "ops", f"/api/cases/{case_id}")["reports"]), 180,
          "report v2 back at the edge")
    d = lab["driver"]
    with shot(lab, "physician"):
        _sign_in(lab, edge, "dr.ma", "/console/physician")
        section = _wait_css(d, f"#phys-{case_id}")
        assert section.find_element(By.ID, f"critical-{case_id}").is_displayed()
        assert "中线左移" in section.text and "王 小东" in section.text
        pdf = requests.get(edge.web_url + f"/api/cases/{case_id}/reports/2.pdf", timeout=30,
                           cookies={c["name"]: c["value"] for c in d.get_cookies()})
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        section.find_element(By.CSS_SELECTOR, "button.ack").click()
        _wait_css(d, f"#phys-{case_id} .ack-done")
    rep = _api(edge, "ops", f"/api/cases/{case_id}")["reports"][0]
    assert rep["acknowledged_by"] == "dr.ma"


def test_operator_sees_the_cases_verified_audit_trail(lab: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    edge, case_id = lab["edge"], _held_case(lab)
    d = lab["driver"]
    with shot(lab, "operator-queues"):
        _sign_in(lab, edge, "ops", "/console/operator")
        assert d.find_elements(By.CSS_SELECTOR, ".plots svg")
        snap(lab, "operator")
        d.find_element(By.CSS_SELECTOR, f"a[href$='/cases/{case_id}/audit']").click()
        status = _wait_css(d, "#ledger-status")
    with shot(lab, "operator-audit"):
        assert "ok" in status.get_attribute("class").split(), status.text
        rows = d.find_elements(By.CSS_SELECTOR, "#audit tr.ev")
        kinds = [r.find_elements(By.TAG_NAME, "td")[3].text for r in rows]
        for k in ("held", "override", "released", "acknowledged"):
            assert k in kinds, kinds
        assert rows and all("ev-verified" in r.get_attribute("class") for r in rows)
    with shot(lab, "operator-audit-en"):
        assert "审计记录" in d.find_element(By.TAG_NAME, "h1").text  # the browser asks zh-CN
        d.find_element(By.CSS_SELECTOR, "a.lang").click()  # switch, and it sticks
        until(lambda: "Audit history" in d.find_element(By.TAG_NAME, "h1").text, 30,
              "the page in English")
        d.get(edge.web_url + "/console/operator")
        assert "Queues and links" in d.find_element(By.TAG_NAME, "h1").text


def test_cors_answers_exactly_the_configured_origins(lab: dict[str, Any]) -> None:
    center = lab["center"]
    pre = {"Access-Control-Request-Method": "GET",
           "Access-Control-Request-Headers": "authorization"}
    ok = requests.options(center.web_url + "/dicom-web/studies", timeout=30,
                          headers={**pre, "Origin": OTHER_ORIGIN})
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == OTHER_ORIGIN
    assert "Access-Control-Allow-Credentials" not in ok.headers
    bad = requests.options(center.web_url + "/dicom-web/studies", timeout=30,
                           headers={**pre, "Origin": "http://evil.example"})
    assert bad.status_code == 403
    assert not any(h.lower().startswith("access-control-") for h in bad.headers)
    got = requests.get(center.web_url + "/dicom-web/studies", timeout=30,
                       headers={**center.auth("ops"), "Origin": OTHER_ORIGIN})
    assert got.status_code == 200 and got.headers["Access-Control-Allow-Origin"] == OTHER_ORIGIN
    assert "Access-Control-Allow-Credentials" not in got.headers
