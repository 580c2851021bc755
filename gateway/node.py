"""`fenji node`: run a node until SIGTERM/SIGINT.

The supervisor opens the store once (migrations, crash recovery), then runs
``dicom.workers`` receiving processes that share the DICOM port through
SO_REUSEPORT.  Each worker owns its own store connection (SQLite serialises
the writers; blobs are content-addressed, so concurrent writers never clash).
On SIGTERM every worker stops accepting, lets in-flight associations finish,
and closes its store.  A worker that dies unexpectedly is restarted.

When every worker listens, ``<data_dir>/run/node.json`` is written with the
pid and ports, and the log says ``node ready``: scripts wait on either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fenji.gateway.config import Config
from fenji.gateway.init import PRIVATE_UMASK
from fenji.gateway.store import Store

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
    # pynetdicom logs every PDU at INFO; its lines are not for operators.
    logging.getLogger("pynetdicom").setLevel(logging.ERROR if level > logging.DEBUG
                                             else logging.INFO)


def open_store(cfg: Config) -> Store:
    store = Store(cfg.store_dir, min_free_bytes=cfg.store.min_free_bytes,
                  quarantine=cfg.store.quarantine,
                  quarantine_max_records=cfg.store.quarantine_max_records,
                  quarantine_max_bytes=cfg.store.quarantine_max_bytes)
    store.audit_node = cfg.node.name  # stored instances are ledger events
    key = cfg.resolve(cfg.keys.private_key)
    if key.exists():  # the ledger's head is signed with the node key (truncation shows)
        from fenji.gateway import ledger
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


def worker_count(cfg: Config) -> int:
    return cfg.dicom.workers or max(1, os.cpu_count() or 1)


def _serve(cfg: Config, stop: threading.Event, ready: Any = None) -> None:
    """One receiving process: serve until ``stop`` is set."""
    from fenji.gateway.scp import DicomService

    store = open_store(cfg)
    service = DicomService(cfg, store)
    try:
        host, port = service.start()
        if ready is not None:
            ready.put(("ready", os.getpid(), port))
        while not stop.wait(0.5):
            pass
        log.info("dicom stopping: waiting for %d in-flight associations", service.active)
        service.stop()
    finally:
        store.close()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _worker_main(cfg: Config, ready: Any, verbose: int) -> None:
    _die_with_parent()
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        return
    setup_logging(cfg, verbose=verbose)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        _serve(cfg, stop, ready)
    except OSError as exc:
        ready.put(("error", os.getpid(), str(exc)))
        raise


_HTTP_PORT: list[int] = []


def _write_ready(cfg: Config, port: int, workers: list[int]) -> Path:
    run = cfg.data_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    path = run / "node.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "workers": workers, "dicom_port": port,
                               "dicom_host": cfg.dicom.host, "ae_title": cfg.dicom.ae_title,
                               "http_port": _HTTP_PORT[0] if _HTTP_PORT else None,
                               "name": cfg.node.name, "started_at": time.time()}) + "\n")
    os.replace(tmp, path)
    return path


def run_node(cfg: Config, *, verbose: int = 0) -> int:
    """Run until SIGTERM/SIGINT; return the exit code."""
    # Owner-only files whatever umask the node was started with; a node
    # directory from before this rule is closed to other users at once.
    os.umask(PRIVATE_UMASK)
    with contextlib.suppress(OSError):
        cfg.data_dir.chmod(0o700)
    store = open_store(cfg)
    recovered = store.recover()
    usage = store.usage()
    store.close()
    log.info("store=%s instances=%d bytes=%d free=%d recovered=%s", cfg.store_dir,
             usage["instances"], usage["bytes"], usage["disk_free_bytes"], recovered)
    run_file = cfg.data_dir / "run" / "node.json"
    with contextlib.suppress(FileNotFoundError):
        run_file.unlink()
    n = worker_count(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from fenji.gateway.http_api import HttpService

    http_store = open_store(cfg)
    http = HttpService(cfg, http_store)
    _HTTP_PORT[:] = [http.start()]
    watcher = None
    if cfg.ingest.watch_dir:
        from fenji.gateway.ecg_ingest import FolderWatcher

        watcher = FolderWatcher(http_store, cfg.resolve(cfg.ingest.watch_dir),
                                interval_s=cfg.ingest.watch_interval_s,
                                settle_s=cfg.ingest.settle_s)
        watcher.start()
        log.info("watching %s for ECG/DICOM files", cfg.resolve(cfg.ingest.watch_dir))
    try:
        return _run_dicom(cfg, n, stop, verbose, run_file)
    finally:
        if watcher is not None:
            watcher.stop()
        http.stop()
        http_store.close()


def _run_dicom(cfg: Config, n: int, stop: threading.Event, verbose: int, run_file: Path) -> int:
    if n == 1:
        import queue as _q

        ready_q: Any = _q.Queue()

        def announce() -> None:
            kind, pid, port = ready_q.get()
            _write_ready(cfg, port, [pid])
            log.info("node ready name=%s role=%s dicom_port=%d workers=1", cfg.node.name,
                     cfg.node.role, port)

        threading.Thread(target=announce, daemon=True).start()
        _serve(cfg, stop, ready_q)
        with contextlib.suppress(FileNotFoundError):
            run_file.unlink()
        log.info("node stopped")
        return 0
    return _supervise(cfg, n, stop, verbose)


def _supervise(cfg: Config, n: int, stop: threading.Event, verbose: int) -> int:
    ctx = mp.get_context("spawn")
    reserve = None
    if cfg.dicom.port == 0:
        # Pick one ephemeral port for all workers; hold it until they listen.
        reserve = socket.socket(socket.AF_INET6 if ":" in cfg.dicom.host else socket.AF_INET)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind((cfg.dicom.host, 0))
        cfg = dataclasses.replace(cfg, dicom=dataclasses.replace(
            cfg.dicom, port=reserve.getsockname()[1]))
    ready = ctx.Queue()
    procs: list[Any] = []

    def spawn() -> Any:
        p = ctx.Process(target=_worker_main, args=(cfg, ready, verbose), daemon=False,
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
    if reserve is not None:
        reserve.close()
    if len(pids) < n and not stop.is_set():
        log.error("only %d of %d DICOM workers started; stopping", len(pids), n)
        stop.set()
        rc = 1
    else:
        rc = 0
        _write_ready(cfg, cfg.dicom.port, pids)
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
    for p in procs:
        p.join(timeout=45)
        if p.exitcode is None:
            log.error("worker pid=%s did not stop in 45 s; killing", p.pid)
            p.kill()
            p.join()
    with contextlib.suppress(FileNotFoundError):
        (cfg.data_dir / "run" / "node.json").unlink()
    log.info("node stopped")
    return rc
