"""`fenji node`: run a node until SIGTERM/SIGINT.

The supervisor opens the store once (migrations, crash recovery), then runs
``dicom.workers`` receiving processes that share the DICOM port through the
one listening socket it binds and hands them (no SO_REUSEPORT: no other node
can bind the port beside them).  Each worker owns its own store connection (SQLite serialises
the writers; blobs are content-addressed, so concurrent writers never clash).
On SIGTERM every worker stops accepting, lets in-flight associations finish,
and closes its store.  A worker that dies unexpectedly is restarted.

When every worker listens, ``<data_dir>/run/node.json`` is written with the
pid and ports, and the log says ``node ready``: scripts wait on either.

With ``[node] shared_store = true`` several such nodes (one config, ports from
``FENJI_DICOM_PORT`` / ``FENJI_HTTP_PORT``) serve one center from one store:
each holds the store's lock shared (:func:`join_store`), writes
``run/node-<pid>.json``, and only a process that finds itself alone does the
start-up recovery that would touch another live process's work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fenji.gateway import ingest
from fenji.gateway.cases.case import recover_releases
from fenji.gateway.cli.init import PRIVATE_UMASK
from fenji.gateway.config import SHARED_STORE_JOIN_WAIT_S, SHARED_STORE_STALE_TMP_S, Config
from fenji.gateway.errors import LocalError
from fenji.gateway.store import processes, reindex
from fenji.gateway.store.db import Store
from fenji.gateway.store.index import SQLITE
from fenji.routing import outbox_db, wakeup

log = logging.getLogger(__name__)


def setup_logging(cfg: Config, *, verbose: int = 0) -> None:
    level = logging.DEBUG if verbose > 1 else getattr(logging, cfg.log.level.upper())
    handlers: list[logging.Handler] = []
    if cfg.log.file:
        path = cfg.resolve(cfg.log.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    else:
        handlers.append(logging.StreamHandler())
    fmt = f"%(asctime)s %(levelname)s node={cfg.node.name} pid=%(process)d %(name)s %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=handlers, force=True)
    # pydicom warns (and logs) about every non-conformant value pynetdicom decodes
    # in a command set; fenji's own log line says what was wrong, once.
    import warnings

    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", module="pydicom")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    # Its decoders log a traceback per plugin that fails (a 12-bit JPEG, damaged
    # data); fenji logs one line with the reason where it answers 406 or holds.
    logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)
    # pynetdicom logs every PDU at INFO; its lines are not for operators.
    logging.getLogger("pynetdicom").setLevel(logging.ERROR if level > logging.DEBUG
                                             else logging.INFO)


def open_store(cfg: Config) -> Store:
    store = Store(cfg.store_dir, min_free_bytes=cfg.store.min_free_bytes,
                  quarantine=cfg.store.quarantine,
                  quarantine_max_records=cfg.store.quarantine_max_records,
                  quarantine_max_bytes=cfg.store.quarantine_max_bytes,
                  blob_url=cfg.store.blob_url,
                  blob_access_key_id=cfg.store.blob_access_key_id,
                  blob_secret_access_key=cfg.store.blob_secret_access_key,
                  index_url=cfg.store.index_url)
    store.audit_node = cfg.node.name  # stored instances are ledger events
    key = cfg.resolve(cfg.keys.private_key)
    if key.exists():  # the ledger's head is signed with the node key (truncation shows)
        from fenji.gateway.audit import ledger
        from fenji.gateway.keys import load_private

        ledger.set_signer(store, cfg.node.name, load_private(key))
    return store


@contextlib.contextmanager
def config_and_store(config_path: Path) -> Iterator[tuple[Config, Store]]:
    """For CLI verbs: load the config, open its store, close it afterwards."""
    from fenji.gateway import config as config_mod

    cfg = config_mod.load(config_path)
    store = open_store(cfg)
    try:
        yield cfg, store
    finally:
        store.close()


class StartupError(LocalError):
    """A node cannot start; the message names the key, the value and what holds it."""


class _BadHost(StartupError):
    """Not a matter of waiting: the configured host is wrong."""


def _listener_of(port: int) -> str:
    """Who listens on a TCP port (from /proc), as ``pid N: command`` or ``another process``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                f = line.split()
                if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{f[9]}]")
    if inodes:
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                for fd in (pid_dir / "fd").iterdir():
                    if os.readlink(fd) in inodes:
                        cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ")
                        return f"pid {pid_dir.name}: {cmd.decode(errors='replace').strip()[:120]}"
    return "another process"


def check_port_free(key: str, host: str, port: int, *, wait_s: float = 0.0) -> None:
    """Bind ``host:port`` without SO_REUSEPORT: a port another node serves (even with
    SO_REUSEPORT) or a host name that does not resolve is one clear line.

    ``wait_s``: how long a taken port may take to come free (the workers of a
    node that was just killed finish their associations before they exit).
    """
    if port == 0:
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            _bind_once(key, host, port)
            return
        except _BadHost:
            raise
        except StartupError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def _bind_once(key: str, host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        section = key.rsplit(".", 1)[0]
        raise _BadHost(f"{section}.host = {host!r} is not an address of this machine or "
                           f"a name that resolves ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"{key} {port} is in use ({_listener_of(port)})") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            section = key.rsplit(".", 1)[0]
            raise _BadHost(f"{section}.host = {host!r} is not an address of this "
                               "machine") from None
        raise StartupError(f"{key} {port} on {host}: {exc.strerror}") from None
    finally:
        sock.close()


def lock_store(cfg: Config) -> int:
    """Hold the store's lock for the node's life: one node per store.

    Returns the lock's file descriptor (kept open; the kernel releases the lock
    when the process ends, however it ends).  A second node on the same store
    stops here, before recovery or anything else touches the store.
    """
    cfg.store_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.store_dir / "node.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace")
        os.close(fd)
        who, shared = _lock_holder(holder)
        if shared:
            raise StartupError(f"store {cfg.store_dir} is shared by the processes of a center "
                               f"(node.shared_store = true; one was {who}); set "
                               "node.shared_store = true in this config to join them") from None
        raise StartupError(f"store {cfg.store_dir} is in use by {who}") from None
    _write_lock_record(fd, cfg, shared=False)
    return fd


def _lock_holder(record: str) -> tuple[str, bool]:
    """Who wrote the lock file's record, and whether it was a center's process."""
    try:
        info = json.loads(record)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started_at"]))
        return (f"pid {info['pid']} (started {when}: {info.get('command', '?')})",
                bool(info.get("shared")))
    except (ValueError, KeyError, TypeError):
        return "another process", False


def _write_lock_record(fd: int, cfg: Config, *, shared: bool) -> None:
    record = json.dumps({"pid": os.getpid(), "started_at": time.time(), "shared": shared,
                         "command": " ".join(sys.argv)[:200], "config": cfg.source})
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)


def join_store(cfg: Config, *, wait_s: float = SHARED_STORE_JOIN_WAIT_S) -> tuple[int, bool]:
    """``[node] shared_store``: hold the store's lock with the center's other processes.

    Returns ``(fd, alone)``.  A process that gets the lock exclusively is alone
    on the store: it keeps it exclusive through the full start-up recovery and
    then calls :func:`share_store`.  Otherwise it waits (up to ``wait_s``) for
    the lock shared, while a process that is alone finishes its recovery.  A
    node without ``shared_store`` holding the store is refused at once.
    """
    cfg.store_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cfg.store_dir / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass
    else:
        _write_lock_record(fd, cfg, shared=True)
        return fd, True
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd, False
        except BlockingIOError:
            who, shared = _lock_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            if not shared or time.monotonic() >= deadline:
                os.close(fd)
                why = ("by a node without node.shared_store" if not shared else
                       f"exclusively for {wait_s:.0f} s (its start-up recovery)")
                raise StartupError(f"store {cfg.store_dir} is held {why}: {who}") from None
            time.sleep(0.2)


def share_store(fd: int) -> None:
    """A process that was alone lets the center's other processes join (after recovery)."""
    fcntl.flock(fd, fcntl.LOCK_SH)


def run_file(cfg: Config, pid: int | None = None) -> Path:
    """Where a running node says it is ready: ``run/node.json``; a center's process
    (``[node] shared_store``) has its own, ``run/node-<pid>.json``."""
    run = cfg.data_dir / "run"
    if not cfg.node.shared_store:
        return run / "node.json"
    return run / f"node-{os.getpid() if pid is None else pid}.json"


def tell_running(cfg: Config) -> str:
    """Make this config's running nodes on this machine read it again (SIGHUP: their
    [[peers]] and [[users]]); what happened, in a line for the operator."""
    pids = running_pids(cfg)  # a center may run several processes on this machine
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
    if pids:
        return (f"told the running node (pid {', '.join(map(str, pids))}) to take it: "
                "no restart needed (a center's processes on other machines: "
                "`kill -HUP` them there)")
    return "the node is not running; it takes the change when it starts"


def running_pids(cfg: Config) -> list[int]:
    """The pids of this config's running nodes on this machine (their run files)."""
    pids = []
    for path in sorted((cfg.data_dir / "run").glob("node*.json")):
        try:
            pid = int(json.loads(path.read_text())["pid"])
            os.kill(pid, 0)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        pids.append(pid)
    return pids


def remove_stale_tmp(store: Store, older_than_s: float, now: float) -> int:
    """A center's process that is not alone removes only temporary files older than
    ``older_than_s``: the fresh ones may be another live process's writes."""
    removed = 0
    for p in store.tmp_dir.iterdir():
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > older_than_s:
                p.unlink()
                removed += 1
    return removed


def worker_count(cfg: Config) -> int:
    return cfg.dicom.workers or max(1, os.cpu_count() or 1)


def _serve(cfg: Config, stop: threading.Event, ready: Any = None,
           listener: socket.socket | None = None) -> None:
    """One receiving process: serve until ``stop`` is set (on ``listener`` if given)."""
    from fenji.gateway.dimse.server import DicomService

    store = open_store(cfg)
    service = DicomService(cfg, store)
    try:
        host, port = service.start(listener)
        if ready is not None:
            ready.put(("ready", os.getpid(), port))
        while not stop.wait(0.5):
            pass
        log.info("dicom stopping: %d associations in flight, grace dicom.stop_grace_s=%g",
                 service.active, cfg.dicom.stop_grace_s)
        cut = service.stop(cfg.dicom.stop_grace_s)
        log.info("dicom stopped: %d associations cut", cut)
    finally:
        store.close()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _worker_main(cfg: Config, ready: Any, verbose: int, listener: socket.socket) -> None:
    _die_with_parent()
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        return
    setup_logging(cfg, verbose=verbose)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        _serve(cfg, stop, ready, listener)
    except OSError as exc:
        ready.put(("error", os.getpid(), str(exc)))
        raise


_HTTP_PORT: list[int] = []


def _write_ready(cfg: Config, port: int, workers: list[int]) -> Path:
    path = run_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "workers": workers, "dicom_port": port,
                               "dicom_host": cfg.dicom.host, "ae_title": cfg.dicom.ae_title,
                               "http_port": _HTTP_PORT[0] if _HTTP_PORT else None,
                               "name": cfg.node.name, "started_at": time.time()}) + "\n")
    os.replace(tmp, path)
    return path


def _start_reindex(cfg: Config) -> None:
    """Instances indexed before store migration 8 get their text re-decoded with their
    character set, in the background (gateway/store/reindex.py); idempotent across restarts."""
    store = open_store(cfg)
    try:
        n = reindex.pending(store)
    finally:
        store.close()
    if not n:
        return
    log.info("store=%s reindex of text pending instances=%d (background)", cfg.store_dir, n)

    def run() -> None:
        s = open_store(cfg)
        try:
            reindex.reindex_text(s, cfg.dicom.default_character_set or None)
        except Exception:  # the node serves on; the next start resumes
            log.exception("reindex of text failed")
        finally:
            s.close()

    threading.Thread(target=run, name="reindex-text", daemon=True).start()


def run_node(cfg: Config, *, verbose: int = 0) -> int:
    """Run until SIGTERM/SIGINT; return the exit code.

    Raises :class:`StartupError` (one line naming the key and value) when the
    store is in use by another node or a port is taken or a host does not resolve.
    """
    # Owner-only files whatever umask the node was started with; a node
    # directory from before this rule is closed to other users at once.
    os.umask(PRIVATE_UMASK)
    with contextlib.suppress(OSError):
        cfg.data_dir.chmod(0o700)
    if cfg.node.shared_store:
        lock_fd, alone = join_store(cfg)
    else:
        lock_fd, alone = lock_store(cfg), True
    try:
        # The DICOM workers of a node killed a moment ago may still be finishing
        # their associations (they stop on their supervisor's death): wait for them.
        check_port_free("dicom.port", cfg.dicom.host, cfg.dicom.port, wait_s=20.0)
        check_port_free("http.port", cfg.http.host, cfg.http.port)
        if cfg.web.port:
            check_port_free("web.port", cfg.web.host, cfg.web.port)
        return _run_locked(cfg, verbose, lock_fd, alone)
    finally:
        os.close(lock_fd)


def return_stale_leases(store: Store, now: float, owners: list[str] | None = None) -> int:
    """Give back outbox leases at start: every one (``owners=None``) when the node holds
    a SQLite store's lock alone (one node per store, or the only process of a center on
    its one machine), so a lease is its previous process's, killed mid-send.  Waiting
    out ``outbox.lease_s`` instead held a STAT report back for a minute after a
    restart.  Otherwise only the leases of ``owners``: processes of the center known
    dead (gateway/store/processes.py); a live one's lease, on this machine or another
    sharing a PostgreSQL index, is left alone."""
    return outbox_db.return_leases(store, owners, now)


def _run_locked(cfg: Config, verbose: int, lock_fd: int, alone: bool) -> int:
    store = open_store(cfg)
    # The store folder's lock says who runs on this machine; a PostgreSQL index may
    # have the center's other processes elsewhere, so their work is theirs until the
    # index says they are dead (processes.py); this machine's dead are known at once.
    machine_alone = alone and store.index.dialect == SQLITE
    if alone:
        recovered = store.recover()  # temp files and blobs of this machine's folder
    else:
        recovered = {"tmp_removed": remove_stale_tmp(store, SHARED_STORE_STALE_TMP_S,
                                                     time.time())}
    if machine_alone:
        recovered["leases_returned"] = return_stale_leases(store, time.time())
    elif cfg.node.shared_store:
        dead = processes.local_dead(store.index, processes.host_id())
        recovered["leases_returned"] = return_stale_leases(store, time.time(), dead)
    # The index's hold on a release tells a live release (any process) from a dead one.
    recovered["releases_failed"] = len(recover_releases(store))
    usage = store.usage()
    store.close()
    if cfg.node.shared_store:
        share_store(lock_fd)  # recovered: the center's other processes may join
    log.info("store=%s instances=%d bytes=%d free=%d recovered=%s shared=%s alone=%s",
             cfg.store_dir, usage["instances"], usage["bytes"], usage["disk_free_bytes"],
             recovered, cfg.node.shared_store, alone)
    _start_reindex(cfg)
    ready_file = run_file(cfg)
    with contextlib.suppress(FileNotFoundError):
        ready_file.unlink()
    n = worker_count(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from fenji.gateway.web.app import HttpService

    http_store = open_store(cfg)
    http = HttpService(cfg, http_store)
    try:
        _HTTP_PORT[:] = [http.start()]
    except OSError as exc:
        http_store.close()
        log.debug("http start failed", exc_info=True)
        raise StartupError(f"http.port {cfg.http.port} on {cfg.http.host}: "
                           f"{exc.strerror or exc}") from None
    signal.signal(signal.SIGHUP, lambda *_: _reload(cfg, http))
    heartbeat = None
    if cfg.node.shared_store:  # the center's other processes learn whether this one lives
        heartbeat = processes.Heartbeat(
            http_store.index, processes.owner_name(cfg.node.name), processes.host_id(),
            cfg.node.heartbeat_s, cfg.node.process_lease_s,
            on_dead=lambda owners, now: _hand_on(http_store, owners, now))
        heartbeat.start()

    def stopping(*_: object) -> None:
        http.draining.set()  # /api/ready answers 503 at once: the balancer drains us
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    watcher = None
    if cfg.ingest.watch_dir:
        from fenji.gateway.ingest.ecg_files import FolderWatcher

        watcher = FolderWatcher(http_store, cfg.resolve(cfg.ingest.watch_dir),
                                interval_s=cfg.ingest.watch_interval_s,
                                settle_s=cfg.ingest.settle_s,
                                limits=ingest.Limits.of(cfg))
        watcher.start()
        log.info("watching %s for ECG/DICOM files", cfg.resolve(cfg.ingest.watch_dir))
    try:
        return _run_dicom(cfg, n, stop, verbose, http.dicom_up.set)
    finally:
        http.draining.set()
        if watcher is not None:
            watcher.stop()
        if heartbeat is not None:
            heartbeat.stop()
        # HTTP (API, uploads, the sender) stops before "node stopped" is logged:
        # nothing is served after that line (issue 18).
        http.stop()
        http_store.close()
        with contextlib.suppress(FileNotFoundError):
            ready_file.unlink()
        log.info("node stopped")


def _hand_on(store: Store, owners: list[str], now: float) -> None:
    """Dead processes' outbox jobs go back in the queue (a live sender takes them)."""
    n = outbox_db.return_leases(store, owners, now)
    if n:
        log.info("outbox leases returned=%d of dead processes %s", n, ",".join(owners))
    # A job the dead one queued but never claimed woke only its own machine's sender.
    wakeup.wake(store)


def _reload(cfg: Config, http: Any) -> None:
    """SIGHUP: read the config again and take its [[peers]] and [[users]] (``fenji peer
    add`` and ``fenji user add`` send it).  Other changes need a restart; a config that
    no longer loads changes nothing."""
    from fenji.gateway import config as config_mod
    from fenji.gateway.errors import FenjiError

    try:
        new = config_mod.load(cfg.source or "")
    except FenjiError as exc:
        log.error("SIGHUP: config not reloaded, it has errors: %s", exc)
        return
    http.reload(new)


def _run_dicom(cfg: Config, n: int, stop: threading.Event, verbose: int,
               on_ready: Callable[[], None]) -> int:
    if n == 1:
        import queue as _q

        ready_q: Any = _q.Queue()

        def announce() -> None:
            kind, pid, port = ready_q.get()
            _write_ready(cfg, port, [pid])
            on_ready()
            log.info("node ready name=%s role=%s dicom_port=%d workers=1", cfg.node.name,
                     cfg.node.role, port)

        threading.Thread(target=announce, daemon=True).start()
        _serve(cfg, stop, ready_q)
        return 0
    return _supervise(cfg, n, stop, verbose, on_ready)


def _supervise(cfg: Config, n: int, stop: threading.Event, verbose: int,
               on_ready: Callable[[], None]) -> int:
    ctx = mp.get_context("spawn")
    # The supervisor binds the DICOM port once, without SO_REUSEPORT, and hands the
    # listening socket to every worker (multiprocessing passes the descriptor): the
    # workers share it, the kernel gives each connection to one accept(), and no
    # other node can bind the port beside them (issue 18).
    listener = socket.create_server(
        (cfg.dicom.host, cfg.dicom.port), backlog=128,
        family=socket.AF_INET6 if ":" in cfg.dicom.host else socket.AF_INET)
    if cfg.dicom.port == 0:
        cfg = dataclasses.replace(cfg, dicom=dataclasses.replace(
            cfg.dicom, port=listener.getsockname()[1]))
    ready = ctx.Queue()
    procs: list[Any] = []

    def spawn() -> Any:
        p = ctx.Process(target=_worker_main, args=(cfg, ready, verbose, listener), daemon=False,
                        name="fenji-dicom-worker")
        p.start()
        return p

    procs = [spawn() for _ in range(n)]
    pids: list[int] = []
    deadline = time.monotonic() + 60
    while len(pids) < n and time.monotonic() < deadline and not stop.is_set():
        try:
            kind, pid, info = ready.get(timeout=0.5)
        except Exception:
            if any(p.exitcode not in (None, 0) for p in procs):
                break
            continue
        if kind == "error":
            log.error("worker pid=%d failed to start: %s", pid, info)
            break
        pids.append(pid)
    if len(pids) < n and not stop.is_set():
        log.error("only %d of %d DICOM workers started; stopping", len(pids), n)
        stop.set()
        rc = 1
    else:
        rc = 0
        _write_ready(cfg, cfg.dicom.port, pids)
        on_ready()
        log.info("node ready name=%s role=%s dicom_port=%d workers=%d", cfg.node.name,
                 cfg.node.role, cfg.dicom.port, n)
    restarts: list[float] = []
    while not stop.wait(0.5):
        for i, p in enumerate(procs):
            if p.exitcode is not None:
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                log.error("worker pid=%s exited with %s; restarting", p.pid, p.exitcode)
                if len(restarts) > 10:
                    log.error("workers keep dying (10 restarts in 60 s); stopping the node")
                    stop.set()
                    rc = 1
                    break
                procs[i] = spawn()
    for p in procs:
        if p.exitcode is None and p.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    # A worker gives its associations dicom.stop_grace_s, then aborts them and
    # closes its store: a few seconds more is the most it may take.
    join_s = cfg.dicom.stop_grace_s + 15
    for p in procs:
        p.join(timeout=join_s)
        if p.exitcode is None:
            log.error("worker pid=%s did not stop in %.0f s; killing", p.pid, join_s)
            p.kill()
            p.join()
    listener.close()
    return rc
