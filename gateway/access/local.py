"""Who may use the node's local API, and how a command on the node's machine calls it.

The local API is HTTP on a UNIX socket, ``<data_dir>/run/local.sock``
(config.LOCAL_API_SOCKET), served by the running node (gateway/web/local.py).  A
`fenji` command hands it work that is faster in a warm process: a release of an
urgent ECG encodes in the node, whose codecs are loaded, instead of loading
them in a fresh process (~1 s).

Who may call it is who may run the CLI on the store today: the node's own
user (or root).  The socket is the owner's alone (mode 0600, in the node's
0700 directory) and every connection's peer is checked again with
``SO_PEERCRED``, the kernel's word for who connected; no token is involved.

A socket path is limited to 108 bytes; a longer one (a deep test directory) is
reached through ``/proc/self/fd/N/``, N an open descriptor of its folder.
This module imports only the standard library and the config: a command
calling the node loads nothing it does not need.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fenji.gateway.config import LOCAL_API_SOCKET, LOCAL_API_TIMEOUT_S
from fenji.gateway.errors import LocalError

# sockaddr_un's sun_path is 108 bytes with its NUL (unix(7)).
_SUN_PATH_MAX = 107


def socket_path(data_dir: Path) -> Path:
    return Path(data_dir) / LOCAL_API_SOCKET


@contextlib.contextmanager
def _short(path: Path) -> Iterator[str]:
    """A path to ``path`` that fits ``sun_path``: itself, or through its folder's fd."""
    if len(os.fsencode(str(path))) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def listen(path: Path) -> socket.socket:
    """The node's listening socket at ``path``, the owner's alone (a stale socket a
    killed node left is replaced: the node holds the store's lock, no other node runs)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(f"{path} exists and is not a socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)  # created 0600: no window in which others may connect
        try:
            with _short(path) as where:
                sock.bind(where)
        finally:
            os.umask(old)
        sock.listen(16)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a UNIX socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def allowed(uid: int) -> bool:
    """The node's own user, or root, may use the local API."""
    return uid in (os.geteuid(), 0)


class NodeNotRunning(LocalError):
    """Nobody answers on the local API's socket (or not to this user): nothing was
    sent, the command does the work itself."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            with _short(self.unix_path) as where:
                sock.connect(where)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            sock.close()
            raise NodeNotRunning(f"no node answers on {self.unix_path}: {exc}") from exc
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call(data_dir: Path, path: str, body: dict[str, Any], *,
         timeout_s: float = LOCAL_API_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    """POST ``body`` as JSON to the running node's local API; (status, JSON answer).

    Raises :class:`NodeNotRunning` when no node listens (nothing was sent: the
    caller may do the work itself); any other ``OSError`` means the request may
    have been taken, and the caller must not do it again blindly.
    """
    conn = _UnixConnection(socket_path(data_dir), timeout_s)
    try:
        conn.connect()
        data = json.dumps(body).encode("utf-8")
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"message": raw[:200].decode("utf-8", "replace")}
        return resp.status, answer if isinstance(answer, dict) else {"answer": answer}
    finally:
        conn.close()
