"""Running real nodes as processes: for `make demo`, the benchmarks and tests.

A :class:`NodeProcess` is a node directory made by ``fenji init`` plus a
``fenji node`` process in its own session (so a test can SIGKILL the whole
process group: supervisor and workers).  Nothing here is mocked: it is the
same command an operator runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fenji.gateway.cli.init import init_node

_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port a test server can listen on a moment later.

    Asking the kernel for port 0 hands out a port from the ephemeral range, and
    between our probe and the server's bind any outgoing connection in this
    machine may take it (CI saw exactly that: EADDRINUSE on a node start). So
    ports come from below the ephemeral range, where the kernel never picks
    one on its own, starting at a random place so that concurrent test runs
    rarely meet, and never the same port twice in this process.
    """
    lo_eph, hi_eph = _ephemeral_range()
    lo, hi = (20000, lo_eph - 1) if lo_eph > 21000 else (hi_eph + 1, 65535)
    span = hi - lo + 1
    start = random.randrange(span)
    for i in range(span):
        port = lo + (start + i) % span
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {lo}-{hi} on {host}")


def fenji_cmd() -> list[str]:
    """The fenji CLI of this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "fenji.gateway.cli.main"]


def log_tail(path: Path, n: int = 40) -> str:
    """The last ``n`` lines of a child's log ("" when there is none yet)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def spawn_until_ready(cmd: list[str], log_path: Path, *,
                      ready: Callable[[subprocess.Popen[bytes]], bool], timeout_s: float,
                      what: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group, output appended to ``log_path``, and
    poll ``ready(proc)`` until true.  A child that exits first, or is not ready in
    ``timeout_s`` (then killed, group and all), raises with the log's tail."""
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_tail(log_path)}")
        if ready(proc):
            return proc
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    raise TimeoutError(f"{what} not ready in {timeout_s}s:\n{log_tail(log_path)}")


def terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float = 30.0) -> None:
    """SIGTERM a child still running and reap it; SIGKILL if it outlives ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


@dataclass
class NodeProcess:
    directory: Path
    name: str = "node"
    role: str = "edge"
    ae_title: str = "FENJI"
    allow_ae: list[str] = field(default_factory=lambda: ["*"])
    workers: int = 2
    dicom_port: int = 0
    http_port: int = 0
    extra_toml: str = ""
    env: dict[str, str] = field(default_factory=dict)
    wrap: list[str] = field(default_factory=list)  # e.g. unshare/mount prefix
    proc: subprocess.Popen[bytes] | None = None
    # name -> role of API users to create with the node (tokens in .tokens).
    users: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    web_port: int = 0

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if not self.dicom_port:
            self.dicom_port = free_port()
        if not self.http_port:
            self.http_port = free_port()
        self.config = self.directory / "fenji.toml"
        if not self.config.exists():
            init_node(self.directory, role=self.role, name=self.name, ae_title=self.ae_title,
                      dicom_port=self.dicom_port, http_port=self.http_port,
                      allow_ae=self.allow_ae, workers=self.workers)
            if self.extra_toml:
                self._merge_toml(self.extra_toml)
            for uname, urole in self.users.items():
                self.add_user(uname, urole)
        self.log_path = self.directory / "node.log"

    def _merge_toml(self, extra: str) -> None:
        """Append keys to existing sections: ``[section]`` blocks in ``extra``."""
        text = self.config.read_text()
        section = None
        for line in extra.strip().splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
                continue
            if not line or section is None:
                continue
            key = line.split("=", 1)[0].strip()
            lines = text.splitlines()
            if section not in lines:
                lines += ["", section]
            start = lines.index(section)
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")),
                       len(lines))
            for i in range(start + 1, end):
                if lines[i].split("=", 1)[0].strip() == key:
                    lines[i] = line
                    break
            else:
                lines.insert(start + 1, line)
            text = "\n".join(lines) + "\n"
        self.config.write_text(text)

    def public_key_hex(self) -> str:
        from fenji.gateway import config as config_mod
        from fenji.gateway.keys import fingerprint, load_public

        cfg = config_mod.load(self.config, env={})
        return fingerprint(load_public(cfg.resolve(cfg.keys.public_key)))

    def add_peer(self, other: NodeProcess, *, default: bool = False,
                 url: str | None = None, tls: bool = False) -> None:
        """Let this node send to / accept uploads from ``other``.

        ``tls``: mutual TLS with pinned certificates (both nodes need it);
        otherwise plain HTTP, which is for a lab on loopback only.
        """
        text = self.config.read_text()
        if tls:
            text = text.replace("tls = false", "tls = true", 1)
        import re

        if "allow_plain_http" not in text:
            if re.search(r"(?m)^\[transfer\]$", text):
                text = re.sub(r"(?m)^\[transfer\]\n", "[transfer]\nallow_plain_http = true\n",
                              text, count=1)
            else:
                text += "\n[transfer]\nallow_plain_http = true\n"
        if default:
            text = re.sub(r"(?m)^\[transfer\]\n",
                          f'[transfer]\ndefault_destination = "{other.name}"\n', text, count=1)
        scheme = "https" if tls else "http"
        text += (f'\n[[peers]]\nname = "{other.name}"\n'
                 f'url = "{url or f"{scheme}://127.0.0.1:{other.http_port}"}"\n'
                 f'public_key = "{other.public_key_hex()}"\n')
        if tls:
            cert = other.directory / "keys" / "node.crt"
            text += f'cert = "{cert}"\n'
        self.config.write_text(text)

    def add_user(self, name: str, role: str, *, services: tuple[str, ...] = (),
                 display_name: str = "") -> str:
        """Add an API user (``fenji user add``); returns their token.  Restart to apply."""
        from fenji.gateway.cli.user import add_user

        if role == "reader" and not services:
            services = ("imaging", "ecg")
        token = add_user(self.config, name, role, services=services, display_name=display_name)
        self.tokens[name] = token
        return token

    def auth(self, name: str | None = None) -> dict[str, str]:
        """Headers authenticating as ``name`` (default: the first user added)."""
        if not self.tokens:
            raise RuntimeError(f"node {self.name} has no users: call add_user() first")
        token = self.tokens[name] if name else next(iter(self.tokens.values()))
        return {"Authorization": f"Bearer {token}"}

    def enable_web(self) -> int:
        """Open the [web] listener (no client certificate) on a free port; returns it."""
        if not self.web_port:
            self.web_port = free_port()
            self._merge_toml(f"[web]\nport = {self.web_port}\n")
        return self.web_port

    def add_known_node(self, other: NodeProcess) -> None:
        """Trust ``other``'s node key without talking to it (an edge's reading center)."""
        with open(self.config, "a", encoding="utf-8") as fh:
            fh.write(f'\n[[known_nodes]]\nname = "{other.name}"\n'
                     f'public_key = "{other.public_key_hex()}"\n')

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port or self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def run_file(self) -> Path:
        return self.directory / "run" / "node.json"

    def start(self, *, timeout_s: float = 60.0) -> NodeProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"node {self.name} is already running (pid {self.proc.pid})")
        with contextlib.suppress(FileNotFoundError):
            self.run_file.unlink()
        env = dict(os.environ)
        env.update(self.env)

        def ready(proc: subprocess.Popen[bytes]) -> bool:
            self.proc = proc
            if self.wrap and self._port_open():
                return True  # inside a mount namespace the run file is not visible
            # A center's process ([node] shared_store) has its own run file.
            for path in (self.run_file, self.run_file.with_name(f"node-{proc.pid}.json")):
                try:
                    if json.loads(path.read_text()).get("pid") == proc.pid:
                        return True
                except (OSError, ValueError):
                    continue
            return False

        spawn_until_ready([*self.wrap, *fenji_cmd(), "node", "--config", str(self.config)],
                          self.log_path, ready=ready, timeout_s=timeout_s,
                          what=f"node {self.name}", env=env)
        return self

    def _port_open(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.dicom_port)) == 0

    def stop(self, *, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait (graceful)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the node's whole process group (supervisor and workers)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)

    def log_tail(self, n: int = 40) -> str:
        return log_tail(self.log_path, n)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``fenji ARGS --config <this node>`` and return the result."""
        cmd = [*fenji_cmd(), *args]
        if "--config" not in args:
            cmd += ["--config", str(self.config)]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=300)

    def stored(self) -> list[dict[str, object]]:
        out = self.cli("store", "ls", "--json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.stop() is None:
            self.kill()


def orthanc_plugin(name: str) -> Path | None:
    """Orthanc's plugin ``lib<name>.so`` from the Debian packages, or None: the
    packages link it into /usr/share/orthanc/plugins and keep the versioned file in
    /usr/lib/orthanc."""
    for folder in (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc")):
        found = sorted(folder.glob(f"lib{name}.so*"))
        if found:
            return found[0]
    return None


@dataclass
class OrthancProcess:
    """A real Orthanc (Debian package) on loopback, for tests and benchmarks."""

    directory: Path
    http_port: int = 0
    dicom_port: int = 0
    aet: str = "ORTHANC"
    modalities: dict[str, list[object]] = field(default_factory=dict)
    # More Orthanc configuration, merged over the defaults (a "DicomWeb" dict is
    # merged key by key, e.g. {"DicomWeb": {"Servers": {...}}}).
    extra: dict[str, object] = field(default_factory=dict)
    # ``postgresql://user@host:port/db``: the index in PostgreSQL through Debian's
    # orthanc-postgresql plugin (the files stay in StorageDirectory); "" keeps SQLite.
    index_url: str = ""
    # PostgreSQL connections of the index plugin (its IndexConnectionsCount).
    index_connections: int = 1
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()

    def _postgresql(self) -> tuple[list[str], dict[str, object]]:
        """The index plugin and its "PostgreSQL" section for :attr:`index_url`."""
        plugin = orthanc_plugin("OrthancPostgreSQLIndex")
        if plugin is None:
            raise RuntimeError("Orthanc's PostgreSQL index plugin (libOrthancPostgreSQLIndex.so) "
                               "is not installed: apt-get install orthanc-postgresql")
        u = urlsplit(self.index_url)
        if u.scheme not in ("postgresql", "postgres") or not u.hostname or not u.path[1:]:
            raise ValueError(f"Orthanc index_url {self.index_url!r} is not "
                             "postgresql://user@host:port/db")
        return [str(plugin)], {
            "EnableIndex": True, "EnableStorage": False, "Host": u.hostname,
            "Port": u.port or 5432, "Database": u.path[1:], "Username": u.username or "",
            "Password": u.password or "", "Lock": True, "EnableSsl": False,
            "IndexConnectionsCount": self.index_connections}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 60.0) -> OrthancProcess:
        import urllib.request

        self.directory.mkdir(parents=True, exist_ok=True)
        plugin = orthanc_plugin("OrthancDicomWeb")
        plugins = [str(plugin)] if plugin else []
        pg: dict[str, object] = {}
        if self.index_url:
            more, pg = self._postgresql()
            plugins += more
        cfg = {
            "Name": "fenji-test-orthanc", "StorageDirectory": str(self.directory / "db"),
            "IndexDirectory": str(self.directory / "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": self.aet, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "HttpBindAddress": "127.0.0.1",
            "DicomServerEnabled": True, "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False, "DicomModalities": self.modalities,
            "Plugins": plugins,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 1,
        }
        if pg:
            cfg["PostgreSQL"] = pg
        for key, value in self.extra.items():
            if key == "DicomWeb" and isinstance(value, dict):
                cfg["DicomWeb"] = {**cfg["DicomWeb"], **value}  # type: ignore[dict-item]
            else:
                cfg[key] = value
        conf = self.directory / "orthanc.json"
        conf.write_text(json.dumps(cfg, indent=1))

        def ready(proc: subprocess.Popen[bytes]) -> bool:
            self.proc = proc
            try:
                with urllib.request.urlopen(self.url + "/system", timeout=2):  # noqa: S310
                    return True
            except OSError:
                return False

        spawn_until_ready(["/usr/sbin/Orthanc", str(conf)], self.directory / "orthanc.log",
                          ready=ready, timeout_s=timeout_s, what="Orthanc")
        return self

    def get(self, path: str) -> object:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=30) as r:  # noqa: S310
            return json.loads(r.read())

    def stop(self) -> None:
        terminate(self.proc)

    def __enter__(self) -> OrthancProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class HaproxyProcess:
    """A real HAProxy (Debian package) in front of a center's processes.

    ``http_servers`` / ``dicom_servers``: each process's HTTP and DICOM port
    (same order).  The HTTP frontend balances per request in HTTP mode; the
    DICOM frontend per connection in TCP mode.  Both follow each process's
    ``GET /api/ready`` (``option httpchk``; for DICOM the check goes to the
    process's HTTP port), so a process that is shutting down, or whose store or
    listener is not up, gets no new work.  A stats socket answers
    :meth:`server_states` (for tests that wait for a process to be back).
    """

    directory: Path
    http_servers: list[int]
    dicom_servers: list[int]
    http_port: int = 0
    dicom_port: int = 0
    balance: str = "roundrobin"
    check_interval_ms: int = 500
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        self.socket_path = self.directory / "haproxy.sock"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config_text(self) -> str:
        check = f"inter {self.check_interval_ms}ms fall 2 rise 1"
        http = "\n".join(f"    server c{i} 127.0.0.1:{p} check {check}"
                         for i, p in enumerate(self.http_servers))
        dicom = "\n".join(f"    server c{i} 127.0.0.1:{d} check port {h} {check}"
                          for i, (d, h) in enumerate(zip(self.dicom_servers, self.http_servers,
                                                         strict=True)))
        # Long client/server timeouts: a frames PATCH streams a bundle for minutes
        # on a slow link.  redispatch + retries: a connection refused by a process
        # killed a moment ago (not yet marked down) goes to another one.
        return f"""global
    maxconn 2000
    stats socket {self.socket_path} mode 600 level admin

defaults
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout check 5s
    retries 3
    option redispatch

frontend center_http
    mode http
    bind 127.0.0.1:{self.http_port}
    default_backend center_http

backend center_http
    mode http
    balance {self.balance}
    option httpchk GET /api/ready
    http-check expect status 200
{http}

frontend center_dicom
    mode tcp
    bind 127.0.0.1:{self.dicom_port}
    default_backend center_dicom

backend center_dicom
    mode tcp
    balance leastconn
    option httpchk GET /api/ready
    http-check expect status 200
{dicom}
"""

    def start(self, timeout_s: float = 30.0) -> HaproxyProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "haproxy.cfg"
        conf.write_text(self.config_text())
        check = subprocess.run(["/usr/sbin/haproxy", "-c", "-q", "-f", str(conf)],
                               capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused {conf}: {check.stdout}{check.stderr}")
        log = open(self.directory / "haproxy.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(["/usr/sbin/haproxy", "-db", "-f", str(conf)],
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}; see "
                                   f"{self.directory / 'haproxy.log'}")
            if self.socket_path.exists():
                with contextlib.suppress(OSError):
                    self.server_states()
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("haproxy did not start")

    def command(self, line: str) -> str:
        """One command on the stats socket (``show stat``, ``show servers state``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _stat(self) -> list[dict[str, str]]:
        lines = self.command("show stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            raise OSError("haproxy stats socket did not answer")
        head = lines[0][2:].split(",")
        return [row for line in lines[1:]
                if (row := dict(zip(head, line.split(","), strict=False))).get("svname")
                not in (None, "", "FRONTEND", "BACKEND")]

    def server_states(self) -> dict[tuple[str, str], str]:
        """``(backend, server) -> status`` (``UP``, ``DOWN``, ``UP 1/2`` …) as HAProxy sees it."""
        return {(r["pxname"], r["svname"]): r.get("status", "") for r in self._stat()}

    def busy(self, backend: str = "center_http") -> list[int]:
        """The processes (indexes) that hold a request of ``backend`` now (HAProxy's
        current sessions; its health checks are not sessions)."""
        return [int(r["svname"][1:]) for r in self._stat()
                if r["pxname"] == backend and int(r.get("scur") or 0) > 0]

    def up(self, index: int) -> bool:
        """Does HAProxy send work to process ``index`` again (both backends UP)?"""
        states = self.server_states()
        return all(states.get((b, f"c{index}"), "").startswith("UP") and
                   "/" not in states.get((b, f"c{index}"), "")
                   for b in ("center_http", "center_dicom"))

    def stop(self) -> None:
        terminate(self.proc)

    def __enter__(self) -> HaproxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
