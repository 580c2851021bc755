"""CLI verbs: `fenji user add|ls` — people allowed on the HTTP API, with their role."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fenji.gateway import config as config_mod
from fenji.gateway.cli import common
from fenji.gateway.cli.keys import add_passphrase_args, reader_passphrase
from fenji.gateway.errors import LocalError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    usub = common.group(sub, "user", "API users and their roles (technician, reader, "
                                     "physician, operator)")
    a = usub.add_parser(
        "add", parents=[common.CONFIG],
        help="add a user: prints their token once, writes only its hash",
        description="Appends a [[users]] entry to the config and prints the new user's API "
                    "token.  The token is shown only now; the config keeps its SHA-256.  "
                    "Readers also get an Ed25519 key pair for signing reports "
                    "(keys/readers/NAME.key), as `fenji keys init --reader NAME` makes.  "
                    "Restart the node (or send SIGTERM and start it) to apply.")
    a.add_argument("name", help="user name as it appears in the audit log, e.g. dr.wang")
    a.add_argument("--role", required=True, choices=config_mod.USER_ROLES)
    a.add_argument("--services", default="",
                   help="readers: comma-separated services they read, e.g. imaging,ecg")
    a.add_argument("--display-name", default="", help="as printed on reports")
    a.add_argument("--token", default=None,
                   help="use this token instead of a random one (scripted set-ups only)")
    a.add_argument("--json", action="store_true", help="print {name, role, token} as JSON")
    add_passphrase_args(a)
    a.set_defaults(func=_add)
    ls = usub.add_parser("ls", parents=common.BOTH, help="list users and roles (never tokens)")
    ls.set_defaults(func=_ls)


def add_user(config_path: Path, name: str, role: str, *, services: tuple[str, ...] = (),
             display_name: str = "", token: str | None = None,
             passphrase: bytes | None = None) -> str:
    """Append a [[users]] block (validated before it is written); returns the token.

    A reader's signing key is encrypted with ``passphrase``; without one (labs,
    the test harness) it is plain, and signing warns about it."""
    from fenji.gateway.access.users import hash_token, new_token

    cfg = config_mod.load(config_path)
    if cfg.user(name) is not None:
        raise LocalError(f"user {name!r} already exists in {config_path}")
    if role == "reader" and not services:
        raise LocalError(f"reader {name!r} needs --services (the services they read, e.g. "
                         "imaging,ecg): a reader without services sees an empty worklist")
    token = token or new_token()
    block = (f'\n[[users]]\nname = {json.dumps(name)}\nrole = "{role}"\n'
             f'token_sha256 = "{hash_token(token)}"\n')
    if services:
        block += f"services = {json.dumps(list(services))}\n"
    if display_name:
        block += f"display_name = {json.dumps(display_name, ensure_ascii=False)}\n"
    text = config_path.read_text(encoding="utf-8") + block
    tmp = config_path.with_suffix(".toml.new")
    tmp.write_text(text, encoding="utf-8")
    try:
        new = config_mod.load(tmp)
    except config_mod.ConfigError:
        tmp.unlink()
        raise
    tmp.replace(config_path)
    if role == "reader":
        make_reader_keys(new, name, passphrase=passphrase)
    return token


def make_reader_keys(cfg: config_mod.Config, name: str, *, passphrase: bytes | None = None
                     ) -> tuple[Path, Path, bool]:
    from fenji.gateway.keys import generate_keypair

    priv, pub = cfg.reader_key_paths(name)
    if priv.exists():
        return priv, pub, False
    generate_keypair(priv, pub, passphrase=passphrase)
    return priv, pub, True


def _add(args: argparse.Namespace) -> int:
    services = tuple(s.strip() for s in args.services.split(",") if s.strip())
    # Asked before anything is written: a reader without a passphrase adds nothing.
    phrase = reader_passphrase(args, args.name) if args.role == "reader" else None
    token = add_user(args.config, args.name, args.role, services=services,
                     display_name=args.display_name, token=args.token, passphrase=phrase)
    if args.json:
        print(json.dumps({"name": args.name, "role": args.role, "token": token}))
    else:
        print(f"added {args.role} {args.name!r} to {args.config}")
        print(f"token (shown once, give it to the user): {token}")
    from fenji.gateway.node import tell_running  # the node module is heavy: load on use

    told = tell_running(config_mod.load(args.config))
    print(told, file=sys.stderr if args.json else sys.stdout)
    return 0


def _ls(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    rows = [{"name": u.name, "role": u.role, "services": list(u.services),
             "display_name": u.display_name} for u in cfg.users]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        for r in rows:
            print(f"{r['name']:<20} {r['role']:<11} {','.join(r['services'])}")
    return 0
