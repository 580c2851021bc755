"""One node per store, and startup errors a person can act on (issue 18, points 1 and 3).

Real node processes on loopback; the second node is started the way an engineer
would start it, with ``fenji node --config``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from _data import ct_series

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess, fenji_cmd, free_port

pytestmark = pytest.mark.timeout(300)


def _node(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*fenji_cmd(), "node", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


def _one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_second_node_on_the_same_store_exits_and_touches_nothing(tmp_path: Path) -> None:
    with NodeProcess(tmp_path / "a", workers=2) as first:
        run_file = first.directory / "run" / "node.json"
        assert run_file.exists()
        before = json.loads(run_file.read_text())
        files = ct_series()[:6]
        line = _one_line(_node(first.config))
        assert f"is in use by pid {first.proc.pid}" in line, line  # type: ignore[union-attr]
        assert "store" in line and "fenji" in line
        assert json.loads(run_file.read_text()) == before  # the live node's file untouched
        sent = storescu(files, first.dicom_port)
        assert len(sent.sent) == len(files)
        assert len(first.stored()) == len(files)  # every association went to the first node


def test_second_node_on_the_same_dicom_port_names_the_port_and_holder(tmp_path: Path) -> None:
    with NodeProcess(tmp_path / "a", workers=2) as first:
        other = NodeProcess(tmp_path / "b", dicom_port=first.dicom_port)
        line = _one_line(_node(other.config))
        assert line.startswith("fenji: error: ") and f"dicom.port {first.dicom_port} is in use" \
            in line, line
        assert "pid " in line and "fenji" in line
        assert not (other.directory / "run" / "node.json").exists()
        same_http = NodeProcess(tmp_path / "c", http_port=first.http_port)
        line = _one_line(_node(same_http.config))
        assert f"http.port {first.http_port} is in use" in line, line


def test_a_nodes_workers_share_its_port_and_nobody_else_can(tmp_path: Path) -> None:
    # The supervisor binds the port once and hands the socket to its workers: no
    # SO_REUSEPORT, so another process cannot bind beside them even when it asks
    # for port sharing itself (the kernel's "open door", issue 18).
    import errno
    import socket

    with NodeProcess(tmp_path / "a", workers=2) as node:
        intruder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError) as exc:
            intruder.bind(("127.0.0.1", node.dicom_port))
        intruder.close()
        assert exc.value.errno == errno.EADDRINUSE
        # both workers serve it: several associations at once all land
        files = ct_series()[:6]
        r = storescu(files, node.dicom_port, calling="CT1")
        assert len(r.sent) == len(files), r.failed
        assert len(node.stored()) == len(files)
        assert len(json.loads((node.directory / "run" / "node.json").read_text())["workers"]) == 2


def test_a_host_that_does_not_resolve_is_one_line(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "a")
    text = node.config.read_text().replace('host = "127.0.0.1"', 'host = "127.0.0.l"', 1)
    node.config.write_text(text)
    line = _one_line(_node(node.config))
    assert "'127.0.0.l'" in line and ".host" in line, line
    check = subprocess.run([*fenji_cmd(), "conf", "check", str(node.config)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0 and "'127.0.0.l'" in check.stderr, check.stderr


def test_conf_check_refuses_tls_that_locks_people_out(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "a", users={"tech": "technician"})
    node.config.write_text(node.config.read_text().replace("tls = false", "tls = true", 1))
    check = subprocess.run([*fenji_cmd(), "conf", "check", str(node.config)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0
    assert "http.tls = true with no [web] listener" in check.stderr, check.stderr
    assert "tech" in check.stderr
    node.config.write_text(node.config.read_text() + f"\n[web]\nport = {free_port()}\n")
    assert "http.tls" not in subprocess.run(
        [*fenji_cmd(), "conf", "check", str(node.config)], capture_output=True, text=True,
        timeout=60).stderr


# -- finding things without UIDs nobody has (issue 18, point 6) -----------------
def test_config_is_found_without_the_flag(tmp_path: Path) -> None:
    from fenji.gateway.errors import ConfigError
    from fenji.gateway.settings.find import find_config

    here = tmp_path / "fenji.toml"
    assert find_config({"FENJI_CONFIG": "/x/y.toml"}, tmp_path) == Path("/x/y.toml")
    with pytest.raises(ConfigError, match="pass --config FILE, set FENJI_CONFIG"):
        find_config({}, tmp_path)
    here.write_text("")
    assert find_config({}, tmp_path) == here


def test_every_verb_takes_a_unique_case_id_prefix(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "a")
    from fenji.gateway import config as config_mod
    from fenji.gateway.cases.case import CaseError, resolve_case_id
    from fenji.gateway.node import open_store

    store = open_store(config_mod.load(node.config, env={}))
    try:
        with store.atomic() as con:
            for cid in ("cc657a24aa", "cc657b11bb", "d0d0d0d0d0"):
                con.execute("INSERT INTO cases(case_id, study_instance_uid, priority, service, "
                            "destination, state, created_at, updated_at) VALUES "
                            "(?, '1.2.3', 'routine', 'imaging', 'center', 'held', 0, 0)", (cid,))
        assert resolve_case_id(store, "d0d0") == "d0d0d0d0d0"
        assert resolve_case_id(store, "cc657b") == "cc657b11bb"
        assert resolve_case_id(store, "cc657a24aa") == "cc657a24aa"
        assert resolve_case_id(store, "ffff") == "ffff"  # unknown: the verb says so
        with pytest.raises(CaseError, match="ambiguous: cc657a24aa, cc657b11bb"):
            resolve_case_id(store, "cc657")
    finally:
        store.close()
    r = subprocess.run([*fenji_cmd(), "case", "show", "cc657b", "--config", str(node.config)],
                       capture_output=True, text=True, timeout=60)
    assert "cc657b11bb" in r.stdout, (r.stdout, r.stderr)
    amb = subprocess.run([*fenji_cmd(), "case", "show", "cc657", "--config", str(node.config)],
                         capture_output=True, text=True, timeout=60)
    assert amb.returncode == 2 and "ambiguous" in amb.stderr
    # Without --config, from the node's folder:
    here = subprocess.run([*fenji_cmd(), "case", "show", "d0d0"], cwd=node.directory,
                          capture_output=True, text=True, timeout=60)
    assert "d0d0d0d0d0" in here.stdout, (here.stdout, here.stderr)


def test_store_ls_and_case_show_are_for_people(tmp_path: Path) -> None:
    import pydicom

    edge = NodeProcess(tmp_path / "edge", name="edge",
                       extra_toml='[node]\ntimezone = "Asia/Shanghai"\n')
    center = NodeProcess(tmp_path / "center", name="center", role="center")
    edge.add_peer(center, default=True)
    files = ct_series()[:3]
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert edge.cli("store", "import", *map(str, files)).returncode == 0
    table = edge.cli("store", "ls").stdout.splitlines()
    assert table[0].split()[:5] == ["PATIENT", "ID", "DATE", "MOD", "DESCRIPTION"]
    row = table[1]
    assert str(ds.PatientID) in row and "CT" in row and str(ds.StudyInstanceUID) in row
    d = str(ds.StudyDate)
    assert f"{d[:4]}-{d[4:6]}-{d[6:8]}" in row and "   3  " in row
    sent = edge.cli("case", "send", str(ds.StudyInstanceUID), "--operator", "technician Zhang",
                    "--question", "外伤？", "--physician", "马医生", "--json")
    case_id = json.loads(sent.stdout.splitlines()[-1])["case_id"]
    assert case_id[:10] in edge.cli("store", "ls").stdout  # the study's case
    shown = edge.cli("case", "show", case_id[:8]).stdout
    assert not shown.lstrip().startswith("{")  # for a person, not JSON
    for want in (f"case      {case_id}", "马医生: 外伤？", "quality   acceptable",
                 " CST by cli", str(ds.PatientID), "-> center"):
        assert want in shown, (want, shown)
    assert json.loads(edge.cli("case", "show", case_id, "--json").stdout)["case_id"] == case_id
