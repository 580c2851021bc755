"""CLI verbs: `fenji keys init|show`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fenji.gateway import config as config_mod
from fenji.gateway.cli import common


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ksub = common.group(sub, "keys", "the node's Ed25519 key pair and TLS certificate")
    i = ksub.add_parser("init", parents=[common.CONFIG],
                        help="create the node key pair and certificate if missing",
                        description="Creates keys/node.key (0600), keys/node.pub and "
                                    "keys/node.crt as named in the config. Existing keys are "
                                    "never overwritten.")
    i.add_argument("--reader", metavar="NAME",
                   help="create the report-signing key pair of reader NAME instead "
                        "(keys/readers/NAME.key and .pub unless [[users]] names others)")
    add_passphrase_args(i)
    i.set_defaults(func=_init)
    pr = ksub.add_parser(
        "protect", parents=[common.CONFIG],
        help="encrypt an existing reader signing key with the reader's passphrase",
        description="A reader key made before keys were encrypted is plain PEM: anyone who "
                    "can read the file can sign as the reader.  This re-writes it as "
                    "encrypted PKCS#8 (same key pair: reports already signed still verify).")
    pr.add_argument("--reader", metavar="NAME", required=True)
    add_passphrase_args(pr)
    pr.set_defaults(func=_protect)
    s = ksub.add_parser("show", parents=[common.CONFIG],
                        help="print the node's public key and certificate paths")
    s.set_defaults(func=_show)


# Scripts give a passphrase through this variable or a file, never on the command
# line (argv is readable by every local user through /proc).
PASSPHRASE_ENV = "FENJI_KEY_PASSPHRASE"


def add_passphrase_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passphrase-file", type=Path, default=None, metavar="FILE",
                   help="read the reader's passphrase from FILE's first line (scripts; "
                        f"or set {PASSPHRASE_ENV}); otherwise it is asked for at the terminal")


def read_passphrase(args: argparse.Namespace, who: str, *, confirm: bool = False
                    ) -> bytes | None:
    """The passphrase from ``--passphrase-file``, ``FENJI_KEY_PASSPHRASE`` or a prompt
    (twice with ``confirm``); None when there is no terminal to ask at."""
    import getpass
    import os
    import sys

    from fenji.gateway.errors import PeerError

    path = getattr(args, "passphrase_file", None)
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise PeerError(f"--passphrase-file {path}: {exc.strerror}") from None
        return (lines[0] if lines else "").encode()
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode()
    if not sys.stdin.isatty():
        return None
    first = getpass.getpass(f"passphrase of {who}'s signing key: ")
    if confirm and getpass.getpass("again: ") != first:
        raise PeerError("the two passphrases differ; nothing was written")
    return first.encode()


def _protect(args: argparse.Namespace) -> int:
    import os

    from fenji.gateway.errors import PeerError
    from fenji.gateway.keys import encrypted_pem, is_encrypted, load_private

    cfg = config_mod.load(args.config)
    priv, _ = cfg.reader_key_paths(args.reader)
    if is_encrypted(priv):
        print(f"{priv} is already encrypted; nothing changed")
        return 0
    phrase = read_passphrase(args, args.reader, confirm=True)
    if not phrase:
        raise PeerError(f"no passphrase for {args.reader}: give --passphrase-file, set "
                        f"{PASSPHRASE_ENV} or run at a terminal")
    from fenji.gateway.config import MIN_PASSPHRASE_BYTES

    if len(phrase) < MIN_PASSPHRASE_BYTES:
        raise PeerError(f"passphrase of {len(phrase)} bytes is too short: at least "
                        f"{MIN_PASSPHRASE_BYTES}")
    pem = encrypted_pem(load_private(priv), phrase)
    tmp = priv.with_suffix(".key.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, priv)
    print(f"{priv}: encrypted with {args.reader}'s passphrase (same key pair)")
    return 0


def _init(args: argparse.Namespace) -> int:
    from fenji.gateway.keys import generate_certificate, generate_keypair, load_private

    cfg = config_mod.load(args.config)
    if args.reader:
        from fenji.gateway.keys import fingerprint, load_public

        rpriv, rpub = cfg.reader_key_paths(args.reader)
        created = not rpriv.exists()
        if created:
            generate_keypair(rpriv, rpub, passphrase=reader_passphrase(args, args.reader))
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


def reader_passphrase(args: argparse.Namespace, who: str) -> bytes:
    """A new reader key's passphrase; refuses (exit 2) when none can be had."""
    from fenji.gateway.errors import PeerError

    phrase = read_passphrase(args, who, confirm=True)
    if not phrase:
        raise PeerError(f"a reader's signing key is encrypted with the reader's passphrase: "
                        f"give --passphrase-file, set {PASSPHRASE_ENV} or run at a terminal "
                        f"(reader {who!r})")
    return phrase


def _show(args: argparse.Namespace) -> int:
    from fenji.gateway.keys import fingerprint, load_public

    cfg = config_mod.load(args.config)
    pub = cfg.resolve(cfg.keys.public_key)
    print(json.dumps({"node": cfg.node.name, "public_key_hex": fingerprint(load_public(pub)),
                      "public_key": str(pub),
                      "certificate": str(cfg.resolve(cfg.keys.certificate))}))
    return 0
