"""Lossless codecs: fenji pixel/waveform codecs against CharLS JPEG-LS, OpenJPEG, HTJ2K,
JPEG XL, zstd and deflate, on the same pixels and samples in the same run.

Images come from shared/data/dicom (CT series, MR, CR/DX, MG, US); the lossy
JPEG 2000 files (MG1, RG1) are decoded to pixels first and those pixel arrays
are what every codec compresses.  ECG: the 12-lead DICOM waveforms, MIT-BIH
records (11-bit, format 212) and a sample of challenge2011 12-lead records.

Speeds are MB/s of raw pixel bytes.  "1 core": one thread, one image at a
time; "all cores": a thread pool over images (fenji's Numba kernels and
imagecodecs both release the GIL; OpenJPEG uses its own threads instead).
JPEG XL effort 7 is slow, so it runs on a sample (``--jxl-images`` per
modality, centre crop of at most ``--jxl-crop`` pixels a side), and fenji
"max" is compared with it on exactly that sample.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bench import common

DESCRIPTION = "lossless pixel/ECG codecs: fenji fast/max vs JPEG-LS, J2K, HTJ2K, JPEG XL, zstd"

MODALITIES: dict[str, list[str]] = {
    "CT": [f"ct/CT_{i:04d}.dcm" for i in range(1, 29)],
    "MR": ["mr/MR1_UNC.dcm"] + [f"mr/ge_epi_axial/MR_{i:04d}.dcm" for i in range(1, 16)],
    "CR/DX": ["cr/RG3_UNC.dcm", "cr/RG1_J2KI.dcm", "dx/dx_image.dcm"],
    "MG": ["mg/MG1_J2KI.dcm"],
    "US": ["us/US1_UNC.dcm", "us/gdcm-US-ALOKA-16.dcm", "us/us_multiframe_ybr_jpeg_cine.dcm"],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modalities", default=",".join(MODALITIES), help="comma list")
    p.add_argument("--ct-slices", type=int, default=28, help="CT slices used (max 28)")
    p.add_argument("--jxl-images", type=int, default=2, help="JPEG XL sample per modality")
    p.add_argument("--jxl-crop", type=int, default=1024, help="JPEG XL sample crop side")
    p.add_argument("--jxl-effort", type=int, default=7)
    p.add_argument("--repeat", type=int, default=2, help="best of N timings")
    p.add_argument("--ecg-challenge", type=int, default=20, help="challenge2011 records")
    p.add_argument("--mitdb", type=int, default=16, help="MIT-BIH records (max 16)")
    p.add_argument("--no-ecg", action="store_true")
    p.add_argument("--no-images", action="store_true")
    p.add_argument("--full", action="store_true",
                   help="JPEG XL on every image uncropped (slow: minutes)")


# --------------------------------------------------------------------------- data


def _load_images(names: list[str]) -> list[np.ndarray]:
    import pydicom

    out = []
    for n in names:
        ds = pydicom.dcmread(common.shared_data() / "dicom" / n)
        a = np.ascontiguousarray(ds.pixel_array)
        out.append(a)
    return out


def _frames(a: np.ndarray) -> list[np.ndarray]:
    """2-D (or H x W x 3) images a peer codec takes, one per frame."""
    if a.ndim == 4 or (a.ndim == 3 and a.shape[-1] != 3):
        return [np.ascontiguousarray(f) for f in a]
    return [a]


def _unsigned(a: np.ndarray) -> np.ndarray:
    """JPEG-LS, J2K and JPEG XL take unsigned samples: shift signed data (lossless)."""
    if a.dtype.kind != "i":
        return a
    u = a.astype(np.int32) - int(np.iinfo(a.dtype).min)
    return u.astype(np.uint16 if a.itemsize == 2 else np.uint8)


def _crop(a: np.ndarray, side: int) -> np.ndarray:
    f = _frames(a)[0]
    r0 = max(0, (f.shape[0] - side) // 2)
    c0 = max(0, (f.shape[1] - side) // 2)
    return np.ascontiguousarray(f[r0:r0 + side, c0:c0 + side])


# --------------------------------------------------------------------------- codecs


def _fenji(effort: str) -> tuple[Callable[[np.ndarray], bytes], Callable[[bytes], np.ndarray]]:
    from fenji.codecs.compress.pixel import pixel_decode, pixel_encode

    def enc(a: np.ndarray) -> bytes:
        rct = a.ndim >= 3 and a.shape[-1] == 3
        return pixel_encode(a, effort=effort, rct=rct)

    return enc, pixel_decode


def _peers(jxl_effort: int) -> dict[str, tuple[Callable[[np.ndarray], bytes],
                                               Callable[[bytes], np.ndarray]]]:
    import imagecodecs
    import zstandard

    peers: dict[str, Any] = {
        "jpegls": (lambda a: imagecodecs.jpegls_encode(_unsigned(a)), imagecodecs.jpegls_decode),
        "j2k": (lambda a: imagecodecs.jpeg2k_encode(_unsigned(a), level=0, reversible=True),
                imagecodecs.jpeg2k_decode),
        # OpenJPEG crashes when called from two Python threads at once (seen with
        # imagecodecs 2026.3): its "all cores" figure uses its own numthreads instead.
        "j2k-mt": (lambda a: imagecodecs.jpeg2k_encode(_unsigned(a), level=0, reversible=True,
                                                       numthreads=os.cpu_count()),
                   lambda b: imagecodecs.jpeg2k_decode(b, numthreads=os.cpu_count())),
    }
    if hasattr(imagecodecs, "htj2k_encode"):
        peers["htj2k"] = (lambda a: imagecodecs.htj2k_encode(_unsigned(a), level=0,
                                                             reversible=True),
                          imagecodecs.htj2k_decode)
    peers["jpegxl"] = (lambda a: imagecodecs.jpegxl_encode(_unsigned(a), lossless=True,
                                                           effort=jxl_effort),
                       imagecodecs.jpegxl_decode)
    # zstandard (de)compressor objects are not thread-safe: one per call
    peers["zstd3"] = (lambda a: zstandard.ZstdCompressor(level=3).compress(a.tobytes()),
                      lambda b: zstandard.ZstdDecompressor().decompress(b))
    peers["deflate6"] = (lambda a: zlib.compress(a.tobytes(), 6), zlib.decompress)
    return peers


def _set_threads(n: int) -> None:
    from fenji.codecs.compress.pixel import set_threads

    set_threads(n)


def _measure(enc: Callable[[Any], bytes], dec: Callable[[bytes], Any], items: list[Any],
             nbytes: int, threads: int, repeat: int, is_fenji: bool,
             pool_ok: bool = True) -> dict[str, Any]:
    """Encode and decode every item; best-of-``repeat`` wall times."""
    if is_fenji:
        # fenji's kernels release the GIL: all cores = a thread pool over images with
        # serial kernels, as the gateway's workers use them (and as the peers are run)
        _set_threads(1)
    pool = ThreadPoolExecutor(threads) if (threads > 1 and pool_ok) else None

    def run(fn: Callable[[Any], Any], xs: list[Any]) -> tuple[float, list[Any]]:
        t0 = time.perf_counter()
        out = list(pool.map(fn, xs)) if pool else [fn(x) for x in xs]
        return time.perf_counter() - t0, out

    try:
        enc(items[0])  # warm-up: JIT cache load, library init
        te, blobs = min((run(enc, items) for _ in range(repeat)), key=lambda r: r[0])
        td, _ = min((run(dec, blobs) for _ in range(repeat)), key=lambda r: r[0])
    finally:
        if pool:
            pool.shutdown()
        if is_fenji:
            _set_threads(os.cpu_count() or 1)
    size = sum(len(b) for b in blobs)
    return {"bytes": size, "ratio": nbytes / size, "enc_s": te, "dec_s": td,
            "enc_mbps": nbytes / te / 1e6, "dec_mbps": nbytes / td / 1e6, "_blobs": blobs}


def _check(dec: Callable[[bytes], Any], blobs: list[bytes], items: list[np.ndarray],
           peer: bool) -> bool:
    for b, a in zip(blobs, items, strict=True):
        got = dec(b)
        if isinstance(got, bytes):
            if got != a.tobytes():
                return False
            continue
        d = np.asarray(got)
        want = _unsigned(a) if peer else a
        if peer and d.shape != want.shape:
            d = d.reshape(want.shape)
        if not np.array_equal(d, want):
            return False
    return True


def _bench_images(args: argparse.Namespace) -> dict[str, Any]:
    ncpu = os.cpu_count() or 1
    peers = _peers(args.jxl_effort)
    fast = _fenji("fast")
    mx = _fenji("max")
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    for mod in [m.strip() for m in args.modalities.split(",") if m.strip()]:
        names = MODALITIES[mod][: args.ct_slices] if mod == "CT" else MODALITIES[mod]
        arrays = _load_images(names)
        per_frame = [f for a in arrays for f in _frames(a)]
        nbytes = sum(a.nbytes for a in arrays)
        if args.full:
            sample = per_frame
        else:
            sample = [_crop(a, args.jxl_crop) for a in arrays[: args.jxl_images]]
        sbytes = sum(a.nbytes for a in sample)
        res: dict[str, Any] = {}
        for name, (e, d), items, nb, fen in (
            ("fenji-fast", fast, arrays, nbytes, True),
            ("fenji-max", mx, arrays, nbytes, True),
            *((n, peers[n], per_frame, nbytes, False)
              for n in ("jpegls", "j2k", "htj2k", "zstd3", "deflate6") if n in peers),
        ):
            one = _measure(e, d, items, nb, 1, args.repeat, fen)
            if name == "j2k":
                allc = _measure(*peers["j2k-mt"], items, nb, ncpu, args.repeat, fen, False)
            else:
                allc = _measure(e, d, items, nb, ncpu, args.repeat, fen)
            ok = _check(d, one.pop("_blobs"), items, peer=not fen)
            allc.pop("_blobs")
            res[name] = {"n_images": len(items), "raw_bytes": nb, "lossless_ok": ok,
                         "one_core": one, "all_cores": allc}
        # JPEG XL effort 7 and fenji on the JPEG XL sample
        for name, (e, d), fen in (("jpegxl", peers["jpegxl"], False),
                                  ("fenji-max@jxl", mx, True), ("fenji-fast@jxl", fast, True),
                                  ("jpegls@jxl", peers["jpegls"], False)):
            one = _measure(e, d, sample, sbytes, 1, 1, fen)
            ok = _check(d, one.pop("_blobs"), sample, peer=not fen)
            res[name] = {"n_images": len(sample), "raw_bytes": sbytes, "lossless_ok": ok,
                         "one_core": one}
        raw[mod] = res
        jls = res["jpegls"]
        for name, r in res.items():
            row = {"modality": mod, "codec": name, "n": r["n_images"],
                   "MB": round(r["raw_bytes"] / 1e6, 2), "ratio": r["one_core"]["ratio"],
                   "enc1": r["one_core"]["enc_mbps"], "dec1": r["one_core"]["dec_mbps"],
                   "encN": r.get("all_cores", {}).get("enc_mbps"),
                   "decN": r.get("all_cores", {}).get("dec_mbps"),
                   "ok": r["lossless_ok"]}
            if "@jxl" not in name and name != "jpegxl":
                row["ratio/jls"] = r["one_core"]["ratio"] / jls["one_core"]["ratio"]
                row["encN/jls"] = r["all_cores"]["enc_mbps"] / jls["all_cores"]["enc_mbps"]
                row["decN/jls"] = r["all_cores"]["dec_mbps"] / jls["all_cores"]["dec_mbps"]
            else:
                row["ratio/jxl"] = r["one_core"]["ratio"] / res["jpegxl"]["one_core"]["ratio"]
            rows.append(row)
        print(f"  {mod}: done", flush=True)
    return {"rows": rows, "raw": raw}


# --------------------------------------------------------------------------- ECG


def _ecg_sets(args: argparse.Namespace) -> dict[str, list[tuple[str, np.ndarray, int]]]:
    import pydicom
    import wfdb

    ecg = common.shared_data() / "ecg"
    sets: dict[str, list[tuple[str, np.ndarray, int]]] = {"dicom-12lead": [], "mitdb": [],
                                                          "challenge2011": []}
    ds = pydicom.dcmread(common.shared_data() / "dicom" / "ecg" / "waveform_ecg_12lead.dcm")
    for i, item in enumerate(ds.WaveformSequence):
        x = np.frombuffer(item.WaveformData, "<i2").reshape(item.NumberOfWaveformSamples,
                                                             item.NumberOfWaveformChannels)
        sets["dicom-12lead"].append((f"waveform_ecg_12lead[{i}]", x, 16))
    for name in (ecg / "mitdb" / "RECORDS").read_text().split()[: args.mitdb]:
        r = wfdb.rdrecord(str(ecg / "mitdb" / name), physical=False)
        sets["mitdb"].append((name, np.asarray(r.d_signal).astype("<i2"), 11))
    labels = json.loads((ecg / "challenge2011" / "labels.json").read_text())
    names = sorted(labels)
    step = max(1, len(names) // max(args.ecg_challenge, 1))
    for name in names[::step][: args.ecg_challenge]:
        r = wfdb.rdrecord(str(ecg / "challenge2011" / name), physical=False)
        sets["challenge2011"].append((name, np.asarray(r.d_signal).astype("<i2"), 16))
    return sets


def _delta_shuffle_zstd(x: np.ndarray) -> bytes:
    import zstandard

    d = np.asarray(np.diff(x.astype(np.int64), axis=0, prepend=0), dtype=np.int64)
    z = ((d << 1) ^ (d >> 63)).astype("<u2")
    shuffled = z.view(np.uint8).reshape(-1, 2).T.tobytes()
    return zstandard.ZstdCompressor(level=19).compress(shuffled)


def _bench_ecg(args: argparse.Namespace) -> dict[str, Any]:
    import zstandard

    from fenji.codecs.compress.waveform import waveform_decode, waveform_encode

    rows = []
    raw: dict[str, Any] = {}
    codecs: dict[str, Callable[[np.ndarray], bytes]] = {
        "fenji-fast": lambda x: waveform_encode(x, effort="fast"),
        "fenji-max": lambda x: waveform_encode(x, effort="max"),
        "delta+shuffle+zstd19": _delta_shuffle_zstd,
        "zstd19": lambda x: zstandard.ZstdCompressor(level=19).compress(x.tobytes()),
        "deflate9": lambda x: zlib.compress(x.tobytes(), 9),
    }
    for set_name, recs in _ecg_sets(args).items():
        n_samples = sum(x.size for _, x, _ in recs)
        stored_bits = recs[0][2]
        raw[set_name] = {}
        for cname, fn in codecs.items():
            t0 = time.perf_counter()
            blobs = [fn(x) for _, x, _ in recs]
            te = time.perf_counter() - t0
            ok = None
            td = None
            if cname.startswith("fenji"):
                t0 = time.perf_counter()
                ok = all(np.array_equal(waveform_decode(b), x)
                         for b, (_, x, _) in zip(blobs, recs, strict=True))
                td = time.perf_counter() - t0
            size = sum(len(b) for b in blobs)
            bps = size * 8 / n_samples
            raw[set_name][cname] = {"bytes": size, "bits_per_sample": bps, "enc_s": te,
                                    "dec_s": td, "lossless_ok": ok,
                                    "per_record": {r[0]: len(b) for r, b in
                                                   zip(recs, blobs, strict=True)}}
            rows.append({"set": set_name, "codec": cname, "records": len(recs),
                         "bits/sample": bps, f"vs{stored_bits}bit": stored_bits / bps,
                         "vs16bit": 16 / bps, "enc_MBps": n_samples * 2 / te / 1e6,
                         "dec_MBps": (n_samples * 2 / td / 1e6) if td else None, "ok": ok})
    return {"rows": rows, "raw": raw}


# --------------------------------------------------------------------------- entry


def run(args: argparse.Namespace) -> dict[str, Any]:
    import imagecodecs
    import numba
    import zstandard

    out: dict[str, Any] = {
        "versions": {"imagecodecs": imagecodecs.__version__, "numba": numba.__version__,
                     "zstandard": zstandard.__version__, "numpy": np.__version__},
        "threads_all_cores": os.cpu_count(),
    }
    if not args.no_images:
        print("images:", flush=True)
        img = _bench_images(args)
        out["images"] = img
        common.print_table(img["rows"], ["modality", "codec", "n", "MB", "ratio", "ratio/jls",
                                         "ratio/jxl", "enc1", "dec1", "encN", "decN",
                                         "encN/jls", "decN/jls", "ok"])
    if not args.no_ecg:
        print("ECG:", flush=True)
        ecg = _bench_ecg(args)
        out["ecg"] = ecg
        cols = ["set", "codec", "records", "bits/sample", "vs11bit", "vs16bit", "enc_MBps",
                "dec_MBps", "ok"]
        common.print_table(ecg["rows"], cols)
    return out
