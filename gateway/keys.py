"""Node and reader keys: Ed25519, PEM on disk, private halves mode 0600."""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fenji.gateway.config import MIN_PASSPHRASE_BYTES
from fenji.gateway.errors import LocalError, PeerError

log = logging.getLogger(__name__)


class KeyLocked(PeerError):
    """A reader's signing key is encrypted and no passphrase, or a wrong one, was given:
    the act of signing is refused (403 over HTTP, exit 2 in the CLI)."""

    http_status = 403
    dicom_status = 0x0124  # Refused: not authorized


def generate_keypair(private_path: Path, public_path: Path, *, overwrite: bool = False,
                     passphrase: bytes | None = None) -> str:
    """Write a new Ed25519 key pair; return the public key's hex fingerprint.

    With ``passphrase`` the private key is PKCS#8 encrypted with it (PBES2: scrypt
    and AES-256-CBC, :func:`encrypted_pem`): a reader's signing key, under the
    reader's sole control (issue 17 finding 6).
    """
    if private_path.exists() and not overwrite:
        raise LocalError(f"{private_path} exists; refusing to overwrite a node key")
    if passphrase is not None and len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise PeerError(f"passphrase of {len(passphrase)} bytes is too short: at least "
                        f"{MIN_PASSPHRASE_BYTES}")
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    pem = (encrypted_pem(key, passphrase) if passphrase else key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub = key.public_key()
    public_path.write_bytes(pub.public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    return fingerprint(pub)


OPENSSL = "/usr/bin/openssl"


def encrypted_pem(key: Ed25519PrivateKey, passphrase: bytes) -> bytes:
    """``key`` as PKCS#8 PEM encrypted with ``passphrase`` under scrypt (PBES2, AES-256-CBC).

    ``cryptography`` reads scrypt-protected PKCS#8 but writes only PBKDF2, so OpenSSL
    writes it: the passphrase goes through a pipe (never argv, never a file), and the
    result is read back and compared before it is returned.
    """
    if b"\n" in passphrase or b"\r" in passphrase or b"\0" in passphrase:
        raise PeerError("a passphrase may not contain a line break or a NUL byte")
    plain = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    r, w = os.pipe()
    try:
        os.write(w, passphrase + b"\n")  # far below a pipe's buffer
        os.close(w)
        w = -1
        try:
            out = subprocess.run([OPENSSL, "pkcs8", "-topk8", "-scrypt", "-passout", f"fd:{r}"],
                                 input=plain, capture_output=True, pass_fds=(r,), timeout=120,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalError(f"cannot run {OPENSSL} to encrypt the key ({exc}); install "
                             "Debian's openssl") from exc
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    if out.returncode != 0:
        raise LocalError(f"openssl could not encrypt the key: "
                         f"{out.stderr.decode(errors='replace').strip()[:300]}")
    back = serialization.load_pem_private_key(out.stdout, password=passphrase)
    if not isinstance(back, Ed25519PrivateKey) or fingerprint(back.public_key()) != \
            fingerprint(key.public_key()):
        raise LocalError("openssl's encrypted key does not read back as the same key")
    return out.stdout


def fingerprint(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def _load_pem(path: Path, passphrase: bytes | None) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM file ``path``; a wrong or missing passphrase
    raises ValueError/TypeError (cryptography's), anything else LocalError."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    except OSError as exc:
        raise LocalError(f"cannot load private key {path}: {exc.strerror}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise LocalError(f"{path} is not an Ed25519 private key")
    return key


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        return _load_pem(path, None)
    except (TypeError, ValueError) as exc:
        raise LocalError(f"cannot load private key {path}: {exc}") from exc


def is_encrypted(path: Path) -> bool:
    """Whether the PEM private key at ``path`` is passphrase-protected (PKCS#8)."""
    try:
        return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in path.read_bytes()[:64]
    except OSError as exc:
        raise LocalError(f"cannot read private key {path}: {exc.strerror}") from exc


def load_signing_key(path: Path, passphrase: bytes | None, *, who: str) -> Ed25519PrivateKey:
    """A reader's signing key, unlocked with their passphrase for one act of signing.

    An encrypted key without a passphrase, or with a wrong one, raises
    :class:`KeyLocked` naming ``who``; a key from before encryption (plain PEM)
    still loads, with a warning to re-create it encrypted.
    """
    if not is_encrypted(path):
        log.warning("signing key of %s at %s is not encrypted: anyone who can read it can "
                    "sign as %s; encrypt it: fenji keys protect --reader %s", who, path, who, who)
        return load_private(path)
    if not passphrase:
        raise KeyLocked(f"the signing key of {who} is encrypted: give {who}'s passphrase "
                        "(CLI: prompt, FENJI_KEY_PASSPHRASE or --passphrase-file; API: "
                        "\"passphrase\" in the request)")
    try:
        return _load_pem(path, passphrase)
    except (TypeError, ValueError):
        raise KeyLocked(f"wrong passphrase for the signing key of {who}") from None


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise LocalError(f"cannot load public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise LocalError(f"{path} is not an Ed25519 public key")
    return key


def canonical_json(obj: object) -> bytes:
    """The bytes that get signed: sorted keys, no spaces, UTF-8."""
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return key.sign(message).hex()


def verify(pub: Ed25519PublicKey, message: bytes, signature_hex: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        pub.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def public_from_config(value: str, base: Path) -> Ed25519PublicKey:
    """A peer key from config: 64 hex digits (raw Ed25519) or a PEM file path."""
    text = value.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    path = Path(text)
    return load_public(path if path.is_absolute() else base / path)


def generate_certificate(key: Ed25519PrivateKey, common_name: str, path: Path,
                         *, days: int = 3650) -> None:
    """A self-signed certificate for the node key: its TLS identity.

    Peers pin each other's certificate (``[[peers]] cert``), so no CA is
    involved; it is marked CA:true only so OpenSSL accepts it as a trust anchor.
    """
    import datetime as _dt

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _dt.datetime.now(_dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(days=1))
            .not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]),
                           critical=False)
            .sign(key, None))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def server_ssl_context(cert: Path, key: Path, peer_certs: list[Path]) -> ssl.SSLContext:
    """TLS for the node's API: our certificate, client certificates required and
    verified against the pinned certificates of the configured peers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    # TLS 1.3 session tickets, so a sender reconnecting after a cut resumes without a
    # certificate exchange (the client's certificate travels in the ticket and is
    # checked as before).  The ticket key is this context's own: a restarted node
    # (or another process) makes senders fall back to a full handshake.
    ctx.options &= ~ssl.OP_NO_TICKET
    ctx.num_tickets = 2
    for p in peer_certs:
        ctx.load_verify_locations(str(p))
    return ctx


def client_ssl_context(cert: Path, key: Path, peer_cert: Path, *,
                       context_class: type[ssl.SSLContext] = ssl.SSLContext) -> ssl.SSLContext:
    """TLS to one peer: present our certificate, accept only the peer's pinned one.

    ``context_class``: a subclass (routing's ``ResumingContext`` resumes sessions)."""
    ctx = context_class(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(peer_cert))
    ctx.check_hostname = False  # the certificate itself is pinned, whatever the address
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
