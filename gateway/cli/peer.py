"""CLI verbs: `fenji peer invite`, `fenji peer add`, `fenji peer ls` — pairing two nodes.

Two nodes trust each other by key: each lists the other in ``[[peers]]`` with
its name, URL, Ed25519 public key and (for mutual TLS) pinned certificate.
``fenji peer invite`` prints all of that as one pasteable line;
``fenji peer add LINE`` on the other node writes it into that node's config and
tells the running node to take it (SIGHUP), without a restart.  Compare the key
fingerprint that ``invite`` prints with the other side by phone before adding:
the line itself proves nothing about who sent it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from fenji.gateway import config as config_mod
from fenji.gateway.cli import common
from fenji.gateway.errors import ConfigError, PeerError

PREFIX = "fenji-peer-1:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY = re.compile(r"^[0-9a-f]{64}$")


class InvitationError(PeerError):
    """A pasted invitation line that cannot be used; the message says which part."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    psub = common.group(sub, "peer", "pair this node with another (invite / add / ls)",
                        description="Pair two nodes: run `fenji peer invite` on one, check the "
                                    "key fingerprint with the other side, then paste the line "
                                    "into `fenji peer add` there.  Do it both ways for nodes "
                                    "that send to each other (an edge and its center).")
    i = psub.add_parser("invite", parents=[common.CONFIG], help="print this node's pairing line")
    i.add_argument("--url", help="the URL the other node reaches this one at (default: from "
                                 "[http]; give the hospital LAN or VPN address)")
    i.set_defaults(func=_invite)
    a = psub.add_parser("add", parents=[common.CONFIG],
                        help="add a node from its pairing line (no restart needed)")
    a.add_argument("line", metavar="LINE", help="the line `fenji peer invite` printed there")
    a.add_argument("--default", action="store_true",
                   help="make it transfer.default_destination (where cases go)")
    a.add_argument("--url", help="override the URL in the line (e.g. through a link emulator)")
    a.set_defaults(func=_add)
    ls = psub.add_parser("ls", parents=common.BOTH, help="list the configured peers")
    ls.set_defaults(func=_ls)


def invitation(cfg: config_mod.Config, url: str | None = None) -> tuple[str, str]:
    """(the pasteable line, this node's key fingerprint)."""
    from fenji.gateway.keys import fingerprint, load_private

    key = fingerprint(load_private(cfg.resolve(cfg.keys.private_key)).public_key())
    scheme = "https" if cfg.http.tls else "http"
    body: dict[str, Any] = {"name": cfg.node.name, "key": key,
                            "url": url or f"{scheme}://{cfg.http.host}:{cfg.http.port}"}
    cert = cfg.resolve(cfg.keys.certificate)
    if cfg.http.tls and cert.is_file():
        body["cert"] = cert.read_text(encoding="ascii")
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("="), key


def parse_invitation(line: str) -> dict[str, Any]:
    line = line.strip()
    if not line.startswith(PREFIX):
        raise InvitationError(f"not a pairing line: it should start with {PREFIX!r} "
                              f"(got {line[:20]!r}…); run `fenji peer invite` on the other node")
    text = line[len(PREFIX):]
    try:
        body = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvitationError(f"pairing line is damaged (copied only in part?): {exc}") from None
    if not isinstance(body, dict):
        raise InvitationError("pairing line does not hold a node description")
    if not _NAME.match(str(body.get("name", ""))):
        raise InvitationError(f"pairing line: node name {str(body.get('name'))[:40]!r} is not "
                              "a plain name (letters, digits, . _ -)")
    if not _KEY.match(str(body.get("key", ""))):
        raise InvitationError("pairing line: key is not 64 hex digits (an Ed25519 public key)")
    if not re.match(r"^https?://[^\s\"'\\]+$", str(body.get("url", ""))):
        raise InvitationError(f"pairing line: url {str(body.get('url'))[:60]!r} is not an "
                              "http(s) URL")
    cert = body.get("cert")
    if cert is not None and (not isinstance(cert, str) or "BEGIN CERTIFICATE" not in cert):
        raise InvitationError("pairing line: cert is not a PEM certificate")
    return body


def add_peer(config_path: Path, body: dict[str, Any], *, default: bool = False,
             url: str | None = None) -> config_mod.Config:
    """Append ``body`` as a ``[[peers]]`` entry; the config is checked before it is kept."""
    cfg = config_mod.load(config_path)
    name = str(body["name"])
    if name == cfg.node.name:
        raise InvitationError(f"that is this node's own line ({name}): paste it on the other "
                              "node")
    if cfg.peer(name) is not None:
        raise InvitationError(f"peer {name!r} is already configured in {config_path}; edit "
                              "or remove its [[peers]] entry first")
    text = config_path.read_text(encoding="utf-8")
    block = (f'\n[[peers]]\nname = "{name}"\nurl = "{url or body["url"]}"\n'
             f'public_key = "{body["key"]}"\n')
    if body.get("cert"):
        cert_path = cfg.data_dir / "keys" / "peers" / f"{name}.crt"
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_text(str(body["cert"]), encoding="ascii")
        block += f'cert = "{cert_path}"\n'
    new = text.rstrip("\n") + "\n" + block
    if default:
        if re.search(r"(?m)^default_destination\s*=", new):
            new = re.sub(r'(?m)^default_destination\s*=.*$', f'default_destination = "{name}"',
                         new, count=1)
        elif re.search(r"(?m)^\[transfer\]\s*$", new):
            new = re.sub(r"(?m)^\[transfer\]\s*$", f'[transfer]\ndefault_destination = "{name}"',
                         new, count=1)
        else:
            new += f'\n[transfer]\ndefault_destination = "{name}"\n'
    checked = config_mod.from_mapping(_toml(new), source=str(config_path.resolve()))
    tmp = config_path.with_suffix(".toml.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.chmod(tmp, config_path.stat().st_mode & 0o777)
    os.replace(tmp, config_path)
    return checked


def _toml(text: str) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"the config would not be valid TOML: {exc}"]) from None


def _invite(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    line, key = invitation(cfg, args.url)
    if not args.url and cfg.http.host in ("127.0.0.1", "localhost", "::1"):
        print(f"fenji peer invite: note: the URL is loopback ({cfg.http.host}); give --url "
              "with the address the other node reaches this one at", file=sys.stderr)
    print(line)
    print(f"node {cfg.node.name}: key fingerprint {key[:16]}…{key[-8:]} — read it to the "
          "other side; they paste the line into: fenji peer add LINE", file=sys.stderr)
    return 0


def _add(args: argparse.Namespace) -> int:
    body = parse_invitation(args.line)
    cfg = add_peer(args.config, body, default=args.default, url=args.url)
    key = str(body["key"])
    print(f"added peer {body['name']} ({args.url or body['url']}), key {key[:16]}…{key[-8:]}"
          f"{' as the default destination' if args.default else ''}")
    from fenji.gateway.node import tell_running  # the node module is heavy: load on use

    print(tell_running(cfg))
    return 0


def _ls(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    for p in cfg.peers:
        row = {"name": p.name, "url": p.url, "key": p.public_key, "tls_cert": p.cert or None,
               "default": p.name == cfg.transfer.default_destination}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{p.name:<24} {p.url:<40} {'default' if row['default'] else ''}")
    return 0
