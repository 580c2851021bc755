"""CLI verbs: `fenji codec encode|decode|info` (lossless instance codec, DESIGN.md §7)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fenji.gateway.cli import common


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    csub = common.group(sub, "codec", "encode, decode and inspect fenji-encoded instances")

    en = csub.add_parser("encode", parents=[common.JSON], help="encode a Part-10 file losslessly")
    en.add_argument("input", type=Path, metavar="IN")
    en.add_argument("output", type=Path, metavar="OUT")
    en.add_argument("--effort", choices=("fast", "max"), default="fast")
    en.set_defaults(func=_encode)

    de = csub.add_parser("decode", parents=[common.JSON],
                         help="decode back to the exact original file")
    de.add_argument("input", type=Path, metavar="IN")
    de.add_argument("output", type=Path, metavar="OUT")
    de.set_defaults(func=_decode)

    inf = csub.add_parser("info", parents=[common.JSON],
                          help="what the encoder chose: codecs, sizes, ratio")
    inf.add_argument("file", type=Path, metavar="FILE")
    inf.set_defaults(func=_info)


def _read(path: Path) -> bytes:
    from fenji.codecs.errors import PeerError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise PeerError(f"cannot read {path}: {exc.strerror}") from None


def _write(path: Path, data: bytes) -> None:
    from fenji.codecs.errors import LocalError

    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise LocalError(f"cannot write {path}: {exc.strerror}") from None


def _encode(args: argparse.Namespace) -> int:
    from fenji.codecs import encode_instance

    data = _read(args.input)
    t0 = time.perf_counter()
    enc = encode_instance(data, effort=args.effort)
    ms = (time.perf_counter() - t0) * 1e3
    _write(args.output, enc)
    out = {"input": str(args.input), "output": str(args.output), "original_bytes": len(data),
           "encoded_bytes": len(enc), "ratio": round(len(data) / max(len(enc), 1), 3),
           "effort": args.effort, "ms": round(ms, 1)}
    return common.emit(args, out, f"{args.input} -> {args.output}: {len(data)} -> {len(enc)} bytes "
                       f"(ratio {out['ratio']}, {args.effort}, {ms:.0f} ms)")


def _decode(args: argparse.Namespace) -> int:
    from fenji.codecs import decode_instance

    enc = _read(args.input)
    data = decode_instance(enc)
    _write(args.output, data)
    if args.json:
        print(json.dumps({"input": str(args.input), "output": str(args.output),
                          "bytes": len(data)}))
    else:
        print(f"{args.input} -> {args.output}: {len(data)} bytes, verified")
    return 0


def _info(args: argparse.Namespace) -> int:
    from fenji.codecs import instance_info

    info = instance_info(_read(args.file))
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{args.file}: {info['original_bytes']} -> {info['encoded_bytes']} bytes, "
          f"ratio {info['ratio']:.3f} (format v{info['version']})")
    h = info["header"]
    print(f"  header   {h['raw_bytes']:>10} -> {h['encoded_bytes']:>10}  zstd, "
          f"dictionary {h['dict_id']:#06x}" if h["dict_id"] is not None else "")
    for p in info["payloads"]:
        print(f"  {p['kind']:<8} {p['raw_bytes']:>10} -> {p['encoded_bytes']:>10}  "
              f"{p['codec']} at offset {p['offset']}"
              + (" (big endian)" if p.get("big_endian") else ""))
    return 0
