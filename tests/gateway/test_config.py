"""Config: TOML into frozen dataclasses, key-path errors, env overrides, conf check."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fenji.gateway import config
from fenji.gateway.cli.init import init_node
from fenji.gateway.errors import ConfigError
from fenji.gateway.lab.harness import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["edge.toml", "center.toml"])
def test_example_configs_load(name: str) -> None:
    cfg = config.load(REPO / "conf" / name, env={})
    assert cfg.node.role in config.ROLES
    assert cfg.dicom.allow_ae


def test_config_is_frozen() -> None:
    cfg = config.from_mapping({"dicom": {"allow_ae": ["CT1"]}}, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dicom.port = 1  # type: ignore[misc]


def test_every_error_named_with_its_key_path() -> None:
    raw = {"dicom": {"port": "eleven", "bogus": 1, "allow_ae": ["CT1", 3]},
           "node": {"role": "hub"}, "nope": {}}
    with pytest.raises(ConfigError) as info:
        config.from_mapping(raw, env={})
    errors = info.value.errors
    assert "dicom.port = 'eleven' is not an integer" in errors
    assert any(e.startswith("dicom.bogus: unknown key") for e in errors)
    assert "dicom.allow_ae[1] = 3 is not a string" in errors
    assert any(e.startswith("nope: unknown section") for e in errors)
    assert any(e.startswith("node.role = 'hub'") for e in errors)


def test_listed_names_must_be_set_and_unique() -> None:
    raw = {"dicom": {"allow_ae": ["CT1"]},
           "services": [{"name": "ecg"}, {"name": "ecg"}, {"name": ""}]}
    with pytest.raises(ConfigError) as info:
        config.from_mapping(raw, env={})
    assert "services[1].name = 'ecg' is listed twice" in info.value.errors
    assert "services[2].name is empty" in info.value.errors


def test_empty_allow_list_is_an_error() -> None:
    with pytest.raises(ConfigError, match="dicom.allow_ae is empty"):
        config.from_mapping({}, env={})


def test_env_overrides_ports_and_lists() -> None:
    cfg = config.from_mapping({"dicom": {"allow_ae": ["CT1"]}},
                              env={"FENJI_DICOM_PORT": "4242", "FENJI_HTTP_PORT": "8088",
                                   "FENJI_DICOM_ALLOW_AE": "A1, B2"})
    assert cfg.dicom.port == 4242 and cfg.http.port == 8088
    assert cfg.dicom.allow_ae == ("A1", "B2")
    with pytest.raises(ConfigError, match="FENJI_DICOM_PORT='x'"):
        config.from_mapping({"dicom": {"allow_ae": ["CT1"]}}, env={"FENJI_DICOM_PORT": "x"})


def test_bad_toml_syntax_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "f.toml"
    p.write_text("[dicom\nport=1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(p, env={})


def test_init_writes_a_loadable_commented_config_and_keys(tmp_path: Path) -> None:
    path = init_node(tmp_path / "n", role="center", name="c1", ae_title="CENTER",
                     dicom_port=11999, http_port=8999, allow_ae=["V1"])
    text = path.read_text()
    assert text.count("#") > 20  # commented for a hospital engineer
    cfg = config.load(path, env={})
    assert (cfg.node.role, cfg.dicom.port, cfg.dicom.allow_ae) == ("center", 11999, ("V1",))
    key = cfg.resolve(cfg.keys.private_key)
    assert key.exists() and (key.stat().st_mode & 0o777) == 0o600


def test_conf_check_cli_reports_key_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[dicom]\nport = "x"\nallow_ae = ["A"]\n[store]\nmin_free_bytes = -1\n')
    r = subprocess.run([sys.executable, "-m", "fenji.gateway.cli.main", "conf", "check", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "dicom.port = 'x' is not an integer" in r.stderr
    assert "store.min_free_bytes = -1 must be >= 0" in r.stderr
    # the shipped example, on ports free on this machine (conf check probes them: a
    # node running here on 8042/11112 must not fail this test)
    example = tmp_path / "edge.toml"
    example.write_text(re.sub(r"(?m)^port = \d+$", lambda _: f"port = {free_port()}",
                              (REPO / "conf" / "edge.toml").read_text()))
    good = subprocess.run([sys.executable, "-m", "fenji.gateway.cli.main", "conf", "check",
                           str(example)], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "ok" in good.stdout


def test_store_index_url_from_file_env_and_checked() -> None:
    """[store] index_url: empty by default (the SQLite file), FENJI_STORE_INDEX_URL
    overrides, and a URL fenji cannot open is named with its key path."""
    base = {"dicom": {"allow_ae": ["CT1"]}}
    assert config.from_mapping(base, env={}).store.index_url == ""
    url = "postgresql://fenji@10.0.0.7:5432/center"
    cfg = config.from_mapping(base, env={"FENJI_STORE_INDEX_URL": url})
    assert cfg.store.index_url == url
    with pytest.raises(ConfigError, match=r"store.index_url = 'mysql://x/y' must be "):
        config.from_mapping({**base, "store": {"index_url": "mysql://x/y"}}, env={})


def test_heartbeat_and_process_lease_checked_with_their_keys() -> None:
    """A process lease shorter than three heartbeats would count a live process dead
    after one late beat: refused, naming both keys."""
    base = {"dicom": {"allow_ae": ["CT1"]}}
    cfg = config.from_mapping(base, env={})
    assert (cfg.node.heartbeat_s, cfg.node.process_lease_s) == (5.0, 30.0)
    with pytest.raises(ConfigError) as info:
        config.from_mapping({**base, "node": {"heartbeat_s": 10.0, "process_lease_s": 20.0}},
                            env={})
    assert any("node.process_lease_s = 20.0" in e and "node.heartbeat_s = 10.0" in e
               for e in info.value.errors), info.value.errors
    with pytest.raises(ConfigError, match=r"node.heartbeat_s = 0.0 is not in"):
        config.from_mapping({**base, "node": {"heartbeat_s": 0.0}}, env={})
