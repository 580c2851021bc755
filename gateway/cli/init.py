"""`fenji init DIR`: a commented, ready-to-run node directory.

The template below is also what ``conf/edge.toml`` and ``conf/center.toml`` were
generated from (``python -m fenji.gateway.cli.init --write-examples conf``); a test
checks that they still load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from fenji.gateway import config as config_mod
from fenji.gateway.errors import LocalError
from fenji.gateway.keys import generate_keypair

TEMPLATE = """\
# fenji node configuration ({role}).
# Every key below is optional except dicom.allow_ae; what is shown is the
# default unless the comment says otherwise.  Check a change with:
#     fenji conf check {filename}
# Ports and secrets can also come from the environment, FENJI_<SECTION>_<KEY>,
# e.g. FENJI_DICOM_PORT=11112 (see gateway/config.py for every key).

[node]
# A short unique name: it appears in logs, receipts and audit events.
name = "{name}"
# edge: sends cases up | relay: stores and forwards | center: reads and reports
role = "{role}"
# Store, keys and state live here; relative to this file.
data_dir = "."
# The hospital as its doctors name it, printed on report PDFs (e.g. "XX县人民医院").
institution = ""
# IANA time zone for times people read (report PDFs); empty: the system's.
timezone = ""

[dicom]
# The AE title your modalities send to (at most 16 characters).
ae_title = "{ae_title}"
# 127.0.0.1 accepts only local senders; use the node's LAN address (or
# "0.0.0.0") to receive from modalities on the hospital network.
host = "{host}"
port = {dicom_port}
# Calling AE titles allowed to send.  Anything else is rejected and logged.
# ["*"] accepts any calling AE (for a lab, never on a hospital network).
allow_ae = {allow_ae}
# Optional: only these source addresses may connect (empty: any address).
allow_hosts = []
# Receiving processes sharing the port; 0 = one per CPU core.
workers = {workers}
# Largest instance accepted, in bytes (1 GiB); a sender going past it is cut off.
max_instance_bytes = 1073741824
# Character set of instances that declare no (0008,0005) Specific Character Set,
# as a DICOM defined term: many modalities write Chinese as GBK or GB18030 and
# declare nothing.  "GB18030" reads both.  Empty: none assumed.
default_character_set = ""
# On stop (SIGTERM, Ctrl-C), seconds an association in flight may take to
# finish before it is aborted; the log names what was cut.
stop_grace_s = 10.0

[http]
# The node's HTTP API (cases, queue, DICOMweb).
host = "{host}"
port = {http_port}
# HTTPS with client certificates (mutual TLS) between nodes; every [[peers]]
# entry then needs `cert`.  Plain HTTP is for a lab on loopback only.
tls = false

[store]
# Store directory (blobs, SQLite index, quarantine); relative to data_dir.
path = "store"
# New instances are refused with 0xA700 (Out of Resources) while free disk is
# below this; ingest resumes by itself when space frees.
min_free_bytes = 67108864
# Keep rejected input in store/quarantine for forensics (never forwarded).
quarantine = true

[keys]
# The node's Ed25519 key pair (created by fenji init).
private_key = "keys/node.key"
public_key = "keys/node.pub"
# Self-signed certificate of the node key: give it to peers for mutual TLS.
certificate = "keys/node.crt"

# The quality gate's thresholds; defaults and reasons in fenji/codecs/ecg_quality.py
# and image_quality.py.  For example, for a 60 Hz mains region:
# [quality_ecg]
# mains_hz = 60.0
# flat_s = 0.2

# Other fenji nodes this one sends to or receives from, e.g.:
# [transfer]
# default_destination = "regional-center"
# [[peers]]
# name = "regional-center"
# url = "https://center.example:8042"
# public_key = "keys/peers/center.pub"
# cert = "keys/peers/center.crt"

# People and viewers on the HTTP API, each with a role (technician, reader,
# physician, operator).  Add them with `fenji user add NAME --role ROLE`: it
# prints the token once and writes only its SHA-256 here.  Readers also get a
# report-signing key (keys/readers/NAME.key) and list the services they read.
# [[users]]
# name = "dr.wang"
# role = "reader"
# token_sha256 = "..."
# services = ["imaging"]
# display_name = "王医生 (Dr. Wang), attending radiologist"

# A listener for people and viewers when [http] demands client certificates
# (tls = true between nodes): DICOMweb viewers, Orthanc and browsers use it.
# The same listener serves the web console: sign in at /login with a user's
# token; /viewer/ is the built-in OHIF viewer (see README "Web console").
# [web]
# host = "127.0.0.1"
# port = 8044
# session_idle_s = 1800         # a console session ends after 30 min unused
# session_max_s = 43200         # and 12 h after sign-in at the latest
# max_sessions = 1000
# cors_origins = []             # e.g. ["https://viewer.hospital.cn"]: other-origin viewers
# viewer_dir = ""               # OHIF build (dist/); empty: vendor/ohif from `make`
# behind_https_proxy = false    # true: an HTTPS proxy ends TLS in front; cookies Secure

# Center: DICOM nodes C-MOVE may send to (viewers, PACS).  With reader = NAME,
# an SR or encapsulated PDF this workstation C-STOREs for a worklist study
# becomes a draft of NAME's report, signed only when NAME confirms it with
# their token (an AE title is not a credential; NAME must have claimed the case).
# [[remote_aes]]
# ae_title = "VIEWER1"
# host = "10.0.0.20"
# port = 104
# reader = "dr.wang"

# Center: fees per reported case and the inviting:invited split (2:8).
# [[services]]
# name = "imaging"
# price = 80.0
# inviting_share = 0.2

# Center: an unused claim goes back to the pool after this long.
# [reading]
# claim_ttl_s = 1800

# Edge: where returned reports go, and who is told of a critical finding.
# [reports]
# deliver_to = "his-pacs"          # an [[egress]] name
# critical_hook = "/usr/local/bin/page-physician"
# [[known_nodes]]                  # the reading center, reached through a relay
# name = "regional-center"
# public_key = "keys/peers/center.pub"

[log]
# INFO: one line per association and per rejected instance.
level = "INFO"
# Empty: standard error.  Otherwise a file relative to data_dir.
file = ""
"""


def render(*, role: str = "edge", name: str = "fenji-node", ae_title: str = "FENJI",
           host: str = "127.0.0.1", dicom_port: int = 11112, http_port: int = 8042,
           allow_ae: list[str] | None = None, workers: int = 0,
           filename: str = "fenji.toml") -> str:
    return TEMPLATE.format(role=role, name=name, ae_title=ae_title, host=host,
                           dicom_port=dicom_port, http_port=http_port,
                           allow_ae=json.dumps(allow_ae or []), workers=workers,
                           filename=filename)


# The config (token hashes), keys, store (patient data) and log belong to the
# node's user alone: files 0600, directories 0700 (issue 17, finding 9).
PRIVATE_UMASK = 0o077


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Create files and directories owner-only inside the block (umask 077)."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def init_node(directory: Path, *, force: bool = False, **kwargs: object) -> Path:
    """Write ``DIR/fenji.toml`` and the node keys; return the config path.

    Everything is created owner-only (:func:`private_files`), and ``DIR`` itself
    is made 0700.
    """
    with private_files():
        return _init_node(directory, force=force, **kwargs)


def _init_node(directory: Path, *, force: bool = False, **kwargs: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    path = directory / "fenji.toml"
    if path.exists() and not force:
        raise LocalError(f"{path} exists; use --force to overwrite the config "
                         "(the node keys are never overwritten)")
    text = render(**kwargs)  # type: ignore[arg-type]
    cfg_tmp = path.with_suffix(".toml.new")
    cfg_tmp.write_text(text)
    config_mod.load(cfg_tmp)  # never write a config that would not load
    cfg_tmp.replace(path)
    cfg = config_mod.load(path)
    priv, pub = cfg.resolve(cfg.keys.private_key), cfg.resolve(cfg.keys.public_key)
    if not priv.exists():
        generate_keypair(priv, pub)
    crt = cfg.resolve(cfg.keys.certificate)
    if not crt.exists():
        from fenji.gateway.keys import generate_certificate, load_private

        generate_certificate(load_private(priv), cfg.node.name, crt)
    (cfg.store_dir).mkdir(parents=True, exist_ok=True)
    return path


def _write_examples(outdir: Path) -> None:
    (outdir / "edge.toml").write_text(render(
        role="edge", name="township-edge", ae_title="FENJI_EDGE", allow_ae=["CT1", "DR1",
                                                                             "US1", "ECG1"],
        filename="conf/edge.toml"))
    (outdir / "center.toml").write_text(render(
        role="center", name="regional-center", ae_title="FENJI_CENTER", dicom_port=11113,
        http_port=8043, allow_ae=["VIEWER1", "PACS"], filename="conf/center.toml"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--write-examples", type=Path, required=True)
    _write_examples(ap.parse_args().write_examples)
