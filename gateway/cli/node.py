"""CLI verbs: `fenji init`, `fenji node`, `fenji conf check`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fenji.gateway import config as config_mod
from fenji.gateway.cli import common
from fenji.gateway.config import ROLES
from fenji.gateway.errors import ConfigError
from fenji.gateway.settings.find import find_config


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "init", help="write a ready-to-run node directory (config + keys)",
        description="Write DIR/fenji.toml (commented) and the node's Ed25519 key pair, so "
                    "a node is one command away: fenji node --config DIR/fenji.toml")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--role", choices=ROLES, default="edge", help="default: edge")
    p.add_argument("--name", default=None, help="node name (default: the directory's name)")
    p.add_argument("--ae-title", default="FENJI", help="our AE title (default: FENJI)")
    p.add_argument("--host", default="127.0.0.1",
                   help="listen address (default 127.0.0.1; the LAN address to receive "
                        "from modalities)")
    p.add_argument("--dicom-port", type=int, default=11112, help="default: 11112")
    p.add_argument("--http-port", type=int, default=8042, help="default: 8042")
    p.add_argument("--allow-ae", action="append", default=[], metavar="T",
                   help="a calling AE title allowed to send (repeat; '*' = any, labs only)")
    p.add_argument("--workers", type=int, default=0,
                   help="receiving processes (default 0: one per core)")
    p.add_argument("--force", action="store_true", help="overwrite an existing fenji.toml")
    p.set_defaults(func=_init)

    p = sub.add_parser("node", parents=[common.CONFIG], help="run a node until SIGTERM/SIGINT",
                       description="Run the node: DICOM SCP (C-ECHO, C-STORE) into the store. "
                                   "SIGTERM/SIGINT stop it gracefully (in-flight "
                                   "associations finish, the store closes).")
    p.set_defaults(func=_node)

    csub = common.group(sub, "conf", "configuration tools")
    c = csub.add_parser("check", help="validate a config; print every error with its key path")
    c.add_argument("file", type=Path, metavar="FILE", nargs="?", default=None,
                   help="the config (default: $FENJI_CONFIG, else ./fenji.toml, else "
                        "/etc/fenji/fenji.toml)")
    c.add_argument("--json", action="store_true", help="print the effective config as JSON")
    c.set_defaults(func=_conf_check)


def _init(args: argparse.Namespace) -> int:
    from fenji.gateway.cli.init import init_node

    if not args.allow_ae:
        print("fenji init: note: no --allow-ae given: every modality is rejected until "
              "dicom.allow_ae lists its calling AE title", file=sys.stderr)
    try:
        path = init_node(args.dir, force=args.force, role=args.role,
                         name=args.name or args.dir.resolve().name, ae_title=args.ae_title,
                         host=args.host, dicom_port=args.dicom_port, http_port=args.http_port,
                         allow_ae=args.allow_ae or ["CHANGE-ME"], workers=args.workers)
    except ConfigError as exc:
        for e in exc.errors:
            print(f"fenji init: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    print(f"start the node with: fenji node --config {path}")
    return 0


def _node(args: argparse.Namespace) -> int:
    from fenji.gateway.node import run_node, setup_logging

    cfg = config_mod.load(args.config)
    setup_logging(cfg, verbose=args.verbose)
    return run_node(cfg, verbose=args.verbose)


def _running_pid(cfg: config_mod.Config) -> int | None:
    """The pid of this config's own node when it is running (its run file; a center
    on several processes has one per process)."""
    from fenji.gateway.node import running_pids

    pids = running_pids(cfg)
    return pids[0] if pids else None


def _conf_check(args: argparse.Namespace) -> int:
    if args.file is None:
        args.file = find_config()
    try:
        cfg = config_mod.load(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.errors)} error(s)", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    from fenji.gateway.node import StartupError, check_port_free

    problems = []
    listeners = [("dicom.port", cfg.dicom.host, cfg.dicom.port),
                 ("http.port", cfg.http.host, cfg.http.port)]
    if cfg.web.port:
        listeners.append(("web.port", cfg.web.host, cfg.web.port))
    running = _running_pid(cfg)
    if running is not None:
        # Its own node holds the ports: that is not a problem of this config.
        print(f"note: this node is running (pid {running}); its ports were not probed",
              file=sys.stderr)
        listeners = []
    for key, host, port in listeners:
        try:
            check_port_free(key, host, port)
        except StartupError as exc:
            problems.append(str(exc))
    if problems:
        print(f"{args.file}: {len(problems)} problem(s) on this machine", file=sys.stderr)
        for e in problems:
            print(f"  {e}", file=sys.stderr)
        return 1
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(cfg), default=str))
    else:
        print(f"{args.file}: ok (node {cfg.node.name!r}, role {cfg.node.role}, "
              f"AE {cfg.dicom.ae_title} on {cfg.dicom.host}:{cfg.dicom.port}, "
              f"store {cfg.store_dir})")
    return 0
