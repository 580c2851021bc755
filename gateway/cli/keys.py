"""CLI verbs: `fenji keys init|show`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fenji.gateway import config as config_mod
from fenji.gateway.config import CONFIG_HELP


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("keys", help="the node's Ed25519 key pair and TLS certificate")
    ksub = p.add_subparsers(dest="keys_verb", metavar="ACTION", required=True)
    i = ksub.add_parser("init", help="create the node key pair and certificate if missing",
                        description="Creates keys/node.key (0600), keys/node.pub and "
                                    "keys/node.crt as named in the config. Existing keys are "
                                    "never overwritten.")
    i.add_argument("--config", "-c", type=Path, default=None, metavar="FILE", help=CONFIG_HELP)
    i.add_argument("--reader", metavar="NAME",
                   help="create the report-signing key pair of reader NAME instead "
                        "(keys/readers/NAME.key and .pub unless [[users]] names others)")
    i.set_defaults(func=_init)
    s = ksub.add_parser("show", help="print the node's public key and certificate paths")
    s.add_argument("--config", "-c", type=Path, default=None, metavar="FILE", help=CONFIG_HELP)
    s.set_defaults(func=_show)


def _init(args: argparse.Namespace) -> int:
    from fenji.gateway.keys import generate_certificate, generate_keypair, load_private

    cfg = config_mod.load(args.config)
    if args.reader:
        from fenji.gateway.cli.user import make_reader_keys
        from fenji.gateway.keys import fingerprint, load_public

        rpriv, rpub, created = make_reader_keys(cfg, args.reader)
        print(json.dumps({"reader": args.reader, "created": created, "private_key": str(rpriv),
                          "public_key": str(rpub),
                          "public_key_hex": fingerprint(load_public(rpub))}))
        return 0
    priv, pub = cfg.resolve(cfg.keys.private_key), cfg.resolve(cfg.keys.public_key)
    crt = cfg.resolve(cfg.keys.certificate)
    made = []
    if not priv.exists():
        generate_keypair(priv, pub)
        made.append(str(priv))
    if not crt.exists():
        generate_certificate(load_private(priv), cfg.node.name, crt)
        made.append(str(crt))
    print("created " + ", ".join(made) if made else "keys already present; nothing changed")
    return _show(args)


def _show(args: argparse.Namespace) -> int:
    from fenji.gateway.keys import fingerprint, load_public

    cfg = config_mod.load(args.config)
    pub = cfg.resolve(cfg.keys.public_key)
    print(json.dumps({"node": cfg.node.name, "public_key_hex": fingerprint(load_public(pub)),
                      "public_key": str(pub),
                      "certificate": str(cfg.resolve(cfg.keys.certificate))}))
    return 0
